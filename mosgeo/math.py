r"""κ-stereographic math: the functional core of :mod:`mosgeo`.

A drop-in replacement of ``geoopt.manifolds.stereographic.math``: the same public names and
calling conventions (data arguments positional, curvature keyword ``k``, reduction ``dim``,
``keepdim`` where geoopt has it), so ``import mosgeo.math as pmath`` switches a geoopt code
base. Points are tensors ``x`` of shape ``(..., n)`` (the model dimension is ``dim``); ``k``
broadcasts against ``x`` with ``dim`` reduced to size 1 (a scalar, or one κ per row).

One code path for every κ. Each κ-dependence goes through a function of
``t = κ r²`` (:func:`tan_ratio`, :func:`artan_ratio`, :func:`sin_ratio`,
:func:`arsin_ratio`), evaluated by a Taylor series for small ``|t|`` and the closed form
elsewhere, selected with ``torch.where`` with both branches kept finite. There is no
``sqrt(κ)`` alone, no division by a norm where the formula does not need one, and no
Python branching on tensor values, so values and gradients (in ``x`` *and* ``k``) are
continuous through κ = 0 and every function runs under ``torch.compile(fullgraph=True)``.

Where geoopt is wrong, the docstring of the function says so ("geoopt: …").

Half precision inputs are computed in float32 and cast back. Guards come from
:mod:`mosgeo.numerics`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from ._compat import realize
from .numerics import (
    Curvature,
    clamp_abs,
    float32_island,
    guards,
    safe_norm,
    safe_sqrt,
    series_coefficients,
    sqnorm,
    sqnorm_norm,
)
from .numerics import as_curvature as _k
from .radial import inverse_radius2

Tensor = torch.Tensor

__all__ = [
    # smooth (analytic at t = 0) functions of t = κ r²
    "tan_ratio", "artan_ratio", "sin_ratio", "arsin_ratio",
    # κ-trigonometry (geoopt names)
    "tan_k", "artan_k", "sin_k", "arsin_k", "tanh", "artanh", "arsinh", "abs_zero_grad",
    "tan_k_zero_taylor", "artan_k_zero_taylor", "sin_k_zero_taylor", "arsin_k_zero_taylor",
    "sign", "sabs", "list_range", "drop_dims", "clamp_abs",
    # gyrovector space
    "project", "project_factor", "ball_factor", "lambda_x", "inner", "norm", "mobius_add",
    "mobius_sub", "gyration",
    "mobius_coadd", "mobius_cosub", "mobius_scalar_mul", "mobius_pointwise_mul",
    "mobius_matvec", "mobius_fn_apply", "mobius_fn_apply_chain", "mobiusify",
    # Riemannian geometry
    "dist", "dist0", "dist2plane", "geodesic", "geodesic_unit", "expmap", "expmap0",
    "logmap", "logmap0", "parallel_transport", "parallel_transport0",
    "parallel_transport0back", "egrad2rgrad", "weighted_midpoint", "antipode",
    "sproj", "inv_sproj",
]  # fmt: skip


# --------------------------------------------------------------------------------------
# plumbing: dtype island and curvature broadcasting
# --------------------------------------------------------------------------------------


def _dot(x: Tensor, y: Tensor, dim: int) -> Tensor:
    return (x * y).sum(dim=dim, keepdim=True)


def _squeeze(v: Tensor, dim: int, keepdim: bool) -> Tensor:
    return v if keepdim else v.squeeze(dim)


# --------------------------------------------------------------------------------------
# smooth (analytic at t = 0) functions of t = κ r²
# --------------------------------------------------------------------------------------

# filled at import: the Fraction arithmetic must not run inside torch.compile tracing
_COEFF: dict[tuple[str, int], list[float]] = {
    (name, terms): series_coefficients(name, terms)
    for name in ("tan", "artan", "sin", "arsin")
    for terms in range(1, 11)
}


def _series(name: str, t: Tensor, terms: int) -> Tensor:
    key = (name, terms)
    if key not in _COEFF:
        _COEFF[key] = series_coefficients(name, terms)
    c = _COEFF[key]
    out = torch.full_like(t, c[-1])
    for coef in reversed(c[:-1]):
        out = out * t + coef
    return out


def _ratio(
    name: str, t: Tensor, pos: Callable, neg: Callable, s_big: Tensor | None = None
) -> Tensor:
    """``f(t)`` = series for ``|t| < τ``, else ``pos(s)/s`` (t > 0) or ``neg(s)/s`` (t < 0),
    ``s = √|t|`` — or ``s_big`` where ``t = ±inf`` (see :func:`tan_ratio`). Both branches see
    only safe arguments (NaN in an unused ``where`` branch still poisons the gradient)."""
    g = guards(t.dtype)
    tau = g.series_tau
    small = t.abs() < tau
    t_ser = torch.where(small, t, torch.zeros_like(t))
    s = t.abs().clamp(tau, torch.finfo(t.dtype).max).sqrt()
    if s_big is not None:
        s = torch.where(torch.isinf(t), s_big.clamp_min(tau**0.5), s)
    # each closed form sees its own sign's arguments only (tan of an arbitrary s has an
    # arbitrary, possibly infinite, derivative)
    one = torch.ones_like(s)
    closed = torch.where(t > 0, pos(torch.where(t > 0, s, one)), neg(torch.where(t > 0, one, s)))
    closed = closed / s
    return torch.where(small, _series(name, t_ser, g.series_terms), closed)


def tan_ratio(t: Tensor, s: Tensor | None = None) -> Tensor:
    r"""``T(t) = tan(√t)/√t`` (t > 0), ``tanh(√−t)/√−t`` (t < 0), ``1 + t/3 + 2t²/15 + …``.

    ``tan_k(r, κ) = r·T(κr²)``. Entire near 0 (poles only at ``√t = π/2 + jπ``).

    Overflow: where ``t = κr²`` overflowed to ``±inf`` the closed form is evaluated at ``s``
    (``√|κ|·r``, formed without squaring) instead of ``√|t|``, so ``r·T`` stays finite
    (``1/√|κ|`` for κ < 0). The same ``s`` argument exists on every ratio.
    """
    emax = guards(t.dtype).max_exp_arg
    return _ratio("tan", t, torch.tan, lambda s: torch.tanh(s.clamp_max(emax)), s)


def artan_ratio(t: Tensor, s: Tensor | None = None) -> Tensor:
    r"""``A(t) = atan(√t)/√t`` (t > 0), ``atanh(√−t)/√−t`` (t < 0), ``1 − t/3 + t²/5 − …``.

    ``artan_k(y, κ) = y·A(κy²)``. For ``t ≤ −1`` (outside the ball) the ``atanh`` argument is
    clamped to ``1 − ε``. ``s``: see :func:`tan_ratio`.
    """
    amax = guards(t.dtype).atanh_max

    def neg(s: Tensor) -> Tensor:
        return torch.atanh(s.clamp_max(amax))

    return _ratio("artan", t, torch.atan, neg, s)


def sin_ratio(t: Tensor, s: Tensor | None = None) -> Tensor:
    r"""``S(t) = sin(√t)/√t`` (t > 0), ``sinh(√−t)/√−t`` (t < 0), ``1 − t/6 + t²/120 − …``.

    ``s``: see :func:`tan_ratio`."""
    emax = guards(t.dtype).max_exp_arg
    return _ratio("sin", t, torch.sin, lambda s: torch.sinh(s.clamp_max(emax)), s)


def arsin_ratio(t: Tensor, s: Tensor | None = None) -> Tensor:
    r"""``AS(t) = asin(√t)/√t`` (t > 0), ``asinh(√−t)/√−t`` (t < 0), ``1 + t/6 + 3t²/40 + …``.

    For ``t > 1`` the ``asin`` argument is clamped to ``1 − ε``. ``s``: see
    :func:`tan_ratio`.
    """
    amax = guards(t.dtype).atanh_max
    return _ratio("arsin", t, lambda s: torch.asin(s.clamp_max(amax)), torch.asinh, s)


def _kq(k: Tensor, q: Tensor, f: Tensor | None = None) -> Tensor:
    r"""``t = κ·f·q`` for a square ``q ≥ 0`` that may have overflowed to ``+inf`` and a
    finite factor ``f ≥ 0`` (default 1). Where ``f·q`` is infinite (and ``f > 0``):
    ``sign(κ)·∞`` (0 at κ = 0), with a zero gradient (the exact one is infinite);
    elsewhere the plain product. Never NaN, also in the gradient: ``q`` is replaced by 0
    before it meets a differentiable factor (no ``0·∞`` in a backward product), and κ is
    multiplied last (``∂t/∂(fq) = κ`` is 0 at κ = 0)."""
    qinf = torch.isinf(q)
    p = torch.where(qinf, torch.zeros_like(q), q)
    if f is not None:
        p = f * p
        qinf = qinf & (f > 0)  # 0·∞: the product is 0
    big = qinf | torch.isinf(p)
    t = k * torch.where(big, torch.zeros_like(p), p)
    inf = torch.full_like(t, torch.inf)
    sign_inf = torch.where(k > 0, inf, torch.where(k < 0, -inf, torch.zeros_like(t)))
    return torch.where(big, sign_inf, t)


def _sk(k: Tensor) -> Tensor:
    """``√|κ|`` with a finite derivative at κ = 0 (clamped at ``tiny``): only for the closed
    form of a ratio, which κ = 0 never selects."""
    return k.abs().clamp_min(guards(k.dtype).min_norm ** 2).sqrt()


def _radial(v: Tensor, s: Tensor) -> Tensor:
    """``v·s`` for a per-row factor ``s`` (kept dim): under :func:`torch.compile` ``s`` is
    computed once per row, not once per element (:func:`mosgeo._compat.realize`)."""
    return v * realize(s)


# --------------------------------------------------------------------------------------
# κ-trigonometry
# --------------------------------------------------------------------------------------


@float32_island
def tan_k(x: Tensor, k: Curvature) -> Tensor:
    r"""``tan_κ(x) = tan(√κ x)/√κ`` (κ > 0), ``x`` (κ = 0), ``tanh(√−κ x)/√−κ`` (κ < 0).

    Computed as ``x·T(κx²)``: smooth in κ through 0. geoopt: switches to a first-order
    Taylor polynomial only where ``k`` is numerically 0 and takes ``|k|`` there, so its
    gradient in κ has the wrong sign for tiny negative κ.
    """
    k = _k(k, x)
    return x * tan_ratio(_kq(k, x * x), _sk(k) * x.abs())


@float32_island
def artan_k(x: Tensor, k: Curvature) -> Tensor:
    r"""``artan_κ(x) = atan(√κ x)/√κ`` (κ > 0), ``x`` (κ = 0), ``atanh(√−κ x)/√−κ`` (κ < 0)."""
    k = _k(k, x)
    return x * artan_ratio(_kq(k, x * x), _sk(k) * x.abs())


@float32_island
def sin_k(x: Tensor, k: Curvature) -> Tensor:
    r"""``sin_κ(x) = sin(√κ x)/√κ`` (κ > 0), ``x`` (κ = 0), ``sinh(√−κ x)/√−κ`` (κ < 0)."""
    k = _k(k, x)
    return x * sin_ratio(_kq(k, x * x), _sk(k) * x.abs())


@float32_island
def arsin_k(x: Tensor, k: Curvature) -> Tensor:
    r"""``arsin_κ(x) = asin(√κ x)/√κ`` (κ > 0), ``x`` (κ = 0), ``asinh(√−κ x)/√−κ`` (κ < 0)."""
    k = _k(k, x)
    return x * arsin_ratio(_kq(k, x * x), _sk(k) * x.abs())


def tanh(x: Tensor) -> Tensor:
    """``tanh(x)`` (geoopt name; geoopt clamps to ±15 first, which changes nothing)."""
    return torch.tanh(x)


def artanh(x: Tensor) -> Tensor:
    """``atanh(x)`` with ``|x|`` clamped to ``1 − ε`` of the dtype.

    geoopt clamps to ``1 − 1e-7`` for every dtype, which in float64 caps distances at 8.4
    instead of 18.7.
    """
    amax = guards(x.dtype).atanh_max
    return torch.atanh(x.clamp(-amax, amax))


def arsinh(x: Tensor) -> Tensor:
    """``asinh(x)``, exact for every ``x``.

    geoopt's ``log(x + √(1+x²))`` loses all digits for ``x ≪ −1`` and clamps the log
    argument at 1e-15.
    """
    return torch.asinh(x)


def abs_zero_grad(x: Tensor) -> Tensor:
    """``|x|`` with derivative +1 at 0 (geoopt compatibility; mosgeo itself never uses it)."""
    return x * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def sign(x: Tensor) -> Tensor:
    """``sign(x)`` with ``sign(0) = +1`` (geoopt utility of the same name)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def sabs(x: Tensor, eps: float = 1e-15) -> Tensor:
    """``|x| + eps`` (geoopt utility of the same name; mosgeo itself never uses it)."""
    return x.abs() + eps


