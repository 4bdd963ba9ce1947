"""The paper's training mix: a sample of the GSM8K, MAWPS, SVAMP and AQuA training splits
(MATH500 is a test set only).

The paper "uniformly samples" its 13,262 training problems from these four training sets
(§5) and lists them, in its appendix D.3, as "GSM8K, MAWPS, SVAMP, and subset of AQuA". Three
readings are offered, each explicit (``balance``):

* ``"whole"`` (the default): every training set whole except the largest, which is sampled
  uniformly for the rest. GSM8K's 7,473, MAWPS's 1,089 and SVAMP's 700 training rows make
  9,262, and AQuA gives 4,000 of its 97,467: 13,262, the paper's count, with AQuA the only
  subset, as its appendix says. Below the smaller sets' total (a short run) the mix is a
  uniform sample of the smaller sets together, and the largest gives none: it only fills
  what the others cannot.
* ``"pool"``: ``size`` rows uniformly from all training rows together, so each dataset
  contributes in proportion to its size; at 13,262 AQuA gives about 12,100 and GSM8K about
  930, which does not fit "a subset of AQuA" among four datasets.
* ``"equal"``: each dataset an equal share, a dataset with fewer rows giving all it has and
  the others sharing the rest (at 13,262: SVAMP and MAWPS whole, GSM8K and AQuA 5,737 /
  5,736).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .base import TaskError
from .registry import get_task
from .sources import load_rows

__all__ = ["MIX_TASKS", "BALANCES", "MixExample", "training_mix"]

#: The training sets of the mix.
MIX_TASKS: tuple[str, ...] = ("gsm8k", "mawps", "svamp", "aqua")
#: The sampling rules (see the module docstring).
BALANCES: tuple[str, ...] = ("whole", "pool", "equal")


@dataclass(frozen=True)
class MixExample:
    """One training problem of the mix: the task's prompt and the completion to learn."""

    #: The task it came from.
    task: str
    #: The task's prompt for the row (as scored by ``eval``).
    prompt: str
    #: The completion trained on (the task's target: worked steps, then the answer).
    target: str


def _quotas(size: int, available: Sequence[int]) -> list[int]:
    """Equal shares of ``size``, capped by what each has; the rest shared by the others."""
    quotas = [0] * len(available)
    left, open_ = size, sorted(range(len(available)), key=lambda i: available[i])
    while open_ and left:
        share, extra = divmod(left, len(open_))
        i = open_[0]
        take = min(available[i], share + (extra > 0))
        if take == available[i]:  # the smallest is used up: give it all, share the rest
            quotas[i] = take
            left -= take
            open_.pop(0)
            continue
        for rank, j in enumerate(open_):
            quotas[j] = share + (rank < extra)
        left = 0
    return quotas


def _whole_quotas(size: int, available: Sequence[int]) -> list[int] | None:
    """Every set but the largest (the first on a tie) whole, the largest the rest; ``None``
    when ``size`` is below the others' total (then they are pooled, the largest gives none)."""
    largest = max(range(len(available)), key=lambda i: available[i])
    others = sum(available) - available[largest]
    if size < others:
        return None
    quotas = list(available)
    quotas[largest] = size - others
    return quotas


def training_mix(
    size: int,
    seed: int,
    sources: Mapping[str, str | os.PathLike] | None = None,
    tasks: Sequence[str] = MIX_TASKS,
    balance: str = "whole",
) -> list[MixExample]:
    """``size`` training problems from the training splits of ``tasks``, shuffled by ``seed``.

    ``sources``: task name → a local file of its training split in the hub's schema; a task
    without one is read from the hub. ``balance``: ``"whole"`` (the paper's counts),
    ``"pool"`` or ``"equal"`` (module docstring). The same arguments give the same mix.

    Raises:
        TaskError: an unknown or test-only task, a bad balance, or fewer rows than ``size``.
    """
    if balance not in BALANCES:
        raise TaskError(f"balance must be one of {BALANCES}, not {balance!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TaskError(f"size must be an integer >= 1, got {size!r}")
    sources = dict(sources or {})
    unknown = set(sources) - set(tasks)
    if unknown:
        raise TaskError(f"sources for tasks not in the mix: {sorted(unknown)}")
    pools = []
    for name in tasks:
        task = get_task(name)
        if task.train_split is None or task.target is None:
            raise TaskError(f"{name} has no training split (a test-only benchmark)")
        data = load_rows(task, sources.get(name), split=task.train_split)
        pools.append([MixExample(task.name, task.prompt(r), task.target(r)) for r in data.rows])
    total = sum(map(len, pools))
    if size > total:
        raise TaskError(f"size {size} is more than the {total} training rows of {list(tasks)}")
    rng = random.Random(seed)
    sizes = [len(p) for p in pools]
    if balance == "whole":
        quotas = _whole_quotas(size, sizes)
        if quotas is None:  # a short run: the smaller sets pooled, the largest none
            largest = max(range(len(pools)), key=lambda i: sizes[i])
            rest = [ex for i, pool in enumerate(pools) if i != largest for ex in pool]
            return rng.sample(rest, size)
    elif balance == "pool":
        return rng.sample([ex for pool in pools for ex in pool], size)
    else:
        quotas = _quotas(size, sizes)
    mix = [ex for pool, quota in zip(pools, quotas, strict=True) for ex in rng.sample(pool, quota)]
    rng.shuffle(mix)
    return mix
