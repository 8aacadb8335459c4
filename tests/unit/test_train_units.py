"""Trainer control logic without a cluster: schedules, decay groups, masking, MFU, NaN policy, logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylm.tasks.collate import mask_tokens, with_special_tokens
from raylm.tasks.meta import ModelMeta
from raylm.trainers.config import TrainerConfig
from raylm.trainers.metrics import flops_per_token, mfu
from raylm.trainers.optim import lr_factor, param_groups
from raylm.trainers.parallel import autocast_dtype

from support.observers import SampleLog
from testkit import read_sample_log


def test_warmup_then_cosine_reaches_the_floor():
    t = TrainerConfig(max_steps=100, schedule={"warmup_steps": 10, "min_lr_ratio": 0.1})
    assert lr_factor(0, t) == pytest.approx(0.1) and lr_factor(9, t) == pytest.approx(1.0)
    assert lr_factor(10, t) == pytest.approx(1.0) and lr_factor(100, t) == pytest.approx(0.1)
    assert lr_factor(55, t) == pytest.approx(0.55)  # halfway down the cosine


def test_weight_decay_skips_norms_and_biases():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("ln_" not in names[id(p)] and not names[id(p)].endswith("bias") for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_dynamic_masking_is_15_percent_split_80_10_10_and_seeded():
    ids = torch.randint(5, 1000, (64, 128))
    meta = ModelMeta(eos_id=1, pad_id=0, mask_id=2, vocab_size=1000)
    masked, labels = mask_tokens(ids, meta, torch.Generator().manual_seed(0))
    chosen = labels.ne(-100)
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert masked[chosen].eq(2).float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert masked[chosen].eq(ids[chosen]).float().mean().item() == pytest.approx(0.1, abs=0.03)  # (+ random hits)
    assert torch.equal(labels[chosen], ids[chosen])
    again, _ = mask_tokens(ids, meta, torch.Generator().manual_seed(0))
    assert torch.equal(again, masked)  # the same seed (sample position) masks the same tokens on resume


def test_special_tokens_wrap_and_respect_max_length():
    out = with_special_tokens(np.arange(10, 40), ModelMeta(cls_id=101, sep_id=102, max_length=8))
    assert out.tolist() == [101, 10, 11, 12, 13, 14, 15, 102]
    assert with_special_tokens(np.array([7]), ModelMeta(cls_id=None, sep_id=None)).tolist() == [7]


def test_palm_flops_and_mfu():
    # GPT-2 124M at T=1024: 6N + 12*L*H*Q*T with N ~ 85M non-embedding + tied head 38.6M
    assert flops_per_token(100, 2, 4, 8, 16) == 6 * 100 + 12 * 2 * 4 * 8 * 16
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None


def test_precision_choice_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("fp16", cpu) == torch.float16


def test_sample_log_cuts_rolled_back_steps_on_resume(tmp_path):
    base = str(tmp_path / "ids")
    log = SampleLog(base, 0, 0)
    for step in range(5):
        log.on_batch(0, step, torch.tensor([2 * step, 2 * step + 1]))
    log.close()
    SampleLog(base, 0, 3).close()  # resumed from the checkpoint at step 3: steps 3, 4 are retrained
    assert [s for _, s, _ in read_sample_log(base, 1)[0]] == [0, 1, 2]


def test_gradient_scaler_skips_an_overflowing_fp16_step_on_cpu():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = model.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(torch.full((2, 4), 6e4)).float().sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model.weight, before) and scaler.get_scale() < 2.0**16


def test_best_checkpoint_metric_defaults_to_the_task_and_can_be_chosen(tmp_path):
    from raylm.tasks.objectives import best_checkpoint_rule
    from raylm.tasks.registry import model_meta

    from testkit import tiny_config, write_synthetic

    data = str(tmp_path / "d")
    assert best_checkpoint_rule(tiny_config(data, "r")) == ("val_loss", "min")
    assert best_checkpoint_rule(tiny_config(data, "r", "sequence-classification")) == ("val_accuracy", "max")
    assert best_checkpoint_rule(tiny_config(data, "r", eval={"best_metric": "val_f1"})) == ("val_f1", "max")
    assert best_checkpoint_rule(tiny_config(data, "r", eval={"best_metric": "val_ppl"})) == ("val_ppl", "min")
    manifest = write_synthetic(data, "sequence-classification")
    del manifest["num_labels"]
    assert model_meta(tiny_config(data, "r", "sequence-classification"), manifest).extra["num_labels"] == 2


def test_model_meta_splits_typed_fields_from_a_task_s_extras_and_travels_as_the_same_dict():
    import pickle

    from raylm.trainers.loop import LoopConfig

    flat = {"vocab_size": 64, "pad_id": 0, "eos_id": 1, "max_length": 16, "labels": ["O", "B-PER"], "qa": None}
    meta = ModelMeta.from_dict(flat)
    assert (meta.vocab_size, meta.pad_id, meta.mask_id) == (64, 0, None)
    assert dict(meta.extra) == {"labels": ["O", "B-PER"], "qa": None}
    assert meta.to_dict() == {**dict.fromkeys(ModelMeta.field_names()), **flat}
    assert pickle.loads(pickle.dumps(meta)) == meta
    loop = LoopConfig(cfg={}, meta=meta, run_dir="r", metrics_path="m", run_id="i")
    wire = loop.to_dict()
    assert wire["meta"] == meta.to_dict()  # the workers get the flat dict the driver sent before ModelMeta
    assert LoopConfig.from_dict(wire) == loop


def test_gradient_checkpointing_gives_the_same_gradients():
    from transformers import GPT2Config, GPT2LMHeadModel

    from raylm.trainers.parallel import prepare_module

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
        model = prepare_module(model.train(), TrainerConfig(gradient_checkpointing=ckpt))
        assert model.is_gradient_checkpointing == ckpt
        x = torch.arange(32).reshape(2, 16) % 64
        model(input_ids=x, labels=x).loss.backward()
        grads.append(model.transformer.h[0].mlp.c_fc.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---------------------------------------------------------------- classification metrics


def test_classification_metrics_binary_and_macro_f1():
    import numpy as np
    import torch

    from raylm.tasks.metrics import classification_metrics, confusion_counts

    y, pred = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])
    m = classification_metrics(confusion_counts(pred, y, 2))
    assert m == {"accuracy": 0.75, "f1": 2 / 3, "f1_average": "binary", "examples": 4}
    # Three classes: per-class F1 1.0 (class 0), 0.5 (class 1), 0.0 (class 2) -> macro 0.5.
    y, pred = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 2, 1])
    counts = confusion_counts(pred[:2], y[:2], 3) + confusion_counts(pred[2:], y[2:], 3)  # sums over batches
    m = classification_metrics(counts)
    assert m["f1_average"] == "macro" and m["examples"] == 5
    assert np.isclose(m["accuracy"], 0.6) and np.isclose(m["f1"], (1 + 0.5 + 0) / 3)


def test_a_checkpoint_state_from_before_best_metric_was_dropped_still_loads():
    from raylm.trainers.state import TrainState

    old = {"step": 7, "epoch": 1, "batches_in_epoch": 3, "tokens_seen": 99, "best_metric": 0.5, "extra": {"a": 1}}
    assert TrainState.from_dict(old) == TrainState(step=7, epoch=1, batches_in_epoch=3, tokens_seen=99, extra={"a": 1})
