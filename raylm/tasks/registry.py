"""The tasks `trainer.task` names, in one table. A new task is a `Task` subclass (raylm.tasks.corpus)
listed here, plus its entry in raylm.tasks.objectives."""

from __future__ import annotations

from raylm.tasks.corpus import CausalLM, MaskedLM, SequenceClassification, Task
from raylm.tasks.downstream import QuestionAnswering, TokenClassification
from raylm.tasks.seq2seq import Seq2Seq

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    CausalLM, MaskedLM, SequenceClassification, TokenClassification, QuestionAnswering, Seq2Seq)}


def get_task(name: str) -> Task:
    return TASKS[name]()
