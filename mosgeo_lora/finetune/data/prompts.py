"""The prompt format, answer extraction and exact-match scoring: one place that decides what
the model sees and how its answer is judged.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["build_prompt", "target_text", "extract_answer", "normalize_answer", "exact_match"]


def build_prompt(question: str) -> str:
    """The plain-text prompt (no chat template, so any causal LM can take it)."""
    return f"Question: {question}\nAnswer:"


def target_text(answer: str) -> str:
    """What follows the prompt in training; the tokenizer step appends EOS."""
    return f" {answer}"


# Where a continuation stops being the answer: the model starting a new problem, or special
# tokens decoded as text.
_STOP_MARKERS = ("\n", "Question:", "<|", "</s>")


def extract_answer(generation: str) -> str:
    """The answer in a model's continuation of :func:`build_prompt`: its first line, without
    a repeated ``Answer:`` prefix, surrounding whitespace or a trailing period."""
    text = generation.lstrip()
    for marker in _STOP_MARKERS:
        text = text.split(marker, 1)[0]
    text = text.strip()
    if text.lower().startswith("answer:"):
        text = text[len("answer:") :].strip()
    return text.rstrip(".").strip()


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:/\d+)?")
_LETTER_CHOICE = re.compile(r"\(([a-z])\)")


def _normalize_item(item: str) -> str:
    """One comma-separated item: numbers become their exact value as 'p/q' or 'p'."""
    item = item.strip()
    choice = _LETTER_CHOICE.fullmatch(item)
    if choice:  # "(b)" names the same option as "b"
        return choice.group(1)
    if _NUMBER.fullmatch(item):
        try:
            value = Fraction(item)
        except (ValueError, ZeroDivisionError):
            return item
        return str(value.numerator) if value.denominator == 1 else f"{value}"
    return item


def normalize_answer(s: str) -> str:
    """Canonical form for comparison: whitespace collapsed, case folded, trailing period
    dropped, list items separated by ', ', and numbers replaced by their exact value, so
    '0.50', '.5' and '1/2' agree, as do '-0' and '0' ('0.333' and '1/3' do not)."""
    text = " ".join(s.split()).casefold().rstrip(".").strip()
    return ", ".join(_normalize_item(item) for item in text.split(","))


def exact_match(prediction: str, gold: str) -> bool:
    """Whether `prediction` (e.g. ``extract_answer(generation)``) equals `gold` after
    :func:`normalize_answer`. An empty prediction never matches."""
    pred = normalize_answer(prediction)
    return pred != "" and pred == normalize_answer(gold)
