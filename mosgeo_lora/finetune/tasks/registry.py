"""The table of benchmark tasks (the one place that lists them) and ``NAME[=PATH]`` specs."""

from __future__ import annotations

from pathlib import Path

from .base import Task, TaskError
from .math import MATH_TASKS
from .nlu import NLU_TASKS

__all__ = ["TASKS", "TASK_NAMES", "get_task", "parse_task_spec"]

#: Every benchmark task by name: the math tasks, then the language-understanding ones.
TASKS: dict[str, Task] = {task.name: task for task in (*MATH_TASKS, *NLU_TASKS)}
#: Their names, in that order.
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`~.base.TaskError` names the valid ones otherwise."""
    try:
        return TASKS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise TaskError(f"unknown task {name!r}; tasks: {', '.join(TASK_NAMES)}") from None


def parse_task_spec(spec: str) -> tuple[Task, Path | None]:
    """``"gsm8k"`` → (GSM8K, None: the hub); ``"gsm8k=path/test.jsonl"`` → (GSM8K, that file).

    Raises:
        TaskError: an unknown task name, or a local file that does not exist.
    """
    name, sep, path = spec.partition("=")
    task = get_task(name)
    if not sep:
        return task, None
    if not path.strip():
        raise TaskError(f"--task {spec!r}: no file after '='")
    file = Path(path.strip()).expanduser()
    if not file.is_file():
        raise TaskError(f"--task {spec!r}: file not found: {file}")
    return task, file
