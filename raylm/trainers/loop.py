"""The per-worker training loop: restore, loop, eval, report/checkpoint. Runs on every Ray Train worker."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from raylm.config import RootConfig, apply_overrides, validate
from raylm.datasets.streaming import epoch_batches, eval_batches
from raylm.trainers import state as ckpt
from raylm.trainers.metrics import device_peak_flops, flops_per_token, mfu, non_embedding_params, peak_memory_mb
from raylm.trainers.optim import build_optimizer, build_scheduler
from raylm.trainers.parallel import autocast_dtype, wrap_model
from raylm.trainers.progress import Progress
from raylm.trainers.tasks import get_task
from raylm.trainers.tracking import make_sink


def resolve_loop_config(loop_config: dict) -> RootConfig:
    """The run's config plus dotted overrides at the top level (how Tune passes its samples)."""
    overrides = [f"{k}={v}" for k, v in loop_config.items() if "." in k]
    return validate(apply_overrides(loop_config["cfg"], overrides), origin="train_loop_config")


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg, meta = resolve_loop_config(loop_config), loop_config["meta"]
    t, ctx = cfg.trainer, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed + rank)
    device = ray.train.torch.get_device()
    task = get_task(t.task)

    model = task.build_model(cfg, meta)
    opt = None
    restored = ray.train.get_checkpoint()
    st = ckpt.TrainState()
    if restored:  # weights go in before wrapping, so every rank starts from the same values
        with restored.as_directory() as d:
            ckpt.load_model_weights(model, os.path.join(d, "model"))
    model = wrap_model(model, t, device)
    opt, sched = build_optimizer(model, t, device), None
    sched = build_scheduler(opt, t)
    if restored:
        with restored.as_directory() as d:
            st = ckpt.restore(d, model, opt, sched, rank, load_weights=False)
    sink = make_sink(cfg, loop_config, rank, resume_step=st.step)
    amp = autocast_dtype(t.precision, device)
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    seq = meta.get("block_size", 0)
    fpt = flops_per_token(non_embedding_params(ckpt.unwrap(model)), cfg.model.n_layer, cfg.model.n_head,
                          cfg.model.n_embd // cfg.model.n_head, seq)
    peak = device_peak_flops(device, t.peak_flops)
    progress = Progress(t.max_steps, st.step, cfg.tracking.progress_every_s, enabled=rank == 0)
    collate = lambda b: {k: v.to(device) for k, v in task.collate(b, meta, t.seed * 7919 + st.step * 31 + rank).items()}  # noqa: E731
    train_shard = ray.train.get_dataset_shard("train")
    val_set = eval_batches(ray.train.get_dataset_shard("validation"), t.batch_size, rank, world, t.eval_batches)
    batches = epoch_batches(train_shard, t.batch_size, st.epoch, cfg.data.seed, st.batches_in_epoch,
                            cfg.data.shuffle_buffer_rows, collate)
    sample_log = open(os.environ["RAYLM_SAMPLE_LOG"] + f".rank{rank}", "a") if os.environ.get("RAYLM_SAMPLE_LOG") else None

    train_s, last = st.extra.get("train_s", 0.0), False
    while st.step < t.max_steps and not last:
        t0, wait, loss_sum, n_sum, tokens = time.perf_counter(), 0.0, 0.0, 0, 0
        model.train()
        for micro in range(t.grad_accum):
            tw = time.perf_counter()
            batch = next(batches, None)
            if batch is None:  # epoch boundary: same seed, next epoch
                st.epoch, st.batches_in_epoch = st.epoch + 1, 0
                batches = epoch_batches(train_shard, t.batch_size, st.epoch, cfg.data.seed, 0,
                                        cfg.data.shuffle_buffer_rows, collate)
                batch = next(batches, None)
                if batch is None:
                    raise ValueError(f"worker {rank} got no training batch: the train split is smaller than "
                                     f"trainer.batch_size ({t.batch_size}) x workers ({world})")
            wait += time.perf_counter() - tw
            st.batches_in_epoch += 1
            tokens += batch["input_ids"].numel()
            if sample_log:
                sample_log.write(" ".join(map(str, batch["sample_id"].tolist())) + f" step={st.step}\n")
            sync = micro == t.grad_accum - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss, n = task.loss(model, batch)
                scaler.scale(loss / t.grad_accum).backward()
            loss_sum, n_sum = loss_sum + loss.item() * n, n_sum + n
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
        train_loss = _all_mean(loss_sum, n_sum, device)
        if not math.isfinite(train_loss) or not math.isfinite(float(gnorm)):
            if t.nan_policy == "stop":
                raise FloatingPointError(f"loss is {train_loss} at step {st.step + 1}; last good checkpoint: "
                                         f"step {st.step - st.step % t.checkpoint_every} (set trainer.nan_policy=skip to skip such steps)")
            opt.zero_grad(set_to_none=True)
            st.step += 1
            continue
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        st.step += 1
        dt = time.perf_counter() - t0
        st.tokens_seen += tokens * world
        metrics: dict[str, Any] = {"train_loss": train_loss, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm),
                                   "tokens_per_s": tokens * world / dt, "tokens_per_s_per_worker": tokens / dt,
                                   "step_time_s": dt, "data_wait_s": wait, "compute_s": dt - wait,
                                   "mfu": mfu(tokens / dt, fpt, peak), "peak_mem_mb": peak_memory_mb(device),
                                   "tokens_seen": st.tokens_seen, "epoch": st.epoch, "train_time_s": train_s + dt}  # noqa: E501
        train_s += dt
        st.extra["train_s"] = train_s
        # A time budget ends the run on the same step on every rank (rank 0's clock decides).
        last = st.step == t.max_steps or (t.max_train_seconds is not None and _all_sum(
            [float(rank == 0 and train_s >= t.max_train_seconds)], device)[0] > 0)
        progress.update(st.step, metrics)
        if st.step % t.log_every == 0 or last:
            sink.log(metrics, st.step)
        evaluate_now = st.step % t.eval_every == 0 or last
        save_now = st.step % t.checkpoint_every == 0 or last
        if evaluate_now:
            metrics.update(evaluate(model, task, val_set, collate, t, device, amp))
            sink.log({k: v for k, v in metrics.items() if k.startswith("val_")}, st.step)
            progress.eval(st.step, metrics)
        if evaluate_now or save_now:
            report(metrics, st, model, opt, sched, rank, save_now, sink)
    if sample_log:
        sample_log.close()
    sink.close()