def list_range(end: int) -> list[int]:
    """``list(range(end))`` (geoopt utility of the same name)."""
    return list(range(end))


def drop_dims(tensor: Tensor, dims: list[int]) -> Tensor:
    """Squeeze the size-1 dimensions ``dims`` (geoopt utility of the same name)."""
    for d in sorted((d % tensor.dim() for d in dims), reverse=True):
        tensor = tensor.squeeze(d)
    return tensor


def _zero_taylor(name: str, x: Tensor, k: Curvature, order: int) -> Tensor:
    if not -1 <= order <= 5:
        raise ValueError(f"order must be in [-1, 5], got {order}")
    k = _k(k, x)
    terms = 6 if order == -1 else order + 1
    return x * _series(name, k * x * x, terms)


def tan_k_zero_taylor(x: Tensor, k: Curvature, order: int = -1) -> Tensor:
    """Taylor polynomial of ``tan_κ(x)`` in κ around 0 up to ``κ^order`` (−1: order 5).

    geoopt evaluates it with ``|κ|``, i.e. the hyperbolic (κ < 0) series has the wrong sign.
    """
    return _zero_taylor("tan", x, k, order)


def artan_k_zero_taylor(x: Tensor, k: Curvature, order: int = -1) -> Tensor:
    """Taylor polynomial of ``artan_κ(x)`` in κ around 0 (signed κ; geoopt uses ``|κ|``)."""
    return _zero_taylor("artan", x, k, order)


def sin_k_zero_taylor(x: Tensor, k: Curvature, order: int = -1) -> Tensor:
    """Taylor polynomial of ``sin_κ(x)`` in κ around 0 (signed κ; geoopt uses ``|κ|``)."""
    return _zero_taylor("sin", x, k, order)


def arsin_k_zero_taylor(x: Tensor, k: Curvature, order: int = -1) -> Tensor:
    """Taylor polynomial of ``arsin_κ(x)`` in κ around 0 (signed κ; geoopt uses ``|κ|``)."""
    return _zero_taylor("arsin", x, k, order)


# --------------------------------------------------------------------------------------
# projection, metric
# --------------------------------------------------------------------------------------


def project(x: Tensor, *, k: Curvature, dim: int = -1, eps: float | None = None) -> Tensor:
    r"""Safe projection onto the usable part of the manifold.

    * κ < 0: points with ``‖x‖ > (1 − eps)/√|κ|`` are rescaled onto that radius.
    * κ ≥ 0: identity, except that points beyond ``max_norm/max(1, √κ)`` (numerics table;
      ≈ 2·10⁹ in float32, i.e. within 10⁻⁹ rad of the sphere's pole, far beyond any use in
      the plane) are pulled back to it, so that ``κ²‖x‖²‖y‖²`` in later ops cannot overflow.

    ``eps`` (``None`` or negative: dtype default, :func:`mosgeo.numerics.default_eps`).
    The norm is overflow-safe (``‖(1e30, …)‖`` in float32 is finite). geoopt: the norm of
    such a point overflows to ``inf`` and the projection returns 0.
    """
    if eps is None or eps < 0:
        # the storage dtype sets the margin: a half-precision point must stay inside after
        # the cast back from the float32 island
        eps = guards(x.dtype).ball_eps
    return _project(x, k, dim, eps)


@float32_island
def _project(x: Tensor, k: Curvature, dim: int, eps: float) -> Tensor:
    return x * _project_factor(safe_norm(x, dim), _k(k, x), eps)


