"""Scoring: every prediction judged against its reference (:func:`judge`), then the task's
metrics over them (:func:`summarize`, :func:`score`), the functions ``mosgeo-lora eval`` and
``mosgeo-lora score`` both use.

``accuracy`` is the share of predictions whose extracted answer equals the reference; a
prediction with no answer in it (``unparsed``) is wrong. The label metrics (CoLA's Matthews
correlation, MRPC's F1 of the positive class, label 1) see an unparsed prediction as a class
of its own (:data:`UNPARSED`): it is never a positive, and a model that never answers has a
Matthews correlation of 0, not −1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Row, Task, TaskError

__all__ = [
    "UNPARSED",
    "METRICS",
    "Judgement",
    "judge",
    "summarize",
    "score",
    "matthews_correlation",
    "f1_score",
]


@dataclass(frozen=True)
class Judgement:
    """One prediction judged: the answer found in it, the reference, and whether they agree."""

    #: The extracted answer in the rule's own form, ``None`` if the prediction has none.
    extracted: Any
    #: The reference answer in the rule's own form.
    gold: Any
    #: Whether ``extracted`` equals ``gold``.
    correct: bool


#: The label an unparsed prediction gets in the label metrics.
UNPARSED = -1


def matthews_correlation(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation of labels: (c·n − Σ_k p_k t_k) / √((n² − Σ p_k²)(n² − Σ t_k²)),
    with n labels, c of them right, and p_k, t_k the predicted and true counts of class k
    (Gorodkin's K-class form; for two classes (tp·tn − fp·fn) / √(…)). 0 when a factor of
    the denominator is 0, as in scikit-learn, whose value GLUE reports for CoLA."""
    n = len(gold)
    c = sum(p == g for p, g in zip(pred, gold, strict=True))
    classes = set(pred) | set(gold)
    p_k = {k: sum(p == k for p in pred) for k in classes}
    t_k = {k: sum(g == k for g in gold) for k in classes}
    numerator = c * n - sum(p_k[k] * t_k[k] for k in classes)
    denominator = (n * n - sum(v * v for v in p_k.values())) * (
        n * n - sum(v * v for v in t_k.values())
    )
    return numerator / math.sqrt(denominator) if denominator else 0.0


def f1_score(pred: Sequence[int], gold: Sequence[int]) -> float:
    """F1 of the positive class (label 1): 2tp / (2tp + fp + fn); 0 when no label is positive
    (GLUE's MRPC score)."""
    tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold, strict=True))
    fp = sum(p == 1 and g != 1 for p, g in zip(pred, gold, strict=True))
    fn = sum(p != 1 and g == 1 for p, g in zip(pred, gold, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


#: Metrics a task may report besides accuracy: name → f(predicted labels, reference labels).
METRICS: dict[str, Callable[[Sequence[int], Sequence[int]], float]] = {
    "matthews_correlation": matthews_correlation,
    "f1": f1_score,
}


def judge(task: Task, predictions: Sequence[Any], rows: Sequence[Row]) -> list[Judgement]:
    """Each prediction (generated text, or a label) judged against its row's reference.

    Raises:
        TaskError: the counts differ, or a reference is not a valid answer.
    """
    if len(predictions) != len(rows):
        raise TaskError(
            f"{len(predictions)} predictions for {len(rows)} references of {task.name}: "
            "give one prediction per reference row, in the same order"
        )
    rule = task.answer
    out = []
    for number, (prediction, row) in enumerate(zip(predictions, rows, strict=True), start=1):
        try:
            gold = rule.gold(task.reference(row))
        except TaskError as e:
            raise TaskError(f"{task.name} reference row {number}: {e}") from None
        extracted = rule.extract(prediction)
        correct = extracted is not None and bool(rule.equal(extracted, gold))
        out.append(Judgement(extracted, gold, correct))
    return out


def summarize(task: Task, judged: Sequence[Judgement]) -> dict[str, Any]:
    """``{"task", "n", "correct", "accuracy", "unparsed", <the task's metrics>}`` of judged
    predictions."""
    n = len(judged)
    if n == 0:
        raise TaskError(f"no references to score {task.name} on")
    correct = sum(j.correct for j in judged)
    out: dict[str, Any] = {
        "task": task.name,
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "unparsed": sum(j.extracted is None for j in judged),
    }
    if task.metrics:
        gold = [j.gold for j in judged]
        pred = [UNPARSED if j.extracted is None else j.extracted for j in judged]
        for name in task.metrics:
            out[name] = METRICS[name](pred, gold)
    return out


def score(task: Task, predictions: Sequence[Any], rows: Sequence[Row]) -> dict[str, Any]:
    """The scores of ``predictions`` against ``rows``: :func:`summarize` of :func:`judge`."""
    return summarize(task, judge(task, predictions, rows))
