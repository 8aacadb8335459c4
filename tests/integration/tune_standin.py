"""A stand-in for `raylm.trainers.build_trainer` in the PBT plumbing test: the real loop does not
restore from `loop_config["resume_from"]` yet, which a PBT clone needs.

It follows the trainer contract the tuning driver relies on: a Train V2 TorchTrainer whose
loop applies `cfg` + dotted overrides, restores from `ray.train.get_checkpoint()` (or
`loop_config["resume_from"]`), and reports `step`, `train_loss`, `val_loss`, `val_ppl`,
`tokens_seen` every eval with a checkpoint (`model/` + `state.pt`) through ray.train.report.
The model is a 2-layer MLP regressor on synthetic data, so a trial is a few seconds of compute.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import torch

from raylm.config import RootConfig, validate
from raylm.tuning.space import apply_dotted


def build_trainer(cfg: RootConfig, *, callbacks: list | None = None, name: str | None = None,
                  storage_path: str | None = None, loop_overrides: dict | None = None) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    t = cfg.trainer
    return TorchTrainer(
        _loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), **(loop_overrides or {})},
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.scaling.num_workers, use_gpu=False, resources_per_worker={"CPU": t.scaling.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name or t.run_name,
            storage_path=storage_path or os.path.abspath(cfg.cluster.storage_path),
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoint.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.scaling.max_failures),
        ),
    )


def _data(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    y = torch.sin(x @ torch.randn(16, 1, generator=g))
    return x[:448], y[:448], x[448:], y[448:]


def _loop(loop_config: dict[str, Any]) -> None:
    import ray.train

    dotted = {k: v for k, v in loop_config.items() if "." in k}
    cfg = validate(apply_dotted(loop_config["cfg"], dotted))
    t = cfg.trainer
    torch.manual_seed(t.seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=t.optimizer.lr)
    xtr, ytr, xva, yva = _data(0)
    step, restored = 0, -1
    ckpt = ray.train.get_checkpoint() or (
        ray.train.Checkpoint(loop_config["resume_from"]) if loop_config.get("resume_from") else None
    )
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:
            group["lr"] = t.optimizer.lr  # PBT explore: the new config's lr wins over the donor's
        step = restored = state["step"]
    while step < t.max_steps:
        step += 1
        idx = torch.randint(0, len(xtr), (t.batch_size,))
        loss = torch.nn.functional.mse_loss(model(xtr[idx]), ytr[idx])
        if not torch.isfinite(loss) and t.nan_policy == "stop":
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % t.eval.every == 0 or step == t.max_steps:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(xva), yva).item()
            metrics = {"step": step, "train_loss": loss.item(), "val_loss": val,
                       "val_ppl": math.exp(min(val, 50)), "tokens_seen": step * t.batch_size,
                       "restored_step": restored}
            _report(metrics, model, opt, step, ray.train.get_context().get_world_rank())


def _report(metrics: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            os.makedirs(os.path.join(d, "model"))
            torch.save(model.state_dict(), os.path.join(d, "model", "pytorch_model.bin"))
            with open(os.path.join(d, "model", "config.json"), "w") as f:
                f.write('{"model_type": "standin-mlp"}')
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                       os.path.join(d, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
