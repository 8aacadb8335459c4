"""The per-worker training loop: setup, then `train_step` under a short outer loop. Runs on every
Ray Train worker.

Read top to bottom: `LoopConfig` (what the driver sends), `setup` (model, optimizer, restore,
data), `train_loop_per_worker` (the cadence: step, log, eval, checkpoint), `report` (the one
channel for metrics and checkpoints). The step itself and its device-side bookkeeping live in
`raylm.trainers.step`; the host reads the device only on log, eval and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from raylm.cluster.storage import is_remote
from raylm.config import RootConfig, validate
from raylm.datasets.sharding import check_resume, sharding_for
from raylm.datasets.streaming import TrainStream, eval_batches
from raylm.tasks.base import Task
from raylm.tasks.meta import ModelMeta
from raylm.tasks.registry import get_task
from raylm.trainers import adapters, checkpoint, preemption
from raylm.trainers import state as ckpt
from raylm.trainers.autobatch import resolve_batch_size
from raylm.trainers.config import TrainerConfig
from raylm.trainers.hooks import Observers, check_nonfinite
from raylm.trainers.hostmem import release_freed_memory
from raylm.trainers.kernels import apply_fused_kernels, loss_fn_for
from raylm.trainers.materialize import build_on_meta, init_weights, materialize
from raylm.trainers.metrics import device_peak_flops, flops_per_token, non_embedding_params, peak_memory_mb
from raylm.trainers.optim import build_optimizer, build_scheduler, lr_factor
from raylm.trainers.parallel import autocast_dtype, compile_enabled, is_meta, wrap_model
from raylm.trainers.progress import Progress, say
from raylm.trainers.sinks import Sink
from raylm.trainers.state import seed_everything
from raylm.trainers.step import Feeder, StepContext, SyncResult, Window, to_batch, train_step
from raylm.trainers.tracking import make_sink
from raylm.trainers.watchdog import Watchdog, publish_to_storage


@dataclass
class LoopConfig:
    """What the driver sends to every worker (as a plain dict: `to_dict`/`from_dict`)."""

    cfg: dict  # the resolved RootConfig, JSON-dumped
    meta: ModelMeta  # what the model needs from the manifest (vocab, special ids, lengths, labels)
    run_dir: str
    metrics_path: str
    run_id: str
    resume_from: str | None = None  # a checkpoint path to start from (a PBT exploit)
    started_at: float | None = None  # when the command started (time.time()): start-up is reported from it

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "meta": self.meta.to_dict()}

    @classmethod
    def from_dict(cls, fields: dict) -> LoopConfig:
        return cls(**{**fields, "meta": ModelMeta.from_dict(fields["meta"])})


@dataclass
class Run:
    """Everything `setup` builds for the loop."""

    cfg: RootConfig
    task: Task
    ctx: StepContext
    state: ckpt.TrainState
    feeder: Feeder
    val: list
    sink: Sink
    observers: Observers  # trainer.observers: told each batch and each sharded checkpoint write
    progress: Progress
    rank: int
    world: int
    batch_size: int
    grad_accum: int
    last_ckpt: str | None
    checkpointer: checkpoint.Checkpointer
    watchdog: Watchdog


# ---------------------------------------------------------------- setup


def setup(loop_cfg: LoopConfig, cfg: RootConfig, watchdog: Watchdog) -> Run:
    import ray.train
    import ray.train.torch

    trainer = cfg.trainer
    rank, world = watchdog.rank, watchdog.world
    torch.set_num_threads(trainer.torch_threads)
    if trainer.scaling.strategy == "fsdp" and trainer.fsdp.release_host_memory:
        release_freed_memory()
    device, task, meta = ray.train.torch.get_device(), get_task(trainer.task), loop_cfg.meta

    seed_everything(trainer.seed)
    restored = ray.train.get_checkpoint()
    exploit = restored is None and bool(loop_cfg.resume_from)
    if exploit:  # PBT: start from another trial's state
        restored = ray.train.Checkpoint(loop_cfg.resume_from)
    with contextlib.ExitStack() as stack:  # a remote checkpoint stays downloaded until restored
        ckpt_dir = stack.enter_context(restored.as_directory()) if restored else None
        hf_weights = os.path.join(ckpt_dir, "model") if ckpt_dir and not checkpoint.is_sharded(ckpt_dir) else None
        # DDP: built whole (hf checkpoint weights go in before wrapping: every rank starts equal).
        # FSDP: built on the meta device, sharded, then materialised shard by shard.
        model = build_model(task, cfg, meta, hf_weights, say if rank == 0 else lambda _: None)
        model.config.raylm_task = trainer.task  # the export's task, for `raylm eval --input` and `predict`
        amp = autocast_dtype(trainer.precision, device)
        if trainer.scaling.strategy == "ddp":
            batch_size = resolve_batch_size(trainer.batch_size, model, task, meta, device, amp, rank)
        # The fused loss reads the lm head's weight outside the model's forward: not under FSDP's sharding.
        kernels = trainer.fused_kernels if trainer.scaling.strategy == "ddp" else "off"
        compiled = compile_enabled(trainer, device)
        fused = apply_fused_kernels(model, task.fused_loss(), kernels, device, say if rank == 0 else lambda _: None, compiled)
        if compiled and rank == 0:
            say("[raylm] compiling the transformer blocks (torch.compile, regional) during the first step...")
        model = wrap_model(model, trainer, device)
        if is_meta(model):
            materialize(model, torch.device("cpu") if trainer.fsdp.cpu_offload else device, trainer.seed,
                        hf_weights or cfg.model.init_from, say if rank == 0 else lambda _: None)
        if trainer.scaling.strategy == "fsdp":  # probes the sharded model (auto on a GPU); an int otherwise
            batch_size = resolve_batch_size(trainer.batch_size, model, task, meta, device, amp, rank)
        grad_accum = grad_accum_for(trainer.global_batch_tokens, trainer.grad_accum, batch_size, task.seq_len(meta), world)
        opt = build_optimizer(model, trainer, device)
        sched = build_scheduler(opt, trainer)
        seed_everything(trainer.seed + 1 + rank)  # dropout etc. differ per rank
        sharding = sharding_for(cfg.data.stream.sharding, trainer.scaling.num_workers)
        state, last_ckpt = ckpt.TrainState(world=world, sharding=sharding), None
        if restored:
            state = checkpoint.restore(ckpt_dir, model, opt, sched, rank, weights_loaded=hf_weights is not None)
            check_resume(state.sharding, state.world, sharding, world)
            state.world, last_ckpt = world, restored.path
            if exploit:
                apply_hyperparameters(opt, sched, trainer, state.step)
    sink = make_sink(cfg, loop_cfg, rank, resume_step=state.step)
    if restored:
        sink.log({"resumed_from": state.step, **({"restored_from": loop_cfg.resume_from} if exploit else {})}, state.step)
        if rank == 0:
            say(f"[raylm] resumed from checkpoint at step {state.step} (epoch {state.epoch}, "
                f"{state.batches_in_epoch} batches into it)")

    def collate(raw: dict, seed: int) -> dict[str, torch.Tensor]:
        return task.collate(raw, meta, seed)

    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ctx = StepContext(model, opt, sched, scaler, loss_fn_for(task, fused), device, amp, trainer.optimizer.grad_clip,
                      skip_nonfinite=trainer.nan_policy == "skip")
    # Validation batches are collated once (a fixed seed per batch: MLM masks are the same every eval).
    # Every rank gets as many (fillers included) as the rank with the most: FSDP's forwards are collectives.
    val_raw = eval_batches(ray.train.get_dataset_shard("validation"), batch_size, rank, world, trainer.eval.batches,
                           sort_by_length=task.eval_order_free)
    val = [to_batch(collate(raw, i * 31 + rank), device, counts=counts) for i, (raw, counts) in enumerate(val_raw)]
    reading = cfg.data.stream
    stream = TrainStream(ray.train.get_dataset_shard("train"), batch_size, cfg.data.seed, reading.shuffle_buffer_rows,
                         lambda raw, seed: (raw, seed), state.epoch, state.batches_in_epoch,
                         varied_lengths=task.group_by_length, group_by_length=reading.group_by_length,
                         length_group_batches=reading.length_group_batches, sharding=state.sharding, world=world,
                         rank=rank)
    observers = Observers.load(trainer.observers, rank, world, state.step, loop_cfg.run_dir)
    on_write = observers.on_checkpoint_write if observers else None
    return Run(cfg, task, ctx, state, Feeder(stream, collate, device), val, sink, observers,
               Progress(trainer.max_steps, state.step, cfg.tracking.progress_every_s, enabled=rank == 0),
               rank, world, batch_size, grad_accum, last_ckpt,
               checkpoint.Checkpointer(trainer, loop_cfg.run_dir, on_write), watchdog)


def build_model(task: Task, cfg: RootConfig, meta: ModelMeta, hf_weights: str | None,
                log: Any) -> torch.nn.Module:
    """The task's model: whole for DDP, on the meta device for FSDP (whole when the task cannot build
    there). From config, weights come from raylm's seeded init, the same for both strategies.
    With model.adapter: the base (init_from, or config + seeded init) whole on every rank under either
    strategy (FSDP then shards it, frozen base included), wrapped by peft; a checkpoint's adapter goes in."""
    adapter = cfg.model.adapter
    if cfg.trainer.scaling.strategy == "fsdp":
        model = None if adapter.enabled else build_on_meta(task, cfg, meta)
        if model is not None:
            return model
        why = "model.adapter" if adapter.enabled else f"{task.name} with model.init_from"
        log(f"[raylm] {why}: built whole on every rank, then sharded")
    model = task.build_model(cfg, meta)
    if not cfg.model.init_from:
        init_weights(model, cfg.trainer.seed)
    if adapter.enabled:
        model = adapters.apply_adapter(model, adapter, cfg.trainer.gradient_checkpointing, log,
                                       new_tokens=adapters.grown_tokens(model, cfg.model.init_from))
        if hf_weights:
            adapters.load_adapter_weights(model, hf_weights)
    elif hf_weights:
        ckpt.load_model_weights(model, hf_weights)
    return model


