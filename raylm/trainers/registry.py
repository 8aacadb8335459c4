"""The tasks `trainer.task` names, in one table. A new task is a `Task` subclass (raylm.trainers.tasks)
listed here, plus its entry in raylm.trainers.objectives."""

from __future__ import annotations

from raylm.trainers.downstream import QuestionAnswering, TokenClassification
from raylm.trainers.seq2seq import Seq2Seq
from raylm.trainers.tasks import CausalLM, MaskedLM, SequenceClassification, Task

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    CausalLM, MaskedLM, SequenceClassification, TokenClassification, QuestionAnswering, Seq2Seq)}


def get_task(name: str) -> Task:
    return TASKS[name]()
