"""One optimizer step and what feeds it, written so the host never waits on the device.

The step (`train_step`) queues forward, backward, clipping and the update and returns device
tensors; nothing in it reads a value back (`.item()`, `float()`, `.tolist()`). The host reads
the device once per log step, through `Window.sync`: one fused all-reduce of
[loss sum, target count, non-finite flag, time-budget flag, stop flag], as torchtitan's `train_step` keeps
its losses on the device until `should_log`. Per-sample bookkeeping (sample ids, token counts)
is computed on the CPU at collate time and never round-trips through the device.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raylm.tasks.metrics import classification_metrics
from raylm.trainers.parallel import device_norm

# Keys a task's collate returns that are bookkeeping, not model inputs.
_META_KEYS = ("sample_id", "_n")


@dataclass
class Batch:
    """A micro-batch: model inputs on the device, bookkeeping on the host."""

    inputs: dict[str, torch.Tensor]
    n: int  # loss targets (tokens, or examples for classifiers): the weight of its mean loss
    tokens: int  # positions computed (padding included)
    real_tokens: int  # positions that are not padding
    width: int  # sequence length of the batch
    sample_ids: np.ndarray
    epoch: int = 0
    position: int = 0  # batches of `epoch` consumed once this one is (the resumable data position)
    # False: an evaluation filler, run only so that every rank makes as many forward passes (FSDP's
    # forwards are collectives); its loss and predictions count for nothing (streaming.deal_eval_batches).
    counts: bool = True


def to_batch(collated: dict[str, torch.Tensor], device: torch.device, epoch: int = 0, position: int = 0,
             counts: bool = True) -> Batch:
    """Host bookkeeping from the CPU tensors, then the inputs to the device (pinned, non-blocking on CUDA)."""
    ids = collated["input_ids"]
    n = int(collated["_n"]) if "_n" in collated else int(collated["labels"].ne(-100).sum())
    mask = collated.get("attention_mask")
    real = int(mask.sum()) if mask is not None else ids.numel()
    cuda = device.type == "cuda"
    inputs = {k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda)
              for k, v in collated.items() if k not in _META_KEYS}
    return Batch(inputs, n, ids.numel(), real, ids.shape[1], np.asarray(collated["sample_id"]), epoch, position,
                 counts)


class Feeder:
    """Micro-batches on the device, a step ahead.

    `take(k)` hands out batches prepared earlier; `prefetch(k)` prepares the next ones and is called
    after a step has been queued, so the CPU's collate and the host-to-device copy (pinned memory, a
    side CUDA stream) overlap the device's compute of that step.
    """

    def __init__(self, stream: Any, collate: Callable[[dict, int], dict[str, torch.Tensor]],
                 device: torch.device) -> None:
        self.stream, self.collate, self.device = stream, collate, device
        self._copy = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead: list[Batch] = []
        self.wait_s = 0.0  # host time spent producing batches (reading, collating, copying)

    def _load(self) -> Batch:
        raw, seed = self.stream.next()  # the stream's collate is the identity: (raw batch, its seed)
        ctx = torch.cuda.stream(self._copy) if self._copy is not None else contextlib.nullcontext()
        with ctx:
            return to_batch(self.collate(raw, seed), self.device, self.stream.epoch, self.stream.position)

    def prefetch(self, k: int) -> None:
        t0 = time.perf_counter()
        while len(self._ahead) < k:
            self._ahead.append(self._load())
        self.wait_s += time.perf_counter() - t0

    def take(self, k: int) -> list[Batch]:
        self.prefetch(k)
        out, self._ahead = self._ahead[:k], self._ahead[k:]
        if self._copy is not None:  # the compute stream waits for the copies, and owns their memory after
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._copy)
            for b in out:
                for v in b.inputs.values():
                    v.record_stream(current)
        return out


@dataclass
class StepContext:
    """What a step needs besides its batches (built once by the loop's setup)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    device: torch.device
    amp: torch.dtype | None = None
    grad_clip: float = 1.0
    skip_nonfinite: bool = False  # nan_policy=skip: drop a bad step's update (one host sync a step)


@dataclass
class StepOutput:
    loss_sum: torch.Tensor  # sum over micro-batches of mean loss x targets (device)
    n: int
    grad_norm: torch.Tensor  # device
    finite: torch.Tensor  # device bool: loss and grad norm finite
    tokens: int
    real_tokens: int
    flops_tokens: float  # sum of tokens x seq len (the attention term of FLOPs per token)


def train_step(ctx: StepContext, batches: list[Batch]) -> StepOutput:
    """Forward + backward over the micro-batches, clip, update, schedule. Queues work; reads nothing back."""
    model, accum = ctx.model, len(batches)
    model.train()
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float32)
    n = tokens = real = 0
    flops_tokens = 0.0
    for i, b in enumerate(batches):
        sync = i == accum - 1 or not hasattr(model, "no_sync")  # DDP all-reduces on the last micro-batch only
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
                loss = ctx.loss_fn(model, b.inputs)
            ctx.scaler.scale(loss / accum).backward()
        loss_sum += loss.detach().float() * b.n
        n, tokens, real = n + b.n, tokens + b.tokens, real + b.real_tokens
        flops_tokens += b.tokens * b.width
    ctx.scaler.unscale_(ctx.opt)
    gnorm = device_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip or float("inf")))
    finite = torch.isfinite(loss_sum)
    if not ctx.scaler.is_enabled():  # under fp16 the scaler owns overflowing gradients
        finite = finite & torch.isfinite(gnorm)
    if not ctx.skip_nonfinite or bool(finite):  # bool(): the one sync nan_policy=skip pays per step
        ctx.scaler.step(ctx.opt)  # under fp16 the scaler itself skips steps with inf/nan grads
        ctx.scaler.update()
    ctx.sched.step()  # the schedule keeps its pace over skipped steps
    ctx.opt.zero_grad(set_to_none=True)
    return StepOutput(loss_sum, n, gnorm, finite, tokens, real, flops_tokens)


