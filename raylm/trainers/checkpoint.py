"""Checkpoints in two formats through one channel (`ray.train.report`); restore detects which.

hf (DDP; FSDP with `trainer.fsdp.checkpoint: full`): the full model, gathered on rank 0
  model/            save_pretrained (safetensors)
  state.pt          optimizer (full, keyed by parameter name), scheduler, TrainState
sharded (FSDP, the default): nobody gathers the model; every rank writes its own shard
  dcp/              torch.distributed.checkpoint: .metadata + one file per rank, holding
                    {"model": ..., "optim": ...} keyed by parameter name
  hf_config/        the model's HF config (`raylm export` builds the skeleton from it)
  state.pt          scheduler, TrainState, {"format": "sharded", "world_size": N}
both
  rng_rank{r}.pt    torch/Python RNG of each rank (the small explicit state stays exact)
  metrics.jsonl     the metric history up to this step

An adapter run (model.adapter) writes the adapter only: model/ holds peft's adapter_model.safetensors and
adapter_config.json, dcp/ the adapter's tensors (frozen parameters ignored), hf_config/ the base's config and
the adapter_config.json; the base is rebuilt from model.init_from (or config) on restore and at export.

DCP reshards on load, so a sharded checkpoint restores on any number of workers and under DDP (full
tensors) as well as FSDP (shards); an hf checkpoint restores under FSDP by streaming its safetensors
into the shards (`materialize`). Everything is read with `weights_only=True`, safetensors or DCP.

Asynchronous writes (`trainer.fsdp.async_checkpoint`): the shard is staged to CPU memory, written by
a background thread (`dcp.async_save`, on its own gloo group so that it never interleaves with the
training collectives), and reported with `checkpoint_upload_mode=ASYNC`: Ray Train registers the
checkpoint only once `checkpoint_upload_fn` returns, which waits for the write. A crash mid-write
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from raylm.trainers import adapters
from raylm.trainers import state as ckpt_state
from raylm.trainers.config import TrainerConfig
from raylm.trainers.parallel import adapter_only, full_state, load_optimizer, state_options
from raylm.trainers.progress import say

DCP_DIR, HF_CONFIG_DIR = "dcp", "hf_config"


def is_sharded(dirpath: str) -> bool:
    return os.path.exists(os.path.join(dirpath, DCP_DIR, ".metadata"))


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _model_and_optim(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's view of model + optimizer, keyed by parameter name: shards (DTensors) under FSDP,
    full tensors under DDP. DCP maps either onto what was saved, whatever wrote it. An adapter run's frozen
    base is left out."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = state_options(model)
    return {"model": get_model_state_dict(model, options=options),
            "optim": get_optimizer_state_dict(model, opt, options=options)}


def load_sharded(dirpath: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Model + optimizer from a DCP checkpoint, resharded onto this run's ranks and strategy."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    sd = _model_and_optim(model, opt)
    dcp.load(sd, checkpoint_id=os.path.join(dirpath, DCP_DIR))
    # An adapter run's state holds no frozen base (nor do the model's own tensors above: dcp.load found every
    # one of them in the checkpoint), so the load is not strict about the base.
    options = state_options(model, strict=not adapter_only(model))
    set_model_state_dict(model, sd["model"], options=options)
    set_optimizer_state_dict(model, opt, sd["optim"], options=options)


def load_hf_optimizer(dirpath: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """The full optimizer state of an hf checkpoint; mmap: a rank pages in what its shard needs."""

    blob = torch.load(os.path.join(dirpath, "state.pt"), map_location="cpu", weights_only=True, mmap=True)
    load_optimizer(model, opt, blob["optimizer"])


def restore(dirpath: str, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rank: int,
            weights_loaded: bool) -> ckpt_state.TrainState:
    """Everything but the weights the caller already loaded (`weights_loaded`): optimizer, scheduler,
    this rank's RNG, the TrainState. A new rank (more workers than wrote it) keeps its fresh RNG."""
    if is_sharded(dirpath):
        load_sharded(dirpath, model, opt)
    else:
        if not weights_loaded and adapter_only(model):
            adapters.load_adapter_weights(model, os.path.join(dirpath, "model"))
        elif not weights_loaded:
            ckpt_state.load_model_weights(model, os.path.join(dirpath, "model"))
        load_hf_optimizer(dirpath, model, opt)
    blob = torch.load(os.path.join(dirpath, "state.pt"), map_location="cpu", weights_only=True, mmap=True)
    sched.load_state_dict(blob["scheduler"])
    ckpt_state.load_rng(dirpath, rank)
    return ckpt_state.TrainState(**blob["state"])


