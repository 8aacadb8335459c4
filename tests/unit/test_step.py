"""The training step without Ray: losses equal a plain PyTorch loop, no host syncs between log
steps, the fused loss equals HF's, compile/batch-size resolution, device-side metrics."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import classification_metrics
from raylm.tasks.registry import get_task
from raylm.trainers.autobatch import find_max_batch, fits_within, resolve_batch_size
from raylm.trainers.config import TrainerConfig
from raylm.trainers.hooks import check_nonfinite
from raylm.trainers.kernels import apply_fused_kernels, causal_lm_fused_loss, chunked_linear_cross_entropy, liger
from raylm.trainers.loop import grad_accum_for
from raylm.trainers.optim import build_optimizer, build_scheduler
from raylm.trainers.parallel import compile_enabled, no_kv_cache, transformer_blocks
from raylm.trainers.step import StepContext, Window, evaluate, to_batch, train_step

CPU = torch.device("cpu")
META = ModelMeta(vocab_size=64, eos_id=1, pad_id=0, mask_id=2, block_size=16, max_length=24, cls_id=3, sep_id=4,
                 extra={"num_labels": 2})


def _gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    return GPT2LMHeadModel(conf)


def _raw(step: int, rows: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    starts = rng.integers(0, 59, size=(rows, 1))
    return {"input_ids": (5 + (starts + np.arange(16)) % 59).astype(np.int32), "sample_id": np.arange(rows) + 10 * step}


def _ctx(model: torch.nn.Module, t: TrainerConfig, loss_fn=None) -> StepContext:
    # AdamW's fused kernel, as raylm builds it on CUDA and on the CPU (its step counts stay on the device).
    opt = build_optimizer(model, t, CPU)
    task = get_task("causal-lm")
    return StepContext(model, opt, build_scheduler(opt, t), torch.amp.GradScaler("cpu", enabled=False),
                       loss_fn or task.loss, CPU, None, t.optimizer.grad_clip, skip_nonfinite=t.nan_policy == "skip")


def _batches(step: int, accum: int) -> list:
    task = get_task("causal-lm")
    return [to_batch(task.collate(_raw(step * accum + i), META, 0), CPU) for i in range(accum)]


T = TrainerConfig(max_steps=6, schedule={"warmup_steps": 2}, optimizer={"lr": 1e-2, "grad_clip": 0.5})


def _plain_losses(accum: int) -> list[float]:
    """The reference: the textbook loop (mean of micro-batch means weighted by targets, clip, AdamW)."""
    model = _gpt2()
    opt = build_optimizer(model, T, CPU)
    sched = build_scheduler(opt, T)
    losses = []
    for step in range(T.max_steps):
        total, n = 0.0, 0
        for i in range(accum):
            ids = torch.from_numpy(_raw(step * accum + i)["input_ids"].astype(np.int64))
            loss = model(input_ids=ids, labels=ids).loss
            (loss / accum).backward()
            k = ids.numel() - ids.shape[0]
            total, n = total + loss.item() * k, n + k
        torch.nn.utils.clip_grad_norm_(model.parameters(), T.optimizer.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total / n)
    return losses


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_runs_without_ray_and_matches_a_plain_loop(accum):
    ctx = _ctx(_gpt2(), T)
    losses = []
    for step in range(T.max_steps):
        w = Window(CPU)
        w.add(train_step(ctx, _batches(step, accum)), step + 1)
        losses.append(w.sync(False).train_loss)
    assert losses == pytest.approx(_plain_losses(accum), abs=1e-6)
    assert losses[-1] < losses[0]


class _SyncCounter:
    """Counts host reads of tensor values (what is a device sync on a GPU) while installed."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, orig))

    def _wrap(self, name, orig):
        def counted(t, *a, **kw):
            self.calls.append(name)
            return orig(t, *a, **kw)
        return counted


def test_no_host_sync_between_log_steps(monkeypatch):
    ctx = _ctx(_gpt2(), T)
    batches = [_batches(s, 2) for s in range(4)]  # collated beforehand: the feeder's host work is not the step's
    window = Window(CPU)
    counter = _SyncCounter(monkeypatch)
    for step, b in enumerate(batches[:3]):
        window.add(train_step(ctx, b), step + 1)
    assert counter.calls == [], f"host reads inside non-log steps: {counter.calls}"
    window.add(train_step(ctx, batches[3]), 4)
    synced = window.sync(False)  # the log step: here, and only here, the host reads the device
    assert counter.calls and math.isfinite(synced.train_loss) and synced.first_bad_step == 0


