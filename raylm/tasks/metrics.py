"""Downstream-task metrics on plain Python lists: each takes (predictions, references) and returns
a dict of floats, on the scale the reference implementation reports (as HF `evaluate` does):

- `entity_scores`: seqeval (CoNLL-2000 conlleval semantics), precision/recall/F1 in [0, 1];
- `squad_scores`: the official SQuAD v1.1/v2.0 script's exact match and F1, in [0, 100];
- `bleu`: sacreBLEU corpus BLEU (Post 2018), in [0, 100];
- `rouge`: Google's rouge-score ROUGE-1/2/L F-measure, in [0, 1].

The metric packages are imported inside each function: the training loop imports this module on
every worker, and only the task that uses a metric pays for its import (seqeval pulls scikit-learn).
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["bleu", "classification_metrics", "confusion_counts", "entity_scores", "normalize_answer", "rouge",
           "squad_scores"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


# ---------------------------------------------------------------- NER


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1, token accuracy, and F1 per entity type (`f1_PER`, ...).

    An entity counts only when its type and both boundaries match. Tags are read as conlleval reads
    them: an `I-X` that does not continue an `X` begins a new entity, a type change ends one.
    """
    from seqeval.metrics import accuracy_score, classification_report

    preds, refs = [list(p) for p in predictions], [list(r) for r in references]
    if [len(p) for p in preds] != [len(r) for r in refs]:
        raise ValueError("each prediction must have as many tags as its reference")
    report = classification_report(refs, preds, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    out = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
           "accuracy": accuracy_score(refs, preds) if any(refs) else 0.0}
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = row["f1-score"]
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------- SQuAD


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # v2: an empty answer scores 1 only against an empty gold answer
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 in [0, 100], each the max over a question's gold answers.

    A question with no gold answers (SQuAD v2 unanswerable) has the gold answer "": only an empty
    prediction scores.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    em = f1 = 0.0
    for pred, golds in zip(predictions, references):
        golds = list(golds) or [""]
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    n = max(1, len(predictions))
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# ---------------------------------------------------------------- translation, summarization


def _reference_lists(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    return [[r] if isinstance(r, str) else list(r) for r in references]


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         tokenize: str = "13a") -> dict[str, float]:
    """sacreBLEU corpus BLEU; each reference a string or a list of strings (several references).

    Returns bleu, brevity_penalty and precision_1..4 (n-gram precisions, in [0, 100]).
    """
    import sacrebleu

    refs = _reference_lists(references, len(predictions))
    width = max((len(r) for r in refs), default=1)
    # sacreBLEU wants one stream per reference position; None pads questions with fewer references.
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    score = sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize)
    out = {"bleu": score.score, "brevity_penalty": score.bp}
    out |= {f"precision_{n + 1}": p for n, p in enumerate(score.precisions)}
    return {k: float(v) for k, v in out.items()}


def rouge(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
          use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (max over a prediction's references).

    Stemming on by default: ROUGE-1.5.5 `-m`, the setting summarization papers report.
    """
    from rouge_score import rouge_scorer

    refs = _reference_lists(references, len(predictions))
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=use_stemmer)
    totals = dict.fromkeys(keys, 0.0)
    for pred, golds in zip(predictions, refs):
        scores = scorer.score_multi(golds, pred)
        for k in keys:
            totals[k] += scores[k].fmeasure
    n = max(1, len(predictions))
    return {k: v / n for k, v in totals.items()}


# ---------------------------------------------------------------- classification


def confusion_counts(pred: torch.Tensor, labels: torch.Tensor, num_labels: int) -> np.ndarray:
    """Counts of (true label, predicted label), flattened row-major: summed over batches (and
    over ranks with an all-reduce) they are everything classification_metrics needs."""
    idx = labels.long().flatten() * num_labels + pred.long().flatten()
    return torch.bincount(idx.cpu(), minlength=num_labels * num_labels).numpy().astype(np.float64)


def classification_metrics(confusion: np.ndarray | list[float]) -> dict[str, float | int | str]:
    """Accuracy and F1 from summed confusion counts (see confusion_counts; K*K values).

    F1 is the positive class's (label 1) for two classes and the macro average over the classes
    otherwise: with more classes, "class 1 vs the rest" says little about the classifier. Classes
    that occur neither as a label nor as a prediction are left out of the macro average.
    """
    c = np.asarray(confusion, dtype=np.float64)
    k = int(round(math.sqrt(c.size)))
    c = c.reshape(k, k)
    total = c.sum()
    tp = np.diag(c)
    fp, fn = c.sum(axis=0) - tp, c.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if k <= 2:
        value, average = float(f1[1]) if k == 2 else 0.0, "binary"
    else:
        value, average = float(f1[denom > 0].mean()) if (denom > 0).any() else 0.0, "macro"
    return {"accuracy": float(tp.sum() / total) if total else 0.0, "f1": value, "f1_average": average,
            "examples": int(total)}
