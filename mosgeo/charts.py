r"""Charts between the κ-stereographic model and the ambient ``R^{n+1}``.

The paper's "unified Lorentz framework" (eq. 3–8). For κ < 0 the ambient model is the upper
sheet of the hyperboloid ``⟨y, y⟩_L = 1/κ`` in Minkowski space, for κ > 0 the sphere
``⟨y, y⟩ = 1/κ``; the *time* coordinate ``y₀`` comes first (the paper's convention;
:func:`mosgeo.math.sproj` keeps geoopt's time-last convention).

===================  =================================================  ==================
function             formula                                            defined for
===================  =================================================  ==================
``to_ambient``       ``((1−κr²)/(√|κ|(1+κr²)), 2x/(1+κr²))``             κ ≠ 0
``from_ambient``     ``y_s / (1 + √|κ| y₀)``                             κ ≠ 0
``to_spacelike``     ``u = 2x/(1+κr²) = λ_x x``                          all κ
``from_spacelike``   ``x = u / (1 + √(1 − κ‖u‖²))``                      all κ (κ>0: ‖u‖≤1/√κ)
``clip_spacelike``   ``u·min(1, (1−ε)/(√κ‖u‖))`` for κ > 0, else ``u``   all κ
``lorentz_inner``    ``∓y₀z₀ + ⟨y_s, z_s⟩`` (− for κ < 0)                κ ≠ 0
``ambient_dist``     ``2 arsin_κ(‖y − z‖_κ / 2)``                        κ ≠ 0
===================  =================================================  ==================

``to_spacelike``/``from_spacelike`` are the space-like part of the paper's eq. 5 and eq. 8
(``ρ_κ`` with the time coordinate ``ξ = √(1/|κ| − sgn(κ)‖u‖²)`` substituted) and are
inverse to each other for every κ. At κ = 0 they are ``u = 2x`` and ``x = u/2``: the
paper's eq. 8 as printed (with ``φ(0) = 0``) gives ``x = u`` there, which is discontinuous
in κ (its limit is ``u/2``); we use the continuous extension.
"""

from __future__ import annotations

import torch

from .math import arsin_k, point_island
from .numerics import (
    Curvature,
    clamp_abs,
    float32_island,
    guards,
    safe_norm,
    safe_sqrt,
    sqnorm,
    sqnorm_norm,
)
from .numerics import as_curvature as _k

Tensor = torch.Tensor

__all__ = [
    "to_ambient",
    "from_ambient",
    "to_spacelike",
    "from_spacelike",
    "clip_spacelike",
    "clip_spacelike_factor",
    "lorentz_inner",
    "ambient_dist",
    "spacelike_scale",
    "spacelike_inverse_scale",
]


def _sqrt_abs_k(k: Tensor) -> Tensor:
    return k.abs().clamp_min(guards(k.dtype).min_norm ** 2).sqrt()