# ---------------------------------------------------------------- writing


def hf_class(model: torch.nn.Module) -> type:
    """The transformers class of a model (FSDP2 swaps in a subclass named FSDP<class>)."""
    return next(c for c in type(model).__mro__ if c.__module__.startswith("transformers."))


def _writer(path: str, on_write: Callable[[str], None] | None) -> Any:
    """A DCP FileSystemWriter; with `on_write` its coordinator calls it with `path` once every shard is
    written, before the metadata that completes the checkpoint (the loop's observers: see
    raylm.trainers.hooks.LoopObserver.on_checkpoint_write)."""
    from torch.distributed.checkpoint import FileSystemWriter

    class Observed(FileSystemWriter):
        def finish(self, metadata: Any, results: Any) -> None:
            on_write(path)
            super().finish(metadata, results)

    return Observed(path) if on_write else FileSystemWriter(path)


class Checkpointer:
    """Writes this rank's part of each checkpoint and reports it; at most one sharded write in flight."""

    def __init__(self, t: TrainerConfig, run_dir: str, on_write: Callable[[str], None] | None = None) -> None:
        self.sharded = t.scaling.strategy == "fsdp" and t.fsdp.checkpoint == "sharded"
        self.async_ = self.sharded and t.fsdp.async_checkpoint
        self.run_dir, self.on_write = run_dir, on_write  # on_write: told of each sharded write (see _writer)
        # The background write's collectives (plan, metadata gather) get their own group: on the
        # default one they could interleave with the training thread's all-reduces.
        timeout = datetime.timedelta(seconds=t.watchdog.collective_timeout_s)  # as the default group's
        self.pg = dist.new_group(backend="gloo", timeout=timeout) if self.async_ and _dist() else None
        self.pending: Future | None = None
        self.sized = False  # an adapter run's checkpoint size is logged once
        self.stall_s = 0.0  # training-thread seconds spent saving (staging included), for benchmarks

    def _dest(self, name: str) -> tuple[str, bool]:
        """Write straight into the run's storage when it is a local (or mounted) filesystem; otherwise
        into a local temporary directory that Ray uploads (each rank its own files, merged)."""
        import pyarrow.fs
        import ray.train

        storage = ray.train.get_context().get_storage()
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return os.path.join(storage.experiment_fs_path, name), True
        return tempfile.mkdtemp(prefix=f"raylm-{name}-"), False

    def report(self, metrics: dict, name: str, st: ckpt_state.TrainState, ctx: Any, rank: int,
               metrics_file: str | None) -> None:
        import ray.train

        t0 = time.perf_counter()
        if not self.sharded:  # hf: gather on rank 0, write, Ray copies it into storage

            model_state, optim_state = full_state(ctx.model, ctx.opt)  # a collective under FSDP
            with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as d:
                ckpt_state.save(d, ctx.model, ctx.sched, st, rank, model_state, optim_state, metrics_file)
                self._log_size(ctx.model, rank, os.path.join(d, "model"))
                self.stall_s += time.perf_counter() - t0
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
            return
        dest, in_place = self._dest(name)
        fut = self._write_sharded(dest, in_place, st, ctx, rank, metrics_file)
        self._log_size(ctx.model, rank)
        self.stall_s += time.perf_counter() - t0

        def registered_once_written(checkpoint: Any, dir_name: str) -> Any:
            if fut is not None:
                fut.result()  # Ray registers the checkpoint only after this returns
            if in_place:
                return checkpoint
            storage = ray.train.get_context().get_storage()
            try:
                return storage.persist_current_checkpoint(checkpoint, dir_name)
            finally:
                shutil.rmtree(dest, ignore_errors=True)

        mode = ray.train.CheckpointUploadMode.ASYNC if self.async_ else ray.train.CheckpointUploadMode.SYNC
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint(dest), checkpoint_dir_name=name,
                         checkpoint_upload_mode=mode, checkpoint_upload_fn=registered_once_written,
                         delete_local_checkpoint_after_upload=False)  # in place it is the checkpoint itself

    def _log_size(self, model: torch.nn.Module, rank: int, model_dir: str | None = None) -> None:
        """Once per run, on rank 0 of an adapter run: the bytes of the adapter a checkpoint holds."""
        if not self.sized and rank == 0 and adapter_only(model):
            say(adapters.checkpoint_line(model, model_dir))
        self.sized = True

    def flush(self) -> None:
        """Wait until the checkpoints this rank reported are uploaded, before the loop exits early (a
        preemption); Ray Train does the same once the train function returns."""
        if self.async_:
            from ray.train.v2._internal.execution.context import get_train_context

            get_train_context().checkpoint_upload_threadpool.shutdown(wait=True)

    def report_metrics(self, metrics: dict) -> None:
        """Metrics only. Behind an asynchronous checkpoint they queue (Ray keeps the order) instead of
        blocking the training thread until that write completes."""
        import ray.train

        mode = ray.train.CheckpointUploadMode.ASYNC if self.async_ else ray.train.CheckpointUploadMode.SYNC
        ray.train.report(metrics, checkpoint_upload_mode=mode)

    def _write_sharded(self, dest: str, in_place: bool, st: ckpt_state.TrainState, ctx: Any, rank: int,
                       metrics_file: str | None) -> Future | None:
        import torch.distributed.checkpoint as dcp

        if self.pending is not None:  # one write in flight: staging memory stays one shard's worth
            self.pending.result()
            self.pending = None
        if in_place and rank == 0 and os.path.exists(dest):
            shutil.rmtree(dest)  # never registered: what an interrupted attempt left (the restore is older)
        if in_place and _dist():
            dist.barrier()
        os.makedirs(dest, exist_ok=True)
        ckpt_state.save_rng(dest, rank)
        if rank == 0:
            self._write_small(dest, ctx, st, metrics_file)
        sd = _model_and_optim(ctx.model, ctx.opt)
        writer = _writer(os.path.join(dest, DCP_DIR), self.on_write)
        if not self.async_:
            dcp.save(sd, storage_writer=writer)
            return None
        self.pending = dcp.async_save(sd, storage_writer=writer, process_group=self.pg)
        return self.pending

    @staticmethod
    def _write_small(dest: str, ctx: Any, st: ckpt_state.TrainState, metrics_file: str | None) -> None:
        world = dist.get_world_size() if _dist() else 1
        torch.save({"scheduler": ctx.sched.state_dict(), "state": asdict(st), "format": "sharded",
                    "world_size": world}, os.path.join(dest, "state.pt"))
        wrapped = ckpt_state.unwrap(ctx.model)
        model = adapters.base_of(wrapped)  # an adapter run: the base's config, and the adapter's beside it
        model.config.architectures = [hf_class(model).__name__]  # what save_pretrained records
        model.config.save_pretrained(os.path.join(dest, HF_CONFIG_DIR))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(os.path.join(dest, HF_CONFIG_DIR))
        if model is not wrapped:
            for peft_config in wrapped.peft_config.values():
                peft_config.save_pretrained(os.path.join(dest, HF_CONFIG_DIR))
        if metrics_file and os.path.exists(metrics_file):
            shutil.copy(metrics_file, os.path.join(dest, "metrics.jsonl"))