def grad_accum_for(global_batch_tokens: int | None, grad_accum: int, batch_size: int, seq_len: int,
                   world: int) -> int:
    """Micro-steps per optimizer step: from `trainer.global_batch_tokens` when set (rounded up)."""
    if not global_batch_tokens:
        return grad_accum
    return max(1, math.ceil(global_batch_tokens / (batch_size * seq_len * world)))


# ---------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point: the loop under the watchdog (a collective timeout names rank and step)."""
    import ray.train

    loop_cfg = LoopConfig.from_dict(loop_config)
    ray_ctx, cfg = ray.train.get_context(), validate(loop_cfg.cfg, origin="train_loop_config")
    remote = is_remote(cfg.cluster.storage_path)
    watchdog = Watchdog(cfg.trainer.watchdog, ray_ctx.get_world_rank(), ray_ctx.get_world_size(),
                        os.path.join(loop_cfg.run_dir, "stacks"), log=say,
                        publish=publish_to_storage(cfg.cluster.storage_path, loop_cfg.run_id) if remote else None)
    with watchdog.guard():
        watchdog.beat("setup (restore, shard, first batches)", 0)
        run_loop(loop_cfg, setup(loop_cfg, cfg, watchdog))


def run_loop(loop_cfg: LoopConfig, run: Run) -> None:
    """Restore is done: step, log, eval and checkpoint at their cadence until max_steps (or a stop)."""
    trainer, state, beat = run.cfg.trainer, run.state, run.watchdog.beat
    n_params = non_embedding_params(ckpt.unwrap(run.ctx.model))
    peak = device_peak_flops(run.ctx.device, trainer.peak_flops)
    # A run restored at (or past) its end has nothing left to train (a PBT clone of a finished donor).
    window, train_s, last = Window(run.ctx.device), state.extra.get("train_s", 0.0), state.step >= trainer.max_steps
    first_step, stop = state.step + 1, None
    if not preemption.arm() and run.rank == 0:
        say("[raylm] no SIGTERM handler in this worker: a SIGTERM ends it without a checkpoint")
    run.feeder.prefetch(run.grad_accum)
    while not last:
        t0, wait0 = time.perf_counter(), run.feeder.wait_s
        beat(f"train step ({STEP_COLLECTIVES[trainer.scaling.strategy]})", state.step + 1)
        batches = run.feeder.take(run.grad_accum)
        for b in batches:
            run.observers.on_batch(b.epoch, state.step, b.sample_ids)
        out = train_step(run.ctx, batches)  # queued on the device; nothing read back
        state.step += 1
        state.epoch, state.batches_in_epoch = batches[-1].epoch, batches[-1].position
        state.tokens_seen += out.tokens * run.world
        window.add(out, state.step)
        run.feeder.prefetch(run.grad_accum)  # the next batches are prepared while the device computes
        train_s += time.perf_counter() - t0
        state.extra["train_s"] = train_s
        eval_now = state.step % trainer.eval.every == 0
        save_now = state.step % trainer.checkpoint.every == 0 or state.step == trainer.max_steps
        if not (state.step % trainer.log_every == 0 or eval_now or save_now or state.step == first_step):
            continue
        # ---- a sync step: the host reads the window (one all-reduce); a bad step never reaches a checkpoint
        if state.step == first_step:
            run.watchdog.arm()  # after the first step: compile and start-up are not measured
        beat("the log step's all-reduce of the window", state.step)
        synced = window.sync(run.rank == 0 and trainer.max_train_seconds is not None and train_s >= trainer.max_train_seconds,
                             stop=preemption.requested())
        dt = time.perf_counter() - window.t0
        stop = stop_reason(synced.stop_ranks, preemption.drain_notice())  # the drain notice: a barrier
        last = state.step >= trainer.max_steps or synced.out_of_time or stop is not None
        check_nonfinite(synced.first_bad_step, synced.train_loss, synced.grad_norm, trainer.nan_policy, run.last_ckpt)
        metrics = window_metrics(window, synced, dt, run.feeder.wait_s - wait0, run, n_params, peak, train_s, state)
        window = Window(run.ctx.device)
        if state.step == first_step:
            metrics.update(first_step_metrics(loop_cfg, run, t0, dt))
        run.progress.update(state.step, metrics)
        run.sink.log(metrics, state.step)
        save_now = save_now or last
        if save_now or eval_now:  # every checkpoint carries validation metrics: "best" ranks by them
            val = run.watchdog.paced(run.val, "evaluation (forward passes, then the all-reduce of the sums)", state.step)
            metrics.update(run.task.evaluate(run.ctx.model, val, run.ctx.device, run.ctx.amp, loop_cfg.meta))
            beat("checkpoint and report (barrier, checkpoint collectives)" if save_now else "report", state.step)
            run.sink.log({k: v for k, v in metrics.items() if k.startswith("val_")}, state.step)
            run.progress.eval(state.step, metrics)
            saved = report(metrics, state, run.ctx, run.rank, save_now, run.sink, run.checkpointer)
            run.last_ckpt = os.path.join(loop_cfg.run_dir, saved) if saved else run.last_ckpt
    run.observers.close()
    run.sink.close()
    if stop and state.step < trainer.max_steps:  # restart from this step's checkpoint
        beat("the last checkpoint's write", state.step)
        run.checkpointer.flush()
        if run.rank == 0:
            say(f"[raylm] {stop}: checkpointed step {state.step}, exiting for a restart")
        raise preemption.Preempted(f"{stop}: checkpointed step {state.step} ({run.last_ckpt})")


