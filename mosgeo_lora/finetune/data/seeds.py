"""The seed ranges that keep training, validation and test problems apart, and the seeding of
every generator ``mathematics_dataset`` draws from.

Training derives one seed per module below ``TRAIN_SEED_LIMIT`` (2³²) from the run's seed;
the frozen eval sets were generated from ``EVAL_SEED`` (2³² + 2024) and the validation set
of ``mosgeo-lora compare`` from ``VALIDATION_SEED`` + i (2³³ + i), so no stream can
produce another's problems by seed. (Equal questions can still come out of different
seeds; training also drops every question of the eval sets.)

The generator draws from Python's ``random``, NumPy's global generator and, for
``numbers__is_prime`` (``sympy.randprime``), sympy's private ``sympy.core.random``
generator: :func:`seeded` seeds all three and restores the caller's states afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np

from .examples import DataError

__all__ = [
    "EVAL_SEED",
    "VALIDATION_SEED",
    "TRAIN_SEED_LIMIT",
    "MAX_SEED",
    "check_seed",
    "train_seed",
    "seeded",
]


#: The seed the frozen eval sets were generated from (above every training seed).
EVAL_SEED = 2**32 + 2024
#: The first seed of the validation set of ``mosgeo-lora compare`` (one per module: + i).
VALIDATION_SEED = 2**33
#: Training derives its per-module seeds below this.
TRAIN_SEED_LIMIT = 2**32
#: Seeds are 64-bit.
MAX_SEED = 2**64


def check_seed(seed: int) -> None:
    """Raise :class:`DataError` unless ``seed`` is an int in ``[0, 2**64)``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise DataError(f"seed must be an integer in [0, 2**64), got {seed!r}")


def train_seed(seed: int, module: str) -> int:
    """Per-module seed below 2**32 (eval sets use seeds above), independent of module order."""
    digest = hashlib.sha256(f"train|{seed}|{module}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % TRAIN_SEED_LIMIT


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed every generator mathematics_dataset draws from; restore the caller's states after."""
    import sympy.core.random as sympy_random

    generators = (random, sympy_random.rng, sympy_random._assumptions_rng)
    saved_states = [g.getstate() for g in generators]
    saved_numpy = np.random.get_state()
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # legacy seeding takes 32-bit words
    sympy_random.seed(seed)  # randprime (numbers__is_prime) draws from sympy's own rng
    try:
        yield
    finally:
        for g, state in zip(generators, saved_states, strict=True):
            g.setstate(state)
        np.random.set_state(saved_numpy)
