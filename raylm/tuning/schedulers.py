"""Trial schedulers by `type:` (asha, pbt, fifo), all measured in optimizer steps.

Progress is the `step` the loop reports, so `grace_period` and `perturbation_interval` read in
the same unit as `trainer.max_steps`, whatever the eval cadence.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)

from raylm.tuning.config import TuningConfig
from raylm.tuning.space import pbt_mutations

TIME_ATTR = "step"
# Key TuneReportCallback adds to a result that came with a Train checkpoint.
CHECKPOINT_PATH_KEY = "checkpoint_path"
EXPLOITS_FILE = "pbt_exploits.jsonl"
# Key of a PBT clone's Tune config holding its exploit record (checkpoint, donor_step, n, run).
EXPLOIT_KEY = "raylm_exploit"


def clone_run_name(trial_id: str, n: int) -> str:
    """The Train run of a trial's n-th PBT exploit: a fresh run per exploit, so Train never
    auto-resumes another clone's checkpoints; the same one when the clone is paused and resumed."""
    return f"{trial_id}-exploit{n}"


class TrainV2PBT(PopulationBasedTraining):
    """PBT whose exploit clones the better trial's latest *Ray Train* checkpoint.

    With Train V2, TuneReportCallback forwards metrics and the checkpoint's path, but no Tune
    checkpoint: stock PBT would find "no checkpoint" and skip every exploit. Here the top
    trial's last reported checkpoint path stands in for a Tune save (no copy is made).

    The exploit travels in the clone's config (EXPLOIT_KEY): the checkpoint it restores, its
    step, and the exploit's number, which names the clone's Train run. The driver restores
    exactly that checkpoint (not `tune.get_checkpoint()`), so what pbt_exploits.jsonl records is
    what the clone restored, and a second exploit from the same checkpoint starts a new run
    instead of auto-resuming the first clone's later checkpoints.
    """

    def __init__(self, *args: Any, budget_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget = budget_steps
        self._latest_ckpt: dict[str, tuple[str, int]] = {}  # trial_id -> (path, step), every result
        self._offered: dict[str, tuple[str, int]] = {}  # trial_id -> what a clone of it restores
        self._exploits: dict[str, int] = {}  # trial_id -> exploits so far
        self._pending: dict[str, Any] | None = None  # the exploit _get_new_config puts in the config

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(CHECKPOINT_PATH_KEY):
            self._latest_ckpt[trial.trial_id] = (result[CHECKPOINT_PATH_KEY], int(result.get(TIME_ATTR, -1)))
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list) -> None:
        from ray.tune import Checkpoint

        state = self._trial_state[trial]
        offer = self._latest_ckpt.get(trial.trial_id) if trial in upper_quantile else None
        # A checkpoint at the end of the budget leaves a clone nothing to train (and it would
        # never write a checkpoint of its own): only earlier ones are offered.
        if offer and self._budget is not None and offer[1] >= self._budget:
            offer = None
        state.last_checkpoint = Checkpoint.from_directory(offer[0]) if offer else None
        if offer:
            self._offered[trial.trial_id] = offer
            self._num_checkpoints += 1
        if trial not in lower_quantile:
            return
        donors = [t for t in upper_quantile if self._trial_state[t].last_checkpoint is not None]
        if donors:
            # PBT picks a random top trial; only those with a checkpoint can be cloned.
            donor = random.choice(donors)
            self._pending = self._record(trial, donor)
            self._exploit(tune_controller, trial, donor)
            self._pending = None

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        config, operations = super()._get_new_config(trial, trial_to_clone)
        return {**config, EXPLOIT_KEY: self._pending}, operations

    def _record(self, trial: Any, donor: Any) -> dict[str, Any]:
        """Append the exploit to <sweep>/pbt_exploits.jsonl (the summary and tests read it)."""
        path, step = self._offered[donor.trial_id]  # the checkpoint _exploit hands the clone
        n = self._exploits[trial.trial_id] = self._exploits.get(trial.trial_id, 0) + 1
        rec = {"trial": trial.trial_id, "donor": donor.trial_id, "checkpoint": path, "donor_step": step,
               "trial_step": int(trial.last_result.get(TIME_ATTR, -1)), "n": n,
               "run": clone_run_name(trial.trial_id, n)}
        with open(os.path.join(trial.local_experiment_path, EXPLOITS_FILE), "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def _asha(t: TuningConfig, max_steps: int) -> TrialScheduler:
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=max_steps,
        grace_period=min(t.scheduler.grace_period, max_steps),
        reduction_factor=t.scheduler.reduction_factor,
    )


def _pbt(t: TuningConfig, max_steps: int) -> TrialScheduler:
    s = t.scheduler
    return TrainV2PBT(
        time_attr=TIME_ATTR,
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations=pbt_mutations(t),
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        perturbation_factors=s.perturbation_factors,
        # Asynchronous by default: a trial with a newer checkpoint than the exploit source keeps training.
        synch=s.synch,
        budget_steps=max_steps,
    )


def _fifo(t: TuningConfig, max_steps: int) -> TrialScheduler:
    return FIFOScheduler()


SCHEDULERS: dict[str, Callable[[TuningConfig, int], TrialScheduler]] = {
    "asha": _asha,
    "pbt": _pbt,
    "fifo": _fifo,
}


def build_scheduler(tuning: TuningConfig, max_steps: int) -> TrialScheduler:
    """The scheduler named by `tuning.scheduler.type`; `max_steps` is the full trial budget."""
    return SCHEDULERS[tuning.scheduler.type](tuning, max_steps)