def evaluate(model: torch.nn.Module, task: Any, val_set: list[dict], collate: Any, t: Any,
             device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    model.eval()
    loss_sum, n_sum, correct, n_ex = 0.0, 0, 0, 0
    tp = fp = fn = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for raw in val_set:
            batch = collate(raw)
            loss, n = task.loss(model, batch)
            loss_sum, n_sum = loss_sum + loss.item() * n, n_sum + n
            if t.task == "sequence-classification":
                pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
                y = batch["labels"]
                correct, n_ex = correct + int(pred.eq(y).sum()), n_ex + len(y)
                tp, fp, fn = tp + int(((pred == 1) & (y == 1)).sum()), fp + int(((pred == 1) & (y != 1)).sum()), fn + int(((pred != 1) & (y == 1)).sum())
    tot = _all_sum([loss_sum, n_sum, correct, n_ex, tp, fp, fn], device)
    val_loss = tot[0] / max(tot[1], 1)
    out = {"val_loss": val_loss}
    if t.task == "sequence-classification":
        out["val_accuracy"] = tot[2] / max(tot[3], 1)
        out["val_f1"] = 2 * tot[4] / max(2 * tot[4] + tot[5] + tot[6], 1)
    else:
        out["val_ppl"] = math.exp(min(val_loss, 50))
    return out


def report(metrics: dict, st: ckpt.TrainState, model: Any, opt: Any, sched: Any, rank: int, save: bool, sink: Any) -> None:
    """The one channel for metrics + checkpoints; every rank calls it at the same steps."""
    import ray.train

    clean = {k: v for k, v in metrics.items() if v is not None} | {"step": st.step}
    if not save:
        ray.train.report(clean)
        return
    model_state = _full_state_dict(model)
    with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as d:
        ckpt.save(d, model, opt, sched, st, rank, getattr(sink, "jsonl_path", None), model_state)
        ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"checkpoint_{st.step:08d}")


def _full_state_dict(model: Any) -> dict | None:
    from raylm.trainers.parallel import full_state_dict

    return full_state_dict(model)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_mean(total: float, count: int, device: torch.device) -> float:
    s, n = _all_sum([total, count], device)
    return s / max(n, 1)
