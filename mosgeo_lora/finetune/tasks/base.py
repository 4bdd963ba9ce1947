"""What a benchmark task is: a declarative entry (:class:`Task`) with its generation settings
(:class:`Generation`), and the error every task function raises (:class:`TaskError`).

A task names its data source (a Hugging Face hub dataset, config and splits), the fields of
that dataset's schema it reads, how a row becomes a prompt, a reference answer and a training
target, the answer rule that extracts and compares answers
(:mod:`~mosgeo_lora.finetune.tasks.answers`), the metrics it reports
(:mod:`~mosgeo_lora.finetune.tasks.metrics`) and how to generate. The entries themselves are
in :mod:`~mosgeo_lora.finetune.tasks.math` and :mod:`~mosgeo_lora.finetune.tasks.nlu`, the
table of them in :mod:`~mosgeo_lora.finetune.tasks.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..data.examples import DataError

__all__ = ["Row", "TaskError", "Generation", "Task", "format_number"]

#: One row of a dataset, in the hub dataset's own schema (field name → value).
Row = Mapping[str, Any]


class TaskError(DataError):
    """Bad task input: an unknown task, a missing file or field, predictions that do not match
    their references, a hub dataset that cannot be reached."""


@dataclass(frozen=True)
class Generation:
    """How a task's answers are generated (greedy decoding)."""

    #: Longest continuation in tokens.
    max_new_tokens: int = 256
    #: Generation stops at the first of these strings; the text is cut before it.
    stop: tuple[str, ...] = ()
    #: Wrap the prompt in the tokenizer's chat template as one user message, when the
    #: tokenizer has one (instruct models); a plain prompt otherwise.
    chat_template: bool = True


@dataclass(frozen=True, repr=False)
class Task:
    """One benchmark: where its data is, how a row is asked and answered, how it is scored."""

    #: The name on the command line (``--task NAME``).
    name: str
    #: ``"math"`` or ``"nlu"``.
    family: str
    #: One line for ``--help`` and the docs.
    description: str
    #: The Hugging Face hub dataset id.
    hub: str
    #: The hub dataset's config (subset), or ``None``.
    config: str | None
    #: The split scored by ``eval`` and ``score``.
    eval_split: str
    #: The split trained on (the training mix), or ``None`` for a test-only benchmark.
    train_split: str | None
    #: The fields of the hub schema this task reads; a row without one is an error.
    fields: tuple[str, ...]
    #: A row → the prompt text (instruction included).
    prompt: Callable[[Row], str]
    #: A row → its reference answer (what :attr:`answer` compares with).
    reference: Callable[[Row], Any]
    #: The answer rule: extraction from generated text and comparison
    #: (:mod:`~mosgeo_lora.finetune.tasks.answers`).
    answer: Any
    #: A row → the completion trained on, or ``None`` (not trainable).
    target: Callable[[Row], str] | None = None
    #: Metrics reported besides ``accuracy`` (:data:`~.metrics.METRICS`).
    metrics: tuple[str, ...] = ()
    #: Generation settings.
    generation: Generation = Generation()
    #: Where the schema was confirmed (cited in the docs).
    schema_source: str = ""
    #: The fields a sequence classifier reads (one text, or a pair joined by a line break);
    #: ``()``: the task is not trained as a classifier. ``finetune --task`` trains a task
    #: that has them as a sequence classifier over the labels of its :attr:`answer`.
    text_fields: tuple[str, ...] = ()

    @property
    def classifies(self) -> bool:
        """Whether ``finetune`` trains this task as a sequence classifier."""
        return bool(self.text_fields)

    def classifier_text(self, row: Row) -> str:
        """The text a sequence classifier reads for ``row``: its :attr:`text_fields`, stripped,
        joined by a line break."""
        return "\n".join(str(row[f]).strip() for f in self.text_fields)

    def __repr__(self) -> str:
        return f"Task({self.name!r}: {self.hub}, {self.eval_split})"

    def check_row(self, row: Row, where: str) -> None:
        """Raise :class:`TaskError` unless ``row`` has every field of :attr:`fields`."""
        missing = [f for f in self.fields if row.get(f) is None]
        if missing:
            raise TaskError(
                f"{where}: missing field(s) {missing} ({self.name} rows follow the schema of "
                f"{self.hub}: {', '.join(self.fields)})"
            )


def format_number(value: Any) -> str:
    """A number as a person writes it: ``5.0`` → ``"5"``, ``2.50`` → ``"2.5"``; text stays."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
