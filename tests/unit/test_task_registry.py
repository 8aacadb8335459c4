"""The task registry and the objectives table: every task `trainer.task` accepts is registered and has an
objective; the root config reads the table without importing torch or any task module (issue 28)."""

from __future__ import annotations

import subprocess
import sys
import typing

from raylm.tasks.objectives import OBJECTIVES
from raylm.tasks.registry import TASKS, get_task
from raylm.trainers.config import TrainerConfig


def test_every_configurable_task_is_registered_with_an_objective():
    names = set(typing.get_args(TrainerConfig.model_fields["task"].annotation))
    assert set(TASKS) == names == set(OBJECTIVES)
    for name in names:
        task = get_task(name)
        assert task.name == name and OBJECTIVES[name][1] in ("min", "max")


def test_the_config_validator_imports_neither_torch_nor_the_tasks():
    code = ("import sys; from raylm.config import load_config; "
            "cfg = load_config(None, ['tuning.space={}', 'trainer.task=token-classification']); "
            "print(cfg.tuning.metric, 'torch' in sys.modules, any(m.startswith('raylm.tasks.corpus') or "
            "m == 'raylm.tasks.registry' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["val_f1", "False", "False"]
