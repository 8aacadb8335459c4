"""model.adapter (LoRA / DoRA / QLoRA through peft) without Ray: what trains, what "auto" targets, merging,
the adapter-only checkpoint and its exact restore, exports, and qlora's preflight line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from raylm.errors import UserError
from raylm.trainers import adapters
from raylm.trainers.config import AdapterConfig

from testkit import tiny_config, write_synthetic

pytestmark = pytest.mark.unit


def _llama(vocab: int = 64, hidden: int = 32, inter: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=inter, max_position_embeddings=32))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))


def _train(model, steps: int = 3, lr: float = 1e-2, seed: int = 1) -> torch.optim.Optimizer:
    """A few AdamW steps on random tokens: the adapter moves off its zero init (LoRA's B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        x = torch.randint(5, 64, (4, 16), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=x).logits


X = torch.arange(5, 37).reshape(2, 16) % 64


def test_only_the_adapter_trains_and_the_optimizer_gets_only_it():
    from raylm.trainers.config import TrainerConfig
    from raylm.trainers.optim import build_optimizer

    lines = []
    model = adapters.apply_adapter(_llama(), AdapterConfig(type="lora", r=8), log=lines.append)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # r * (in + out) per wrapped projection: 4 attention (32 -> 32), gate/up (32 -> 64), down (64 -> 32); 2 layers
    assert sum(p.numel() for p in trainable.values()) == 2 * (4 * 8 * 64 + 3 * 8 * 96) == 8704
    total = sum(p.numel() for p in model.parameters())
    assert lines == [f"[raylm] model.adapter: lora r=8 on q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj: "
                     f"8,704 trainable parameters of {total:,} ({100 * 8704 / total:.2f}%)"]
    opt = build_optimizer(model, TrainerConfig(), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in trainable.values()}
    # DoRA adds a magnitude vector per wrapped projection (its output size)
    dora = adapters.apply_adapter(_llama(), AdapterConfig(type="dora", r=8))
    assert sum(p.numel() for p in dora.parameters() if p.requires_grad) == 8704 + 2 * (4 * 32 + 2 * 64 + 32)


def test_auto_targets_by_architecture_and_a_clear_error_when_none_is_known():
    from transformers import BertConfig, BertForSequenceClassification

    assert adapters.target_modules(_llama(), "auto") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]
    assert adapters.target_modules(_gpt2(), "auto") == ["c_attn", "c_proj", "c_fc"]
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64))
    assert adapters.target_modules(bert, "auto") == ["query", "key", "value", "dense"]
    assert adapters.target_modules(_gpt2(), ["c_attn"]) == ["c_attn"]
    # a classifier's head trains whole (peft's modules_to_save), without LoRA inside it
    peft_bert = adapters.apply_adapter(bert, AdapterConfig(type="lora"))
    heads = [n for n, p in peft_bert.named_parameters() if p.requires_grad and "lora_" not in n]
    assert heads and all("classifier.modules_to_save" in n for n in heads)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(4, 4)

    with pytest.raises(UserError, match="no attention or MLP projection known for Odd") as err:
        adapters.target_modules(Odd(), "auto")
    assert "mixer" in err.value.hint
    with pytest.raises(UserError, match="model.adapter.target_modules"):
        adapters.apply_adapter(_gpt2(), AdapterConfig(type="lora", target_modules=["nope"]))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_the_merged_model_computes_what_base_plus_adapter_computes(kind):
    model = adapters.apply_adapter(_llama(), AdapterConfig(type=kind, dropout=0.0))
    _train(model)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # the adapter moved
    with_adapter = _logits(model, X)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(merged, X), with_adapter, atol=1e-5)


def _setup(tmp_path, init_from: str, *overrides: str):
    """A config, the task and meta of a causal-lm adapter run on synthetic data (vocabulary 64)."""
    from raylm.tasks.registry import get_task, model_meta

    data = str(tmp_path / "data")
    manifest = write_synthetic(data, n_train=8, n_val=4, files=1)
    cfg = tiny_config(data, str(tmp_path / "runs"), overrides=[f"model.init_from={init_from}", "model.arch=llama",
                                                               "model.adapter.type=lora", *overrides])
    return cfg, get_task("causal-lm"), model_meta(cfg, manifest)