def ball_factor(n: Tensor, k: Curvature, eps: float | None = None) -> Tensor:
    r"""Radial factor that keeps a point of norm ``n`` strictly inside the κ < 0 ball.

    ``min(1, (1 − eps)/(√|κ| n))`` for κ < 0, 1 for κ ≥ 0 (:func:`project_factor` without
    its κ ≥ 0 overflow bound). ``eps`` defaults to the margin of ``n``'s dtype."""
    f = project_factor(n, k, eps)
    return torch.where(_k(k, f) < 0, f, torch.ones_like(f))


def _inside(y: Tensor, kwargs: dict, dtype: torch.dtype) -> Tensor:
    """The float32 result ``y`` of a point-returning op, scaled to stay inside the ball.

    Scaled with the margin of the storage ``dtype`` (as :func:`project`, κ < 0 only), so that it
    is strictly inside the ball after the cast back (a float32 point at ‖y‖ = 0.9999/√|κ|
    rounds onto the rim in bfloat16)."""
    k, dim = kwargs["k"], kwargs.get("dim", -1)
    return y * ball_factor(safe_norm(y, dim), _k(k, y), guards(dtype).ball_eps)


#: :func:`mosgeo.numerics.float32_island` for ops that return a point: in half precision the
#: result is projected with the storage dtype's margin before the cast back (:func:`_inside`)
point_island = float32_island(inside=_inside)


def project_factor(n: Tensor, k: Curvature, eps: float | None = None) -> Tensor:
    r"""Radial factor of :func:`project` from the norm ``n = ‖x‖`` (kept dim).

    ``project(x) = x · project_factor(‖x‖, κ)``, i.e. ``min(1, R_κ/‖x‖)`` with
    ``R_κ = (1 − eps)/√|κ|`` for κ < 0 and ``max_norm/max(1, √κ)`` for κ ≥ 0. For fused
    radial code that knows ``‖x‖`` without forming ``x``. Half precision: computed in
    float32 and cast back, with the storage dtype's default ``eps`` (as :func:`project`).
    """
    if eps is None or eps < 0:
        eps = guards(n.dtype).ball_eps
    return _project_factor(n, k, eps)


@float32_island
def _project_factor(n: Tensor, k: Curvature, eps: float) -> Tensor:
    # √(1/R²)·‖x‖ against 1 (not ‖x‖ against R): the radius's κ-derivative stays finite for
    # tiny κ, where R = (1 − eps)/√|κ| would overflow; mosgeo.radial's fused adapter scalar
    # reads the same inverse_radius2
    return torch.reciprocal((n * inverse_radius2(_k(k, n), eps).sqrt()).clamp_min(1.0))


def _conf_half_inv(x2: Tensor, k: Tensor) -> Tensor:
    """``1 + κ‖x‖² = 2/λ_x``, kept positive (it is > 0 on the whole domain)."""
    return (1.0 + k * x2).clamp_min(guards(x2.dtype).min_denom)


@float32_island
def lambda_x(x: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1) -> Tensor:
    r"""Conformal factor ``λ_x = 2/(1 + κ‖x‖²)``."""
    k = _k(k, x)
    return _squeeze(2.0 / _conf_half_inv(sqnorm(x, dim), k), dim, keepdim)


@float32_island
def inner(
    x: Tensor,
    u: Tensor,
    v: Tensor | None = None,
    *,
    k: Curvature,
    keepdim: bool = False,
    dim: int = -1,
) -> Tensor:
    r"""Riemannian inner product ``⟨u, v⟩_x = λ_x² ⟨u, v⟩`` (``v = u`` if omitted).

    geoopt: with ``keepdim=False`` multiplies a ``(B, 1)`` factor by a ``(B,)`` sum and
    returns a ``(B, B)`` outer product.
    """
    k = _k(k, x)
    v = u if v is None else v
    lam = 2.0 / _conf_half_inv(sqnorm(x, dim), k)
    return _squeeze(lam * lam * _dot(u, v, dim), dim, keepdim)


@float32_island
def norm(x: Tensor, u: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1) -> Tensor:
    r"""Riemannian norm ``‖u‖_x = λ_x ‖u‖``."""
    k = _k(k, x)
    lam = 2.0 / _conf_half_inv(sqnorm(x, dim), k)
    return _squeeze(lam * safe_norm(u, dim), dim, keepdim)


