"""The training mix (a shuffled, balanced sample of the training modules that never contains
a test question) and the validation set ``mosgeo-lora compare`` picks learning rates on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .examples import DataError, Example
from .frozen import eval_questions
from .generator import TRAIN_MODULES, check_count, check_module, generate, sample
from .seeds import VALIDATION_SEED, check_seed, train_seed

__all__ = ["training_examples", "validation_examples"]


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
