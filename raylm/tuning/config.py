"""The `tuning` config section: search space, scheduler, searcher, resources, outputs.

A recipe with a `tuning:` section is run by `raylm tune CONFIG`; every other section is the
base training config that each trial overrides with its sampled values.

    tuning:
      metric: val_loss
      mode: min
      num_samples: 8
      space:
        trainer.optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
        trainer.batch_size: {type: choice, values: [8, 16, 32]}
      scheduler: {type: asha, grace_period: 20}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ParamType = Literal["uniform", "loguniform", "choice", "randint", "grid"]


class ParamSpec(BaseModel):
    """One dimension of the search space, keyed by a dotted config key (`trainer.optimizer.lr`)."""

    model_config = ConfigDict(extra="forbid")

    type: ParamType = Field(..., description="uniform | loguniform | choice | randint | grid.")
    low: float | None = Field(None, description="uniform/loguniform/randint: lower bound (inclusive).")
    high: float | None = Field(
        None, description="uniform/loguniform: upper bound; randint: exclusive upper bound."
    )
    values: list[Any] | None = Field(None, description="choice/grid: the candidate values.")


class SchedulerConfig(BaseModel):
    """Trial scheduler, chosen by `type` (see raylm.tuning.schedulers)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "pbt", "fifo"] = Field(
        "asha", description="asha: stop weak trials early; pbt: exploit/explore; fifo: run all."
    )
    grace_period: int = Field(
        10, ge=1, description="ASHA: optimizer steps before a trial can be stopped."
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA: keep 1/reduction_factor of the trials at each rung."
    )
    perturbation_interval: int = Field(
        20, ge=1, description="PBT: optimizer steps between exploit/explore decisions."
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="PBT: bottom share that copies the top share."
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="PBT: chance that explore resamples instead of perturbing."
    )
    perturbation_factors: tuple[float, float] = Field(
        (1.2, 0.8), description="PBT: continuous values are multiplied by one of these."
    )
    synch: bool = Field(
        False, description="PBT: wait for every trial to reach a perturbation point and decide for all "
        "at once (slower trials pause the others). Unset: each trial decides on its own results, "
        "against whatever the others reported so far; a trial that finished first is never a donor.",
    )


class SearcherConfig(BaseModel):
    """Search algorithm, chosen by `type` (see raylm.tuning.searchers)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["random", "optuna", "hyperopt"] = Field(
        "random", description="random (and grid); optuna and hyperopt need their extras."
    )
    seed: int | None = Field(0, description="Seed of the searcher (None: not seeded).")


class ResourcesConfig(BaseModel):
    """What each trial's TorchTrainer asks for; it overrides the trainer section per trial."""

    model_config = ConfigDict(extra="forbid")

    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers in each trial.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each worker of a trial reserves.")
    gpus_per_worker: int = Field(
        0, ge=0, le=1,
        description="0 or 1: with 1, each worker of a trial takes a whole GPU (trainer.scaling.use_gpu=true).",
    )


class TuningConfig(BaseModel):
    """A Ray Tune sweep run by `raylm tune`: each trial trains the other sections plus its sample."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "sweep",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Sweep directory name under `storage_path`; the same name resumes the sweep.",
    )
    storage_path: str | None = Field(
        None, description="Where sweeps live (default: `<cluster.storage_path>/tune`)."
    )
    metric: str = Field("val_loss", description="Reported metric to optimise (val_loss, val_accuracy, ...).")
    mode: Literal["min", "max"] = Field("min", description="Minimise or maximise `metric`.")
    num_samples: int = Field(
        8, ge=1, description="Configurations sampled (with grid keys: repeats of the grid)."
    )
    space: dict[str, ParamSpec] = Field(
        default_factory=dict, description="Dotted config key -> distribution."
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description=SchedulerConfig.__doc__)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig, description=SearcherConfig.__doc__)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description=ResourcesConfig.__doc__)
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Default: as many trials as the cluster's CPUs/GPUs hold at once."
    )
    trial_max_failures: int = Field(
        0, ge=0, description="Retries of a failed trial before it is recorded as failed."
    )
    time_budget_s: float | None = Field(None, gt=0, description="Stop starting trials after this.")
    resume: bool = Field(
        True, description="Resume an unfinished sweep of the same name instead of starting anew."
    )
    export_best: bool = Field(True, description="Copy the best checkpoint's HF model into the sweep dir (an adapter "
                              "run's: the adapter directory, with its tokenizer).")
    merge_best: bool = Field(False, description="An adapter sweep: also write the best adapter merged into its base "
                             "(best_model_merged/).")
    plots: bool = Field(True, description="Write PNG plots of the sweep.")