def _build(cfg, task, meta, hf_weights=None):
    """The model, optimizer and schedule as a worker builds them (raylm.trainers.loop.build_model)."""
    from raylm.trainers.loop import build_model, seed_everything
    from raylm.trainers.optim import build_optimizer, build_scheduler

    seed_everything(cfg.trainer.seed)
    model = build_model(task, cfg, meta, hf_weights, lambda _: None)
    opt = build_optimizer(model, cfg.trainer, torch.device("cpu"))
    return model, opt, build_scheduler(opt, cfg.trainer)


def _steps(model, opt, sched, n: int, seed: int) -> list[float]:
    g, losses = torch.Generator().manual_seed(seed), []
    model.train()
    for _ in range(n):
        x = torch.randint(5, 64, (4, 16), generator=g)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _save(ckpt_dir: str, model, opt, sched, step: int) -> None:
    from raylm.trainers import state as ckpt_state
    from raylm.trainers.parallel import full_state

    model_state, optim_state = full_state(model, opt)
    ckpt_state.save(ckpt_dir, model, sched, ckpt_state.TrainState(step=step), 0, model_state, optim_state)


def _bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_an_adapter_checkpoint_is_a_small_fraction_of_a_full_one(tmp_path, capsys):
    from raylm.trainers.checkpoint import Checkpointer
    from raylm.trainers.config import TrainerConfig

    base = str(tmp_path / "base")
    _llama(vocab=64, hidden=256, inter=512).save_pretrained(base)
    cfg, task, meta = _setup(tmp_path, base)
    full_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": AdapterConfig()})})
    sizes = {}
    for name, c in (("adapter", cfg), ("full", full_cfg)):
        model, opt, sched = _build(c, task, meta)
        _steps(model, opt, sched, 1, seed=0)
        _save(str(tmp_path / name), model, opt, sched, 1)
        sizes[name] = _bytes(str(tmp_path / name))
    assert sorted(os.listdir(tmp_path / "adapter" / "model")) == ["README.md", "adapter_config.json",
                                                                  "adapter_model.safetensors", "generation_config.json"]
    ratio = sizes["adapter"] / sizes["full"]
    print(f"adapter checkpoint {sizes['adapter']:,} B, full {sizes['full']:,} B: {ratio:.3f}")
    assert ratio < 0.10
    # the size is logged once, on rank 0
    Checkpointer(TrainerConfig(), str(tmp_path))._log_size(model, 0)  # `model` is the full one: nothing said
    adapter_model, *_ = _build(cfg, task, meta)
    ck = Checkpointer(TrainerConfig(), str(tmp_path))
    ck._log_size(adapter_model, 0, str(tmp_path / "adapter" / "model"))
    ck._log_size(adapter_model, 0, str(tmp_path / "adapter" / "model"))
    out = capsys.readouterr().out
    assert out.count("[raylm] checkpoint: adapter ") == 1 and f"{_bytes(str(tmp_path / 'adapter' / 'model')):,} bytes" in out