# What a step's forward and backward wait for from the other ranks (named when one times out).
STEP_COLLECTIVES = {"ddp": "forward/backward: DDP's gradient all-reduce",
                    "fsdp": "forward/backward: FSDP's all-gathers and reduce-scatters"}


def stop_reason(sigterm_ranks: int, drained: bool) -> str | None:
    """Why the run stops now for a restart (None: it does not)."""
    if sigterm_ranks:
        return f"SIGTERM to {sigterm_ranks} worker(s)"
    return "a node is drained for preemption" if drained else None


def first_step_metrics(loop_cfg: LoopConfig, run: Run, t0: float, dt: float) -> dict[str, float]:
    """Start-up (command to the first step's start) and the first step's own time (compile included)."""
    startup = time.time() - (time.perf_counter() - t0) - loop_cfg.started_at if loop_cfg.started_at else None
    if run.rank == 0:
        since = f"began {startup:.1f}s after the command started and " if startup is not None else ""
        say(f"[raylm] first step {since}took {dt:.1f}s"
            f"{' (torch.compile included)' if compile_enabled(run.cfg.trainer, run.ctx.device) else ''}")
    return {"first_step_s": dt, **({"startup_s": startup} if startup is not None else {})}


def window_metrics(w: Window, synced: SyncResult, dt: float, wait: float, run: Run, n_params: int, peak: float | None,
                   train_s: float, state: ckpt.TrainState) -> dict[str, Any]:
    """Per-step figures averaged over the window since the last sync (its wall time includes the device's)."""

    m = run.cfg.model
    per_worker = w.tokens / max(dt, 1e-9)
    # PaLM FLOPs per token, token-weighted over the window's sequence lengths.
    flops = 6.0 * n_params * w.tokens + (flops_per_token(0, m.n_layer, m.n_head, m.n_embd // m.n_head, 1)
                                          * w.flops_tokens)
    return {"train_loss": synced.train_loss, "lr": run.ctx.sched.get_last_lr()[0], "grad_norm": synced.grad_norm,
            "tokens_per_s": per_worker * run.world, "tokens_per_s_per_worker": per_worker,
            "step_time_s": dt / max(w.steps, 1), "data_wait_s": wait / max(w.steps, 1),
            "compute_s": (dt - wait) / max(w.steps, 1), "padding_frac": 1 - w.real_tokens / max(w.tokens, 1),
            "mfu": flops / dt / peak if peak else None, "peak_mem_mb": peak_memory_mb(run.ctx.device),
            "tokens_seen": state.tokens_seen, "epoch": state.epoch, "train_time_s": train_s,
            "batch_size": run.batch_size, "grad_accum": run.grad_accum}


def apply_hyperparameters(opt: torch.optim.Optimizer, sched: Any, trainer: TrainerConfig, step: int) -> None:
    """After a PBT exploit: the donor's weights and moments, but this trial's (perturbed) lr and decay."""

    sched.base_lrs = [trainer.optimizer.lr for _ in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = trainer.optimizer.lr * lr_factor(step, trainer)
        if group.get("weight_decay", 0.0) > 0.0:
            group["weight_decay"] = trainer.optimizer.weight_decay


# ---------------------------------------------------------------- report / checkpoint


def report(metrics: dict, state: ckpt.TrainState, ctx: StepContext, rank: int, save: bool, sink: Sink,
           checkpointer: checkpoint.Checkpointer) -> str | None:
    """The one channel for metrics + checkpoints; every rank calls it at the same steps.

    Ray registers a checkpoint only once it is complete in storage (for an asynchronous sharded write,
    once the write has finished), so a crash mid-write leaves the previous checkpoint as the latest.
    """
    clean = {k: v for k, v in metrics.items() if v is not None} | {"step": state.step}
    if not save:
        checkpointer.report_metrics(clean)
        return None
    name = f"checkpoint_{state.step:08d}"
    stalled = checkpointer.stall_s
    checkpointer.report(clean, name, state, ctx, rank, sink.jsonl_path)
    # Seconds this save held the training thread (gather or staging; the background write excluded).
    sink.log({"checkpoint_stall_s": checkpointer.stall_s - stalled}, state.step)
    return name
