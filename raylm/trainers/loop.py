"""The per-worker training loop: restore, loop, eval, report/checkpoint. Runs on every Ray Train worker."""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raylm.config import RootConfig, apply_overrides, validate
from raylm.datasets.streaming import TrainStream, eval_batches
from raylm.trainers import state as ckpt
from raylm.trainers.hooks import SampleLog, nonfinite_action
from raylm.trainers.metrics import device_peak_flops, flops_per_token, mfu, non_embedding_params, peak_memory_mb
from raylm.trainers.optim import build_optimizer, build_scheduler
from raylm.trainers.parallel import autocast_dtype, full_state, global_norm, wrap_model
from raylm.trainers.progress import Progress, say
from raylm.trainers.tasks import Task, get_task
from raylm.trainers.tracking import make_sink


def resolve_loop_config(loop_config: dict) -> RootConfig:
    """The run's config plus dotted overrides at the top level (how Tune passes its samples)."""
    overrides = [f"{k}={v}" for k, v in loop_config.items() if "." in k]
    return validate(apply_overrides(loop_config["cfg"], overrides), origin="train_loop_config")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg, meta = resolve_loop_config(loop_config), loop_config["meta"]
    t, ctx = cfg.trainer, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(t.torch_threads)
    device = ray.train.torch.get_device()
    task = get_task(t.task)

    seed_everything(t.seed)  # the same initial weights on every rank
    model = task.build_model(cfg, meta)
    restored, exploit = ray.train.get_checkpoint(), False
    if restored is None and loop_config.get("resume_from"):  # PBT exploit: start from another trial's state
        restored, exploit = ray.train.Checkpoint(loop_config["resume_from"]), True
    if restored:  # weights go in before wrapping, so every rank starts from the same values
        with restored.as_directory() as d:
            ckpt.load_model_weights(model, os.path.join(d, "model"))
    model = wrap_model(model, t, device)
    opt = build_optimizer(model, t, device)
    sched = build_scheduler(opt, t)
    seed_everything(t.seed + 1 + rank)  # dropout etc. differ per rank
    st, last_ckpt = ckpt.TrainState(), None
    if restored:
        with restored.as_directory() as d:
            st = ckpt.restore(d, model, opt, sched, rank, load_weights=False)
        last_ckpt = restored.path
        if exploit:
            apply_hyperparameters(opt, sched, t, st.step)
    sink = make_sink(cfg, loop_config, rank, resume_step=st.step)
    if restored:
        sink.log({"resumed_from": st.step}, st.step)
        if rank == 0:
            say(f"[raylm] resumed from checkpoint at step {st.step} (epoch {st.epoch}, "
                f"{st.batches_in_epoch} batches into it)")
    samples = SampleLog(loop_config.get("sample_log") or os.environ.get("RAYLM_SAMPLE_LOG"), rank, st.step)
    amp = autocast_dtype(t.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    n_params, peak = non_embedding_params(ckpt.unwrap(model)), device_peak_flops(device, t.peak_flops)
    progress = Progress(t.max_steps, st.step, cfg.tracking.progress_every_s, enabled=rank == 0)

    def collate(raw: dict, seed: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in task.collate(raw, meta, seed * 31 + rank).items()}

    val_set = eval_batches(ray.train.get_dataset_shard("validation"), t.batch_size, rank, world, t.eval_batches)
    stream = TrainStream(ray.train.get_dataset_shard("train"), t.batch_size, cfg.data.seed,
                         cfg.data.shuffle_buffer_rows, collate, st.epoch, st.batches_in_epoch)

    train_s, last = st.extra.get("train_s", 0.0), False
    while st.step < t.max_steps and not last:
        t0, wait, loss_sum, n_sum, tokens, width = time.perf_counter(), 0.0, 0.0, 0, 0, 0
        model.train()
        for micro in range(t.grad_accum):
            tw = time.perf_counter()
            batch = stream.next()
            wait += time.perf_counter() - tw
            tokens, width = tokens + batch["input_ids"].numel(), batch["input_ids"].shape[1]
            samples.write(stream.epoch, st.step, batch["sample_id"])
            sync = micro == t.grad_accum - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss, n = task.loss(model, batch)
                scaler.scale(loss / t.grad_accum).backward()
            loss_sum, n_sum = loss_sum + loss.item() * n, n_sum + n
        scaler.unscale_(opt)
        gnorm = global_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf")))
        train_loss = _all_mean(loss_sum, n_sum, device)
        st.step += 1
        st.epoch, st.batches_in_epoch = stream.epoch, stream.position
        if not nonfinite_action(train_loss, gnorm, st.step, t.nan_policy, scaler.is_enabled(), last_ckpt):
            scaler.step(opt)  # "skip" drops only this update; the schedule keeps its pace
            scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        st.tokens_seen += tokens * world
        fpt = flops_per_token(n_params, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd // cfg.model.n_head, width)
        metrics: dict[str, Any] = {"train_loss": train_loss, "lr": sched.get_last_lr()[0], "grad_norm": gnorm,
                                   "tokens_per_s": tokens * world / dt, "tokens_per_s_per_worker": tokens / dt,
                                   "step_time_s": dt, "data_wait_s": wait, "compute_s": dt - wait,
                                   "mfu": mfu(tokens / dt, fpt, peak), "peak_mem_mb": peak_memory_mb(device),
                                   "tokens_seen": st.tokens_seen, "epoch": st.epoch, "train_time_s": train_s + dt}
        train_s += dt
        st.extra["train_s"] = train_s
        # A time budget ends the run on the same step on every rank (rank 0's clock decides).
        last = st.step == t.max_steps or (t.max_train_seconds is not None and _all_sum(
            [float(rank == 0 and train_s >= t.max_train_seconds)], device)[0] > 0)
        progress.update(st.step, metrics)
        if st.step % t.log_every == 0 or last:
            sink.log(metrics, st.step)
        save_now = st.step % t.checkpoint_every == 0 or last
        # Every checkpoint carries the validation metrics: "best" ranks checkpoints by them.
        if save_now or st.step % t.eval_every == 0:
            metrics.update(evaluate(model, task, val_set, collate, device, amp))
            sink.log({k: v for k, v in metrics.items() if k.startswith("val_")}, st.step)
            progress.eval(st.step, metrics)
            saved = report(metrics, st, model, opt, sched, rank, save_now, sink)
            last_ckpt = os.path.join(loop_config.get("run_dir", ""), saved) if saved else last_ckpt
    samples.close()
    sink.close()


def apply_hyperparameters(opt: torch.optim.Optimizer, sched: Any, t: Any, step: int) -> None:
    """After a PBT exploit: the donor's weights and moments, but this trial's (perturbed) lr and decay."""
    from raylm.trainers.optim import lr_factor

    sched.base_lrs = [t.lr for _ in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = t.lr * lr_factor(step, t)
        if group.get("weight_decay", 0.0) > 0.0:
            group["weight_decay"] = t.weight_decay


def evaluate(model: torch.nn.Module, task: Task, val_set: list[dict], collate: Any,
             device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Validation loss (and accuracy/F1 for classifiers), summed over all ranks."""
    model.eval()
    sums = np.zeros(7)  # loss*n, n, correct, examples, tp, fp, fn
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for i, raw in enumerate(val_set):
            batch = collate(raw, i)  # a fixed seed per batch: MLM masks are the same every eval
            loss, n, pred = task.eval_step(model, batch)
            sums[:2] += (loss * n, n)
            if pred is not None:
                y = batch["labels"]
                sums[2:] += (int(pred.eq(y).sum()), len(y), int(((pred == 1) & (y == 1)).sum()),
                             int(((pred == 1) & (y != 1)).sum()), int(((pred != 1) & (y == 1)).sum()))
    tot = _all_sum(sums.tolist(), device)
    val_loss = tot[0] / max(tot[1], 1)
    if task.name != "sequence-classification":
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
    return {"val_loss": val_loss, "val_accuracy": tot[2] / max(tot[3], 1),
            "val_f1": 2 * tot[4] / max(2 * tot[4] + tot[5] + tot[6], 1)}


def report(metrics: dict, st: ckpt.TrainState, model: Any, opt: Any, sched: Any, rank: int, save: bool,
           sink: Any) -> str | None:
    """The one channel for metrics + checkpoints; every rank calls it at the same steps.

    Ray persists the directory to storage before it registers the checkpoint, so a crash
    mid-write leaves the previous checkpoint as the latest.
    """
    import ray.train

    clean = {k: v for k, v in metrics.items() if v is not None} | {"step": st.step}
    if not save:
        ray.train.report(clean)
        return None
    model_state, optim_state = full_state(model, opt)  # a collective under FSDP
    name = f"checkpoint_{st.step:08d}"
    with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as d:
        ckpt.save(d, model, sched, st, rank, model_state, optim_state, getattr(sink, "jsonl_path", None))
        ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
    return name


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_mean(total: float, count: int, device: torch.device) -> float:
    s, n = _all_sum([total, count], device)
    return s / max(n, 1)