@pytest.mark.parametrize("fmt", ["hf", "sharded"])
def test_save_then_restore_gives_the_same_logits_optimizer_state_and_losses(tmp_path, fmt):
    import torch.distributed.checkpoint as dcp

    from raylm.trainers import checkpoint

    base = str(tmp_path / "base")
    _llama().save_pretrained(base)
    cfg, task, meta = _setup(tmp_path, base)
    model, opt, sched = _build(cfg, task, meta)
    _steps(model, opt, sched, 3, seed=0)
    ckpt = str(tmp_path / "ckpt")
    if fmt == "hf":
        _save(ckpt, model, opt, sched, 3)
    else:  # what a sharded checkpoint writes (one process: DCP without a process group)
        from raylm.trainers.state import TrainState, save_rng

        dcp.save(checkpoint._model_and_optim(model, opt), checkpoint_id=os.path.join(ckpt, checkpoint.DCP_DIR))
        save_rng(ckpt, 0)
        checkpoint.Checkpointer._write_small(ckpt, type("Ctx", (), {"model": model, "sched": sched})(),
                                             TrainState(step=3), None)
        assert sorted(os.listdir(os.path.join(ckpt, checkpoint.HF_CONFIG_DIR))) == [
            "adapter_config.json", "config.json", "generation_config.json"]
    rng = torch.get_rng_state()
    ref = _logits(model, X)
    ref_state = opt.state_dict()
    hf_weights = os.path.join(ckpt, "model") if fmt == "hf" else None
    model2, opt2, sched2 = _build(cfg, task, meta, hf_weights)
    state = checkpoint.restore(ckpt, model2, opt2, sched2, 0, weights_loaded=hf_weights is not None)
    assert state.step == 3 and sched2.last_epoch == 3
    assert torch.equal(_logits(model2, X), ref)
    got = opt2.state_dict()
    assert len(got["state"]) == len(ref_state["state"]) > 0
    for i, s in ref_state["state"].items():
        assert all(torch.equal(s[k], got["state"][i][k]) for k in s)
    # the run goes on exactly as it would have (dropout draws from the restored RNG)
    torch.set_rng_state(rng)
    before = _steps(model, opt, sched, 2, seed=5)
    torch.set_rng_state(rng)
    assert _steps(model2, opt2, sched2, 2, seed=5) == before


def test_export_adapter_dir_and_merged_model_of_a_run_with_grown_vocabulary(tmp_path):
    """The base has 60 tokens, the data 64: the task grows the embeddings and the 4 new rows train as peft's
    trainable tokens; the adapter export names its base and vocabulary, the merged one holds all of it."""
    from transformers import AutoModelForCausalLM

    from raylm.serving.export import export_checkpoint
    from raylm.tasks.registry import task_of_export

    base = str(tmp_path / "base")
    _llama(vocab=60).save_pretrained(base)
    cfg, task, meta = _setup(tmp_path, base, "model.adapter.dropout=0")
    model, opt, sched = _build(cfg, task, meta)
    assert adapters.grown_tokens(model, base) == [60, 61, 62, 63]
    _steps(model, opt, sched, 3, seed=0)
    _save(str(tmp_path / "ckpt"), model, opt, sched, 3)
    ref = _logits(model, X)
    tok = str(tmp_path / "tok")
    _tokenizer().save_pretrained(tok)
    for merge in (False, True):
        out = str(tmp_path / f"export-{merge}")
        export_checkpoint(str(tmp_path / "ckpt"), out, tok, merge=merge, cfg=cfg)
        files = set(os.listdir(out))
        assert {"tokenizer.json", "generation_config.json"} <= files
        if merge:
            assert {"config.json", "model.safetensors"} <= files
            loaded = AutoModelForCausalLM.from_pretrained(out)
            assert loaded.config.raylm_task == "causal-lm" and loaded.config.vocab_size == 64
        else:
            assert {"adapter_config.json", "adapter_model.safetensors", "raylm.json"} <= files
            assert "config.json" not in files
            info = json.load(open(os.path.join(out, "raylm.json")))
            assert info == {"task": "causal-lm", "base": os.path.abspath(base), "adapter": "lora", "vocab_size": 64}
            assert json.load(open(os.path.join(out, "adapter_config.json")))["base_model_name_or_path"] == base
            loaded = adapters.load_causal_lm(out)
            assert not loaded.training
        assert task_of_export(out) == "causal-lm"
        assert torch.allclose(_logits(loaded, X), ref, atol=1e-5)


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, 64)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                   eos_token="<eos>", pad_token="<pad>")


def test_a_run_without_init_from_exports_its_base_beside_the_adapter(tmp_path):
    from raylm.serving.export import export_checkpoint

    cfg, task, meta = _setup(tmp_path, "x", "model.adapter.dropout=0")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": None})})
    model, opt, sched = _build(cfg, task, meta)
    _steps(model, opt, sched, 2, seed=0)
    _save(str(tmp_path / "ckpt"), model, opt, sched, 2)
    out = str(tmp_path / "export")
    export_checkpoint(str(tmp_path / "ckpt"), out, cfg=cfg)
    assert json.load(open(os.path.join(out, "raylm.json")))["base"] == os.path.join(os.path.abspath(out), "base")
    assert torch.allclose(_logits(adapters.load_causal_lm(out), X), _logits(model, X), atol=1e-5)


