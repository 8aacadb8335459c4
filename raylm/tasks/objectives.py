"""What each task optimises, as a table that imports neither torch nor the task modules: the default of
`trainer.eval.best_metric` (which checkpoint is "best") and of a sweep's `tuning.metric`.

The root config's validator reads it (a sweep without `tuning.metric` optimises its task's), so it must
stay light; a test holds every built-in task to an entry here. A task outside raylm (an import path)
has its `objective` on its class, read by importing it.
"""

from __future__ import annotations

from typing import Protocol

from raylm.datasets.config import DataConfig
from raylm.tasks.names import load_class
from raylm.trainers.config import TrainerConfig


class Sections(Protocol):
    """What the table reads of a config: raylm.config.RootConfig (not imported: it imports this module)."""

    trainer: TrainerConfig
    data: DataConfig

# task -> (metric, "min" | "max"); seq2seq's depends on data.seq2seq.metric (see task_objective).
OBJECTIVES: dict[str, tuple[str, str]] = {
    "causal-lm": ("val_loss", "min"),
    "masked-lm": ("val_loss", "min"),
    "sequence-classification": ("val_accuracy", "max"),
    "token-classification": ("val_f1", "max"),
    "question-answering": ("val_f1", "max"),
    "seq2seq": ("val_bleu", "max"),
    "sft": ("val_loss", "min"),  # the loss on the trained (assistant) tokens of the validation split
}
SEQ2SEQ_METRICS = {"bleu": ("val_bleu", "max"), "rouge": ("val_rougeL", "max")}
HIGHER_IS_BETTER = {"val_accuracy", "val_f1", "val_exact_match", "val_precision", "val_recall",
                    "val_bleu", "val_rouge1", "val_rouge2", "val_rougeL", "val_nsp_accuracy"}


def task_objective(cfg: Sections) -> tuple[str, str]:
    """(metric, "min"|"max") that `trainer.task` optimises under this config."""
    trainer, data = cfg.trainer, cfg.data
    if trainer.task == "seq2seq":  # BLEU (translation) or ROUGE-L (summarization); the loss when nothing is decoded
        return ("val_loss", "min") if trainer.generation.eval_batches == 0 else SEQ2SEQ_METRICS[data.seq2seq.metric]
    if trainer.task in OBJECTIVES:
        return OBJECTIVES[trainer.task]
    return load_class(trainer.task).objective  # a task outside raylm says its own (imports its module)


def best_checkpoint_rule(cfg: Sections) -> tuple[str, str]:
    """(metric, "min"|"max") that ranks checkpoints: `trainer.eval.best_metric`, else the task's."""
    task_metric, task_mode = task_objective(cfg)
    metric = cfg.trainer.eval.best_metric or task_metric
    mode = cfg.trainer.eval.best_mode
    if mode == "auto":
        mode = task_mode if metric == task_metric else ("max" if metric in HIGHER_IS_BETTER else "min")
    return metric, mode