def test_a_nonfinite_step_is_flagged_at_the_next_sync_and_stop_names_it():
    ctx = _ctx(_gpt2(), T, loss_fn=lambda m, x: m(**x).loss * float("nan"))
    window = Window(CPU)
    window.add(train_step(ctx, _batches(0, 1)), 7)
    ctx.loss_fn = get_task("causal-lm").loss
    window.add(train_step(ctx, _batches(1, 1)), 8)
    synced = window.sync(False)
    assert synced.first_bad_step == 7
    with pytest.raises(FloatingPointError, match=r"at step 7.*runs/x/checkpoint_00000005"):
        check_nonfinite(synced.first_bad_step, synced.train_loss, synced.grad_norm, "stop",
                        "runs/x/checkpoint_00000005")
    check_nonfinite(synced.first_bad_step, synced.train_loss, synced.grad_norm, "skip", None)


def test_skip_policy_drops_the_bad_update_only():
    model = _gpt2()
    ctx = _ctx(model, T.model_copy(update={"nan_policy": "skip"}),
               loss_fn=lambda m, x: m(**x).loss * float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    train_step(ctx, _batches(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    ctx.loss_fn = get_task("causal-lm").loss
    train_step(ctx, _batches(1, 1))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fused_loss_equals_hf_loss_and_gradients_on_cpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=16, tie_word_embeddings=True))
    x = torch.randint(5, 64, (3, 16))
    for model in (_gpt2().eval(), llama.eval()):
        ref = model(input_ids=x, labels=x).loss
        ref.backward()
        want = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        assert apply_fused_kernels(model, True, "on", CPU, print)
        got = causal_lm_fused_loss(model, {"input_ids": x, "labels": x})
        got.backward()
        assert got.item() == pytest.approx(ref.item(), abs=1e-6)
        assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), want))
        assert model.get_output_embeddings()(torch.zeros(1, 32)).shape[-1] == 64  # the head still works outside


def test_chunked_cross_entropy_never_needs_more_than_a_chunk_and_ignores_minus_100():
    h = torch.randn(10, 8, requires_grad=True)
    w, y = torch.randn(20, 8), torch.randint(0, 20, (10,))
    y[3] = -100
    got = chunked_linear_cross_entropy(h, w, y, chunk=3)
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(h @ w.t(), y).item(), abs=1e-6)


def test_fused_kernels_are_off_on_cpu_by_default_and_import_guarded():
    model = _gpt2()
    assert not apply_fused_kernels(model, True, "auto", CPU, print)
    assert not apply_fused_kernels(model, False, "on", CPU, print)
    assert liger() is None or hasattr(liger(), "LigerFusedLinearCrossEntropyLoss")


