"""Exact resume of instruction tuning with LoRA adapters on packed rows (issue 29): a SIGKILLed worker, the run
restarts from its last checkpoint (adapter weights + optimizer only) and every packed row is trained once."""

from __future__ import annotations

import json
import os

import pytest

from raylm.config import validate
from raylm.tasks.registry import get_task
from raylm.trainers.driver import build_trainer

from support.observers import observed, sample_log_spec
from testkit import fit_and_kill, is_registered, read_sample_log


def _inputs(tmp) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from raylm.datasets.tokenizers import train_bpe

    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
            for a in range(1, 21) for b in range(1, 9)]
    (tmp / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train_bpe((f"{r['question']} {r['answer']}" for r in rows), tmp / "tok", 300, 1)
    tok = AutoTokenizer.from_pretrained(tmp / "tok")
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(conf).save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")


# ~100 s: CI keeps exact adapter resume (tests/unit/test_adapters.py: save -> restore gives the same logits, Adam
# state and next losses, hf and sharded; test_adapter_train.py: FSDP2 on 2 processes) and the killed worker
# (test_resume.py); this one joins them: `bash scripts/test.sh -m long`.
@pytest.mark.long
def test_sigkilled_worker_resumes_lora_sft_and_every_packed_row_is_trained_once(ray_session, tmp_path):
    _inputs(tmp_path)
    runs = str(tmp_path / "runs")
    raw = {"cluster": {"storage_path": runs},
           "data": {"source": str(tmp_path / "train.jsonl"), "prepared_dir": str(tmp_path / "prepared"),
                    "max_length": 96, "validation_fraction": 0.05, "tokenizer": {"path": str(tmp_path / "base")},
                    "sft": {"prompt_field": "question", "response_field": "answer", "packing": True}},
           "model": {"init_from": str(tmp_path / "base"), "adapter": {"type": "lora", "r": 4}},
           "trainer": {"task": "sft", "run_name": "t", "batch_size": 2, "log_every": 1,
                       "scaling": {"num_workers": 2, "max_failures": 2}, "optimizer": {"lr": 1e-2},
                       "schedule": {"type": "constant", "warmup_steps": 0}, "eval": {"every": 4, "batches": 1},
                       "checkpoint": {"every": 4}},
           "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60}}
    cfg = validate(raw, origin="test")
    manifest = get_task("sft").prepare(cfg.data)
    rows = manifest["splits"]["train"]["rows"]
    steps = rows // 4  # one epoch: 2 workers x 2 packed rows a step
    assert steps >= 12, manifest["sft_summary"]
    cfg = validate(raw | {"trainer": raw["trainer"] | {"max_steps": steps}}, origin="test")
    ids = f"{runs}/ids"
    trainer = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest)
    # a worker process dies mid-run, as on a lost node
    result = fit_and_kill(trainer, lambda: is_registered(f"{runs}/t", "checkpoint_00000008"), ids)
    assert result.error is None, result.error
    assert result.metrics["step"] == steps
    headers = [line.split() for line in open(f"{ids}.rank1") if line.startswith("#")]
    assert len(headers) == 2 and int(headers[1][2].split("=")[1]) >= 8  # restarted, from a checkpoint
    logs = read_sample_log(ids, 2)
    seen = [i for r in logs.values() for (_epoch, _step, batch) in r for i in batch]
    assert len(seen) == len(set(seen)) == steps * 4  # no packed row twice, none skipped
    assert [s for _, s, _ in logs[0]] == list(range(steps))
    # The checkpoint holds what changes: the adapter (no base weights) and the optimizer.
    last = sorted(d for d in os.listdir(f"{runs}/t") if d.startswith("checkpoint_0"))[-1]
    model_dir = os.path.join(runs, "t", last, "model")
    assert "adapter_config.json" in os.listdir(model_dir) and "model.safetensors" not in os.listdir(model_dir)
