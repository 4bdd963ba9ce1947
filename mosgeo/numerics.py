r"""Every numeric guard of :mod:`mosgeo` in one table, derived from :func:`torch.finfo`.

Nothing else in the package writes a literal ``1e-15``: functions ask :func:`guards` for
the guard of their dtype. Half precision (``float16``/``bfloat16``) is computed in float32
(:func:`compute_dtype`) and cast back; its *storage* precision still sets the boundary
margin, so a projected point stays inside the ball after the cast back.

Also here, because :mod:`mosgeo.math` and :mod:`mosgeo.charts` both need them: the
:func:`float32_island` decorator that applies the half-precision rule to an op, and
:func:`as_curvature`, the coercion of a ``k`` argument to the points' dtype and device.

=====================  ===============================  ==========================================
guard                  rule                             why
=====================  ===============================  ==========================================
``ball_eps``           ``max(√ε_c, 4 ε_s)``             relative margin inside the ball boundary
                                                        (``project``) and the spherical chart
                                                        (``clip_spacelike``); ``ε_c``/``ε_s`` are
                                                        the machine eps of the compute/storage
                                                        dtypes
``series_tau``         0.02 (f64), 0.05 (f32)           ``|t|`` below which the Taylor series in
                                                        ``t = κr²`` replaces the closed form
``series_terms``       10 (f64), 6 (f32)                terms so that ``(τ/ρ)^N < ε_c`` (ρ ≥ 1 is
                                                        the radius of convergence)
``atanh_max``          ``1 − ε_c``                      largest argument of ``atanh``/``asin``
``min_norm``           ``√tiny``                        clamp for a norm that divides
``min_denom``          ``ε_c``                          clamp for ``1 + κr²`` and Möbius
                                                        denominators (out of domain only)
``max_norm``           ``max^{1/4} / 2``                largest norm kept for κ ≥ 0: beyond it
                                                        ``κ²‖x‖²‖y‖²`` overflows
``max_exp_arg``        ``log(max) − 1``                 largest ``sinh``/``cosh`` argument
``geoopt_ball_eps``    4e-3 (f32), 1e-5 (f64),          the margin of geoopt 0.5.1's ``BALL_EPS``:
                       at least ``4 ε_s``               the default of the manifold classes
                                                        (the rim measurements in
                                                        ``docs/geoopt.md``)
``big_scale``          ``2^−⌊5·e_max/8⌋``               scale of the overflow fallback of a norm:
                                                        ``‖x‖`` of a row whose ``‖x‖²``
                                                        overflows is ``‖x·big_scale‖/big_scale``
                                                        (its squares neither overflow nor
                                                        underflow)
=====================  ===============================  ==========================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Union

import torch

from ._compat import realize

__all__ = [
    "Guards",
    "guards",
    "compute_dtype",
    "HALF_DTYPES",
    "Curvature",
    "float32_island",
    "as_curvature",
    "default_eps",
    "ball_eps",
    "min_norm",
    "max_norm",
    "sqnorm",
    "sqnorm_norm",
    "safe_norm",
    "safe_sqrt",
    "clamp_abs",
    "series_coefficients",
]

#: The half-precision dtypes, computed in float32 and cast back.
HALF_DTYPES = (torch.float16, torch.bfloat16)

#: A curvature argument, a tensor that broadcasts against the points or a Python float.
Curvature = Union[torch.Tensor, float]


@dataclass(frozen=True)
class Guards:
    """Numeric guards of one storage dtype (see the module table)."""

    #: The storage dtype this row is for.
    dtype: torch.dtype
    #: The dtype arithmetic runs in (:func:`compute_dtype`).
    compute: torch.dtype
    #: Relative margin ``max(√ε_c, 4 ε_s)`` inside the ball boundary and the spherical chart.
    ball_eps: float
    #: ``|t|`` below which the Taylor series in ``t = κr²`` replaces the closed form.
    series_tau: float
    #: Number of Taylor terms, so that ``(τ/ρ)^N < ε_c``.
    series_terms: int
    #: Largest argument ``1 − ε_c`` of ``atanh``/``asin``.
    atanh_max: float
    #: Clamp ``√tiny`` for a norm that divides.
    min_norm: float
    #: Clamp ``ε_c`` for ``1 + κr²`` and Möbius denominators (out of domain only).
    min_denom: float
    #: Largest norm ``max^{1/4} / 2`` kept for κ ≥ 0 (beyond it ``κ²‖x‖²‖y‖²`` overflows).
    max_norm: float
    #: Largest ``sinh``/``cosh`` argument, ``log(max) − 1``.
    max_exp_arg: float
    #: Power-of-two scale ``2^−⌊5·e_max/8⌋`` of the overflow fallback of a norm.
    big_scale: float
    #: geoopt's ball margin (``BALL_EPS``: 4e-3 float32, 1e-5 float64), at least ``4 ε_s``:
    #: the default margin of the manifold classes.
    geoopt_ball_eps: float


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float32 for half precision, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


#: geoopt 0.5.1's ``BALL_EPS`` (``geoopt/manifolds/stereographic/math.py``), by compute dtype
_GEOOPT_BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}


def _big_scale(dtype: torch.dtype) -> float:
    """``big_scale`` of the compute dtype ``dtype`` (module table). A function of
    :func:`torch.finfo` alone, so that :func:`torch.compile` folds it to a constant inside an
    autograd Function (a float read from the :class:`Guards` table there is lifted to a graph
    input, which dynamo fails to trace)."""
    return 2.0 ** -((5 * math.frexp(torch.finfo(dtype).max)[1]) // 8)


def ball_eps(dtype: torch.dtype) -> float:
    """``guards(dtype).ball_eps``, computed from :func:`torch.finfo` alone.

    The table's row holds the same value; code that :func:`torch.compile` traces reads
    these functions instead, which it folds to constants (a float read from the table
    becomes a graph input, rebuilt as a tensor on every call, like :func:`_big_scale`'s)."""
    return max(math.sqrt(torch.finfo(compute_dtype(dtype)).eps), 4.0 * torch.finfo(dtype).eps)


def min_norm(dtype: torch.dtype) -> float:
    """``guards(dtype).min_norm`` from :func:`torch.finfo` alone (see :func:`ball_eps`)."""
    return math.sqrt(torch.finfo(compute_dtype(dtype)).tiny)


def max_norm(dtype: torch.dtype) -> float:
    """``guards(dtype).max_norm`` from :func:`torch.finfo` alone (see :func:`ball_eps`)."""
    return torch.finfo(compute_dtype(dtype)).max ** 0.25 / 2.0


def _make(dtype: torch.dtype) -> Guards:
    comp = compute_dtype(dtype)
    fc, fs = torch.finfo(comp), torch.finfo(dtype)
    tau, terms = (0.02, 10) if comp == torch.float64 else (0.05, 6)
    return Guards(
        dtype=dtype,
        compute=comp,
        ball_eps=ball_eps(dtype),
        series_tau=tau,
        series_terms=terms,
        atanh_max=1.0 - fc.eps,
        min_norm=min_norm(dtype),
        min_denom=fc.eps,
        max_norm=max_norm(dtype),
        max_exp_arg=math.log(fc.max) - 1.0,
        big_scale=_big_scale(comp),
        geoopt_ball_eps=max(_GEOOPT_BALL_EPS[comp], 4.0 * fs.eps),
    )


_TABLE = {dt: _make(dt) for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def guards(dtype: torch.dtype) -> Guards:
    """The guard row for ``dtype``; raises ``TypeError`` for a non-floating dtype."""
    try:
        return _TABLE[dtype]
    except KeyError:
        raise TypeError(
            f"mosgeo works on floating tensors (float16, bfloat16, float32, float64), got {dtype}"
        ) from None


def default_eps(dtype: torch.dtype) -> float:
    """Default boundary margin of ``project``/``clip_spacelike`` for ``dtype``.

    ``guards(dtype).ball_eps``; a constant under :func:`torch.compile` (:func:`ball_eps`)."""
    if torch.compiler.is_compiling():
        return ball_eps(dtype)  # a constant of the trace (guards raises for a bad dtype)
    return guards(dtype).ball_eps  # the eager path: a dict lookup, 10× cheaper


class _SqNorm(torch.autograd.Function):
    """``‖x‖²`` by the fused ``vector_norm`` kernel, with the backward ``2x·g`` written out:
    autograd through ``vector_norm`` divides by the norm (slower, and its double backward
    is NaN at ``x = 0``)."""

    @staticmethod
    def forward(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=dim, keepdim=True).square()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return x * (2.0 * grad), None  # one pass over x: the factor is (..., 1)


def sqnorm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""``‖x‖²`` along ``dim`` (kept): one fused pass forward, ``2x`` backward.

    The backward is exact at ``x = 0`` too, and twice differentiable.
    """
    return _SqNorm.apply(x, dim)


class _SqNormNorm(torch.autograd.Function):
    """``(‖x‖², ‖x‖)``: the square by the fused kernel (``+inf`` where it overflows), the norm
    finite for every finite ``x`` — rows whose square overflowed are recomputed on
    ``x·big_scale`` (an exact power-of-two scaling; the other rows are scaled by 0, so no
    subnormal arithmetic; under :func:`torch.compile` both sums in one pass, see
    ``forward``). One backward pass ``x·(2g₂ + gₙ/‖x‖)`` for both outputs, written
    with differentiable ops (no NaN at ``x = 0``, twice differentiable)."""

    @staticmethod
    def forward(x: torch.Tensor, dim: int):
        if torch.compiler.is_compiling():
            # compiled: both sums in one pass over x, in x's dtype. The second sums the
            # squares of x·big_scale over the entries ≥ min_norm/big_scale only (their
            # squares are normal numbers: no subnormal arithmetic, and none overflows); the
            # entries it drops add < n·(min_norm/big_scale)² to a square that overflowed,
            # a relative 2⁻⁹⁴ (float32). Inductor fuses both reductions into one loop:
            # 100k × 64 float32, one thread, 1.4 ms, where a float64-accumulated norm takes
            # 8.6 ms and the two-pass form below reads x twice
            q = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
            sc = _big_scale(x.dtype)
            keep = x.abs() >= math.sqrt(torch.finfo(x.dtype).tiny) / sc  # min_norm/big_scale
            nb = torch.linalg.vector_norm(
                torch.where(keep, x * sc, torch.zeros_like(x)), dim=dim, keepdim=True
            )
            return q.square(), torch.where(torch.isinf(q), nb / sc, q)
        q = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
        big = torch.isinf(q)
        sc = guards(x.dtype).big_scale
        p = big.to(x.dtype) * sc
        nb = torch.linalg.vector_norm(x * p, dim=dim, keepdim=True) / sc
        return q.square(), torch.where(big, nb, q)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, g2: torch.Tensor, gn: torch.Tensor):
        x, n = ctx.saved_tensors
        pos = n > 0
        coef = torch.where(pos, gn / torch.where(pos, n, torch.ones_like(n)), torch.zeros_like(n))
        return x * realize(2.0 * g2 + coef), None


def sqnorm_norm(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(‖x‖², ‖x‖)`` along ``dim`` (kept), in one call.

    ``‖x‖²`` is ``+inf`` where it overflows (``‖x‖ > √max``); ``‖x‖`` is finite for every
    finite ``x`` (up to ``max``): scale before squaring. Use the square where it is finite
    (it is smooth at ``x = 0``) and the norm where it is not.
    """
    return _SqNormNorm.apply(x, dim)


def safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""``‖x‖`` along ``dim`` (kept) without overflow of ``‖x‖²`` for huge ``x``.

    ``vector_norm`` squares without scaling, so ``‖(1e30,…)‖`` is ``inf`` in float32. Where
    that happens the norm is recomputed on ``x·big_scale`` (:func:`sqnorm_norm`).
    """
    return _SqNormNorm.apply(x, dim)[1]


def safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """``√v`` for ``v ≥ 0`` with gradient 0 (not inf/NaN) at ``v = 0``.

    For a norm recovered from its square (``‖x‖ = √‖x‖²``) where ``x`` may vanish.
    """
    tiny = torch.finfo(v.dtype).tiny
    return torch.where(v > 0, v.clamp_min(tiny).sqrt(), torch.zeros_like(v))


def clamp_abs(x: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """``sign(x)·max(|x|, eps)`` with ``sign(0) = +1``: a signed denominator kept from 0."""
    return torch.where(x >= 0, x.clamp_min(eps), x.clamp_max(-eps))


def _bernoulli(n: int) -> list[Fraction]:
    b = [Fraction(0)] * (n + 1)
    b[0] = Fraction(1)
    for m in range(1, n + 1):
        b[m] = -sum(math.comb(m + 1, j) * b[j] for j in range(m)) / Fraction(m + 1)
    return b


def series_coefficients(name: str, terms: int) -> list[float]:
    r"""Taylor coefficients ``c_n`` of the entire functions of ``t = κr²``, ``f(t) = Σ c_n tⁿ``.

    * ``tan``:   ``T(t) = tan(√t)/√t``    = 1 + t/3 + 2t²/15 + 17t³/315 + …
    * ``artan``: ``A(t) = atan(√t)/√t``   = 1 − t/3 + t²/5 − t³/7 + …
    * ``sin``:   ``S(t) = sin(√t)/√t``    = 1 − t/6 + t²/120 − …
    * ``arsin``: ``AS(t) = asin(√t)/√t``  = 1 + t/6 + 3t²/40 + 5t³/112 + …

    For ``t < 0`` the same series give ``tanh``, ``atanh``, ``sinh``, ``asinh`` of ``√−t``.
    """
    if name == "tan":
        b = _bernoulli(2 * terms + 2)
        c = [
            (-1) ** (n - 1) * 2 ** (2 * n) * (2 ** (2 * n) - 1) * b[2 * n] / math.factorial(2 * n)
            for n in range(1, terms + 1)
        ]
    elif name == "artan":
        c = [Fraction((-1) ** n, 2 * n + 1) for n in range(terms)]
    elif name == "sin":
        c = [Fraction((-1) ** n, math.factorial(2 * n + 1)) for n in range(terms)]
    elif name == "arsin":
        c = [Fraction(math.comb(2 * n, n), 4**n * (2 * n + 1)) for n in range(terms)]
    else:
        raise ValueError(f"unknown series {name!r}")
    return [float(v) for v in c]


# --------------------------------------------------------------------------------------
# the float32 island and curvature coercion, shared by every op of math and charts
# --------------------------------------------------------------------------------------


def float32_island(fn: Callable | None = None, *, inside: Callable | None = None) -> Callable:
    """Run ``fn`` in float32 when any tensor argument is float16/bfloat16; cast back.

    ``inside(out, kwargs, dtype)``, for ops that return a point: applied to the float32
    result before the cast back to the storage ``dtype`` (with the call's keyword
    arguments), so that the point is strictly inside the ball *after* the cast
    (:func:`mosgeo.math.point_island`). ``float32_island(inside=...)`` is a decorator.
    """
    if fn is None:
        return functools.partial(float32_island, inside=inside)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        half = None
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES:
                half = a.dtype
                break
        if half is None:
            return fn(*args, **kwargs)

        def up(a: Any) -> Any:
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        out = fn(*map(up, args), **{n: up(v) for n, v in kwargs.items()})
        if isinstance(out, torch.Tensor):
            if inside is not None:
                out = inside(out, kwargs, half)
            return out.to(half)
        return out

    # read by mosgeo.compiled, which re-wraps the op's compiled code in the same island
    wrapper.island_inside = inside  # type: ignore[attr-defined]
    return wrapper


def as_curvature(k: Curvature, like: torch.Tensor) -> torch.Tensor:
    """``k`` as a tensor of ``like``'s dtype and device (a Python float is accepted)."""
    if isinstance(k, torch.Tensor):
        return k if k.dtype == like.dtype else k.to(like.dtype)
    return torch.as_tensor(k, dtype=like.dtype, device=like.device)
