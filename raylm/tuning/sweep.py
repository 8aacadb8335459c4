"""Run (or resume) a sweep: build the Tuner from the `tuning` section, fit, write the outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from raylm.config import RootConfig, absolute_paths, validate
from raylm.errors import UserError
from raylm.tuning.config import TuningConfig
from raylm.tuning.driver import (
    SweepPaths,
    TrainerFactory,
    is_bad_metric,
    make_driver,
    sweep_paths,
)
from raylm.tuning.plots import write_plots
from raylm.tuning.resources import max_concurrent
from raylm.tuning.results import SweepSummary, summarise
from raylm.tuning.schedulers import build_scheduler
from raylm.tuning.searchers import build_searcher
from raylm.tuning.space import check_space, param_space

log = logging.getLogger(__name__)

# The trial itself only waits on its TorchTrainer, whose workers ask for their own CPUs.
# Tune refuses 0, and a whole CPU per idle driver would cost one trial slot in four on a
# 1-worker sweep; the concurrency limit (resources.py) is what keeps trials from starving.
DRIVER_CPU = 0.01


def budget_steps(cfg: RootConfig) -> int:
    """The full budget of a trial in steps (the largest max_steps the space can sample)."""
    t = cfg.tuning or TuningConfig()
    spec = t.space.get("trainer.max_steps")
    if spec is None:
        return cfg.trainer.max_steps
    values = spec.values if spec.values else [spec.high]
    return int(max([cfg.trainer.max_steps, *[v for v in values if v is not None]]))


def _trainable(cfg: RootConfig, paths: SweepPaths, factory: TrainerFactory | None) -> Any:
    from ray import tune

    prepare_data = factory is None
    if factory is None:
        from raylm.trainers import build_trainer as factory
    assert cfg.tuning is not None
    driver = make_driver(cfg.model_dump(mode="json"), cfg.tuning, paths, factory, prepare_data)
    return tune.with_resources(driver, {"cpu": DRIVER_CPU})


def prepare_base_data(cfg: RootConfig) -> None:
    """Shards for the base data config, prepared once before any trial starts."""
    from raylm.tasks.registry import prepare_data

    prepare_data(cfg.data, cfg.trainer.task)


def state_api_reachable(wait_s: float = 20.0) -> bool:
    """Whether Ray's state API (served by the dashboard) answers; it may take a few seconds to
    come up after ray.init."""
    import time

    import ray
    from ray.util.state import list_actors

    # This driver's own cluster, by its GCS address: left to auto-detection, the state client
    # refuses when another Ray instance runs on the same machine ("multiple active Ray instances").
    address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            list_actors(address=address, limit=1, timeout=5, raise_on_missing_output=False)
            return True
        except Exception as e:  # no dashboard: ConnectionError/RayStateApiException, not yet up: timeouts
            if time.monotonic() >= deadline:
                log.debug("state API unreachable: %s", e)
                return False
            time.sleep(1.0)


def check_trial_cleanup(t: TuningConfig) -> None:
    """Ray Train (V2) frees the placement group of a trial that Tune stops (ASHA, PBT, a NaN
    stop) only through a cleaner that asks the state API whether the trial is still alive
    (ray-project/ray#54305). Without the dashboard every stopped trial keeps its CPUs/GPUs
    until the job ends, and an early-stopping sweep starves, then hangs."""
    if state_api_reachable():
        return
    problem = ("this Ray cluster has no state API (dashboard): Ray Train cannot free the workers of a "
               "trial that Tune stops, so an early-stopping sweep would run out of resources and hang")
    hint = ("start the cluster with its dashboard (`ray start --head --include-dashboard=true`; KubeRay "
            "clusters have one), keep cluster.include_dashboard=true for the embedded Ray, "
            "or use tuning.scheduler.type=fifo")
    if t.scheduler.type != "fifo":
        raise UserError(problem, hint=hint)
    log.warning("%s; a trial stopped for a NaN metric will hold its resources (%s)", problem, hint)


def _stop_on_bad_metric(metric: str) -> Any:
    # A diverged trial that keeps reporting NaN would hold its slot to the end; stop it and
    # let the summary report it as failed.
    def stop(trial_id: str, result: dict) -> bool:
        return is_bad_metric(result.get(metric))

    return stop


def _new_tuner(cfg: RootConfig, paths: SweepPaths, trainable: Any, limit: int,
               callbacks: Sequence[Any]) -> Any:
    from ray import tune

    t = cfg.tuning
    assert t is not None
    return tune.Tuner(
        trainable,
        param_space=param_space(t),
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            scheduler=build_scheduler(t, budget_steps(cfg)),
            search_alg=build_searcher(t, limit),
            num_samples=t.num_samples,
            time_budget_s=t.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=paths.name,
            storage_path=paths.root,
            failure_config=tune.FailureConfig(max_failures=t.trial_max_failures, fail_fast=False),
            stop=_stop_on_bad_metric(t.metric),
            callbacks=list(callbacks),
            verbose=1,
        ),
    )


def build_tuner(cfg: RootConfig, *, factory: TrainerFactory | None = None,
                callbacks: Sequence[Any] = ()) -> tuple[Any, bool]:
    """(Tuner, resumed): a restored Tuner when the sweep dir holds an unfinished sweep.

    `cfg` should hold absolute local paths (run_sweep sees to it): trials run elsewhere.
    """
    import ray
    from ray import tune

    t = cfg.tuning
    if t is None:
        raise UserError("this config has no 'tuning' section", hint="see configs/tune-*.yaml")
    check_space(t, cfg.model_dump(mode="json"))
    paths = sweep_paths(cfg)
    restorable = tune.Tuner.can_restore(str(paths.sweep_dir))
    if restorable and not t.resume:
        raise UserError(f"{paths.sweep_dir} already holds a sweep and tuning.resume is false",
                        hint="choose another tuning.name, delete that directory, or set tuning.resume=true")
    check_trial_cleanup(t)
    limit = max_concurrent(ray.cluster_resources(), t.resources, t.max_concurrent_trials)
    if factory is None:
        prepare_base_data(cfg)
    trainable = _trainable(cfg, paths, factory)
    if restorable:
        log.warning("resuming the sweep in %s (its saved search space and scheduler state are used)",
                    paths.sweep_dir)
        return tune.Tuner.restore(str(paths.sweep_dir), trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False), True
    log.info("sweep %s: up to %d trials at once", paths.sweep_dir, limit)
    return _new_tuner(cfg, paths, trainable, limit, callbacks), False


def run_sweep(cfg: RootConfig, *, factory: TrainerFactory | None = None,
              callbacks: Sequence[Any] = ()) -> SweepSummary:
    """Run or resume the sweep described by `cfg.tuning` on the connected Ray; write outputs."""
    cfg = validate(absolute_paths(cfg.model_dump(mode="json")), origin="config")
    tuner, resumed = build_tuner(cfg, factory=factory, callbacks=callbacks)
    grid = tuner.fit()
    return summarise(grid, cfg, sweep_paths(cfg), budget_steps(cfg), resumed=resumed,
                     plot=write_plots if cfg.tuning.plots else None)
