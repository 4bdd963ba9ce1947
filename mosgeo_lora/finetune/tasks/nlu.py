"""The language-understanding benchmarks of the MoS paper, from GLUE (``nyu-mll/glue``):

* ``cola``: ``sentence``, ``label`` (0 unacceptable, 1 acceptable), ``idx``; splits
  ``train`` (8,551), ``validation`` (1,043), ``test`` (1,063, labels hidden as -1).
  Scored by accuracy and Matthews correlation.
* ``mrpc``: ``sentence1``, ``sentence2``, ``label`` (0 not_equivalent, 1 equivalent), ``idx``;
  splits ``train`` (3,668), ``validation`` (408), ``test`` (1,725, labels hidden as -1).
  Scored by accuracy and F1.

GLUE's test labels are not public, so both tasks score the ``validation`` split (the paper's
CoLA test count, 1,043, is that split). Predictions may be a label (``1``) or text
(``"acceptable"``, ``"yes"``); see :class:`~.answers.LabelAnswer`. ``finetune --task cola``
trains a sequence classifier on ``sentence`` (MRPC: ``sentence1`` and ``sentence2``) and
predicts labels by the argmax of its logits.
"""

from __future__ import annotations

from .answers import LabelAnswer
from .base import Generation, Task

__all__ = ["COLA", "MRPC", "NLU_TASKS"]

_GENERATION = Generation(max_new_tokens=8, stop=("\n",))

#: CoLA (``nyu-mll/glue``, ``cola``): ``sentence``; ``label``; accuracy and Matthews correlation.
COLA = Task(
    name="cola",
    family="nlu",
    description="is the sentence grammatically acceptable? (GLUE CoLA)",
    hub="nyu-mll/glue",
    config="cola",
    eval_split="validation",
    train_split="train",
    fields=("sentence", "label"),
    prompt=lambda row: (
        f"Sentence: {row['sentence'].strip()}\nIs this sentence grammatically acceptable? "
        'Answer "acceptable" or "unacceptable".\nAnswer:'
    ),
    reference=lambda row: row["label"],
    answer=LabelAnswer({0: ("unacceptable", "not acceptable", "no"), 1: ("acceptable", "yes")}),
    target=lambda row: ("unacceptable", "acceptable")[int(row["label"])],
    metrics=("matthews_correlation",),
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/nyu-mll/glue (config cola)",
    text_fields=("sentence",),
)

#: MRPC (``nyu-mll/glue``, ``mrpc``): ``sentence1``, ``sentence2``; ``label``; accuracy and F1.
MRPC = Task(
    name="mrpc",
    family="nlu",
    description="do the two sentences mean the same? (GLUE MRPC)",
    hub="nyu-mll/glue",
    config="mrpc",
    eval_split="validation",
    train_split="train",
    fields=("sentence1", "sentence2", "label"),
    prompt=lambda row: (
        f"Sentence 1: {row['sentence1'].strip()}\nSentence 2: {row['sentence2'].strip()}\n"
        'Do the two sentences mean the same thing? Answer "equivalent" or "not equivalent".'
        "\nAnswer:"
    ),
    reference=lambda row: row["label"],
    answer=LabelAnswer({0: ("not_equivalent", "not equivalent", "no"), 1: ("equivalent", "yes")}),
    target=lambda row: ("not equivalent", "equivalent")[int(row["label"])],
    metrics=("f1",),
    generation=_GENERATION,
    schema_source="https://huggingface.co/datasets/nyu-mll/glue (config mrpc)",
    text_fields=("sentence1", "sentence2"),
)

#: The language-understanding tasks.
NLU_TASKS: tuple[Task, ...] = (COLA, MRPC)
