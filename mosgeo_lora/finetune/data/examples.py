"""One problem (:class:`Example`), the error every data function raises (:class:`DataError`),
and the JSONL files that hold problems: a user's training data, and the frozen eval sets.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Example", "DataError", "load_jsonl", "to_jsonl"]


@dataclass(frozen=True)
class Example:
    """One problem: the question, its reference answer and where it came from."""

    #: The problem text.
    question: str
    #: The reference answer.
    answer: str
    #: The generator module it came from, or ``"user"`` for a user's JSONL file.
    module: str = ""


class DataError(ValueError):
    """Bad input to this module: unknown module or eval set, malformed file, too-long example."""


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Examples from a JSONL file: one object per line with string ``question`` and ``answer``
    (answers may be numbers or booleans, see :func:`_field`); an optional ``module`` string is
    kept (default ``"user"``), other fields are ignored; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    examples = [
        _parse_line(line, f"{path}, line {number}")
        # split on "\n" only: str.splitlines would also break at U+2028 inside JSON strings
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not examples:
        raise DataError(f"{path}: empty file, no examples")
    return examples


def to_jsonl(examples: Sequence[Example]) -> str:
    """The JSONL text of `examples` (one object per line, fixed key order, '\\n' endings)."""
    lines = (
        json.dumps({"question": ex.question, "answer": ex.answer, "module": ex.module})
        for ex in examples
    )
    return "".join(line + "\n" for line in lines)


def _field(value: Any, name: str, where: str) -> str:
    """A required text field. Answers may be JSON numbers or booleans: they are converted
    with ``str`` (``7``, ``0.5``, ``True``), the generator's own spelling."""
    if value is None:
        raise DataError(f"{where}: missing {name!r} field")
    convertible = name == "answer" and isinstance(value, (bool, int, float))
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where}: {name!r} is {value}, not a finite number")
    if not isinstance(value, str) and not convertible:
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: empty {name!r} field")
    return text


def _parse_line(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = _field(record.get("question"), "question", where)
    answer = _field(record.get("answer"), "answer", where)
    module = record.get("module")
    return Example(question, answer, module if isinstance(module, str) and module else "user")
