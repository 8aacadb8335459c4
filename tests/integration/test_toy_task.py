"""A task raylm does not ship, in this one file: counting the words of a line with a tiny BERT regression
head. It is named by import path (`trainer.task=tests.integration.test_toy_task:WordCount`) and goes
prepare -> train -> eval --input -> predict through the real CLI on the session's local Ray, touching no
raylm module (issue 28: adding a task is writing one class). Bad files exit 2 with file:line."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from typer.testing import CliRunner

from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import IDS, LabelledFormat
from raylm.datasets.sources import BadRowError
from raylm.errors import UserError
from raylm.tasks.base import LabelledTask
from raylm.tasks.meta import ModelMeta

pytestmark = pytest.mark.ray
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TASK = "tests.integration.test_toy_task:WordCount"
WORDS = "the cat sat on a mat and the dog ran to the red house by the river".split()


class WordCountFormat(LabelledFormat):
    """JSONL `{"text": ...}`; the target is the number of words."""

    name = TASK
    fields = [("text", pa.string())]
    feature_schema = pa.schema([("sample_id", pa.int64()), ("input_ids", IDS), ("label", pa.float32()),
                                ("row_id", pa.string()), ("split", pa.string())])

    def read_rows(self, path: str, cfg: DataConfig, on_error: str) -> Iterator[dict]:
        with open(path) as f:
            for no, line in enumerate(f, 1):
                row = {"source": path, "row_id": f"{path}:{no}", "reject": "", "text": ""}
                try:
                    obj = json.loads(line)
                    row["text"] = str(obj["text"])
                except (ValueError, KeyError, TypeError) as err:
                    if on_error == "fail":
                        raise BadRowError(f"{path}:{no}: not a JSON object with a text field ({err})") from None
                    row["reject"] = "malformed"
                if not row["reject"] and not row["text"].strip():
                    row["reject"] = "empty"
                yield row

    def row_text(self, row: dict) -> str:
        return row["text"]

    def features(self, tok: Any, row: dict, cfg: DataConfig, label2id: dict[str, int], state: Any) -> list[dict]:
        return [{"input_ids": tok.encode(row["text"]).ids[: cfg.max_length], "label": float(len(row["text"].split()))}]


class WordCount(LabelledTask):
    labelled_format = WordCountFormat()
    objective = ("val_loss", "min")
    eval_order_free = True

    def build_model(self, cfg: Any, meta: ModelMeta) -> torch.nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        m = cfg.model
        return BertForSequenceClassification(BertConfig(
            vocab_size=meta.vocab_size, hidden_size=m.n_embd, num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
            intermediate_size=2 * m.n_embd, max_position_embeddings=meta.max_length + 2, pad_token_id=meta.pad_id,
            num_labels=1, problem_type="regression"))

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        ids, mask = _pad([list(x) for x in batch["input_ids"]], meta.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(batch["label"], dtype=torch.float32),
                "sample_id": torch.from_numpy(np.array(batch["sample_id"])), "_n": torch.tensor(len(ids))}

    def seq_len(self, meta: ModelMeta) -> int:
        return meta.max_length

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        rows, preds = self._predict(model_dir, path)
        errors = [abs(p - len(r["text"].split())) for r, p in zip(rows, preds)]
        return {"examples": len(rows), "mae": sum(errors) / len(errors)}

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        rows, preds = self._predict(model_dir, path)
        with open(output, "w") as f:
            f.writelines(json.dumps({"id": r["row_id"], "text": r["text"], "count": p}) + "\n" for r, p in zip(rows, preds))
        return {"task": self.name, "rows": len(rows), "output": output}

    def _predict(self, model_dir: str, path: str) -> tuple[list[dict], list[float]]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            rows = list(self.labelled_format.read_rows(path, DataConfig(), "fail"))
        except BadRowError as err:
            raise UserError(str(err), hint="one JSON object with a text field per line") from None
        if not any(not r["reject"] for r in rows):
            raise UserError(f"{path}: no line to count", hint="one JSON object with a text field per line")
        rows = [r for r in rows if not r["reject"]]
        tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForSequenceClassification.from_pretrained(model_dir)
        enc = tok([r["text"] for r in rows], padding=True, return_tensors="pt")
        with torch.no_grad():
            return rows, model.eval()(**enc).logits[:, 0].tolist()


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
    return ids, torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])


def _lines(path: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))}) + "\n")
    return path


def test_a_task_outside_raylm_runs_prepare_train_eval_predict_through_the_cli(ray_session, tmp_path, monkeypatch):
    from raylm.cli import app

    monkeypatch.syspath_prepend(REPO)  # `tests.integration...` importable here as on the Ray workers (cwd: the repo)
    train_file = _lines(str(tmp_path / "train.jsonl"), 160, 0)
    with open(train_file, "a") as f:
        f.write('{"text": ""}\nnot json\n')  # two rejects: empty, malformed
    val_file = _lines(str(tmp_path / "val.jsonl"), 24, 1)
    cfg = {"data": {"source": train_file, "validation_source": val_file, "prepared_dir": str(tmp_path / "prepared"),
                    "max_length": 16, "tokenizer": {"vocab_size": 300, "min_frequency": 1}},
           "model": {"arch": "bert", "n_layer": 1, "n_embd": 32, "n_head": 2},
           "trainer": {"task": TASK, "run_name": "toy", "batch_size": 8, "max_steps": 30, "log_every": 5,
                       "scaling": {"num_workers": 1, "max_failures": 0}, "optimizer": {"lr": 3e-3},
                       "schedule": {"warmup_steps": 0}, "eval": {"every": 10, "batches": 3}, "checkpoint": {"every": 10}},
           "cluster": {"storage_path": str(tmp_path / "runs")},
           "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60}}
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()

    res = runner.invoke(app, ["prepare", str(config)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["task"] == TASK and manifest["rejected"] == {"empty": 1, "malformed": 1}
    assert manifest["ledger_balanced"] and manifest["splits"]["validation"]["docs"] == 24

    res = runner.invoke(app, ["train", str(config)])
    assert res.exit_code == 0, res.output
    export = str(tmp_path / "runs" / "toy" / "export")
    assert json.loads(open(os.path.join(export, "config.json")).read())["raylm_task"] == TASK
    logged = [json.loads(line) for line in open(tmp_path / "runs" / "toy" / "metrics.jsonl")]
    losses = [m["train_loss"] for m in logged if "train_loss" in m]
    assert losses[-1] < losses[0]  # it learns to count

    res = runner.invoke(app, ["eval", export, "--input", val_file])
    assert res.exit_code == 0, res.output
    assert "examples: 24" in res.output and "mae: " in res.output
    out = tmp_path / "counts.jsonl"
    res = runner.invoke(app, ["predict", export, "--input", val_file, "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 24

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\n{"text": \n')
    res = runner.invoke(app, ["eval", export, "--input", str(bad)])
    assert res.exit_code == 2 and f"{bad}:2" in res.output
    (tmp_path / "empty.jsonl").write_text("")
    res = runner.invoke(app, ["predict", export, "--input", str(tmp_path / "empty.jsonl"), "--output", str(out)])
    assert res.exit_code == 2 and "no line to count" in res.output
