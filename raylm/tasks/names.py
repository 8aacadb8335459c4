"""The names `trainer.task` takes, torch-free: the built-in tasks' import paths and the check of a name.
The config validator and the objectives table read this; `raylm.tasks.registry` turns a name into a task."""

from __future__ import annotations

import importlib

from raylm.errors import UserError

BUILTIN: dict[str, str] = {
    "causal-lm": "raylm.tasks.corpus:CausalLM",
    "masked-lm": "raylm.tasks.corpus:MaskedLM",
    "sequence-classification": "raylm.tasks.corpus:SequenceClassification",
    "token-classification": "raylm.tasks.downstream:TokenClassification",
    "question-answering": "raylm.tasks.downstream:QuestionAnswering",
    "seq2seq": "raylm.tasks.seq2seq:Seq2Seq",
    "sft": "raylm.tasks.sft:SFT",
}
# An export's task from its architecture's name, for exports that do not say (`raylm_task` in config.json
# is written since tasks outside raylm exist) and Hugging Face models raylm did not train.
ARCHITECTURES: dict[str, str] = {
    "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering",
    # seq2seq: BART/T5 (...ForConditionalGeneration), Marian (MarianMTModel), a warm-started BERT2BERT
    "ForConditionalGeneration": "seq2seq", "MTModel": "seq2seq", "EncoderDecoderModel": "seq2seq",
    "ForPreTraining": "masked-lm",  # BERT MLM + NSP (data.nsp)
    "ForCausalLM": "causal-lm", "LMHeadModel": "causal-lm", "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
}


def is_import_path(name: str) -> bool:
    """`module:Class`, a task outside raylm."""
    module, _, attr = name.partition(":")
    return bool(module and attr and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier())


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a task (one line), or None; imports nothing."""
    if name in BUILTIN or is_import_path(name):
        return None
    return f"unknown task '{name}': one of {', '.join(BUILTIN)}, or a Task class as module:Class"


def load_class(name: str) -> type:
    """The class `name` stands for (imports its module; a lazy import by design: task modules import torch)."""
    if (problem := name_problem(name)) is not None:
        raise UserError(f"trainer.task: {problem}")
    module, _, attr = BUILTIN.get(name, name).partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"trainer.task: cannot import {name}: {err}",
                        hint="install the task's package or put its directory on PYTHONPATH") from None