def test_liger_block_kernels_only_when_the_blocks_are_not_compiled(monkeypatch):
    """Liger and CUDA cannot run here: a recorder stands in for liger_kernel.transformers and the
    device is only named (apply_fused_kernels launches nothing). Compiled blocks keep HF's modules
    (inductor fuses them); the fused loss applies either way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import raylm.trainers.kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "liger", lambda: types.SimpleNamespace(
        _apply_liger_kernel_to_instance=lambda **kw: calls.append(kw)))
    cuda = torch.device("cuda")
    conf = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=16)
    assert apply_fused_kernels(LlamaForCausalLM(conf), True, "auto", cuda, print, compiled=True)
    assert calls == []
    assert apply_fused_kernels(LlamaForCausalLM(conf), True, "auto", cuda, print, compiled=False)
    assert len(calls) == 1 and calls[0]["fused_linear_cross_entropy"] is False


def test_compile_auto_is_off_on_cpu_and_on_for_cuda():
    assert not compile_enabled(TrainerConfig(), CPU)
    assert compile_enabled(TrainerConfig(), torch.device("cuda"))
    assert compile_enabled(TrainerConfig(compile=True), CPU) and not compile_enabled(TrainerConfig(compile=False),
                                                                                      torch.device("cuda"))
    assert [type(b).__name__ for b in transformer_blocks(_gpt2())] == ["GPT2Block", "GPT2Block"]


def test_training_forward_builds_no_kv_cache_so_compiled_blocks_share_one_graph():
    """HF decoders build a KV cache in training too (config.use_cache defaults on); its per-layer state
    guards each regionally compiled block, so every block recompiled (and past dynamo's limit of 8 ran
    eager: 100 vs 74 ms a step for GPT-2 124M on an H200). The eager backend traces without inductor."""
    def run(hook: bool, **kw):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = _gpt2()
        if hook:
            assert no_kv_cache(model)
        for block in transformer_blocks(model):
            block.compile(backend="eager")
        ids = torch.randint(5, 64, (2, 16))
        out = model(input_ids=ids, labels=ids, **kw)
        cached = any(k in out for k in ("past_key_values", "cache"))
        return torch._dynamo.utils.counters["stats"]["unique_graphs"], cached, out.loss.item()

    try:
        plain, fixed = run(False), run(True)
        assert plain[:2] == (2, True)  # one graph per block, and a cache nobody reads
        assert fixed[:2] == (1, False)
        assert fixed[2] == pytest.approx(plain[2], rel=1e-6)  # the same loss
        assert run(True, use_cache=True)[1]  # a caller who asks (generate does) still gets its cache
    finally:
        torch._dynamo.reset()
    assert not no_kv_cache(torch.nn.Linear(2, 2))  # a module without the argument is left alone


def test_batch_size_search_finds_the_largest_that_fits_a_fake_memory_limit():
    per_row, base, card = 3.0e8, 2.0e9, 16e9  # bytes: activations per row, weights+grads, the card

    def probe(b: int) -> float:  # a fake device: out of memory past the card, else the peak it used
        if base + per_row * b > card:
            raise torch.OutOfMemoryError("fake")
        return base + per_row * b

    limit, extra = 0.9 * card, 1.0e9  # headroom, and the optimizer state the first step allocates
    best = find_max_batch(fits_within(probe, limit, extra))
    assert best == int((limit - extra - base) // per_row) == 38
    assert find_max_batch(lambda b: b <= 1024) == 1024 and find_max_batch(lambda b: b <= 5, cap=4) == 4
    with pytest.raises(RuntimeError, match="micro-batch of 1"):
        find_max_batch(lambda b: False)
    assert resolve_batch_size("auto", _gpt2(), get_task("causal-lm"), META, CPU, None, 0) == 16
    assert resolve_batch_size(7, _gpt2(), get_task("causal-lm"), META, CPU, None, 0) == 7


def test_global_batch_tokens_sets_grad_accum():
    assert grad_accum_for(None, 3, 16, 1024, 2) == 3
    assert grad_accum_for(524_288, 1, 16, 1024, 4) == 8  # 0.5M tokens = 16 x 1024 x 4 workers x 8
    assert grad_accum_for(1000, 1, 16, 1024, 4) == 1


def test_evaluation_sums_on_device_and_reports_macro_f1_for_many_classes():
    assert classification_metrics(np.array([5, 1, 2, 2]))["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    three = classification_metrics(np.array([2, 0, 0, 1, 1, 0, 0, 0, 0]))
    # class 0: tp 2 fp 1 fn 0 -> 0.8; class 1: tp 1 fp 0 fn 1 -> 0.667; class 2 never occurs: left out
    assert three["f1"] == pytest.approx((0.8 + 2 / 3) / 2) and three["accuracy"] == pytest.approx(0.75)
    model = _gpt2()
    val = _batches(0, 2)
    got = evaluate(model, get_task("causal-lm").eval_step, val, CPU, None)
    with torch.no_grad():
        model.eval()
        want = sum(model(**b.inputs).loss.item() * b.n for b in val) / sum(b.n for b in val)
    assert got["val_loss"] == pytest.approx(want, abs=1e-6) and got["val_ppl"] == pytest.approx(math.exp(want))


def test_batches_keep_bookkeeping_on_the_host():
    task = get_task("sequence-classification")
    raw = {"input_ids": np.array([np.array([7, 8, 9]), np.array([7])], dtype=object), "label": np.array([1, 0]),
           "sample_id": np.array([5, 6])}
    b = to_batch(task.collate(raw, META, 0), CPU)
    assert "sample_id" not in b.inputs and isinstance(b.sample_ids, np.ndarray) and b.sample_ids.tolist() == [5, 6]
    assert b.n == 2 and b.tokens == 2 * b.width and b.real_tokens == 5 + 3  # [CLS] x [SEP] each


def test_adamw_is_fused_on_the_cpu_and_matches_the_foreach_path():
    """The CPU build takes torch's fused AdamW (the HF Trainer's default, ~6x faster than foreach on CPU);
    its update equals the foreach path's."""
    a, b = _gpt2(), _gpt2()
    fused = build_optimizer(a, T, CPU)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(b.parameters(), lr=T.optimizer.lr, betas=T.optimizer.betas, foreach=True,
                              weight_decay=0.0)
    for group in fused.param_groups:
        group["weight_decay"] = 0.0
    ids = torch.from_numpy(_raw(0)["input_ids"].astype(np.int64))
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        # Within 1% of one step's size (lr 1e-2): the kernels round differently where a gradient is ~eps.
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
