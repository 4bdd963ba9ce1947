"""Answer rules: how an answer is found in generated text and compared with the reference.

Four rules, one per kind of answer. Each has ``extract(prediction)`` (the answer in a
generation, or ``None`` when it has none), ``gold(reference)`` (the reference in the same
form), ``equal(extracted, gold)`` and ``show(extracted)`` (the extracted answer as JSON text).

* :class:`NumberAnswer` (GSM8K, SVAMP, MAWPS): numbers compared as numbers.
* :class:`ChoiceAnswer` (AQuA): an option letter.
* :class:`MathAnswer` (MATH500): mathematical equivalence by Hugging Face's ``math-verify``.
* :class:`LabelAnswer` (CoLA, MRPC): a class label, written as a number or a word.

**Where the answer is.** The *anchors* are ``####``, ``answer is``, ``answer:`` and
``\\boxed{`` (case ignored). When a generation has one, the answer is read right after the
last anchor (the first number, or the first option letter); when it has none, it is the
last number of the text (the last ``(C)`` / ``C)`` for options). So
``"5 apples and 3 pears, 8 in all"`` answers 8, ``"The answer is 8. Next question: 2 + 2"``
answers 8 too.

**What is a number.** ``1,234`` (thousands separators), ``$5.00`` (currency signs dropped),
``5.0`` and ``5`` (the same value), ``-3`` and ``−3`` (ASCII or Unicode minus), ``3/4``
and ``\\frac{3}{4}`` (fractions), ``50%`` (read as 50), ``.5``. Numbers are compared
exactly as fractions, or within a relative 1e-6 (a reference stored as the float
0.3333333333 equals ``1/3``). A mixed number (``1 1/2``) is not understood.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .base import TaskError

__all__ = [
    "ANCHORS",
    "parse_number",
    "extract_number",
    "extract_choice",
    "NumberAnswer",
    "ChoiceAnswer",
    "MathAnswer",
    "LabelAnswer",
]

#: Where an answer starts, in a generation: the text after the last of them is read first.
ANCHORS: tuple[str, ...] = ("####", "answer is", "answer:", "\\boxed{")
_ANCHOR = re.compile("|".join(re.escape(a) for a in ANCHORS), re.IGNORECASE)

_MINUS = str.maketrans({"−": "-", "–": "-"})  # Unicode minus and en dash (as in "−3")
_CURRENCY = re.compile(r"[$€£¥]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}")
# a sign only where it cannot be a subtraction (not after a digit, letter or bracket)
_NUMBER = re.compile(
    r"(?<![\w.)\]])(?P<sign>-)?(?P<num>\d+(?:\.\d+)?|\.\d+)(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_REL_TOL = Fraction(1, 10**6)


def _normalize_numbers(text: str) -> str:
    text = text.translate(_MINUS)
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = _CURRENCY.sub("", text)
    return _THOUSANDS.sub("", text)


def _value(match: re.Match) -> Fraction | None:
    try:
        value = Fraction(match["num"])
        if match["den"] is not None:
            value /= Fraction(match["den"])
    except ZeroDivisionError:
        return None
    return -value if match["sign"] else value


def _after_last_anchor(text: str) -> str | None:
    anchors = list(_ANCHOR.finditer(text))
    return text[anchors[-1].end() :] if anchors else None


def parse_number(value: Any) -> Fraction | None:
    """The first number in ``value`` (text or a number) as an exact fraction, or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        # 0.1 -> 1/10, the decimal a person wrote; NaN and infinities are no answer
        return Fraction(repr(value)) if math.isfinite(value) else None
    match = _NUMBER.search(_normalize_numbers(str(value)))
    return _value(match) if match else None


def extract_number(text: str) -> Fraction | None:
    """The answer of a generation as a number (the rule in the module docstring), or ``None``."""
    text = _normalize_numbers(str(text))
    tail = _after_last_anchor(text)
    if tail is not None:
        match = _NUMBER.search(tail)
        if match:
            return _value(match)
    matches = list(_NUMBER.finditer(text))
    return _value(matches[-1]) if matches else None


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    return a == b or abs(a - b) <= _REL_TOL * max(Fraction(1), abs(b))


