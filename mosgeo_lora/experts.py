r"""The mixture-of-space experts of one adapted layer: literal reference and fused path.

For the low-rank code ``z = A x`` (``r``-dim) and expert ``i`` with curvature ``κ_i`` and
up-projection ``B_i`` (``d_out × r``), paper eq. 5–8 (``docs/design.md`` §2.1):

.. code-block:: text

    s_i = to_spacelike(project(z, κ_i), κ_i)      # input_map="stereographic"  (s_i = z: "lift")
    u_i = clip_spacelike(B_i s_i, κ_i)            # gradient-bound projection
    o_i = from_spacelike(u_i, κ_i)
    out = Σ_i g_i o_i

Every map is radial (a vector times a scalar of its norm), so (``docs/design.md`` §2.2)
``o_i = c_i a_i B_i z`` with ``a_i = a(κ_i, ‖z‖²)`` and ``c_i = c(κ_i, a_i² zᵀ(B_iᵀB_i)z)``:
the norm of ``B_i s_i`` comes from the ``r × r`` Gram matrix, and

.. math::
    out = B_{cat}\,(γ ⊗ z),\quad γ_i = g_i c_i a_i,\quad B_{cat} = [B_1 … B_N],

one ``(T × N·r)·(N·r × d_out)`` matmul with no per-expert ``d_out`` tensor. Both paths call
the formulas of :mod:`mosgeo` (``project``/``project_factor``, ``to_spacelike``/
``spacelike_scale``, ``clip_spacelike``/``clip_spacelike_factor``,
``from_spacelike``/``spacelike_inverse_scale``); nothing is re-derived here.

``B_cat`` is stored as one ``(d_out, N·r)`` matrix (expert ``i`` owns columns
``i·r … (i+1)·r − 1``) and ``k`` has shape ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mosgeo import charts
from mosgeo import math as pmath
from mosgeo.numerics import compute_dtype, default_eps, safe_sqrt, sqnorm

from .constants import INPUT_MAPS

Tensor = torch.Tensor

__all__ = ["experts_reference", "experts_fused", "input_factor"]


def _check(z: Tensor, b_cat: Tensor, k: Tensor, input_map: str) -> int:
    if input_map not in INPUT_MAPS:
        raise ValueError(f"input_map must be one of {INPUT_MAPS}, got {input_map!r}")
    n = k.shape[-1]
    r = z.shape[-1]
    if k.dim() != 1 or b_cat.shape[-1] != n * r:
        raise ValueError(
            f"expected k of shape (N,) and B_cat of shape (d_out, N·r); got k {tuple(k.shape)}, "
            f"B_cat {tuple(b_cat.shape)}, r = {r}"
        )
    return n


def experts_reference(
    z: Tensor,
    b_cat: Tensor,
    k: Tensor,
    *,
    input_map: str = "stereographic",
    phi: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Literal per-expert outputs ``o_i`` of shape ``(..., N, d_out)`` (slow; the tests hold
    the fused path to it). ``phi`` is an optional elementwise activation applied to
    ``B_i s_i`` before the clip (paper eq. 6); the fused path supports ``phi = None`` only."""
    n = _check(z, b_cat, k, input_map)
    r = z.shape[-1]
    outs = []
    for i in range(n):
        ki = k[i]
        s = z
        if input_map == "stereographic":
            s = charts.to_spacelike(pmath.project(z, k=ki), k=ki)
        v = s @ b_cat[:, i * r : (i + 1) * r].T
        if phi is not None:
            v = phi(v)
        u = charts.clip_spacelike(v, k=ki)
        outs.append(charts.from_spacelike(u, k=ki))
    return torch.stack(outs, dim=-2)


def input_factor(z2: Tensor, k: Tensor, input_map: str, eps: float | None = None) -> Tensor:
    r"""``a_i`` with ``s_i = a_i z``: ``p·λ(p²‖z‖²)``, ``p = project_factor(‖z‖)``
    (stereographic), or 1 (lift). ``z2 = ‖z‖²`` of shape ``(..., 1)``; result ``(..., N)``.
    ``eps``: the margin of ``project`` (default: that of ``z2``'s dtype)."""
    if input_map == "lift":
        return torch.ones_like(z2 * k)
    p = pmath.project_factor(safe_sqrt(z2), k, eps)
    return p * charts.spacelike_scale(p * p * z2, k)


def experts_fused(
    z: Tensor,
    b_cat: Tensor,
    k: Tensor,
    gates: Tensor,
    *,
    input_map: str = "stereographic",
) -> Tensor:
    r"""``Σ_i g_i o_i`` of shape ``(..., d_out)`` by the radial identity (module docstring).

    ``gates`` has shape ``(..., N)``. Cost beyond the matmul: the Gram matrices
    ``B_iᵀB_i`` (``N·r²·d_out``) and ``zᵀG_iz`` (``T·N·r²``).

    Half precision (float16/bfloat16 weights, no autocast): the radial scalars ``γ_i`` —
    norms, Gram forms and factors — are computed in float32 with the storage dtype's
    margins (the float32 island of :mod:`mosgeo.numerics`, as the literal path's ops,
    including ``from_spacelike``'s: its point is kept strictly inside the ball), the two
    matmuls that touch ``d_out`` stay in the storage dtype."""
    n = _check(z, b_cat, k, input_map)
    r = z.shape[-1]
    d_out = b_cat.shape[0]
    eps = default_eps(z.dtype)  # the literal path's margins: those of the storage dtype
    cdt = compute_dtype(z.dtype)
    zc, kc = z.to(cdt), k.to(cdt)
    z2 = sqnorm(zc)
    a = input_factor(z2, kc, input_map, eps)  # (..., N)
    bv = b_cat.to(cdt).view(d_out, n, r)
    gram = torch.einsum("dnr,dns->nrs", bv, bv)  # (N, r, r)
    q = (torch.einsum("...r,nrs->...ns", zc, gram) * zc.unsqueeze(-2)).sum(-1)  # zᵀ G_i z
    v2 = a * a * q.clamp_min(0.0)  # ‖B_i s_i‖²
    c = charts.clip_spacelike_factor(safe_sqrt(v2), kc, eps)
    c = c * charts.spacelike_inverse_scale(c * c * v2, kc)
    if cdt != z.dtype:  # from_spacelike's point strictly inside the storage dtype's ball
        c = c * pmath.ball_factor(c * safe_sqrt(v2), kc, eps)
    gamma = (gates.to(cdt) * c * a).to(z.dtype)
    h = (gamma.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)  # (..., N·r)
    return h @ b_cat.T
