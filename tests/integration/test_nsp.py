"""BERT pretraining with next-sentence prediction end to end on a real local Ray: documents the test
writes (a text file for training, JSONL for validation) -> prepare (sentence pairs on the actor pool)
-> train (2 workers, a tiny BertForPreTraining from config, MLM + NSP loss) -> export (loads as
BertForPreTraining and as AutoModel) -> `raylm eval` (prepared split and a raw file) and
`raylm predict` (is-next probability per pair); a bad row in the ledger (skip) or exit 2 (fail)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from raylm.config import validate
from raylm.errors import UserError

pytestmark = pytest.mark.ray

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "runs", "sleeps", "sings", "the", "a", "big", "small",
         "tree", "river", "hill", "today", "now", "slowly", "fast"]


def documents(n: int, seed: int) -> list[list[str]]:
    """Documents of 3-6 sentences, each of 4-8 words."""
    rng = random.Random(seed)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))) for _ in range(rng.randint(3, 6))]
            for _ in range(n)]


def write_text(path, docs: list[list[str]], nul_in: int | None = None) -> tuple[str, int]:
    """Blank-line separated documents, a sentence a line; document `nul_in` gets a NUL byte.
    Returns the path and the first line of that document (0: none)."""
    lines, bad = [], 0
    for k, doc in enumerate(docs):
        if k == nul_in:
            bad, doc = len(lines) + 1, [doc[0] + "\x00", *doc[1:]]
        lines += [*doc, ""]
    path.write_text("\n".join(lines))
    return str(path), bad


def raw_config(tmp_path, source: str, validation: str, **data) -> dict:
    return {
        "cluster": {"storage_path": str(tmp_path / "runs")},
        "data": {"source": source, "validation_source": validation, "prepared_dir": str(tmp_path / "prepared"),
                 "nsp": True, "nsp_window_docs": 40, "block_size": 32, "shard_rows": 64, "tokenize_actors": 1,
                 "tokenizer": {"vocab_size": 300, "sample_docs": 500, "min_frequency": 1}, **data},
        "model": {"arch": "bert", "n_layer": 2, "n_embd": 32, "n_head": 2},
        "trainer": {"task": "masked-lm", "run_name": "nsp", "batch_size": 8, "max_steps": 6, "log_every": 1,
                    "scaling": {"num_workers": 2, "max_failures": 0}, "optimizer": {"lr": 3e-3},
                    "schedule": {"warmup_steps": 0}, "eval": {"every": 3, "batches": 2}, "checkpoint": {"every": 3}},
        "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60},
    }


def test_nsp_prepare_train_eval_predict(ray_session, tmp_path):
    import pyarrow.parquet as pq
    from transformers import AutoModel, BertForPreTraining

    from raylm.cli import app
    from raylm.datasets.clean import read_rejects
    from raylm.datasets.prepare import load_manifest
    from raylm.tasks.registry import prepare_data
    from raylm.trainers.driver import train

    train_file, bad_line = write_text(tmp_path / "train.txt", documents(120, 0), nul_in=5)
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("".join(json.dumps({"text": "\n".join(d)}) + "\n" for d in documents(30, 1)))
    cfg = validate(raw_config(tmp_path, train_file, str(val_file)))
    summary = train(cfg)

    # ---- prepare: pairs of at most block_size, labels about half and half, the bad document in the ledger
    m = load_manifest(cfg.data.prepared_dir)
    assert m["task"] == "masked-lm" and m["nsp"] is True
    assert m["rejected"] == {"nul_byte": 1} and m["ledger_balanced"] and m["rows_in"] == 150
    assert [r["row_id"] for r in read_rejects(cfg.data.prepared_dir)] == [f"{train_file}:{bad_line}"]
    labels = m["nsp_labels"]["train"]
    assert labels["is_next"] + labels["random"] == m["splits"]["train"]["rows"] > 150
    assert 0.3 < labels["random"] / m["splits"]["train"]["rows"] < 0.7
    shard = pq.read_table(f"{cfg.data.prepared_dir}/{m['splits']['train']['files'][0]['path']}").to_pylist()
    tok = m["cls_id"], m["sep_id"]
    for row in shard:
        ids = row["input_ids"]
        assert len(ids) <= 32 and ids[0] == tok[0] and ids[-1] == tok[1] and ids.count(tok[1]) == 2
        assert row["token_type_ids"] == [0] * (ids.index(tok[1]) + 1) + [1] * (len(ids) - ids.index(tok[1]) - 1)

    # ---- train: MLM + NSP, validation reports the MLM loss and the NSP accuracy; the export loads two ways
    metrics = summary["metrics"]
    assert metrics["step"] == 6 and {"val_loss", "val_nsp_accuracy", "val_nsp_loss"} <= set(metrics)
    assert 0.0 <= metrics["val_nsp_accuracy"] <= 1.0 and metrics["val_pairs"] > 0
    model = BertForPreTraining.from_pretrained(summary["export_dir"])
    assert model.config.num_hidden_layers == 2 and model.config.architectures == ["BertForPreTraining"]
    base = AutoModel.from_pretrained(summary["export_dir"])
    assert type(base).__name__ == "BertModel"
    assert base.embeddings.word_embeddings.weight.equal(model.bert.embeddings.word_embeddings.weight)

    # ---- eval (prepared split and a raw document file), predict is-next probabilities (the CLI as a user runs it)
    runner = CliRunner()
    res = runner.invoke(app, ["eval", summary["export_dir"], "--prepared", cfg.data.prepared_dir])
    assert res.exit_code == 0, res.output
    assert f"examples: {m['splits']['validation']['rows']}" in res.output and "nsp_accuracy: " in res.output
    res = runner.invoke(app, ["eval", summary["export_dir"], "--input", train_file])
    assert res.exit_code == 0, res.output
    assert "documents: 119" in res.output and "rejected: 1" in res.output and "nsp_accuracy: " in res.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": k, "a": d[0], "b": d[1]}) + "\n" for k, d in enumerate(documents(5, 2))))
    out = tmp_path / "is_next.jsonl"
    res = runner.invoke(app, ["predict", summary["export_dir"], "--input", str(pairs), "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(0.0 <= r["is_next_prob"] <= 1.0 and r["is_next"] == (r["is_next_prob"] >= 0.5) for r in rows)

    # ---- on_error: fail stops at the bad document in the actor pool (the tokenizer is given): file:line: what
    strict = validate(raw_config(tmp_path, train_file, str(val_file), on_error="fail",
                                 prepared_dir=str(tmp_path / "strict"), tokenizer={"path": m["tokenizer_dir"]}))
    with pytest.raises(UserError, match=rf"{train_file}:{bad_line}: NUL byte"):
        prepare_data(strict.data, "masked-lm")
