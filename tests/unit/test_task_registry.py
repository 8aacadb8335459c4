"""The task registry and the objectives table: every built-in task is registered and has an objective; a
task outside raylm is named by import path; the root config reads the table without importing torch or
any task module (issue 28)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raylm.config import load_config
from raylm.errors import UserError
from raylm.tasks.base import Task
from raylm.tasks.names import BUILTIN
from raylm.tasks.objectives import OBJECTIVES
from raylm.tasks.registry import builtin_tasks, get_task, task_class

pytestmark = pytest.mark.unit


def test_every_builtin_task_is_registered_with_an_objective():
    assert set(builtin_tasks()) == set(BUILTIN) == set(OBJECTIVES)
    for name in BUILTIN:
        task = get_task(name)
        assert task.name == name and OBJECTIVES[name][1] in ("min", "max")


class _Outside(Task):
    objective = ("val_count_error", "min")


def test_a_task_outside_raylm_is_named_by_its_import_path():
    path = f"{__name__}:_Outside"
    cfg = load_config(None, [f"trainer.task={path}", "tuning.space={}"])
    assert get_task(path).name == path  # what manifests and exports record: it re-imports the class
    assert cfg.tuning.metric == "val_count_error"  # its own objective
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_config(None, ["trainer.task=nope"])
    with pytest.raises(UserError, match="cannot import"):
        task_class("no_such_module_here:Task")
    with pytest.raises(UserError, match="not a raylm.tasks.base.Task"):
        task_class("raylm.tasks.names:BUILTIN")


def test_the_config_validator_imports_neither_torch_nor_the_tasks():
    code = ("import sys; from raylm.config import load_config; "
            "cfg = load_config(None, ['tuning.space={}', 'trainer.task=token-classification']); "
            "print(cfg.tuning.metric, 'torch' in sys.modules, any(m.startswith('raylm.tasks.') and "
            "m not in ('raylm.tasks.names', 'raylm.tasks.objectives') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["val_f1", "False", "False"]
