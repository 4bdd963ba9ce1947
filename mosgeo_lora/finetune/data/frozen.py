"""The frozen test sets shipped in ``eval_sets/`` (JSONL, 100 problems each), so every run
scores the same problems: held-out problems of the training modules (``SEEN_EVAL_SETS``)
and modules never trained on (``UNSEEN_EVAL_SETS``), mirroring "train on a mix, test on an
unseen benchmark". :func:`make_eval_set` regenerates one byte for byte
(``examples/make_eval_sets.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from .examples import DataError, Example, load_jsonl
from .generator import TRAIN_MODULES, check_count, check_module, sample
from .seeds import EVAL_SEED

__all__ = [
    "SEEN_EVAL_SETS",
    "UNSEEN_EVAL_SETS",
    "EVAL_SETS",
    "EVAL_SET_SIZE",
    "EVAL_DIR",
    "eval_sets",
    "eval_questions",
    "make_eval_set",
]


#: Held-out problems of the modules trained on.
SEEN_EVAL_SETS: tuple[str, ...] = TRAIN_MODULES
#: Low chance-level baselines (no True/False answers), related to but absent from training.
UNSEEN_EVAL_SETS: tuple[str, ...] = (
    "comparison__kth_biggest",
    "comparison__closest",
    "arithmetic__add_sub_multiple",
)
#: Every shipped test set, seen then unseen.
EVAL_SETS: tuple[str, ...] = SEEN_EVAL_SETS + UNSEEN_EVAL_SETS
#: Problems per shipped test set.
EVAL_SET_SIZE = 100
#: Where the JSONL files are.
EVAL_DIR = Path(__file__).parent / "eval_sets"


def eval_sets(names: Sequence[str] | None = None) -> dict[str, list[Example]]:
    """The shipped frozen eval sets, by name (all of ``EVAL_SETS`` by default)."""
    names = EVAL_SETS if names is None else (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in EVAL_SETS]
    if unknown:
        raise DataError(f"unknown eval set(s) {unknown}; valid: {', '.join(EVAL_SETS)}")
    return {name: load_jsonl(EVAL_DIR / f"{name}.jsonl") for name in names}


@functools.cache
def eval_questions() -> frozenset[str]:
    """Every question of the shipped eval sets, which training must never see."""
    return frozenset(ex.question for exs in eval_sets().values() for ex in exs)


def make_eval_set(name: str, n: int = EVAL_SET_SIZE) -> list[Example]:
    """Regenerate eval set `name` (a module of ``MODULES``): `n` distinct problems."""
    check_module(name)
    check_count(n)
    return sample(name, n, EVAL_SEED, unique=True)
