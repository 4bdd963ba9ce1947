"""Compiled variants of the geometric ops of :mod:`mosgeo.math`: the same functions, the
same arguments, run as fused kernels.

An eager op is a chain of elementwise passes over the whole batch (``dist`` is about thirty);
under :func:`torch.compile` the chain becomes one or two loops, several times faster::

    import mosgeo.compiled as cmath

    d = cmath.dist(x, y, k=k)          # compiled on the first call, then reused

Each op is compiled once, on its first call, with ``fullgraph=True`` (every op of
:mod:`mosgeo.math` is branch-free) and ``dynamic=True`` (no recompilation when the batch
size changes); ``mobius_matvec`` also without inductor's pattern passes
(:func:`mosgeo._compat.no_pattern_passes`). A Python-float ``k`` is passed on as a 0-dim
tensor, so its value is not baked into the graph: expect one compilation per op and per kind
of ``k`` (a scalar, or a per-row tensor), dtype and device, whatever the batch size or the
curvature's value (``tests/geometry/test_compiled.py`` counts them). The first call pays the
compilation (2–17 s per op and direction on a CPU with the default inductor backend and an
empty cache; see ``benchmarks/results/core.md``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from . import math as _math
from ._compat import no_pattern_passes, require_compile
from .numerics import as_curvature, float32_island

#: The ops offered compiled (every other name of :mod:`mosgeo.math` is a helper).
OPS = (
    "project", "lambda_x", "inner", "norm", "mobius_add", "mobius_sub", "gyration",
    "mobius_coadd", "mobius_cosub", "mobius_scalar_mul", "mobius_pointwise_mul",
    "mobius_matvec", "dist", "dist0", "dist2plane", "geodesic", "geodesic_unit", "expmap",
    "expmap0", "logmap", "logmap0", "parallel_transport", "parallel_transport0",
    "parallel_transport0back", "egrad2rgrad", "weighted_midpoint", "antipode", "sproj",
    "inv_sproj",
)  # fmt: skip

__all__ = ["OPS", *OPS]

#: inductor options of single ops (:func:`mosgeo._compat.no_pattern_passes` says why)
_OPTIONS = {"mobius_matvec": no_pattern_passes}


@functools.cache
def _compiled(name: str) -> Callable[..., torch.Tensor]:
    require_compile(f"mosgeo.compiled.{name}")
    eager = getattr(_math, name)
    # compile the op's own code: the float32-island wrapper is one code object shared by
    # every op (torch.compile would count each op as a recompilation of it); the island
    # itself (with the op's strictly-inside rule for point results) runs outside the graph
    options = _OPTIONS[name]() if name in _OPTIONS else None
    compiled = torch.compile(inspect.unwrap(eager), fullgraph=True, dynamic=True, options=options)
    graph = float32_island(compiled, inside=getattr(eager, "island_inside", None))

    @functools.wraps(eager)
    def op(*args: Any, **kwargs: Any) -> torch.Tensor:
        k = kwargs.get("k")
        if k is not None and not isinstance(k, torch.Tensor):
            like = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            kwargs["k"] = as_curvature(k, like)
        return graph(*args, **kwargs)

    op.__doc__ = f"Compiled :func:`mosgeo.math.{name}` (same arguments and result)."
    return op


def __getattr__(name: str) -> Callable[..., torch.Tensor]:
    if name in OPS:
        return _compiled(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(OPS))
