"""seq2seq end to end on a real local Ray: parallel text files the test writes (train.de + train.en) ->
`raylm tokenizer train` (a joint BPE) -> prepare (Ray Data, actor pool) -> train (2 workers, 4 steps of a tiny
BART from config, beam search + BLEU/ROUGE at validation) -> export -> `raylm eval --input`, `raylm predict` and
`raylm generate` on the exported model; a bad pair in the ledger (skip) or exit 2 (fail).
Summarization runs the same path (its reader and ROUGE are unit-tested in tests/unit/test_seq2seq_units.py)."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from raylm.config import validate
from raylm.errors import UserError

pytestmark = pytest.mark.ray

# A learnable "translation": word for word, same order.
LEXICON = {"ein": "a", "hund": "dog", "katze": "cat", "mann": "man", "frau": "woman", "sieht": "sees",
           "rennt": "runs", "schläft": "sleeps", "rot": "red", "klein": "small", "und": "and", "der": "the"}


def pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng, words = random.Random(seed), list(LEXICON)
    out = []
    for _ in range(n):
        src = [rng.choice(words) for _ in range(rng.randint(3, 6))]
        out.append((" ".join(src), " ".join(LEXICON[w] for w in src)))
    return out


def write_pair(tmp_path, name: str, rows: list[tuple[str, str]], empty_target_at: int = 0) -> tuple[str, int]:
    """`name.de` + `name.en`; with `empty_target_at`, that pair's English line is blank. Returns the .de path."""
    targets = [t for _, t in rows]
    if empty_target_at:
        targets[empty_target_at - 1] = ""
    (tmp_path / f"{name}.en").write_text("\n".join(targets) + "\n")
    de = tmp_path / f"{name}.de"
    de.write_text("\n".join(s for s, _ in rows) + "\n")
    return str(de), empty_target_at


def raw_config(tmp_path, source: str, validation: str, **data) -> dict:
    return {
        "cluster": {"storage_path": str(tmp_path / "runs")},
        "data": {"source": source, "validation_source": validation, "prepared_dir": str(tmp_path / "prepared"),
                 "seq2seq": {"source_suffix": "de", "target_suffix": "en", "max_source_length": 16,
                             "max_target_length": 16},
                 "tokenizer": {"vocab_size": 300, "sample_docs": 500, "min_frequency": 1},
                 "tokenize_actors": 1, "shard_rows": 64, **data},
        "model": {"arch": "bart", "n_layer": 2, "n_embd": 32, "n_head": 2},
        # One evaluation and checkpoint, at the end (decoding is the costly part of this test).
        "trainer": {"task": "seq2seq", "run_name": "t", "batch_size": 8, "max_steps": 4, "log_every": 1,
                    "scaling": {"num_workers": 2, "max_failures": 0}, "optimizer": {"lr": 3e-3},
                    "schedule": {"warmup_steps": 0}, "eval": {"every": 4, "batches": 2}, "checkpoint": {"every": 4},
                    # 2 ranks x 2 batches x 8 = 32 >= the 24 validation pairs: training decodes all of them
                    "generation": {"num_beams": 2, "max_new_tokens": 12, "eval_batches": 2}},
        "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60},
    }


@pytest.mark.long  # CI's 35 minutes under load; prepare, predict, eval and generate are unit-tested (test_seq2seq_units)
def test_translation_tokenizer_prepare_train_eval_predict(ray_session, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from raylm.cli import app
    from raylm.datasets.clean import read_rejects
    from raylm.datasets.prepare import load_manifest
    from raylm.tasks.registry import prepare_data
    from raylm.trainers.driver import train

    train_de, bad = write_pair(tmp_path, "train", pairs(160, 0), empty_target_at=7)
    val_de, _ = write_pair(tmp_path, "val", pairs(24, 1))
    raw = raw_config(tmp_path, train_de, val_de)
    config = tmp_path / "mt.yaml"
    config.write_text(yaml.safe_dump(raw))
    runner = CliRunner()

    # ---- one joint tokenizer over both languages, trained before prepare (which then reuses it)
    res = runner.invoke(app, ["tokenizer", "train", str(config)])
    assert res.exit_code == 0, res.output
    tok_dir = str(tmp_path / "prepared" / "tokenizer")
    assert f"tokenizer: {tok_dir}" in res.output

    cfg = validate(raw)
    summary = train(cfg)

    # ---- prepare: the empty target in the ledger, every row accounted for
    m = load_manifest(cfg.data.prepared_dir)
    assert m["task"] == "seq2seq" and m["tokenizer_dir"] == tok_dir
    assert m["rejected"] == {"empty_target": 1} and m["ledger_balanced"] and m["rows_in"] == 184
    assert m["splits"]["validation"]["docs"] == 24 and m["splits"]["train"]["docs"] == 159
    assert [r["row_id"] for r in read_rejects(cfg.data.prepared_dir)] == [f"{train_de}:{bad}"]

    # ---- train: BLEU ranks the checkpoints; the export is a BART with the decoding settings
    metrics = summary["metrics"]
    assert metrics["step"] == 4 and metrics["val_decoded"] == 24.0
    assert {"val_loss", "val_bleu", "val_rouge1", "val_rouge2", "val_rougeL"} <= set(metrics)
    assert 0.0 <= metrics["val_bleu"] <= 100.0
    model = AutoModelForSeq2SeqLM.from_pretrained(summary["export_dir"])
    assert model.config.encoder_layers == 2 and model.generation_config.num_beams == 2

    # ---- eval the raw validation pair (val.en found beside val.de), predict, generate: the CLI as a user runs it
    res = runner.invoke(app, ["eval", summary["export_dir"], "--input", val_de])
    assert res.exit_code == 0, res.output
    assert "examples: 24" in res.output
    # The same pairs and decoding as the last evaluation in training: the export scores what training scored.
    scored = dict(line.split(": ", 1) for line in res.output.splitlines() if ": " in line)
    assert float(scored["bleu"]) == pytest.approx(metrics["val_bleu"], abs=1e-3)
    out = tmp_path / "translations.jsonl"
    res = runner.invoke(app, ["predict", summary["export_dir"], "--input", val_de, "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and all(isinstance(r["prediction"], str) for r in rows)
    assert rows[0]["id"] == f"{val_de}:1" and rows[0]["source"] == pairs(24, 1)[0][0]
    res = runner.invoke(app, ["generate", summary["export_dir"], "--prompt", "der hund rennt"])
    assert res.exit_code == 0, res.output

    # ---- on_error: fail stops at the bad pair: file:line: what
    strict = validate(raw_config(tmp_path, train_de, val_de, on_error="fail"))
    with pytest.raises(UserError, match=rf"{train_de}:{bad}: empty target line"):
        prepare_data(strict.data, "seq2seq")
