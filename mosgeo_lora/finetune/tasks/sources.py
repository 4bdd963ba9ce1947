"""Reading a task's rows and writing and reading predictions.

Rows come through ``datasets.load_dataset`` in both cases, so a local file and the hub
dataset are read by one code path:

* a hub dataset: ``load_dataset(task.hub, task.config, split=...)`` (needs the network, or
  the ``datasets`` cache);
* a local file in the hub dataset's own schema (``--task gsm8k=test.jsonl``): JSON Lines,
  JSON, Parquet or CSV, read with ``datasets``' ``json``, ``parquet`` or ``csv`` builder.

Predictions are JSON Lines, one ``{"prediction": "<generated text>"}`` per reference row, in
the same order (a label such as ``1`` may stand for text); ``eval`` adds what it extracted
(``"extracted"``) and whether it was right (``"correct"``), which :func:`read_predictions`
ignores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Task, TaskError
from .metrics import Judgement

__all__ = [
    "FILE_FORMATS",
    "TaskData",
    "load_rows",
    "read_predictions",
    "write_predictions",
]

#: File suffix → the ``datasets`` builder that reads it.
FILE_FORMATS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


@dataclass
class TaskData:
    """A task and the rows it is scored (or trained) on."""

    #: The task.
    task: Task
    #: The rows, in the hub dataset's schema and order.
    rows: list[dict[str, Any]]
    #: Where they came from: a file path, or ``"hub-id (config) split"``.
    source: str


def _read(task: Task, path: Path | None, split: str) -> tuple[Any, str]:
    import datasets

    if path is not None:
        builder = FILE_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise TaskError(
                f"{path}: unknown file type {path.suffix!r}; use {', '.join(FILE_FORMATS)}"
            )
        if not path.is_file():
            raise TaskError(f"{path}: file not found")
        quiet = not datasets.are_progress_bars_disabled()
        if quiet:  # a local file: no "Generating train split" bar on stderr
            datasets.disable_progress_bars()
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train"), str(path)
        except Exception as e:  # datasets raises many kinds; each means "cannot read this file"
            raise TaskError(f"{path}: cannot read it as {builder} ({_first_line(e)})") from None
        finally:
            if quiet:
                datasets.enable_progress_bars()
    source = f"{task.hub} ({task.config or 'default'}) {split}"
    try:
        return datasets.load_dataset(task.hub, task.config, split=split), source
    except Exception as e:  # offline, no such dataset or split
        raise TaskError(
            f"cannot load {source} from the Hugging Face hub ({_first_line(e)}); offline, give a "
            f"local file in its schema: --task {task.name}=PATH"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_rows(
    task: Task, path: str | os.PathLike | None = None, split: str | None = None, limit: int = 0
) -> TaskData:
    """The rows of ``task``: from the file ``path``, else the hub's ``split`` (default: the
    task's evaluation split). ``limit``: the first rows only (0: all).

    Every row is checked before anything else happens: the task's fields are there and its
    reference is a valid answer (a GLUE test label of -1 is not).

    Raises:
        TaskError: the file or dataset cannot be read, or a row is not in the task's schema.
    """
    if limit < 0:
        raise TaskError(f"limit must be >= 0, got {limit}")
    dataset, source = _read(task, None if path is None else Path(path), split or task.eval_split)
    rows = [dict(row) for row in dataset]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise TaskError(f"{source}: no rows")
    for number, row in enumerate(rows, start=1):
        where = f"{source}, row {number}"
        task.check_row(row, where)
        try:
            task.answer.gold(task.reference(row))
        except TaskError as e:
            raise TaskError(f"{where}: {e}") from None
    return TaskData(task, rows, source)


def read_predictions(path: str | os.PathLike) -> list[Any]:
    """The ``"prediction"`` of every line of a predictions JSONL file, in order.

    Raises:
        TaskError: the file is missing or empty, a line is not a JSON object, or has no
            ``"prediction"`` (a string, or a number or boolean for a label).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror or e})") from None
    out: list[Any] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(record, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "prediction" not in record:
            raise TaskError(f'{where}: no "prediction" field')
        value = record["prediction"]
        if not isinstance(value, (str, int, float)):  # bool is an int: a label
            raise TaskError(f'{where}: "prediction" must be text or a number, got {value!r}')
        out.append(value)
    if not out:
        raise TaskError(f"{path}: no predictions")
    return out


def write_predictions(
    path: str | os.PathLike,
    task: Task,
    predictions: Sequence[str],
    judged: Sequence[Judgement],
) -> Path:
    """Write ``predictions`` as the predictions JSONL, each with what was extracted from it and
    whether it was correct; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (
        json.dumps(
            {
                "prediction": text,
                "extracted": task.answer.show(j.extracted),
                "correct": j.correct,
            },
            ensure_ascii=False,
        )
        for text, j in zip(predictions, judged, strict=True)
    )
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
