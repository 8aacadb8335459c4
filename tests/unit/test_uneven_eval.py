"""Issue 27: evaluation under FSDP2 on two ranks whose validation shares are uneven (5 batches over 2
ranks, and 1 batch over 2: a rank with no row at all) finishes and gives the metrics of a one-rank
evaluation of the same rows, for every task's evaluation path (the generic loss, classification, NER's
gathered predictions, seq2seq's beam search with synced forwards).

Two real processes (torch.multiprocessing, gloo, `fully_shard`) without Ray: this is the collective
path that hung; Ray's part of the run is covered by tests/integration/test_uneven_ranks.py. A 60 s
process-group timeout turns a regression into a failure instead of a hang.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from raylm.config import validate
from raylm.datasets.streaming import deal_eval_batches
from raylm.tasks.meta import ModelMeta
from raylm.tasks.registry import get_task
from raylm.trainers.config import FsdpConfig
from raylm.trainers.step import to_batch

META = {"vocab_size": 64, "eos_id": 1, "pad_id": 0, "mask_id": 2, "block_size": 12, "max_length": 16,
        "cls_id": 3, "sep_id": 4, "num_labels": 3, "labels": ["O", "B-PER", "I-PER"],
        "generation": {"eval_batches": 10}}  # every batch decoded, at 1 rank and at 2
ARCH = {"causal-lm": "gpt2", "sequence-classification": "bert", "token-classification": "bert", "seq2seq": "bart"}


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[PAD]": 0, "[EOS]": 1, **{f"w{i}": i for i in range(2, 64)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str()


def _raw(task: str, rows: int, seed: int) -> dict:
    """A raw validation batch of `rows` rows of varied lengths, in the columns the task's shards hold."""
    rng = np.random.default_rng(seed)

    def ragged(lo: int, hi: int) -> np.ndarray:
        out = np.empty(rows, dtype=object)
        out[:] = [rng.integers(5, 64, size=int(rng.integers(lo, hi))) for _ in range(rows)]
        return out

    ids = np.arange(seed * 100, seed * 100 + rows)
    if task == "causal-lm":
        return {"input_ids": rng.integers(5, 64, size=(rows, 12)), "sample_id": ids}
    if task == "sequence-classification":
        return {"input_ids": ragged(3, 12), "label": rng.integers(0, 3, size=rows), "sample_id": ids}
    if task == "token-classification":
        x = ragged(3, 12)
        labels = np.empty(rows, dtype=object)
        labels[:] = [rng.integers(0, 3, size=len(r)) for r in x]
        return {"input_ids": x, "labels": labels, "sample_id": ids}
    x, y = ragged(3, 10), ragged(2, 6)
    text = np.asarray([" ".join(f"w{int(t)}" for t in r) for r in y], dtype=object)
    return {"input_ids": x, "labels": y, "target_text": text, "sample_id": ids}


def _model(task: str) -> torch.nn.Module:
    raw = {"model": {"arch": ARCH[task], "n_layer": 2, "n_embd": 32, "n_head": 2},
           "trainer": {"task": task, "generation": {"num_beams": 2, "max_new_tokens": 6}},
           "data": {"prepared_dir": "unused"}}
    torch.manual_seed(0)
    return get_task(task).build_model(validate(raw, origin="test"), _meta(task)).eval()


def _meta(task: str) -> ModelMeta:
    return ModelMeta.from_dict(META | ({"tokenizer_json": _tokenizer_json()} if task == "seq2seq" else {}))


def _evaluate(task: str, sizes: list[int], rank: int, world: int) -> dict:
    from raylm.trainers.parallel import _fsdp2

    t, meta = get_task(task), _meta(task)
    model = _model(task)
    if world > 1:
        model = _fsdp2(model, FsdpConfig(), torch.device("cpu"))
    batches = [_raw(task, n, k) for k, n in enumerate(sizes)]
    dealt = deal_eval_batches(iter(batches), 4, rank, world, limit=10, sort_by_length=t.eval_order_free)
    val = [to_batch(t.collate(raw, meta, 0), torch.device("cpu"), counts=c) for raw, c in dealt]
    return t.evaluate(model, val, torch.device("cpu"), None, meta)


CASES = [(task, sizes) for task in ARCH for sizes in ([4, 4, 4, 4, 3], [3])]  # 5 batches, and 1 over 2 ranks


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """Every case on this rank, one process group for all (process start-up is most of the cost)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        results = [_evaluate(task, sizes, rank, world) for task, sizes in CASES]
    finally:
        dist.destroy_process_group()
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(results, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uneven_fsdp_evaluation_finishes_with_the_one_rank_metrics_for_every_task(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_rank, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    for case, one in zip(CASES, [_evaluate(task, sizes, 0, 1) for task, sizes in CASES]):
        assert one["val_loss"] > 0
        for rank in range(2):
            two = json.load(open(f"{out}.rank{rank}"))[CASES.index(case)]
            assert two.keys() == one.keys(), case
            for key, value in one.items():
                assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (case, rank, key)
