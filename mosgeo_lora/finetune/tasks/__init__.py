"""Benchmark tasks: the MoS paper's math and language-understanding benchmarks, each a
declarative entry (data source, prompt, answer rule, metrics, generation settings), and the
offline scoring of saved generations.

====================  ======================================================================
module                holds
====================  ======================================================================
:mod:`.base`          :class:`Task`, :class:`Generation`, :class:`TaskError`
:mod:`.answers`       answer rules: numbers, option letters, math-verify, class labels
:mod:`.metrics`       :func:`judge` and :func:`score`; accuracy, Matthews correlation, F1
:mod:`.math`          GSM8K, SVAMP, MAWPS, AQuA, MATH500
:mod:`.nlu`           CoLA, MRPC (GLUE)
:mod:`.registry`      :data:`TASKS`, the one table of tasks; ``NAME[=PATH]`` specs
:mod:`.sources`       rows from the hub or a local file; predictions files
:mod:`.mix`           the paper's training mix of GSM8K, MAWPS, SVAMP and AQuA
====================  ======================================================================

Every public name is re-exported here: ``from mosgeo_lora.finetune import tasks`` then
``tasks.get_task("gsm8k")``, ``tasks.load_rows(...)``, ``tasks.score(...)``.
"""

from __future__ import annotations

from .answers import ChoiceAnswer, LabelAnswer, MathAnswer, NumberAnswer
from .base import Generation, Task, TaskError
from .metrics import (
    METRICS,
    UNPARSED,
    Judgement,
    f1_score,
    judge,
    matthews_correlation,
    score,
    summarize,
)
from .mix import MIX_TASKS, MixExample, training_mix
from .registry import TASK_NAMES, TASKS, get_task, parse_task_spec
from .sources import TaskData, load_rows, read_predictions, write_predictions

__all__ = [
    "Task",
    "Generation",
    "TaskError",
    "NumberAnswer",
    "ChoiceAnswer",
    "MathAnswer",
    "LabelAnswer",
    "TASKS",
    "TASK_NAMES",
    "get_task",
    "parse_task_spec",
    "TaskData",
    "load_rows",
    "read_predictions",
    "write_predictions",
    "METRICS",
    "UNPARSED",
    "Judgement",
    "judge",
    "summarize",
    "score",
    "matthews_correlation",
    "f1_score",
    "MIX_TASKS",
    "MixExample",
    "training_mix",
]