@float32_island
def to_ambient(x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Inverse stereographic projection (paper eq. 5) into ``R^{n+1}``, time first:

    .. math::
        ρ_κ^{-1}(x) = \Big(\frac{1 − κ‖x‖²}{\sqrt{|κ|}(1 + κ‖x‖²)},\ \frac{2x}{1 + κ‖x‖²}\Big).

    Lands on ``⟨y, y⟩_L = 1/κ``, ``y₀ > 0`` for κ < 0 (``‖x‖ < 1/√|κ|``) and on the
    sphere of radius ``1/√κ`` for κ > 0. κ = 0 has no ambient model (``|y₀| → ∞``).
    """
    k = _k(k, x)
    t = k * sqnorm(x, dim)
    den = (1.0 + t).clamp_min(guards(x.dtype).min_denom)
    time = (1.0 - t) / (den * _sqrt_abs_k(k))
    return torch.cat((time.expand_as(x.narrow(dim, 0, 1)), x * (2.0 / den)), dim=dim)


@point_island
def from_ambient(y: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Stereographic projection ``ρ_κ(y) = y_s / (1 + √|κ| y₀)`` (paper eq. 8), time first.

    From ``R^{n+1}``; κ ≠ 0. The sphere's south pole ``y₀ = −1/√κ`` maps to infinity (kept
    finite by a ``±ε`` clamp).
    """
    k = _k(k, y)
    n = y.size(dim)
    time, space = y.narrow(dim, 0, 1), y.narrow(dim, 1, n - 1)
    return space / clamp_abs(1.0 + _sqrt_abs_k(k) * time, guards(y.dtype).min_denom)


@float32_island
def spacelike_scale(x2: Tensor, k: Curvature) -> Tensor:
    r"""Radial factor of :func:`to_spacelike` from ``‖x‖²``: ``λ_x = 2/(1 + κ‖x‖²)``.

    Half precision: computed in float32 and cast back (as every op)."""
    k = _k(k, x2)
    return 2.0 / (1.0 + k * x2).clamp_min(guards(x2.dtype).min_denom)


def spacelike_inverse_scale(u2: Tensor, k: Curvature, n: Tensor | None = None) -> Tensor:
    r"""Radial factor of :func:`from_spacelike` from ``‖u‖²``: ``q = 1/(1 + √(1 − κ‖u‖²))``.

    The one formula of the lift, used by :func:`from_spacelike` and the fused MoSELoRA path.
    ``1 − κ‖u‖²`` is clamped at ``ε`` (κ > 0 beyond the chart: clip first). ``n = ‖u‖``
    (default ``√u2``) is used only where ``u2`` overflowed (:func:`mosgeo.numerics.sqnorm_norm`):
    there ``s = √(1 − κn²)`` is formed without squaring. Closed-form derivatives
    ``∂q/∂u2 = κq²/(2s)``, ``∂q/∂κ = ‖u‖²q²/(2s)`` (``∂q/∂n = κnq²/s`` on overflowed rows),
    smooth at ``u = 0`` and bounded for huge ``u``. Half precision: computed in float32.
    """
    if n is None:
        n = safe_sqrt(u2)
    return _lift_scale(u2, n, k)


@float32_island
def _lift_scale(u2: Tensor, n: Tensor, k: Curvature) -> Tensor:
    k = _k(k, u2)
    shape = torch.broadcast_shapes(u2.shape, k.shape)
    return _LiftScale.apply(u2.expand(shape), n.expand(shape), k.expand(shape))


@float32_island
def to_spacelike(x: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Space-like coordinate ``u = 2x/(1 + κ‖x‖²) = λ_x x`` of :func:`to_ambient`.

    The paper's eq. 5 ``s``; smooth in κ, ``u = 2x`` at κ = 0.
    """
    k = _k(k, x)
    return x * spacelike_scale(sqnorm(x, dim), k)


def _lift_s(u2: Tensor, n: Tensor, k: Tensor) -> Tensor:
    r"""``s = √(1 − κ‖u‖²)``: from ``u2`` where ``κ·u2`` is finite, else (``u2`` or the
    product overflowed) from the norm without squaring, ``hypot(1, √|κ| n)`` (κ < 0) or
    ``√(1 − (√κ n)²)`` (κ > 0, clamped); both where-branches safe."""
    g = guards(u2.dtype)
    t = k * torch.where(torch.isinf(u2), torch.zeros_like(u2), u2)
    big = torch.isinf(u2) | torch.isinf(t)
    s_small = (1.0 - torch.where(big, torch.zeros_like(t), t)).clamp_min(g.min_denom).sqrt()
    kb = torch.where(big, k, -torch.ones_like(k))  # the unused branch must not see √|0|
    a = kb.abs().sqrt() * torch.where(big, n, torch.ones_like(n))
    s_big = torch.where(
        kb < 0, torch.hypot(torch.ones_like(a), a), (1.0 - a * a).clamp_min(g.min_denom).sqrt()
    )
    return torch.where(big, s_big, s_small)


class _LiftScale(torch.autograd.Function):
    r"""``q(u2, n, κ) = 1/(1 + s)``, ``s = √(1 − κ‖u‖²)`` (:func:`_lift_s`) with the
    closed-form derivatives of :func:`spacelike_inverse_scale` — every factor bounded for
    huge ‖u‖, where autograd through the overflow-free form would overflow in its
    intermediates (or meet d√|κ|/dκ = ∞ at κ = 0)."""

    @staticmethod
    def forward(ctx, u2: Tensor, n: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(u2, n, k)
        return 1.0 / (1.0 + _lift_s(u2, n, k))

    @staticmethod
    def backward(ctx, grad: Tensor):
        u2, n, k = ctx.saved_tensors
        s = _lift_s(u2, n, k)  # recomputed with differentiable ops: double backward works
        q = 1.0 / (1.0 + s)
        zero = torch.zeros_like(q)
        fin = torch.isfinite(u2)
        u2f = torch.where(fin, u2, zero)
        fin = fin & torch.isfinite(k * u2f)  # the rows _lift_s took from u2
        # the order of autograd through 1/(1 + √(1 − κu2)): grad·q², then /(2s), then ·κ, ·u2
        gs = grad * (q * q) / (2.0 * s)
        nq = n * q
        g_u2 = torch.where(fin, gs * k, zero)
        g_n = torch.where(fin, zero, (grad * q / s) * (k * nq))
        g_k = torch.where(fin, gs * u2f, grad * (0.5 * nq * nq / s))
        return g_u2, g_n, g_k


@point_island
def from_spacelike(u: Tensor, *, k: Curvature, dim: int = -1) -> Tensor:
    r"""Inverse of :func:`to_spacelike`: ``x = u/(1 + √(1 − κ‖u‖²))``.

    The paper's eq. 8 with the time coordinate ``ξ = √(1/|κ| − sgn κ ‖u‖²)`` substituted;
    continuous at κ = 0 where it is ``u/2``. For κ > 0 it covers the hemisphere
    ``‖x‖ ≤ 1/√κ`` and needs ``‖u‖ ≤ 1/√κ``: apply :func:`clip_spacelike` first.
    """
    u2, n = sqnorm_norm(u, dim)  # ‖u‖² overflows for huge u: then the norm
    return u * spacelike_inverse_scale(u2, k, n)


def clip_spacelike(u: Tensor, *, k: Curvature, eps: float | None = None, dim: int = -1) -> Tensor:
    r"""Gradient-bound projection of the paper's appendix.

    For κ > 0 rescales ``u`` to ``‖u‖ ≤ R = (1 − ε)/√κ``, so the lift
    ``a_κ(u) = √(1/κ − ‖u‖²)`` has ``‖∇a_κ‖ ≤ R/√(1/κ − R²) = C_u(κ, R) < ∞``. Identity for
    κ ≤ 0 (the hyperbolic lift is 1-Lipschitz). ``eps`` defaults by dtype
    (:func:`mosgeo.numerics.default_eps`).
    """
    if eps is None or eps < 0:
        eps = guards(u.dtype).ball_eps  # storage dtype: see mosgeo.math.project
    return _clip_spacelike(u, k, dim, eps)


@float32_island
def _clip_spacelike(u: Tensor, k: Curvature, dim: int, eps: float) -> Tensor:
    n = safe_norm(u, dim)  # ‖u‖² of a huge u overflows: the clip must still point along u
    return u * _clip_spacelike_factor(n, _k(k, u), eps)


def clip_spacelike_factor(n: Tensor, k: Curvature, eps: float | None = None) -> Tensor:
    r"""Radial factor of :func:`clip_spacelike` from ``n = ‖u‖``.

    ``min(1, (1 − eps)/(√κ n))`` for κ > 0, 1 for κ ≤ 0. Half precision: computed in
    float32 and cast back, with the storage dtype's default ``eps`` (as :func:`clip_spacelike`).
    """
    if eps is None or eps < 0:
        eps = guards(n.dtype).ball_eps
    return _clip_spacelike_factor(n, k, eps)


@float32_island
def _clip_spacelike_factor(n: Tensor, k: Curvature, eps: float) -> Tensor:
    g = guards(n.dtype)
    k = _k(k, n)
    # √κ·‖u‖ against 1 − eps (not ‖u‖ against (1 − eps)/√κ): finite κ-gradient for tiny κ
    m = k.clamp_min(g.min_norm**2).sqrt() * n
    over = (k > 0) & (m > 1.0 - eps)
    one = torch.ones_like(m)
    return torch.where(over, (1.0 - eps) / torch.where(over, m, one), one)


@float32_island
def lorentz_inner(
    y: Tensor, z: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1
) -> Tensor:
    r"""Ambient inner product: Minkowski for κ < 0, Euclidean for κ > 0.

    ``−y₀z₀ + ⟨y_s, z_s⟩`` for κ < 0, so ``⟨y, y⟩ = 1/κ`` on the model in both cases.
    """
    k = _k(k, y)
    n = y.size(dim)
    t = y.narrow(dim, 0, 1) * z.narrow(dim, 0, 1)
    s = (y.narrow(dim, 1, n - 1) * z.narrow(dim, 1, n - 1)).sum(dim=dim, keepdim=True)
    out = torch.where(k < 0, -t, t) + s
    return out if keepdim else out.squeeze(dim)


@float32_island
def ambient_dist(
    y: Tensor, z: Tensor, *, k: Curvature, keepdim: bool = False, dim: int = -1
) -> Tensor:
    r"""Geodesic distance on the hyperboloid / sphere from the chord length:

    .. math::
        d = 2\,\operatorname{arsin}_κ(c/2),\quad c² = ⟨y − z, y − z⟩_κ ≥ 0,

    i.e. ``(2/√|κ|) asinh(√|κ| c/2)`` for κ < 0 and ``(2/√κ) asin(√κ c/2)`` for κ > 0:
    accurate for close points, unlike ``arcosh(κ⟨y, z⟩_L)``."""
    d = y - z
    c2 = lorentz_inner(d, d, k=k, keepdim=True, dim=dim).clamp_min(0.0)
    c = safe_sqrt(c2)
    out = 2.0 * arsin_k(0.5 * c, _k(k, y))
    return out if keepdim else out.squeeze(dim)
