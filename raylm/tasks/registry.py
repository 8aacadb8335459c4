"""The tasks `trainer.task` names, and how an exported model finds its task again.

A built-in task is a name in raylm.tasks.names; a task outside raylm is named by its import path,
`module:Class` (`trainer.task: my_pkg.tasks:TokenCount`): a `raylm.tasks.base.Task` subclass that the
driver, the Ray workers and `raylm eval/predict` import (its module must be importable there: installed,
or on PYTHONPATH). Task modules are imported when a task is asked for, not at import of this module.
"""

from __future__ import annotations

import json
import os

from raylm.config import RootConfig
from raylm.datasets.config import DataConfig
from raylm.errors import UserError
from raylm.tasks.base import Task
from raylm.tasks.meta import ModelMeta
from raylm.tasks.names import ARCHITECTURES, BUILTIN, load_class
from raylm.trainers import adapters


def task_class(name: str) -> type[Task]:
    """The class `trainer.task` names (imports its module)."""
    cls = load_class(name)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"trainer.task: {name} is not a raylm.tasks.base.Task subclass")
    return cls


def get_task(name: str) -> Task:
    """An instance of the task `trainer.task` names; its `name` is what manifests and exports record."""
    task = task_class(name)()
    if not task.name or name not in BUILTIN:
        task.name = name  # a task outside raylm goes by its import path: what re-imports it
    return task


def builtin_tasks() -> dict[str, type[Task]]:
    """Every built-in task's class (imports them all)."""
    return {name: task_class(name) for name in BUILTIN}


def prepare_data(data: DataConfig, task: str, force: bool = False) -> dict:
    """`raylm prepare`: the task's shards + manifest (Ray initialised; a no-op when up to date)."""
    return get_task(task).prepare(data, force)


def task_of_export(model_dir: str) -> str:
    """The task an exported model was trained for: `raylm_task` in its config.json, else its architecture.
    An adapter directory (peft's adapter_config.json, no config.json): the task in its raylm.json, else its
    base model's."""
    path = os.path.join(model_dir, "config.json")
    if adapters.is_adapter_dir(model_dir):
        task = adapters.read_raylm_json(model_dir).get("task")
        return task or task_of_export(adapters.adapter_base(model_dir))
    if not os.path.isfile(path):
        raise UserError(f"'{model_dir}' is not a Hugging Face model directory (no config.json)",
                        hint="pass an exported model, e.g. runs/ner/export")
    with open(path) as f:
        conf = json.load(f)
    if conf.get("raylm_task"):
        return conf["raylm_task"]
    archs = conf.get("architectures") or []
    for arch in archs:
        for suffix, task in ARCHITECTURES.items():
            if arch.endswith(suffix):
                return task
    raise UserError(f"{model_dir}: a {archs or 'model without architectures'} has no per-file predict/eval",
                    hint="predict and eval --input take the models raylm trains (an export of `raylm train`)")


def model_meta(cfg: RootConfig, manifest: dict) -> ModelMeta:
    """What workers need from the manifest (they may not see the driver's filesystem)."""
    task = get_task(cfg.trainer.task)
    values = {k: manifest.get(k) for k in (*ModelMeta.field_names(), *task.meta_keys)}  # e.g. NER's tag names
    values |= task.extra_meta(cfg, manifest)  # e.g. seq2seq's tokenizer, a classifier's number of labels
    if values["pad_id"] is None:
        values["pad_id"] = values["eos_id"]
    return ModelMeta.from_dict(values)