def test_qlora_without_a_gpu_is_one_line_and_train_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from raylm.cli import app
    from raylm.preflight import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = "model.adapter.type=qlora needs a CUDA GPU (bitsandbytes 4-bit): use lora on CPU"
    cfg = tiny_config("/unused", "/unused", overrides=["model.adapter.type=qlora"])
    assert adapters.check(cfg) == [line]
    forced = tiny_config("/unused", "/unused", overrides=["model.adapter.type=qlora", "trainer.scaling.use_gpu=false"])
    assert adapters.check(forced) == [line]
    assert adapters.check(tiny_config("/unused", "/unused", overrides=["model.adapter.type=lora"])) == []
    with pytest.raises(UserError) as err:
        preflight(cfg, "train")
    assert err.value.problems == [line]
    config = tmp_path / "qlora.yaml"
    config.write_text("model:\n  adapter:\n    type: qlora\n")
    res = CliRunner().invoke(app, ["train", str(config)])
    assert res.exit_code == 2
    assert f"error: {line}" in res.output
    kw = adapters.pretrained_kwargs(cfg.model)
    assert kw["quantization_config"].load_in_4bit and kw["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert "quantization_config" not in adapters.pretrained_kwargs(tiny_config("/u", "/u").model)


def test_task_of_export_reads_an_adapter_directory(tmp_path):
    from raylm.tasks.registry import task_of_export

    base = tmp_path / "base"
    _gpt2().save_pretrained(base)
    model = adapters.apply_adapter(adapters.base_of(_gpt2()), AdapterConfig(type="lora"))
    out = tmp_path / "adapter"
    adapters.save_adapter(model, str(out))
    conf = json.loads((out / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(conf))
    assert adapters.is_adapter_dir(str(out))
    assert task_of_export(str(out)) == "causal-lm"  # the base's architecture (GPT2LMHeadModel)
    (out / "raylm.json").write_text(json.dumps({"task": "sft"}))
    assert task_of_export(str(out)) == "sft"
    conf["base_model_name_or_path"] = str(tmp_path / "gone")
    (out / "adapter_config.json").write_text(json.dumps(conf))
    (out / "raylm.json").unlink()
    with pytest.raises(UserError, match="is not a directory here"):
        task_of_export(str(out))


def test_peft_models_keep_the_loops_seams():
    """Config proxying (raylm_task), decoder blocks found under base_model.model., gradient checkpointing and the
    no-KV-cache hook on the base, the fused loss's lm head."""
    from raylm.trainers.config import TrainerConfig
    from raylm.trainers.kernels import apply_fused_kernels, causal_lm_fused_loss
    from raylm.trainers.parallel import prepare_module, shardable_blocks, transformer_blocks

    model = adapters.apply_adapter(_llama(), AdapterConfig(type="lora", dropout=0.0), gradient_checkpointing=True)
    model.config.raylm_task = "causal-lm"
    assert adapters.base_of(model).config.raylm_task == "causal-lm"
    assert len(transformer_blocks(model)) == 2 and len(shardable_blocks(model)) == 2
    names = {m: n for n, m in model.named_modules()}
    assert names[shardable_blocks(model)[-1]] == "base_model.model.model.layers.0"
    prepare_module(model, TrainerConfig(gradient_checkpointing=True, compile=False))
    assert adapters.base_of(model).is_gradient_checkpointing and not model.config.use_cache
    seen = {}
    adapters.base_of(model).register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    x = torch.randint(5, 64, (2, 8))
    model.train()
    loss = model(input_ids=x, labels=x).loss
    assert seen.get("use_cache") is False
    assert apply_fused_kernels(model, True, "on", torch.device("cpu"), print)
    assert torch.allclose(causal_lm_fused_loss(model, {"input_ids": x, "labels": x}), loss, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