@dataclass(frozen=True)
class NumberAnswer:
    """A numeric answer (see the module docstring for what counts as a number)."""

    def extract(self, prediction: Any) -> Fraction | None:
        """The number a generation answers."""
        if isinstance(prediction, (int, float)) and not isinstance(prediction, bool):
            return parse_number(prediction)
        return extract_number(str(prediction))

    def gold(self, reference: Any) -> Fraction:
        """The reference as a number."""
        value = parse_number(reference)
        if value is None:
            raise TaskError(f"reference answer {reference!r} is not a number")
        return value

    def equal(self, extracted: Fraction, gold: Fraction) -> bool:
        """Equal as fractions, or within a relative 1e-6."""
        return _numbers_equal(extracted, gold)

    def show(self, extracted: Fraction | None) -> str | None:
        """``"1234"``, ``"-0.5"``, ``"1/3"``."""
        if extracted is None:
            return None
        if extracted.denominator == 1:
            return str(extracted.numerator)
        as_float = float(extracted)
        return repr(as_float) if Fraction(repr(as_float)) == extracted else str(extracted)


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter a generation answers, or ``None``.

    After the last anchor: the first letter written ``C``, ``(C)``, ``C)``, ``[C]``,
    ``option C`` or ``\\text{C}`` (a lowercase letter only in brackets: ``(c)``, ``c)``).
    Without an anchor: the last ``(C)`` or ``C)`` of the text, else a reply that is only a
    letter (``"C"``, ``"(C)."``).
    """
    up, low = letters.upper(), letters.lower()
    text = str(text)
    tail = _after_last_anchor(text)
    if tail is not None:
        lead = r"[\s:]*(?:\$?\\text\{)?\s*(?:(?i:the\s+)?(?i:option|choice)\s*)?"
        letter = rf"(?:[(\[]\s*([{up}{low}])\s*[)\]]|([{low}])\)|([{up}])(?![A-Za-z]))"
        m = re.match(lead + letter, tail)
        if m:
            return next(g for g in m.groups() if g).upper()
    marked = re.findall(rf"\(\s*([{up}])\s*\)|(?<![A-Za-z])([{up}])\)", text)
    if marked:
        return next(g for g in marked[-1] if g)
    alone = re.fullmatch(rf"\s*[(\[]?\s*([{up}{low}])\s*[)\].]?\s*\.?\s*", text)
    return alone.group(1).upper() if alone else None


@dataclass(frozen=True)
class ChoiceAnswer:
    """A multiple-choice answer: one option letter (AQuA: A–E)."""

    #: The option letters.
    letters: str = "ABCDE"

    def extract(self, prediction: Any) -> str | None:
        """The letter a generation answers (:func:`extract_choice`)."""
        return extract_choice(str(prediction), self.letters)

    def gold(self, reference: Any) -> str:
        """The reference letter, upper case."""
        letter = str(reference).strip().upper()
        if len(letter) != 1 or letter not in self.letters:
            raise TaskError(f"reference answer {reference!r} is not one of {list(self.letters)}")
        return letter

    def equal(self, extracted: str, gold: str) -> bool:
        """The same letter."""
        return extracted == gold

    def show(self, extracted: str | None) -> str | None:
        """The letter."""
        return extracted


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    return 5 if threading.current_thread() is threading.main_thread() else None


@dataclass(frozen=True)
class MathAnswer:
    """A mathematical expression, compared by equivalence with ``math_verify.parse`` and
    ``math_verify.verify`` (``\\frac{1}{2}`` equals ``0.5``; a ``\\boxed{}`` answer is preferred
    to other math in the text). The reference is parsed as LaTeX math (``$…$``)."""

    def extract(self, prediction: Any) -> list | None:
        """What ``math_verify.parse`` finds in the generation (``None``: nothing)."""
        from math_verify import parse

        found = parse(str(prediction), parsing_timeout=_timeout())
        return found or None

    def gold(self, reference: Any) -> list:
        """The reference answer parsed as LaTeX math."""
        from math_verify import parse

        found = parse(f"${reference}$", parsing_timeout=_timeout())
        if not found:
            raise TaskError(f"math-verify cannot parse the reference answer {reference!r}")
        return found

    def equal(self, extracted: list, gold: list) -> bool:
        """``math_verify.verify(gold, extracted)``."""
        from math_verify import verify

        return bool(verify(gold, extracted, timeout_seconds=_timeout()))

    def show(self, extracted: list | None) -> str | None:
        """The text math-verify matched."""
        return None if extracted is None else str(extracted[-1])


@dataclass(frozen=True)
class LabelAnswer:
    """A class label: the label number, or one of its names (``"acceptable"``, ``"yes"``).

    A prediction that is a number (``1``, ``"0"``) is that label. Text is searched for the
    names of every label (case, ``_`` and ``-`` ignored, whole words only); the name that
    comes first wins, the longer one where two start at the same place, so
    ``"not equivalent"`` is label 0 and ``"unacceptable"`` is not ``"acceptable"``.
    """

    #: label → its names, e.g. ``{0: ("unacceptable", "no"), 1: ("acceptable", "yes")}``.
    names: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def extract(self, prediction: Any) -> int | None:
        """The label a prediction names, or ``None``."""
        if isinstance(prediction, bool):
            prediction = int(prediction)
        if isinstance(prediction, (int, float)):
            label = int(prediction) if float(prediction).is_integer() else None
            return label if label in self.names else None
        text = " ".join(re.sub(r"[_\-]", " ", str(prediction)).lower().split())
        if re.fullmatch(r"[+-]?\d+\.?0*", text.rstrip(".")):
            label = int(float(text.rstrip(".")))
            return label if label in self.names else None
        best: tuple[int, int, int] | None = None  # (start, -length, label)
        for label, aliases in self.names.items():
            for alias in aliases:
                alias = " ".join(re.sub(r"[_\-]", " ", alias).lower().split())
                m = re.search(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", text)
                if m and (best is None or (m.start(), -len(alias)) < best[:2]):
                    best = (m.start(), -len(alias), label)
        return None if best is None else best[2]

    def gold(self, reference: Any) -> int:
        """The reference label (an int of :attr:`names`)."""
        try:
            label = int(reference)
        except (TypeError, ValueError):
            label = None
        if label not in self.names:
            hint = " (GLUE test splits hide their labels as -1)" if label == -1 else ""
            raise TaskError(f"reference label {reference!r} is not one of {list(self.names)}{hint}")
        return label

    def equal(self, extracted: int, gold: int) -> bool:
        """The same label."""
        return extracted == gold

    def show(self, extracted: int | None) -> int | None:
        """The label."""
        return extracted
