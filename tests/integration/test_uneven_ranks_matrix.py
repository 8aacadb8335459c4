"""Issue 27's matrix, `long` (about 25 minutes on 2 cores): every task x {DDP, FSDP} x a validation split
that does not divide over 2 ranks (3 batches: 2 + 1) and one with fewer batches than ranks (1: 1 + 0), on a
real local Ray with 2 workers. Each run evaluates twice (steps 2 and 4) and finishes.

What covers this in CI: FSDP x causal LM on Ray (test_uneven_ranks.py) and every task's evaluation path on
two uneven FSDP ranks without Ray, held to the one-rank metrics (tests/unit/test_uneven_eval.py).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from raylm.config import validate

from testkit import tiny_config, write_synthetic

pytestmark = pytest.mark.long


def _synthetic(tmp_path, task: str) -> SimpleNamespace:
    data = str(tmp_path / "data")
    manifest = write_synthetic(data, task=task, n_train=64, n_val=12)
    raw = tiny_config(data, str(tmp_path / "runs"), task=task).model_dump(mode="json")
    return SimpleNamespace(raw=raw, manifest=manifest)


def _raw_files(tmp_path, task: str) -> SimpleNamespace:
    """Real files through `raylm prepare` (the tasks whose shards the synthetic writer does not make)."""
    from raylm.tasks.registry import prepare_data

    if task == "token-classification":
        from test_downstream_tasks import ner_sentences, raw_config, write_conll

        raw = raw_config(tmp_path, task, write_conll(tmp_path / "train.conll", ner_sentences(60, 0))[0],
                         write_conll(tmp_path / "val.conll", ner_sentences(13, 1))[0])
    elif task == "question-answering":
        from test_downstream_tasks import raw_config, squad_file

        raw = raw_config(tmp_path, task, squad_file(tmp_path / "train.json", 30, 0),
                         squad_file(tmp_path / "dev.json", 6, 1), qa={"doc_stride": 8})
    elif task == "seq2seq":
        from test_seq2seq import pairs, raw_config, write_pair

        raw = raw_config(tmp_path, write_pair(tmp_path, "train", pairs(60, 0))[0],
                         write_pair(tmp_path, "val", pairs(13, 1))[0])
    else:  # masked-lm with next-sentence prediction
        from test_nsp import documents, raw_config, write_text

        raw = raw_config(tmp_path, write_text(tmp_path / "train.txt", documents(40, 0))[0],
                         write_text(tmp_path / "val.txt", documents(6, 1))[0])
    cfg = validate(raw)
    return SimpleNamespace(raw=raw, manifest=prepare_data(cfg.data, cfg.trainer.task))


TASKS = ["causal-lm", "masked-lm", "sequence-classification", "token-classification", "question-answering",
         "seq2seq", "nsp"]


@pytest.fixture(scope="module", params=TASKS)
def prepared(request, ray_session, tmp_path_factory):
    task, tmp = request.param, tmp_path_factory.mktemp(request.param)
    if task in ("causal-lm", "masked-lm", "sequence-classification"):
        return task, _synthetic(tmp, task)
    return task, _raw_files(tmp, task)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("batches", [3, 1], ids=["3-batches", "fewer-batches-than-ranks"])
@pytest.mark.timeout(900)
def test_every_task_evaluates_twice_and_finishes_on_uneven_ranks(prepared, strategy, batches):
    from raylm.trainers.driver import build_trainer

    task, p = prepared
    rows = p.manifest["splits"]["validation"]["rows"]
    assert rows >= 3, rows
    batch_size = math.ceil(rows / batches)  # 3 batches (2 on rank 0, 1 on rank 1), or 1 (rank 1 has none)
    raw = json.loads(json.dumps(p.raw))
    t = raw["trainer"]
    name = f"{strategy}-{batches}"
    t.update(run_name=name, batch_size=batch_size, max_steps=4, log_every=2)
    t["scaling"] = {**t.get("scaling", {}), "strategy": strategy, "num_workers": 2, "max_failures": 0}
    t["eval"] = {"every": 2, "batches": 8}
    t["checkpoint"] = {"every": 4}
    t.setdefault("schedule", {})["warmup_steps"] = 0
    cfg = validate(raw)
    result = build_trainer(cfg, manifest=p.manifest).fit()
    assert result.error is None, result.error
    run_dir = f"{cfg.cluster.storage_path}/{name}"
    evals = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    assert sorted(r["step"] for r in evals if "val_loss" in r) == [2, 4]
    assert all(math.isfinite(r["val_loss"]) for r in evals if "val_loss" in r)
