"""model.adapter end to end: LoRA on a saved tiny GPT-2 through the real driver (1 worker), then `raylm export`
as an adapter directory and merged; and FSDP2 on 2 gloo processes (the frozen base sharded, adapter-only
checkpoints in both formats)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from raylm.config import save_config
from raylm.trainers.driver import build_trainer

from testkit import tiny_config, write_synthetic

pytestmark = pytest.mark.ray
X = torch.arange(5, 37).reshape(2, 16) % 64


def _gpt2(path: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                               eos_token_id=1)).save_pretrained(path)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=X).logits


# ~60 s loaded: CI keeps the same path through the CLI (tests/e2e/test_sft_cli.py: LoRA through `raylm train`, the
# adapter and --merge exports scoring the same loss), GPT-2's auto targets and the merge (Llama) in tests/unit/test_adapters.py.
@pytest.mark.long
def test_lora_trains_through_the_driver_and_exports_as_adapter_and_merged(ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    from raylm.serving.export import main as export
    from raylm.tasks.registry import task_of_export
    from raylm.trainers.adapters import load_causal_lm

    base, data, runs = str(tmp_path / "gpt2"), str(tmp_path / "data"), str(tmp_path / "runs")
    _gpt2(base)
    manifest = write_synthetic(data, n_train=64, n_val=16)
    cfg = tiny_config(data, runs, overrides=[f"model.init_from={base}", "model.adapter.type=lora",
                                             "model.adapter.dropout=0"],
                      scaling={"num_workers": 1}, max_steps=4, eval={"every": 2, "batches": 1},
                      checkpoint={"every": 2}, optimizer={"lr": 1e-2})
    run_dir = os.path.join(runs, "t")
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))  # as `raylm train` does: export reads it
    result = build_trainer(cfg, manifest=manifest).fit()
    assert result.error is None, result.error
    assert result.metrics["step"] == 4
    with result.checkpoint.as_directory() as d:
        assert sorted(os.listdir(os.path.join(d, "model"))) == ["README.md", "adapter_config.json",
                                                               "adapter_model.safetensors", "generation_config.json"]
        state = torch.load(os.path.join(d, "state.pt"), weights_only=True)
        assert all("lora_" in k for k in state["optimizer"]["state"])  # Adam's moments: the adapter's only

    adapter_dir, merged_dir = os.path.join(run_dir, "export"), os.path.join(run_dir, "merged")
    export(run_dir)
    export(run_dir, out_dir=merged_dir, merge=True)
    assert json.load(open(os.path.join(adapter_dir, "raylm.json"))) == {"task": "causal-lm", "base": base,
                                                                        "adapter": "lora"}
    assert task_of_export(adapter_dir) == task_of_export(merged_dir) == "causal-lm"
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.config.raylm_task == "causal-lm"
    want = _logits(peft_model)
    assert not torch.allclose(want, _logits(AutoModelForCausalLM.from_pretrained(base)), atol=1e-3)  # it trained
    assert torch.allclose(_logits(merged), want, atol=1e-5)
    assert torch.allclose(_logits(load_causal_lm(adapter_dir)), want, atol=1e-5)


# ---------------------------------------------------------------- FSDP2, 2 gloo processes (no Ray)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, base: str, data: str, ckpt: str, out: dict) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from raylm.tasks.registry import get_task, model_meta
    from raylm.trainers import checkpoint
    from raylm.trainers import state as ckpt_state
    from raylm.trainers.loop import build_model, seed_everything
    from raylm.trainers.optim import build_optimizer, build_scheduler
    from raylm.trainers.parallel import _fsdp2, full_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(data, "/unused", overrides=[f"model.init_from={base}", "model.adapter.type=lora",
                                                      "model.adapter.dropout=0", "trainer.scaling.strategy=fsdp"])
        meta = model_meta(cfg, json.load(open(os.path.join(data, "manifest.json"))))

        def build(hf_weights=None):
            seed_everything(cfg.trainer.seed)
            model = _fsdp2(build_model(get_task("causal-lm"), cfg, meta, hf_weights, lambda _: None), cfg.trainer.fsdp,
                           torch.device("cpu"))
            opt = build_optimizer(model, cfg.trainer, torch.device("cpu"))
            return model, opt, build_scheduler(opt, cfg.trainer)

        def step(model, opt, sched, seed):
            x = torch.randint(5, 64, (2, 16), generator=torch.Generator().manual_seed(seed * 2 + rank))
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            return loss.item()

        model, opt, sched = build()
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert frozen and all(type(p).__name__ == "DTensor" for p in frozen)  # the frozen base is sharded too
        for i in range(2):
            step(model, opt, sched, i)
        hf, sharded = os.path.join(ckpt, "hf"), os.path.join(ckpt, "sharded")
        model_state, optim_state = full_state(model, opt)
        ckpt_state.save(hf, model, sched, ckpt_state.TrainState(step=2), rank, model_state, optim_state)
        sd = checkpoint._model_and_optim(model, opt)
        dcp.save(sd, checkpoint_id=os.path.join(sharded, checkpoint.DCP_DIR))
        if rank == 0:
            checkpoint.Checkpointer._write_small(sharded, type("Ctx", (), {"model": model, "sched": sched})(),
                                                 ckpt_state.TrainState(step=2), None)
        dist.barrier()
        after = [step(model, opt, sched, 7), step(model, opt, sched, 8)]
        resumed = {}
        for name, path in (("hf", hf), ("sharded", sharded)):
            weights = os.path.join(path, "model") if name == "hf" else None
            model2, opt2, sched2 = build(weights)
            checkpoint.restore(path, model2, opt2, sched2, rank, weights_loaded=weights is not None)
            resumed[name] = [step(model2, opt2, sched2, 7), step(model2, opt2, sched2, 8)]
        out[rank] = {"after": after, "resumed": resumed, "keys": sorted(model_state) if rank == 0 else None}
    finally:
        dist.destroy_process_group()


def test_fsdp_shards_the_frozen_base_and_checkpoints_only_the_adapter(tmp_path):
    base, data, ckpt = str(tmp_path / "llama"), str(tmp_path / "data"), str(tmp_path / "ckpt")
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32)).save_pretrained(base)
    write_synthetic(data, n_train=8, n_val=4, files=1)
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_fsdp_worker, args=(2, _free_port(), base, data, ckpt, out), nprocs=2)
    assert out[0]["keys"] and all("lora_" in k for k in out[0]["keys"])  # the gathered state: adapter only
    for rank in (0, 1):
        # both checkpoint formats resume the same trajectory
        assert out[rank]["resumed"]["hf"] == pytest.approx(out[rank]["after"], rel=1e-6)
        assert out[rank]["resumed"]["sharded"] == pytest.approx(out[rank]["after"], rel=1e-6)
    assert sorted(os.listdir(os.path.join(ckpt, "hf", "model"))) == ["README.md", "adapter_config.json",
                                                                    "adapter_model.safetensors",
                                                                    "generation_config.json"]
    assert os.path.isfile(os.path.join(ckpt, "sharded", "hf_config", "adapter_config.json"))
