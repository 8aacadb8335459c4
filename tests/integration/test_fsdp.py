"""FSDP2 (`fully_shard`) on CPU with gloo: trains, checkpoints a full state dict, resumes."""

from __future__ import annotations

import json
import os

import torch

from raylm.trainers.driver import build_trainer

from testkit import tiny_config, write_synthetic


def test_fsdp2_trains_and_writes_a_full_checkpoint_that_resumes(ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    manifest = write_synthetic(data)
    for steps in (4, 6):  # the second fit resumes the first: the sharded optimizer is restored
        cfg = tiny_config(data, runs, scaling={"strategy": "fsdp"}, max_steps=steps, eval={"every": 2},
                          checkpoint={"every": 2}, optimizer={"lr": 1e-2})
        result = build_trainer(cfg, manifest=manifest).fit()
        assert result.error is None, result.error
    rows = [json.loads(l) for l in open(f"{runs}/t/metrics.jsonl") if "train_loss" in l]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    ckpt = f"{runs}/t/checkpoint_00000006"
    model = AutoModelForCausalLM.from_pretrained(os.path.join(ckpt, "model"))  # what export copies
    assert model.transformer.wte.weight.shape == (64, 32)  # full, not a shard
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    moments = state["optimizer"]["state"]["transformer.wte.weight"]["exp_avg"]
    assert moments.shape == (64, 32) and int(state["optimizer"]["state"]["transformer.wte.weight"]["step"]) == 6
