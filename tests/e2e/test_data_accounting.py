"""Issue 14: no silent data loss. A training file names its text column `sentence`, a labelled
test file names it `content`; every row must be counted, the mismatch named, an empty split the
config asked for must stop the run (exit 2), and `raylm eval` on nothing must not print 0.0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORDS = ["good", "bad", "film", "plot", "actor", "dull", "great", "long", "fun", "sad", "the", "a", "was"]
N_TRAIN, N_TEST = 60, 12


def raylm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    if args[0] == "prepare":  # its embedded Ray without the dashboard (~10 processes, not what is tested here)
        args = (*args, "cluster.include_dashboard=false")
    return subprocess.run([sys.executable, "-m", "raylm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _rows(n: int, seed: int) -> list[str]:
    return [f"{(i + seed) % 2}\t" + " ".join(WORDS[(i * 7 + j * 3 + seed) % len(WORDS)] for j in range(9 + i % 5))
            for i in range(n)]


@pytest.fixture(scope="module")
def sst(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/train.tsv (label, sentence), data/test.tsv (label, content) and a classification config."""
    root = tmp_path_factory.mktemp("sst")
    (root / "data").mkdir()
    (root / "data" / "train.tsv").write_text("\n".join(["label\tsentence", *_rows(N_TRAIN, 0)]) + "\n")
    (root / "data" / "test.tsv").write_text("\n".join(["label\tcontent", *_rows(N_TEST, 1)]) + "\n")
    cfg = {"data": {"source": "data/train.tsv", "format": "tsv", "text_field": "sentence", "label_field": "label",
                    "tokenizer": {"vocab_size": 300, "sample_docs": 100}, "max_length": 8, "dedup": False,
                    "validation_fraction": 0.1, "tokenize_actors": 1, "progress_seconds": 0},
           # prepare never loads the model: a missing init_from is train's problem, not prepare's
           "model": {"init_from": "models/not-downloaded"},
           "trainer": {"task": "sequence-classification"}}
    (root / "cls.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _manifest(prepared: Path) -> dict:
    return json.loads((prepared / "manifest.json").read_text())


def test_1_a_file_without_the_column_counts_every_row_and_names_its_columns(sst: Path) -> None:
    # Both files as data.source: the test file's rows are rejected one by one, and counted.
    res = raylm("prepare", "cls.yaml", "data.source=data/*.tsv", "data.prepared_dir=prep-both", cwd=sst)
    assert res.returncode == 0, res.stdout + res.stderr
    m = _manifest(sst / "prep-both")
    assert m["rows_in"] == N_TRAIN + N_TEST and m["ledger_balanced"]
    assert m["rows_kept"] == N_TRAIN and m["rejected"] == {"missing_column": N_TEST}
    note = "data/test.tsv: no column 'sentence' (its columns: label, content)"
    assert note in res.stdout and any(note in n for n in m["notes"]), res.stdout


def test_2_validation_columns_are_set_per_source(sst: Path) -> None:
    res = raylm("prepare", "cls.yaml", "data.validation_source=data/test.tsv", "data.validation_text_field=content",
                "data.prepared_dir=prep-val", cwd=sst)
    assert res.returncode == 0, res.stdout + res.stderr
    m = _manifest(sst / "prep-val")
    assert m["rows_in"] == N_TRAIN + N_TEST and m["ledger_balanced"]
    assert m["inputs"]["validation"] == {"rows_in": N_TEST, "rows_kept": N_TEST, "rows_rejected": 0, "rejected": {}}
    assert m["splits"]["validation"]["docs"] == N_TEST and m["splits"]["train"]["docs"] == N_TRAIN
    # The summary says what applies to classification: truncation at max_length, not packing.
    assert "truncated at data.max_length=8" in res.stdout and "tail tokens" not in res.stdout, res.stdout


def test_3_an_empty_validation_source_is_an_error_that_says_why(sst: Path) -> None:
    res = raylm("prepare", "cls.yaml", "data.validation_source=data/test.tsv", "data.prepared_dir=prep-bad", cwd=sst)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    err = res.stderr
    assert "data.validation_source='data/test.tsv': the validation split is empty" in err, err
    assert f"{N_TEST} rows read, none kept; rejected: {{'missing_column': {N_TEST}}}" in err, err
    assert "no column 'sentence' (its columns: label, content)" in err, err
    assert "data.validation_text_field" in err, err
    assert not (sst / "prep-bad" / "manifest.json").exists()


def test_4_eval_on_zero_examples_exits_2(sst: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    prepared = tmp_path / "prep"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({
        "task": "sequence-classification", "num_labels": 2, "max_length": 8, "pad_id": 0, "tokenizer_dir": None,
        "splits": {"train": {"files": []}, "validation": {"files": []}}, "notes": []}))
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                             intermediate_size=8, num_labels=2)).save_pretrained(tmp_path / "model")
    res = raylm("eval", str(tmp_path / "model"), "--prepared", str(prepared), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "has no examples to evaluate" in res.stderr and "accuracy" not in res.stdout


def test_preflight_checks_what_each_command_uses(sst: Path) -> None:
    # init_from is missing: prepare ran above (it never loads the model); train refuses in a second.
    res = raylm("train", "cls.yaml", cwd=sst)
    assert res.returncode == 2 and "model.init_from: 'models/not-downloaded' is not a directory" in res.stderr
