"""The training mix (a shuffled, balanced sample of the training modules that never contains
a test question), the validation set ``mosgeo-lora compare`` picks learning rates on, and
true/false problems as a sequence-classification set in CoLA's schema (:func:`binary_rows`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .examples import DataError, Example
from .frozen import eval_questions
from .generator import TRAIN_MODULES, check_count, check_module, generate, sample
from .seeds import VALIDATION_SEED, check_seed, train_seed

__all__ = ["BINARY_MODULES", "training_examples", "validation_examples", "binary_rows"]

#: Generator modules whose answers are ``True`` / ``False`` (``comparison__pair`` also asks
#: "which is bigger", whose answers :func:`binary_rows` leaves out).
BINARY_MODULES: tuple[str, ...] = ("numbers__is_factor", "numbers__is_prime", "comparison__pair")


def training_examples(n: int, seed: int, modules: Sequence[str] = TRAIN_MODULES) -> list[Example]:
    """A shuffled mix of `n` problems, as balanced over `modules` as `n` allows.

    Questions that occur in the shipped eval sets are skipped, so no eval problem is ever
    trained on, whatever `n` and `seed`.
    """
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    if not modules:
        raise DataError("modules is empty")
    if len(set(modules)) != len(modules):
        raise DataError(f"modules has duplicates: {modules}")
    for module in modules:
        check_module(module)
    check_count(n)
    check_seed(seed)
    exclude = eval_questions()
    base, extra = divmod(n, len(modules))
    mix: list[Example] = []
    for i, module in enumerate(modules):
        count = base + (i < extra)
        mix += sample(module, count, train_seed(seed, module), exclude=exclude)
    random.Random(seed).shuffle(mix)
    return mix


def validation_examples(per_module: int) -> list[Example]:
    """Fresh problems of every training module, ``per_module`` each, from seeds no training
    run or test set uses (``VALIDATION_SEED + i``): the set learning rates are chosen on."""
    out: list[Example] = []
    for i, module in enumerate(TRAIN_MODULES):
        out += generate(module, per_module, seed=VALIDATION_SEED + i)
    return out


def binary_rows(
    n: int,
    seed: int,
    modules: Sequence[str] = BINARY_MODULES,
    exclude: frozenset[str] = frozenset(),
) -> list[dict]:
    """``n`` true/false problems as rows in CoLA's schema, ``{"sentence": question, "label":
    1 if the answer is True else 0, "idx": i}``, as balanced over ``modules`` as ``n``
    allows, shuffled by ``seed``; no question of ``exclude`` or of the shipped eval sets.

    Offline real data for the sequence-classification path: ``finetune --task
    cola=test.jsonl --data train.jsonl`` with two such files (different seeds, the test
    file excluding the training questions).
    """
    for module in modules:
        check_module(module)
    check_count(n)
    check_seed(seed)
    exclude = exclude | eval_questions()
    base, extra = divmod(n, len(modules))
    out: list[dict] = []
    for i, module in enumerate(modules):
        count = base + (i < extra)
        drawn = sample(
            module, 3 * count + 20, train_seed(seed, module), exclude=exclude, unique=True
        )
        binary = [ex for ex in drawn if ex.answer in ("True", "False")][:count]
        if len(binary) < count:
            raise DataError(f"{module}: only {len(binary)} of {count} true/false problems")
        out += [{"sentence": ex.question, "label": int(ex.answer == "True")} for ex in binary]
    random.Random(seed).shuffle(out)
    return [{**row, "idx": i} for i, row in enumerate(out)]
