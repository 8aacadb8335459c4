"""FSDP and checkpoint logic without a cluster: config, policies, which blocks shard, the seeded
init, choosing a checkpoint, and consolidating a DCP checkpoint into a `from_pretrained` directory."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from raylm.errors import UserError
from raylm.tasks.meta import ModelMeta
from raylm.trainers.config import FsdpConfig, TrainerConfig

pytestmark = pytest.mark.unit
META = ModelMeta(vocab_size=64, eos_id=1, pad_id=0, mask_id=2, block_size=16)


def _model(task: str = "causal-lm", arch: str = "gpt2") -> torch.nn.Module:
    from raylm.tasks.registry import get_task

    from testkit import tiny_config

    return get_task(task).build_model(tiny_config("/u", "/u", task=task, overrides=[f"model.arch={arch}"]), META)


def test_fsdp_section_defaults_and_hsdp_groups_must_divide_the_workers():
    t = TrainerConfig(scaling={"strategy": "fsdp"})
    assert t.fsdp.checkpoint == "sharded" and t.fsdp.async_checkpoint and t.fsdp.param_dtype == "auto"
    with pytest.raises(ValueError, match="replicate"):
        TrainerConfig(scaling={"strategy": "fsdp", "num_workers": 4}, fsdp={"replicate": 3})
    assert TrainerConfig(scaling={"strategy": "fsdp", "num_workers": 4}, fsdp={"replicate": 2}).fsdp.replicate == 2
    assert all(f.description for f in FsdpConfig.model_fields.values())  # every knob documented


def test_policies_mixed_precision_off_on_cpu_by_default_and_offload_on_request():
    from torch.distributed.fsdp import CPUOffloadPolicy

    from raylm.trainers.parallel import fsdp_policies

    assert "mp_policy" not in fsdp_policies(FsdpConfig(), torch.device("cpu"))
    kw = fsdp_policies(FsdpConfig(param_dtype="bf16", cpu_offload=True), torch.device("cpu"))
    assert kw["mp_policy"].param_dtype == torch.bfloat16 and kw["mp_policy"].reduce_dtype == torch.float32
    assert isinstance(kw["offload_policy"], CPUOffloadPolicy)


def test_blocks_tied_to_the_outside_are_not_their_own_fsdp_unit():
    from raylm.trainers.parallel import shardable_blocks

    names = [type(b).__name__ for b in shardable_blocks(_model("masked-lm", "bert"))]
    assert names == ["BertLayer", "BertLayer"]  # BertEmbeddings holds the MLM decoder's tied weight
    assert [type(b).__name__ for b in shardable_blocks(_model())] == ["GPT2Block", "GPT2Block"]


def test_seeded_init_depends_on_the_seed_only():
    from raylm.trainers.materialize import init_weights

    a, b, c = _model(), _model(), _model()
    init_weights(a, seed=3)
    torch.manual_seed(999)  # the global RNG does not enter
    init_weights(b, seed=3)
    init_weights(c, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["transformer.h.0.attn.c_attn.weight"], sc["transformer.h.0.attn.c_attn.weight"])
    assert a.lm_head.weight is a.transformer.wte.weight  # still tied
    # GPT-2's scaled residual init (the parent module's rule, applied after the child's) survives.
    assert sa["transformer.h.0.attn.c_proj.weight"].std() < 0.8 * sa["transformer.h.0.attn.c_attn.weight"].std()


def test_plan_files_groups_tensors_by_bytes():
    from raylm.serving.export import plan_files

    t = {f"w{i}": torch.empty(256, device="meta") for i in range(5)}  # 1 KiB each in fp32
    assert plan_files(t, 2048, None) == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert plan_files(t, 2048, torch.bfloat16) == [["w0", "w1", "w2", "w3"], ["w4"]]


def _run_dir(tmp_path, model: torch.nn.Module) -> str:
    """A run directory with one sharded checkpoint (DCP, one process) registered in Ray's snapshot."""
    import torch.distributed.checkpoint as dcp

    run = tmp_path / "run"
    ckpt = run / "checkpoint_00000004"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(ckpt / "dcp"), no_dist=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(str(ckpt / "hf_config"))
    snap = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000004",
                                    "metrics": {"step": 4, "val_loss": 1.0}}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))
    return str(run)


def test_export_consolidates_a_sharded_checkpoint_into_files_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    from raylm.cli import app
    from raylm.trainers.materialize import init_weights

    model = _model().eval()
    init_weights(model, seed=5)
    run = _run_dir(tmp_path, model)
    res = CliRunner().invoke(app, ["export", run, "--max-shard-gb", "0.00002"])  # ~20 KB files
    assert res.exit_code == 0, res.output
    files = os.listdir(f"{run}/export")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    loaded = AutoModelForCausalLM.from_pretrained(f"{run}/export").eval()
    ids = torch.randint(5, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    res = CliRunner().invoke(app, ["export", run, "--checkpoint", "best", "--dtype", "bf16", "--out", f"{run}/bf16"])
    assert res.exit_code == 0, res.output
    assert AutoModelForCausalLM.from_pretrained(f"{run}/bf16").dtype == torch.bfloat16


def test_export_of_a_bad_run_dir_exits_2_with_a_clear_message(tmp_path):
    from raylm.cli import app
    from raylm.serving.export import resolve_checkpoint

    res = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert res.exit_code == 2 and "not a raylm run directory" in res.output
    assert CliRunner().invoke(app, ["export", str(tmp_path / "nope")]).exit_code == 2
    with pytest.raises(UserError, match="not a raylm checkpoint"):
        resolve_checkpoint(str(tmp_path), str(tmp_path))
