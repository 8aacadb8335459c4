"""One dispatcher for `raylm eval` and `raylm predict`: the export's task (`raylm_task` in its config.json,
else its architecture: raylm.tasks.registry.task_of_export) scores or predicts; no task is named here."""

from __future__ import annotations

from raylm.tasks.base import GenerateOptions
from raylm.tasks.registry import get_task, task_of_export


def evaluate_file(model_dir: str, path: str, task: str | None = None) -> dict:
    """`raylm eval MODEL --input FILE`: the task's metrics on a raw file; `task` scores the model as another task
    than its own (a pretrained causal LM as sft, beside its instruction-tuned version)."""
    return get_task(task or task_of_export(model_dir)).evaluate_file(model_dir, path)


def predict_file(model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
    """`raylm predict MODEL --input FILE --output OUT.jsonl` (batch_size: the task's default when None)."""
    return get_task(task_of_export(model_dir)).predict_file(model_dir, path, output, batch_size)


def evaluate_prepared(model_dir: str, prepared_dir: str, manifest: dict, split: str = "validation",
                      max_batches: int | None = None) -> dict:
    """`raylm eval MODEL --config C`: the metrics of the task the data was prepared for."""
    task = get_task(manifest.get("task") or "causal-lm")
    return task.evaluate_prepared(model_dir, prepared_dir, manifest, split, max_batches)


def generate(model_dir: str, prompt: str, options: GenerateOptions) -> str:
    """`raylm generate MODEL --prompt TEXT`: a causal LM's continuation, a seq2seq model's translation/summary."""
    return get_task(task_of_export(model_dir)).generate(model_dir, prompt, options)
