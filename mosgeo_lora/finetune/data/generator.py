"""Math problems from DeepMind's offline generator ``mathematics_dataset==1.0.1``
(``pip install mosgeo[lora]``, made to run by :mod:`.shims`), at the easy level.

Modules that name variables (``*_composed``, algebra, calculus, polynomials) iterate over
sets of strings, so their output also depends on ``PYTHONHASHSEED``, which a running
process cannot change: they are not offered (``MODULES`` lists the ones that are, checked
across processes in the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .examples import DataError, Example
from .seeds import check_seed, seeded
from .shims import install_shims

__all__ = [
    "MODULES",
    "TRAIN_MODULES",
    "MAX_QUESTION_CHARS",
    "MAX_ANSWER_CHARS",
    "generate",
    "sample",
    "check_module",
    "check_count",
]


#: Generator modules whose output depends only on the seed (checked across processes with
#: different PYTHONHASHSEED values in tests/finetune/test_data.py).
MODULES: tuple[str, ...] = (
    "arithmetic__add_or_sub",
    "arithmetic__add_or_sub_in_base",
    "arithmetic__add_sub_multiple",
    "arithmetic__div",
    "arithmetic__mixed",
    "arithmetic__mul",
    "arithmetic__mul_div_multiple",
    "arithmetic__nearest_integer_root",
    "arithmetic__simplify_surd",
    "comparison__closest",
    "comparison__kth_biggest",
    "comparison__pair",
    "comparison__sort",
    "measurement__conversion",
    "measurement__time",
    "numbers__base_conversion",
    "numbers__div_remainder",
    "numbers__gcd",
    "numbers__is_factor",
    "numbers__is_prime",
    "numbers__lcm",
    "numbers__list_prime_factors",
    "numbers__place_value",
    "numbers__round_number",
    "probability__swr_p_level_set",
    "probability__swr_p_sequence",
)


#: The training mix: short exact answers a 135M model can partly learn in a few hundred
#: steps.
TRAIN_MODULES: tuple[str, ...] = (
    "arithmetic__add_or_sub",
    "comparison__pair",
    "numbers__place_value",
    "numbers__round_number",
    "numbers__is_factor",
)


# "train-easy" of the original release: the lowest third of each module's entropy range.
_LEVEL, _NUM_LEVELS = 0, 3
#: Longest question kept: stricter than the generator's own 160 so that prompts stay well
#: inside ~96 tokens.
MAX_QUESTION_CHARS = 100
#: Longest answer kept (the generator's own limit is 30).
MAX_ANSWER_CHARS = 16

_UNSTABLE_GROUPS = ("algebra", "calculus", "polynomials")


def _entropy_fn(level: int, num_levels: int) -> Callable[[tuple[float, float]], tuple]:
    """Map a module's entropy range to its `level`-th of `num_levels` equal slices (with the
    float arithmetic of the original generate.py, so the ranges match to the last bit)."""
    lower, upper = level / num_levels, (level + 1) / num_levels

    def restrict(range_: tuple[float, float]) -> tuple[float, float]:
        low, high = range_
        width = high - low
        return (low + lower * width, low + upper * width)

    return restrict


def _flatten(tree: dict, prefix: str = "") -> dict[str, Callable[[], Any]]:
    """{'numbers': {'gcd': f}} -> {'numbers__gcd': f}, the generator's own naming."""
    flat: dict[str, Callable[[], Any]] = {}
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


@functools.cache
def _module_table() -> dict[str, Callable[[], Any]]:
    """Every training module of the generator at our difficulty, by name."""
    install_shims()
    from mathematics_dataset.modules import modules

    return _flatten(modules.train(_entropy_fn(_LEVEL, _NUM_LEVELS)))


def check_module(module: str) -> None:
    """Raise :class:`DataError` unless ``module`` is one of ``MODULES`` (saying why not)."""
    if module in MODULES:
        return
    valid = ", ".join(MODULES)
    if isinstance(module, str) and (
        module.endswith("_composed") or module.startswith(_UNSTABLE_GROUPS)
    ):
        raise DataError(
            f"module {module!r} is not supported: its output depends on PYTHONHASHSEED, so it "
            f"is not reproducible across processes; valid modules: {valid}"
        )
    raise DataError(f"unknown module {module!r}; valid modules: {valid}")


def check_count(n: int, what: str = "n") -> None:
    """Raise :class:`DataError` unless ``n`` is an int >= 0."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"{what} must be an integer >= 0, got {n!r}")


def _fits_limits(question: str, answer: str) -> bool:
    return len(question) <= MAX_QUESTION_CHARS and 0 < len(answer) <= MAX_ANSWER_CHARS


def sample(
    module: str, n: int, seed: int, exclude: frozenset[str] = frozenset(), unique: bool = False
) -> list[Example]:
    """The first `n` problems of `module`'s stream for `seed` that pass the length limits,
    are not in `exclude` and (if `unique`) repeat no earlier question."""
    make = _module_table()[module]
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    with seeded(seed):
        while len(out) < n:
            attempts += 1
            if attempts > 20 * n + 1000:  # a module that cannot fill the request
                raise DataError(f"{module}: only {len(out)} of {n} problems after {attempts}")
            problem = make()
            question, answer = str(problem.question), str(problem.answer)
            if not _fits_limits(question, answer) or question in exclude or question in seen:
                continue
            if unique:
                seen.add(question)
            out.append(Example(question, answer, module))
    return out


def generate(module: str, n: int, seed: int) -> list[Example]:
    """`n` problems from generator `module` (one of ``MODULES``), at easy difficulty.

    Deterministic for (module, n, seed) in-process and across processes; ``generate(m, k, s)``
    is a prefix of ``generate(m, n, s)`` for k <= n. Global random states are left unchanged.
    """
    check_module(module)
    check_count(n)
    check_seed(seed)
    return sample(module, n, seed)