@float32_island
def egrad2rgrad(x: Tensor, grad: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Riemannian gradient ``grad / λ_x² = grad·(1 + κ‖x‖²)²/4``."""
    k = _k(k, x)
    h = 0.5 * (1.0 + k * sqnorm(x, dim))
    return grad * (h * h)


# --------------------------------------------------------------------------------------
# gyrovector operations
# --------------------------------------------------------------------------------------


def _mobius_den(a2: Tensor, b2: Tensor, s2: Tensor, ab: Tensor, k: Tensor):
    r"""Denominator ``D`` of ``a ⊕_κ b`` (``s = a + b``) in its cancellation-free form, and
    the mask of the far spherical regime.

    * κ ≤ 0, or κ > 0 near the origin: ``D = (1 + κ‖a‖²)(1 + κ‖b‖²) − κ‖s‖²`` (a sum of
      positive terms for κ < 0, exact for ``b ≈ −a``).
    * κ > 0 with ``κ max(‖a‖², ‖b‖²) > 1`` (beyond the equator, towards the pole):
      ``D = (1 − κ⟨a,b⟩)² + κ²(‖a‖²‖b‖² − ⟨a,b⟩²)`` (Ungar's ``1 − 2κ⟨a,b⟩ + κ²‖a‖²‖b‖²``
      as a sum of squares); the first form would subtract numbers of size ``κ‖a‖²``.
    """
    far = (k > 0) & (k * torch.maximum(a2, b2) > 1.0)
    d_near = (1.0 + k * a2) * (1.0 + k * b2) - k * s2
    d_far = (1.0 - k * ab).square() + (k * k) * (a2 * b2 - ab * ab).clamp_min(0.0)
    return torch.where(far, d_far, d_near).clamp_min(guards(a2.dtype).min_denom), far


def _mobius_coeffs(a2: Tensor, b2: Tensor, s2: Tensor, ab: Tensor, k: Tensor):
    r"""``a ⊕_κ b = c_s s + c_a a + c_b b`` (``s = a + b``), its denominator ``D`` and ``a' =
    1 + κ‖a‖²``: ``c_s = a'/D, c_a = −κ‖s‖²/D, c_b = 0`` near the origin (the form that is
    exact for ``b ≈ −a``); Ungar's ``c_s = 0, c_a = (1 − 2κ⟨a,b⟩ − κ‖b‖²)/D, c_b = a'/D``
    in the far spherical regime of :func:`_mobius_den`. Same function, two roundings.

    The identity is exact: where ``b = 0`` (``a = 0``) the coefficients take the values
    ``c_s = 1, c_a = 0`` (``c_b = 0``), so ``a ⊕ 0 = 0 ⊕ a = s = a`` bit for bit, also where
    the combination is fused into FMAs. The near form gives ``1 + O(ε)`` and ``O(1)``
    there (e.g. ``a'/D`` with ``D = fl(1 + κ‖a‖²) − κ‖a‖²``). Only the values change: each
    overridden coefficient keeps its own derivatives (``c − (c − v).detach()``), and the
    coefficient of the zero vector absorbs the difference (``c_b + c_s − 1``, value times
    ``b = 0``), so the Jacobian ``∂/∂b = c_s + c_b`` — and every higher derivative — is that
    of the unmodified formula."""
    den, far = _mobius_den(a2, b2, s2, ab, k)
    ap = 1.0 + k * a2
    zero = torch.zeros_like(den)
    c_s = torch.where(far, zero, ap / den)
    c_a = torch.where(far, (1.0 - 2.0 * k * ab - k * b2) / den, -k * s2 / den)
    c_b = torch.where(far, ap / den, zero)
    a0, b0 = a2 == 0, b2 == 0
    one = c_s - (c_s - 1.0).detach()  # value 1, derivatives of c_s
    shift = (c_s - 1.0).detach()
    c_a, c_b = (
        torch.where(b0, c_a - c_a.detach(), torch.where(a0, c_a + shift, c_a)),
        torch.where(a0, c_b - c_b.detach(), torch.where(b0, c_b + shift, c_b)),
    )
    return torch.where(a0 | b0, one, c_s), c_a, c_b, den


def _madd(x: Tensor, y: Tensor, k: Tensor, dim: int, x2: Tensor, y2: Tensor, xy: Tensor) -> Tensor:
    """``x ⊕_κ y`` given ``‖x‖²``, ``‖y‖²`` and ``⟨x, y⟩`` (see :func:`mobius_add`).

    ``y`` may be huge (κ = 0: ``exp_x`` of a huge tangent vector): its scalars are clamped
    at ``max_norm²``, the bound of points for κ ≥ 0, where ``κ²‖x‖²‖y‖²`` stays finite (at
    κ = 0 they are multiplied by 0: the result is ``x + y`` exactly)."""
    s = x + y
    m2 = guards(x2.dtype).max_norm ** 2
    y2, s2, xy = y2.clamp_max(m2), sqnorm(s, dim).clamp_max(m2), xy.clamp(-m2, m2)
    c_s, c_x, c_y, _ = _mobius_coeffs(x2, y2, s2, xy, k)
    return torch.addcmul(torch.addcmul(s * c_s, x, c_x), y, c_y)


def _mobius_add_scalar_grads(x2, y2, s2, xy, k, p_s, p_x, p_y):
    r"""∂L/∂(‖x‖², ‖y‖², ‖s‖², ⟨x,y⟩, κ) for ``L = c_s p_s + c_x p_x + c_y p_y`` with the
    coefficients of :func:`_mobius_coeffs` (both regimes written out; ``L = N/D`` so
    ``∂L = (∂N − L ∂D)/D``)."""
    den, far = _mobius_den(x2, y2, s2, xy, k)
    a, b = 1.0 + k * x2, 1.0 + k * y2
    d_raw = torch.where(far, 1.0 - 2.0 * k * xy + k * k * x2 * y2, a * b - k * s2)
    live = (d_raw > guards(x2.dtype).min_denom).to(den.dtype)  # a clamped D is a constant
    zero = torch.zeros_like(den)
    # near: N = a p_s − κ‖s‖² p_x,  D = ab − κ‖s‖²
    # far:  N = (1 − 2κ⟨x,y⟩ − κ‖y‖²) p_x + a p_y,  D = 1 − 2κ⟨x,y⟩ + κ²‖x‖²‖y‖²
    n_val = torch.where(far, (1.0 - 2.0 * k * xy - k * y2) * p_x + a * p_y, a * p_s - k * s2 * p_x)
    big_l = n_val / den
    dn = {
        "x2": torch.where(far, k * p_y, k * p_s),
        "y2": torch.where(far, -k * p_x, zero),
        "s2": torch.where(far, zero, -k * p_x),
        "xy": torch.where(far, -2.0 * k * p_x, zero),
        "k": torch.where(far, (-2.0 * xy - y2) * p_x + x2 * p_y, x2 * p_s - s2 * p_x),
    }
    dd = {
        "x2": torch.where(far, k * k * y2, k * b),
        "y2": torch.where(far, k * k * x2, k * a),
        "s2": torch.where(far, zero, -k.expand_as(den)),
        "xy": torch.where(far, -2.0 * k.expand_as(den), zero),
        "k": torch.where(far, -2.0 * xy + 2.0 * k * x2 * y2, x2 * b + y2 * a - s2),
    }
    return {q: (dn[q] - big_l * dd[q] * live) / den for q in dn}


class _MobiusAdd(torch.autograd.Function):
    """``x ⊕_κ y`` with a hand-written backward: autograd through the coefficient chain
    makes ~30 passes over the (B, n) data; this backward makes 12 (two dot products and
    the two gradient combinations). Double backward falls back to plain autograd."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, k: Tensor, dim: int) -> Tensor:
        s = x + y
        x2, y2, s2, xy = sqnorm(x, dim), sqnorm(y, dim), sqnorm(s, dim), _dot(x, y, dim)
        c_s, c_x, c_y, _ = _mobius_coeffs(x2, y2, s2, xy, k)
        ctx.save_for_backward(x, y, k, s, x2, y2, s2, xy, c_s, c_x, c_y)
        ctx.dim = dim
        return (s * c_s).addcmul_(x, c_x).addcmul_(y, c_y)  # in place: no autograd here

    @staticmethod
    def backward(ctx, g: Tensor):
        x, y, k, s, x2, y2, s2, xy, c_s, c_x, c_y = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: differentiate the plain autograd form
            with torch.enable_grad():
                out = _madd(x, y, k, dim, sqnorm(x, dim), sqnorm(y, dim), _dot(x, y, dim))
                grads = torch.autograd.grad(out, (x, y, k), g, create_graph=True, allow_unused=True)
            return (*grads, None)
        p_x, p_y = _dot(g, x, dim), _dot(g, y, dim)
        d = _mobius_add_scalar_grads(x2, y2, s2, xy, k, p_x + p_y, p_x, p_y)
        common = s * (2.0 * d["s2"])
        gx = torch.addcmul(common, g, c_s + c_x).addcmul_(x, 2.0 * d["x2"]).addcmul_(y, d["xy"])
        gy = torch.addcmul(common, g, c_s + c_y).addcmul_(y, 2.0 * d["y2"]).addcmul_(x, d["xy"])
        gk = d["k"].sum_to_size(k.shape) if ctx.needs_input_grad[2] else None
        return gx.sum_to_size(x.shape), gy.sum_to_size(y.shape), gk, None


@point_island
def mobius_add(x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Möbius addition

    .. math::
        x ⊕_κ y = \frac{(1 − 2κ⟨x,y⟩ − κ‖y‖²) x + (1 + κ‖x‖²) y}
                       {1 − 2κ⟨x,y⟩ + κ²‖x‖²‖y‖²},

    evaluated in the equivalent cancellation-free form (``s = x + y``)

    .. math::
        x ⊕_κ y = \frac{(1 + κ‖x‖²)\, s − κ‖s‖²\, x}{(1 + κ‖x‖²)(1 + κ‖y‖²) − κ‖s‖²},

    which is exact for ``y ≈ −x`` (left cancellation ``(−x) ⊕ (x ⊕ y) = y`` holds to
    rounding) and whose denominator is a sum of positive terms for κ < 0. For κ > 0 beyond
    the equator (``κ‖x‖² > 1`` or ``κ‖y‖² > 1``) that form would cancel terms of size
    ``κ‖x‖²``; there the first (Ungar's) form is used, with its denominator written as
    ``(1 − κ⟨x,y⟩)² + κ²(‖x‖²‖y‖² − ⟨x,y⟩²)``.
    """
    k = _k(k, x)
    return _MobiusAdd.apply(x, y, k, dim)


def mobius_sub(x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``x ⊖_κ y = x ⊕_κ (−y)``."""
    return mobius_add(x, -y, k=k, dim=dim)


@float32_island
def gyration(a: Tensor, b: Tensor, u: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Gyration ``gyr[a, b]u = ⊖(a ⊕ b) ⊕ (a ⊕ (b ⊕ u))`` in closed form (Ungar):

    .. math::
        \operatorname{gyr}[a,b]u &= u + 2\frac{A a + B b}{D},\\
        A &= −κ²⟨a,u⟩‖b‖² − κ⟨b,u⟩ + 2κ²⟨a,b⟩⟨b,u⟩,\\
        B &= −κ²⟨b,u⟩‖a‖² + κ⟨a,u⟩,\\
        D &= 1 − 2κ⟨a,b⟩ + κ²‖a‖²‖b‖².
    """
    k = _k(k, a)
    a2, b2 = sqnorm(a, dim), sqnorm(b, dim)
    ab, au, bu = _dot(a, b, dim), _dot(a, u, dim), _dot(b, u, dim)
    k2 = k * k
    ca = -k2 * au * b2 - k * bu + 2.0 * k2 * ab * bu
    cb = -k2 * bu * a2 + k * au
    den = (1.0 - 2.0 * k * ab + k2 * a2 * b2).clamp_min(guards(a.dtype).min_denom)
    return u + (2.0 / den) * (ca * a + cb * b)


@point_island
def mobius_coadd(x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Möbius coaddition ``x ⊞_κ y = x ⊕ gyr[x, ⊖y] y``, in closed form

    .. math::
        x ⊞_κ y = \frac{(1 + κ‖y‖²) x + (1 + κ‖x‖²) y}{1 − κ²‖x‖²‖y‖²}.

    Commutative; the denominator vanishes only where the result is the point at infinity
    (κ > 0, ``‖x‖‖y‖ = 1/κ``), where it is kept at ``±ε``.
    """
    k = _k(k, x)
    x2, y2 = sqnorm(x, dim), sqnorm(y, dim)
    den = clamp_abs(1.0 - k * k * x2 * y2, guards(x.dtype).min_denom)
    return ((1.0 + k * y2) / den) * x + ((1.0 + k * x2) / den) * y


def mobius_cosub(x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``x ⊟_κ y = x ⊞_κ (−y)``."""
    return mobius_coadd(x, -y, k=k, dim=dim)


@point_island
def mobius_scalar_mul(r: Tensor, x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Möbius scalar multiplication ``r ⊗_κ x = tan_κ(r·artan_κ‖x‖) x/‖x‖``.

    With ``a = A(κ‖x‖²)`` this is ``x · r a · T(κ r² a² ‖x‖²)``: no division by ``‖x‖``, so
    it is smooth at ``x = 0`` (geoopt clamps the norm at 1e-15).
    """
    k = _k(k, x)
    r = _k(r, x)
    x2 = sqnorm(x, dim)
    a = artan_ratio(k * x2)
    ra = r * a
    # κ r²a²‖x‖² overflows for huge r: then the closed form at √|κ|·|ra|·‖x‖
    t = _kq(k, ra * ra, x2)  # κ last: no 0·∞ in the gradient at κ = 0
    return x * (ra * tan_ratio(t, _sk(k) * ra.abs() * safe_sqrt(x2)))


@point_island
def mobius_pointwise_mul(w: Tensor, x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Möbius pointwise product ``w ⊙_κ x = tan_κ(‖w⊙x‖/‖x‖ · artan_κ‖x‖) (w⊙x)/‖w⊙x‖``.

    Computed as ``(w⊙x) · a · T(κ a² ‖w⊙x‖²)`` with ``a = A(κ‖x‖²)`` (exact 0 where
    ``w⊙x = 0``).
    """
    k = _k(k, x)
    wx = w * x
    return wx * _linear_factor(sqnorm(x, dim), *sqnorm_norm(wx, dim), k)


def _linear_factor(x2: Tensor, y2: Tensor, yn: Tensor, k: Tensor) -> Tensor:
    r"""The per-row factor ``F`` of the Möbius version of a linear map ``y = f(x)``:
    ``f^{⊗κ}(x) = tan_κ(‖y‖/‖x‖ · artan_κ‖x‖) y/‖y‖ = y·F``,

    .. math::
        F = a\,T(κ a² ‖y‖²), \qquad a = A(κ‖x‖²)

    (:func:`artan_ratio`, :func:`tan_ratio`), from ``x2 = ‖x‖²``, ``y2 = ‖y‖²`` (``+inf``
    where it overflowed) and ``yn = ‖y‖`` (finite: the closed form's argument
    ``√|κ|·a·‖y‖`` where ``κa²‖y‖²`` overflows). No division by ``‖x‖`` or ``‖y‖``: smooth at
    ``x = 0`` and ``y = 0``. Used by :func:`mobius_matvec` and :func:`mobius_pointwise_mul`.
    """
    a = artan_ratio(_kq(k, x2))
    return a * tan_ratio(_kq(k, y2, a * a), _sk(k) * a * yn)


class _LinearScale(torch.autograd.Function):
    r"""``y·F(‖x‖², ‖y‖², ‖y‖, κ)`` (:func:`_linear_factor`) with a backward that makes two
    passes over the data (``⟨g, y⟩`` and the gradients):

    .. math::
        ∂_y = g F + y\,⟨g, y⟩ (2F_{y2} + F_{yn}/‖y‖), \qquad
        ∂_x = x\,⟨g, y⟩\, 2F_{x2}, \qquad ∂_κ = Σ ⟨g, y⟩ F_κ,

    with the per-row partial derivatives ``F_{x2}, F_{y2}, F_{yn}, F_κ`` of the same formula
    (its vector-Jacobian product, :func:`torch.func.vjp`) computed in the forward, where the
    per-row chain (``atan``/``atanh``, ``tan``/``tanh``, series) is evaluated anyway; they
    are kept multiplied by ``‖y‖``, and ``⟨g, y⟩/‖y‖`` multiplies them. Autograd
    through the formula recomputes that chain in the backward and makes a pass for
    ``⟨g, y⟩`` and another for the gradients (under :func:`torch.compile` the per-row scalars
    between them keep the two from fusing into one loop). Double backward differentiates the
    plain formula."""

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, k: Tensor, dim: int) -> Tensor:
        x2 = sqnorm(x, dim)
        y2, yn = sqnorm_norm(y, dim)
        # one value per row of the result: the partial derivatives are per row, not sums
        # over rows that share a broadcast x or κ
        shape = torch.broadcast_shapes(x2.shape, y2.shape, k.shape)
        args = [t.expand(shape) for t in (x2, y2, yn, k)]
        f, vjp = torch.func.vjp(_linear_factor, *args)
        # the derivatives times ‖y‖ (1 at y = 0), divided out of ⟨g, y⟩ in the backward: the
        # bare ones are of order F/‖y‖², subnormal or 0 in float32 for ‖y‖ ≳ 1e15 (where
        # autograd's products, ⟨g, y⟩ times each local derivative, stay normal)
        pos = args[2] > 0
        n = torch.where(pos, args[2], 1.0)
        f_x2, f_y2, f_yn, f_k = vjp(n)
        c_y = 2.0 * f_y2 + torch.where(pos, f_yn / n, 0.0)
        # saved as buffers of their own (mosgeo._compat.realize): under torch.compile the
        # partitioner would otherwise recompute the whole chain in the backward
        f, n, c_y, c_x = (realize(t) for t in (f, n, c_y, 2.0 * f_x2))
        f_k = realize(f_k) if ctx.needs_input_grad[2] else None
        ctx.save_for_backward(y, x, f, n, c_y, c_x, f_k, k)
        ctx.dim = dim
        return y * f

    @staticmethod
    def backward(ctx, g: Tensor):
        y, x, f, n, c_y, c_x, f_k, k = ctx.saved_tensors
        dim = ctx.dim
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula
            wanted = ctx.needs_input_grad[:3]
            need = [t for t, w in zip((y, x, k), wanted, strict=True) if w]
            with torch.enable_grad():
                out = _radial(y, _linear_factor(sqnorm(x, dim), *sqnorm_norm(y, dim), k))
                grads = iter(torch.autograd.grad(out, need, g, create_graph=True))
            return (*(next(grads) if w else None for w in wanted), None)
        d = _dot(g, y, dim) / n
        gy = (g * f + y * (d * c_y)).sum_to_size(y.shape)
        gx = (x * (d * c_x)).sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        gk = (d * f_k).sum_to_size(k.shape) if ctx.needs_input_grad[2] else None
        return gy, gx, gk, None


@point_island
def mobius_matvec(m: Tensor, x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Möbius matrix-vector product ``M ⊗_κ x = tan_κ(‖Mx‖/‖x‖ · artan_κ‖x‖) Mx/‖Mx‖``.

    Computed as ``Mx · a · T(κ a² ‖Mx‖²)`` with ``a = A(κ‖x‖²)`` (:func:`_linear_factor`);
    under :func:`torch.compile`, when a gradient is needed, with the per-row derivatives of
    that factor taken in the forward and a two-pass backward (:class:`_LinearScale`; the
    same values and gradients).

    ``m`` is ``(out, in)`` or batched ``(..., out, in)`` (then ``dim`` must be −1).
    geoopt: for ``dim ≠ −1`` the product's new axis ends up last while the norm is taken
    along ``dim``.
    """
    if m.dim() > 2 and dim != -1:
        raise ValueError("batched Möbius matvec supports dim=-1 only")
    k = _k(k, x)
    if m.dim() == 2:
        mx = torch.tensordot(x, m, dims=([dim], [1])).movedim(-1, dim) if dim != -1 else x @ m.T
    else:
        mx = torch.matmul(m, x.unsqueeze(-1)).squeeze(-1)
    if torch.compiler.is_compiling() and (
        torch.is_grad_enabled() and (mx.requires_grad or x.requires_grad or k.requires_grad)
    ):
        # compiled training graphs only: eager, the vjp in the forward costs more than the
        # backward passes it saves (100k × 64 float32 fwd+bwd, one thread, CPU time: 6–17 %
        # slower than autograd through the formula)
        return _LinearScale.apply(mx, x, k, dim)
    return _radial(mx, _linear_factor(sqnorm(x, dim), *sqnorm_norm(mx, dim), k))


def mobius_fn_apply(
    fn: Callable, x: Tensor, *args: Any, k: Curvature, dim: int = -1, **kwargs: Any
) -> Tensor:
    r"""Möbius version of ``fn``: ``f^{⊗κ}(x) = exp₀(f(log₀(x)))``."""
    return expmap0(fn(logmap0(x, k=k, dim=dim), *args, **kwargs), k=k, dim=dim)


def mobius_fn_apply_chain(x: Tensor, *fns: Callable, k: Curvature, dim: int = -1) -> Tensor:
    r"""The chain of Möbius versions ``f_n^{⊗κ} ∘ … ∘ f_1^{⊗κ}(x)``; identity for no ``fns``.

    Computed as ``exp₀(f_n(w(…w(f_1(log₀ x)))))`` with ``w = log₀ ∘ exp₀`` between the
    functions, in closed form: the identity for κ ≤ 0 and for tangent vectors shorter than
    ``π/(2√κ)``, where this is geoopt's ``exp₀(f_n(…f_1(log₀ x)))``. Beyond that radius
    ``exp₀`` wraps around the sphere and ``log₀`` returns the shorter way round:
    ``w(v) = v·(θ − πj)/θ``, ``θ = √κ‖v‖``, ``j = round(θ/π)``. So the chain equals the
    composition of :func:`mobius_fn_apply` (e.g. ``mobius_matvec(M₂, mobius_matvec(M₁, x))``
    for linear maps) for every κ. geoopt: differs from that composition on the sphere once
    an intermediate tangent vector passes ``π/(2√κ)`` (its test suite flags it as
    "unstable numerics" in float32 and float64).
    """
    if not fns:
        return x
    v = logmap0(x, k=k, dim=dim)
    for i, fn in enumerate(fns):
        if i:
            v = _unwrap(v, k, dim)
        v = fn(v)
    return expmap0(v, k=k, dim=dim)


@float32_island
def _unwrap(v: Tensor, k: Curvature, dim: int) -> Tensor:
    """``log₀(exp₀(v))`` in closed form (:func:`mobius_fn_apply_chain`)."""
    k = _k(k, v)
    th = _sk(k) * safe_norm(v, dim)
    j = torch.round(th / math.pi)
    wrap = (k > 0) & (j != 0)
    safe = torch.where(wrap, th, torch.ones_like(th))
    return v * torch.where(wrap, (th - math.pi * j) / safe, torch.ones_like(th))


def mobiusify(fn: Callable) -> Callable:
    r"""Decorator: ``mobiusify(f)(x, *args, k=κ, dim=-1)`` = :func:`mobius_fn_apply`."""

    @functools.wraps(fn)
    def mobius_fn(x: Tensor, *args: Any, k: Curvature, dim: int = -1, **kwargs: Any) -> Tensor:
        return mobius_fn_apply(fn, x, *args, k=k, dim=dim, **kwargs)

    return mobius_fn


# --------------------------------------------------------------------------------------
# distances, exponential and logarithmic maps, geodesics
# --------------------------------------------------------------------------------------


def _gyro_diff(x: Tensor, y: Tensor, k: Tensor, dim: int):
    r"""Parts of ``m = (−x) ⊕ y`` with ``d = y − x``: ``m = c_s d − c_x x + c_y y`` (see
    :func:`_mobius_coeffs` with ``a = −x``, ``b = y``), ``‖m‖² = ‖d‖²/D``.

    Returns ``d, x2, y2, d2, a = 1+κ‖x‖², b = 1+κ‖y‖², D, (c_s, c_x, c_y)``."""
    d = y - x
    x2, y2, d2 = sqnorm(x, dim), sqnorm(y, dim), sqnorm(d, dim)
    c_s, c_a, c_y, den = _mobius_coeffs(x2, y2, d2, -_dot(x, y, dim), k)
    return d, x2, y2, d2, 1.0 + k * x2, 1.0 + k * y2, den, (c_s, -c_a, c_y)


def _gyro_vec(d: Tensor, x: Tensor, y: Tensor, coeffs) -> Tensor:
    c_s, c_x, c_y = coeffs
    return torch.addcmul(torch.addcmul(d * c_s, x, c_x), y, c_y)


def _antipodal(x: Tensor, y: Tensor, x2: Tensor, y2: Tensor, k: Tensor, dim: int):
    r"""κ > 0: ``y`` relative to the antipode ``x̄ = −x/(κ‖x‖²)`` of ``x``.

    Returns ``e = y − x̄``, ``‖e‖²``, the Möbius denominator of ``(−x) ⊕ y`` in the form
    ``D = κ²‖x‖²‖e‖²`` (exact identity: ``D = 1 + 2κ⟨x,y⟩ + κ²‖x‖²‖y‖²``) and the mask
    where it is used. ``D`` vanishes at the antipode; formed from the vector ``e`` it does
    not cancel there (‖e‖ carries the rounding of ``x̄``, relative ε, so ``√D`` is exact to
    an absolute O(ε)), unlike ``(1 + κ‖x‖²)(1 + κ‖y‖²) − κ‖x − y‖²``, whose rounding error
    ε·(1 + κ‖x‖²)(1 + κ‖y‖²) costs half the digits of the distance near the antipode.
    Masks (``e`` is valid on the first, ``D`` on the second): κ > 0 and
    ``κ max(‖x‖², ‖y‖²) > 1/4`` — every near-antipodal pair, and away from κ = 0, where the
    plain form is exact and this one would take its κ-derivatives as differences of terms
    of size ``1/(κ‖x‖)`` — and, for ``e``, ``κ‖x‖²`` a normal number and
    ``κ²‖x‖² > 16·tiny`` (so that ``‖e‖²`` cannot overflow; ``D = 1`` elsewhere, to rounding,
    as points stay below ``max_norm``)."""
    g = guards(x2.dtype)
    kx2 = k * x2
    anti = (k > 0) & (torch.maximum(kx2, k * y2) > 0.25)
    # x ≈ 0 (κ‖x‖² not normal) or ‖x̄‖ = 1/(κ‖x‖) > 1/(4 min_norm) (‖e‖² could overflow:
    # distance 0 at a subnormal κ, or for a tiny x and a far y): D = 1 to rounding there, as
    # 2κ|⟨x, y⟩| ≤ 8 min_norm·max_norm ≪ ε for points below max_norm
    live = (kx2 > g.min_norm**2) & (k * kx2 > 16.0 * g.min_norm**2)
    e = torch.addcmul(y, x, 1.0 / torch.where(anti & live, kx2, torch.ones_like(kx2)))
    e2 = sqnorm(e, dim)
    den = torch.where(live, kx2 * (k * e2), torch.ones_like(e2))
    return e, e2, den, anti & live, anti


def _half_dist(d2: Tensor, a: Tensor, b: Tensor, den: Tensor, k: Tensor):
    r"""Half the distance ``h = artan_κ‖m‖`` for ``m = (−x) ⊕ y``, ``‖m‖² = ‖d‖²/D``, and
    ``h/‖m‖`` (smooth at ``m = 0``, for :func:`logmap`).

    κ < 0: the ``atanh`` of ``√|κ|‖m‖ ≈ 1`` loses digits for far points near the boundary,
    so use the chord identity ``sinh(√|κ| d/2) = √|κ| ‖x − y‖ / √((1+κ‖x‖²)(1+κ‖y‖²))``:
    ``h/‖m‖ = √(D/ab) · AS(κ‖d‖²/ab)``. κ ≥ 0: ``h/‖m‖ = A(κ‖m‖²)`` by its series for
    ``|κ‖m‖²| < τ``, else the angle ``h = atan2(√κ‖d‖, √D)/√κ`` (``D`` from
    :func:`_antipodal` for κ > 0: exact to the end, ``π/(2√κ)`` at the antipode). All
    branches are the same analytic function of κ: seamless at 0 in every derivative.
    """
    g = guards(d2.dtype)
    ab = (a * b).clamp_min(g.min_denom)
    dc = den.clamp_min(g.min_denom)
    n = safe_sqrt(d2 / dc)  # ‖m‖
    t = k * d2 / dc
    small = t.abs() < g.series_tau
    hyp = (dc / ab).sqrt() * arsin_ratio(k * d2 / ab)
    ser = artan_ratio(torch.where(small, t, torch.zeros_like(t)))
    sk = _sk(k)
    dn = safe_sqrt(d2)
    root = safe_sqrt(den.clamp_min(0.0))
    closed = torch.atan2(sk * dn, root) / sk
    ratio = torch.where(
        k < 0, hyp, torch.where(small, ser, closed * root / dn.clamp_min(g.min_norm))
    )
    half = torch.where((k >= 0) & ~small, closed, n * ratio)
    return half, ratio


@float32_island
def dist(x: Tensor, y: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1) -> Tensor:
    r"""Geodesic distance ``d_κ(x, y) = 2 artan_κ ‖(−x) ⊕_κ y‖``, computed with the identity

    .. math::
        ‖(−x) ⊕_κ y‖² = \frac{‖x − y‖²}{(1 + κ‖x‖²)(1 + κ‖y‖²) − κ‖x − y‖²},

    which needs no Möbius sum vector and is accurate for close points (the difference is
    formed first). For κ < 0 the equivalent chord form
    ``d = 2 arsin_κ(‖x−y‖/√((1+κ‖x‖²)(1+κ‖y‖²)))`` avoids ``atanh`` near 1 (far points
    near the boundary). For κ > 0 the distance is the angle
    ``(2/√κ) atan2(√κ‖x − y‖, √D)`` with the denominator ``D = κ²‖x‖²‖y − x̄‖²`` formed
    from the antipode ``x̄`` of ``x``: accurate up to the antipode, where it is ``π/√κ``.
    Gradient 0 at ``x = y``. geoopt: 0 at the antipode.
    """
    k = _k(k, x)
    x2, y2, d2 = sqnorm(x, dim), sqnorm(y, dim), sqnorm(y - x, dim)
    a, b = 1.0 + k * x2, 1.0 + k * y2
    _, _, den_a, _, anti = _antipodal(x, y, x2, y2, k, dim)
    den = torch.where(anti, den_a, (a * b - k * d2).clamp_min(guards(x2.dtype).min_denom))
    return _squeeze(2.0 * _half_dist(d2, a, b, den, k)[0], dim, keepdim)


@float32_island
def dist0(x: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1) -> Tensor:
    r"""Distance to the origin ``d_κ(0, x) = 2 artan_κ ‖x‖ = 2‖x‖·A(κ‖x‖²)``."""
    k = _k(k, x)
    n = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    return _squeeze(2.0 * n * artan_ratio(k * n * n), dim, keepdim)


@point_island
def expmap0(u: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``exp₀(u) = tan_κ(‖u‖) u/‖u‖ = u·T(κ‖u‖²)``."""
    k = _k(k, u)
    u2, un = sqnorm_norm(u, dim)  # ‖u‖² overflows for huge u: then √|κ|‖u‖ (a rim point)
    return _radial(u, tan_ratio(_kq(k, u2), _sk(k) * un))


@float32_island
def logmap0(y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``log₀(y) = artan_κ(‖y‖) y/‖y‖ = y·A(κ‖y‖²)``."""
    k = _k(k, y)
    return _radial(y, artan_ratio(_kq(k, sqnorm(y, dim))))


@point_island
def expmap(x: Tensor, u: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``exp_x(u) = x ⊕ tan_κ(λ_x‖u‖/2) u/‖u‖ = x ⊕ (h T(κh²‖u‖²)) u``, ``h = λ_x/2``."""
    k = _k(k, x)
    x2 = sqnorm(x, dim)
    u2, un = sqnorm_norm(u, dim)  # ‖u‖² overflows for huge u: then √|κ|·h‖u‖
    h = 1.0 / _conf_half_inv(x2, k)
    c = h * tan_ratio(_kq(k, u2, h * h), _sk(k) * h * un)
    big = torch.isinf(u2)
    cu2 = torch.where(big, (c * un).square(), c * c * torch.where(big, 0.0, u2))
    cu = c * u
    return _madd(x, cu, k, dim, x2, cu2, _dot(x, cu, dim))  # ⟨x, u⟩ may overflow


@float32_island
def logmap(x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Logarithmic map ``log_x(y) = (2/λ_x) artan_κ‖m‖ m/‖m‖``, ``m = (−x) ⊕ y``.

    Computed as ``(1+κ‖x‖²) A(κ‖m‖²) m`` with ``m`` and ``‖m‖²`` from the
    cancellation-free parts of :func:`dist` (accurate for ``y → x``). For κ > 0 near the
    antipode ``x̄`` of ``x`` (``‖y − x̄‖ ≤ ‖y − x‖``) the length is :func:`dist`'s angle and
    the direction that of ``R_x(e) + (κ‖e‖²/(1 + κ‖x‖²)) x``, ``e = y − x̄``, ``R_x`` the
    reflection along ``x`` (an exact identity for the Möbius numerator, which cancels
    there). geoopt: loses half the digits there.
    """
    k = _k(k, x)
    g = guards(x.dtype)
    d, x2, y2, d2, a, b, den, coeffs = _gyro_diff(x, y, k, dim)
    e, e2, den_a, live, anti = _antipodal(x, y, x2, y2, k, dim)
    half, ratio = _half_dist(d2, a, b, torch.where(anti, den_a, den), k)
    c = a * ratio
    v_near = _gyro_vec(d, x, y, [c * ci for ci in coeffs])
    # near the antipode x̄ (‖y − x̄‖ ≤ ‖d‖) the Möbius numerator D·m cancels like D; its
    # direction comes from the exact identity (e = y − x̄, no cancellation)
    #   D·m/a = R_x(e) + (κ‖e‖²/a) x,  R_x(e) = e − 2⟨x, e⟩ x/‖x‖²  (a reflection of e)
    # evaluated with e = 0 on the other rows, so that that branch stays bounded
    use = live & (e2 <= d2)
    w = use.to(x.dtype)
    one = torch.ones_like(x2)
    e, e2 = e * w, e2 * w
    refl = torch.addcmul(e, x, -2.0 * _dot(x, e, dim) / torch.where(use, x2, one))
    num = torch.addcmul(refl, x, k * e2 / torch.where(use, a, one))
    coef = a * half * w / safe_norm(num, dim).clamp_min(g.min_norm)
    # select with lerp (exact for weights 0 and 1, and far cheaper than a broadcast where)
    return torch.lerp(v_near, num * coef, w)


@point_island
def geodesic(t: Tensor, x: Tensor, y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``γ_{x→y}(t) = x ⊕ (t ⊗ ((−x) ⊕ y))``; ``γ(0) = x``, ``γ(1) = y``."""
    k = _k(k, x)
    t = _k(t, x)
    d, x2, _, d2, a, _, den, coeffs = _gyro_diff(x, y, k, dim)
    m = _gyro_vec(d, x, y, coeffs)
    m2 = d2 / den
    am = artan_ratio(k * m2)
    w = t * am
    # κt²a²‖m‖² overflows for huge t: then the closed form at √|κ|·|t a|·‖m‖
    c = w * tan_ratio(_kq(k, w * w, m2), _sk(k) * w.abs() * safe_sqrt(m2))
    cm = c * m  # c²‖m‖² and c⟨x, m⟩ overflow in their factors for huge t: from cm itself
    return _madd(x, cm, k, dim, x2, sqnorm(cm, dim), _dot(x, cm, dim))


@point_island
def geodesic_unit(t: Tensor, x: Tensor, u: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Unit-speed geodesic from ``x`` in direction ``u``: ``x ⊕ tan_κ(t/2) u/‖u‖``."""
    k = _k(k, x)
    t = _k(t, x)
    g = guards(x.dtype)
    un = safe_norm(u, dim).clamp_min(g.min_norm)
    c = tan_k(0.5 * t, k) / un
    cu = c * u
    return _madd(x, cu, k, dim, sqnorm(x, dim), (c * un) ** 2, _dot(x, cu, dim))


@float32_island
def dist2plane(
    x: Tensor,
    p: Tensor,
    a: Tensor,
    *,
    k: Curvature,
    keepdim: bool = False,
    signed: bool = False,
    scaled: bool = False,
    dim: int = -1,
) -> Tensor:
    r"""Distance from ``x`` to the gyroplane through ``p`` with normal ``a``:

    .. math::
        d_κ(x, H_{a,p}) = \operatorname{arsin}_κ\frac{2⟨(−p)⊕x, a⟩}{(1 + κ‖(−p)⊕x‖²)‖a‖}

    (absolute value unless ``signed``; times ``‖a‖`` if ``scaled``).
    """
    k = _k(k, x)
    g = guards(x.dtype)
    a_norm = safe_norm(a, dim)
    a = a / a_norm.clamp_min(g.min_norm)  # the unit normal: ⟨·, a⟩ of a huge a overflows
    d, p2, _, d2, _, _, den, (c_s, c_p, c_x) = _gyro_diff(p, x, k, dim)
    # ⟨(−p)⊕x, a⟩ = c_s⟨d,a⟩ + c_p⟨p,a⟩ + c_x⟨x,a⟩ ; ‖(−p)⊕x‖² = ‖d‖²/D
    sc = c_s * _dot(d, a, dim) + c_p * _dot(p, a, dim) + c_x * _dot(x, a, dim)
    if not signed:
        sc = sc.abs()
    z = 2.0 * sc / (1.0 + k * d2 / den).clamp_min(g.min_denom)
    out = arsin_k(z, k)
    if scaled:
        out = out * a_norm
    return _squeeze(out, dim, keepdim)


# --------------------------------------------------------------------------------------
# parallel transport
# --------------------------------------------------------------------------------------


@float32_island
def parallel_transport(x: Tensor, y: Tensor, v: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Parallel transport ``P_{x→y}(v) = gyr[y, −x] v · λ_x/λ_y``."""
    kk = _k(k, x)
    ratio = (1.0 + kk * sqnorm(y, dim)) / _conf_half_inv(sqnorm(x, dim), kk)
    return gyration(y, -x, v, k=kk, dim=dim) * ratio


@float32_island
def parallel_transport0(y: Tensor, v: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``P_{0→y}(v) = v · λ_0/λ_y = v (1 + κ‖y‖²)``."""
    k = _k(k, y)
    return v * _conf_half_inv(sqnorm(y, dim), k)


@float32_island
def parallel_transport0back(x: Tensor, v: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""``P_{x→0}(v) = v · λ_x/λ_0 = v / (1 + κ‖x‖²)``."""
    k = _k(k, x)
    return v / _conf_half_inv(sqnorm(x, dim), k)


# --------------------------------------------------------------------------------------
# antipode, midpoint, projections to/from the ambient space (geoopt convention)
# --------------------------------------------------------------------------------------


@point_island
def antipode(x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Antipode: ``−x/(κ‖x‖²)`` for κ > 0 (the point at distance ``π/√κ``), ``−x`` for κ ≤ 0.

    Exact closed form; geoopt walks the unit geodesic for ``π/√κ``, which loses digits. The
    antipode of the origin is the point at infinity: returned as the origin.
    """
    k = _k(k, x)
    g = guards(x.dtype)
    x2 = sqnorm(x, dim)
    # not ε: κ‖x‖² may be far below it; √tiny keeps the derivative −1/(κ‖x‖²)² finite
    inv = 1.0 / (k * x2).clamp_min(g.min_norm)
    return torch.where(k > 0, -x * inv, -x)


@point_island
def weighted_midpoint(
    xs: Tensor,
    weights: Tensor | None = None,
    *,
    k: Curvature,
    reducedim: list[int] | None = None,
    dim: int = -1,
    keepdim: bool = False,
    lincomb: bool = False,
    posweight: bool = False,
) -> Tensor:
    r"""Weighted gyromidpoint (Ungar)

    .. math::
        m_κ = \frac12 ⊗_κ \frac{\sum_i w_i λ_{x_i} x_i}{\sum_i |w_i| (λ_{x_i} − 1)}

    reduced over ``reducedim`` (default: every dim but ``dim``). For κ > 0 the antipode of
    ``m`` is returned where it is closer to the points in total. ``posweight`` replaces
    points of negative weight by their antipode; ``lincomb`` returns ``(Σ w_i) ⊗ m``.
    Branch-free (geoopt tests ``torch.any(k > 0)`` on the host).
    """
    k = _k(k, xs)
    g = guards(xs.dtype)
    nd = xs.dim()
    dim_ = dim % nd
    if reducedim is None:
        reducedim = [d for d in range(nd) if d != dim_]
    reducedim = [d % nd for d in reducedim]
    gamma = 2.0 / _conf_half_inv(sqnorm(xs, dim_), k)
    if weights is None:
        w = torch.ones((), dtype=xs.dtype, device=xs.device)
    else:
        w = _k(weights, xs).unsqueeze(dim_)
    if posweight:
        xs = torch.where(w < 0, antipode(xs, k=k, dim=dim_), xs)
        w = w.abs()
    den = ((gamma - 1.0) * w).sum(reducedim, keepdim=True)
    num = (gamma * w * xs).sum(reducedim, keepdim=True)
    # ½ ⊗ (num/den) = num/(den ± h), h = √(den² + κ‖num‖²), ± the sign of den, for every κ
    # (tan(θ/2) = sin θ/(1 + cos θ)); unlike num/den it cannot overflow when den cancels
    # (nearly antipodal points on the sphere), and den ± h never cancels.
    h = safe_sqrt((den * den + k * sqnorm(num, dim_)).clamp_min(0.0))
    a_mean = num / clamp_abs(den + torch.where(den < 0, -h, h), g.min_norm)
    b_mean = antipode(a_mean, k=k, dim=dim_)
    a_dist = dist(a_mean, xs, k=k, keepdim=True, dim=dim_).sum(reducedim, keepdim=True)
    b_dist = dist(b_mean, xs, k=k, keepdim=True, dim=dim_).sum(reducedim, keepdim=True)
    a_mean = torch.where((k > 0) & (b_dist < a_dist), b_mean, a_mean)
    if lincomb:
        if weights is None:
            count = 1
            for d in reducedim:
                count *= xs.size(d)
            alpha = torch.full((), float(count), dtype=xs.dtype, device=xs.device)
        else:
            alpha = torch.broadcast_to(w, gamma.shape).sum(reducedim, keepdim=True)
        a_mean = mobius_scalar_mul(alpha, a_mean, k=k, dim=dim_)
    if not keepdim:
        for d in sorted(reducedim, reverse=True):
            a_mean = a_mean.squeeze(d)
    return a_mean


@point_island
def sproj(x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Stereographic projection ``x_{:n} / (1 + √|κ| x_n)`` from the ambient ``R^{n+1}``.

    geoopt's convention: the *last* coordinate is the time/height axis. κ ≠ 0.

    :func:`mosgeo.charts.from_ambient` is the same map with the paper's convention (time
    coordinate first).
    """
    k = _k(k, x)
    g = guards(x.dtype)
    sk = k.abs().clamp_min(g.min_norm**2).sqrt()
    n = x.size(dim)
    return x.narrow(dim, 0, n - 1) / clamp_abs(1.0 + sk * x.narrow(dim, n - 1, 1), g.min_denom)


@float32_island
def inv_sproj(x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Inverse of :func:`sproj`: ``(λ_x x, (1 − κ‖x‖²)/(√|κ|(1 + κ‖x‖²)))``, time last. κ ≠ 0."""
    k = _k(k, x)
    g = guards(x.dtype)
    t = k * sqnorm(x, dim)
    den = _conf_half_inv(t, torch.ones_like(t))
    sk = k.abs().clamp_min(g.min_norm**2).sqrt()
    time = (1.0 - t) / (den * sk)
    return torch.cat((x * (2.0 / den), time.expand_as(x.narrow(dim, 0, 1))), dim=dim)