@dataclass(frozen=True)
class SyncResult:
    """What the host learns at a log step, the same on every rank (one all-reduce: `Window.sync`)."""

    train_loss: float  # mean loss over the window's targets, all ranks
    grad_norm: float  # the last step's global grad norm
    first_bad_step: int  # first step whose loss or grad norm was not finite (0: none)
    out_of_time: bool  # rank 0's training time reached trainer.max_train_seconds
    stop_ranks: int  # ranks told to stop for a restart (a SIGTERM)


@dataclass
class Window:
    """Accumulates steps between two log steps on the device; `sync` is the only host read."""

    device: torch.device
    loss_sum: torch.Tensor | None = None
    bad: torch.Tensor | None = None  # first step (1-based) whose loss or grad norm was not finite, else 0
    grad_norm: torch.Tensor | None = None
    n: int = 0
    steps: int = 0
    tokens: int = 0
    real_tokens: int = 0
    flops_tokens: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, out: StepOutput, step: int) -> None:
        zero = torch.zeros((), device=self.device)
        self.loss_sum = (self.loss_sum if self.loss_sum is not None else zero) + out.loss_sum
        bad = self.bad if self.bad is not None else zero
        self.bad = torch.where((bad == 0) & ~out.finite, torch.full_like(bad, step), bad)
        self.grad_norm = out.grad_norm
        self.n, self.steps = self.n + out.n, self.steps + 1
        self.tokens, self.real_tokens = self.tokens + out.tokens, self.real_tokens + out.real_tokens
        self.flops_tokens += out.flops_tokens

    def sync(self, out_of_time: bool, stop: bool = False) -> SyncResult:
        """The window's one host read, after one SUM all-reduce of
        [loss sum, targets, first bad step, ranks that saw one, out of time (only rank 0's clock sets it),
        grad norm (the same on every rank after DDP's all-reduce), ranks told to stop (a SIGTERM)]."""
        zero = torch.zeros((), device=self.device)
        bad = self.bad if self.bad is not None else zero
        vec = torch.stack([self.loss_sum if self.loss_sum is not None else zero,
                           torch.tensor(float(self.n), device=self.device), bad, (bad > 0).float(),
                           torch.tensor(float(out_of_time), device=self.device),
                           self.grad_norm.float() if self.grad_norm is not None else zero,
                           torch.tensor(float(stop), device=self.device)]).double()
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
            world = dist.get_world_size()
        loss_sum, n, bad_sum, bad_ranks, late, gnorm, stops = vec.tolist()  # the host sync of this window
        return SyncResult(train_loss=loss_sum / n if n else math.nan, grad_norm=gnorm / world,
                          first_bad_step=round(bad_sum / bad_ranks) if bad_ranks else 0, out_of_time=late > 0,
                          stop_ranks=round(stops))


def evaluate(model: torch.nn.Module, eval_step: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, Any]],
             batches: Iterable[Batch], device: torch.device, amp: torch.dtype | None,
             num_labels: int | None = None) -> dict[str, float]:
    """Validation loss (and accuracy/F1 for classifiers) over all ranks: sums stay on the device,
    one all-reduce and one host read at the end. Fillers (`Batch.counts` False) run and count for nothing."""
    model.eval()
    k = num_labels or 0
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(k * k, device=device, dtype=torch.float64)
    n = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for b in batches:
            loss, pred = eval_step(model, b.inputs)
            if not b.counts:
                continue
            loss_sum += loss.double() * b.n
            n += b.n
            if pred is not None and k:
                confusion += torch.bincount(b.inputs["labels"] * k + pred, minlength=k * k).double()
    vec = torch.cat([loss_sum[None], torch.tensor([float(n)], device=device, dtype=torch.float64), confusion])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(vec)
    total = vec.tolist()  # host sync: once per evaluation
    val_loss = total[0] / max(total[1], 1)
    if not k:
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
    scores = classification_metrics(total[2:])
    return {"val_loss": val_loss, **{f"val_{m}": float(scores[m]) for m in ("accuracy", "f1", "examples")}}
