r"""The mixture of space experts of one adapted layer: literal reference and fused path.

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

one ``(T × N·r)·(N·r × d_out)`` matmul with no per-expert ``d_out`` tensor. The scalar
``γ`` and its derivatives are :mod:`mosgeo.radial`'s (the composition of ``project_factor``,
``spacelike_scale``, ``clip_spacelike_factor`` and ``spacelike_inverse_scale``, in closed
form); nothing is re-derived here. :func:`mix_forward` / :func:`mix_backward` are the fused
path without an autograd graph — the Gram matrices once per call, ``zᵀG_iz`` and ``γ ⊗ z``
as contractions, each token divided by its largest entry first (the mixture does not
depend on that factor; no square of a huge token overflows) — for the fused layer
(:mod:`mosgeo_lora.fused`); :func:`experts_fused` is the same as a differentiable function.

``B_cat`` is stored as one ``(d_out, N·r)`` matrix (expert ``i`` owns columns
``i·r … (i+1)·r − 1``) and ``k`` has shape ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mosgeo import charts, radial
from mosgeo import math as pmath
from mosgeo.numerics import compute_dtype, default_eps, safe_sqrt

from .constants import INPUT_MAPS

Tensor = torch.Tensor

__all__ = [
    "experts_reference",
    "experts_fused",
    "input_factor",
    "MixState",
    "gram_matrices",
    "mix_forward",
    "mix_infer",
    "mix_backward",
]


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


def _check_ball(ball: Tensor | None, n: int, input_map: str) -> None:
    if ball is None:
        return
    if input_map != "stereographic":
        raise ValueError("an input ball needs the stereographic input map (lift does not project)")
    if ball.shape != (n,):
        raise ValueError(f"expected ball of shape ({n},), got {tuple(ball.shape)}")


def experts_reference(
    z: Tensor,
    b_cat: Tensor,
    k: Tensor,
    *,
    input_map: str = "stereographic",
    phi: Callable[[Tensor], Tensor] | None = None,
    ball: Tensor | None = None,
) -> Tensor:
    """Literal per-expert outputs ``o_i`` of shape ``(..., N, d_out)`` (slow; the tests hold
    the fused path to it). ``phi`` is an optional elementwise activation applied to
    ``B_i s_i`` before the clip (paper eq. 6); the fused path supports ``phi = None`` only.
    ``ball`` (``(N,)``, ``≥ 0``; 0: none) projects expert ``i``'s code a second time, onto
    the ball of curvature ``−ball_i`` (:func:`mosgeo.radial.inverse_radius2`)."""
    n = _check(z, b_cat, k, input_map)
    _check_ball(ball, n, input_map)
    r = z.shape[-1]
    outs = []
    for i in range(n):
        ki = k[i]
        s = z
        if input_map == "stereographic":
            p = pmath.project(z, k=ki)
            if ball is not None and ball[i] > 0:
                p = pmath.project(p, k=-ball[i])
            s = charts.to_spacelike(p, k=ki)
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


class MixState(NamedTuple):
    """What :func:`mix_backward` needs of one :func:`mix_forward` call."""

    #: ``z̃ = z/μ`` (compute dtype), ``(T, r)``.
    zt: Tensor
    #: ``μ``, the largest ``|z_j|`` of each token, ``(T, 1)``.
    mu: Tensor
    #: ``B_cat`` as stored, ``(d_out, N·r)``.
    b_cat: Tensor
    #: ``B_cat`` in the compute dtype, viewed ``(d_out, N, r)``.
    bv: Tensor
    #: ``G_i z̃``, ``(T, N, r)``.
    zg: Tensor
    #: ``γ̃``, ``(T, N)``.
    gamma: Tensor
    #: ``h = γ̃ ⊗ z̃`` in the storage dtype, ``(T, N·r)``.
    h: Tensor
    #: :func:`mosgeo.radial.scale_forward`'s state.
    scale: tuple


def gram_matrices(b_cat: Tensor, n: int, dtype: torch.dtype | None = None) -> Tensor:
    r"""``[G_1 … G_N]``, ``G_i = B_iᵀB_i``, as one ``(r, N·r)`` matrix (in ``dtype``, default
    ``b_cat``'s): ``z̃ [G_1 … G_N]`` is every ``G_i z̃`` in one matmul (``G_i`` is
    symmetric)."""
    d_out = b_cat.shape[0]
    r = b_cat.shape[1] // n
    bv = (b_cat if dtype is None or b_cat.dtype == dtype else b_cat.to(dtype)).view(d_out, n, r)
    return torch.einsum("dnr,dns->rns", bv, bv).reshape(r, n * r)


def mix_forward(
    z: Tensor,
    b_cat: Tensor,
    k: Tensor,
    gates: Tensor,
    *,
    input_map: str,
    base: Tensor | None = None,
    save: bool = True,
    gram: Tensor | None = None,
    terms: radial.CurvatureTerms | None = None,
    alpha: float = 1.0,
    ball: Tensor | None = None,
) -> tuple[Tensor, MixState | None]:
    r"""``base + Σ_i γ_i B_i z`` (module docstring) for ``(T, r)`` codes, no autograd graph.

    ``gates`` (``(T, N)``, compute dtype) are already multiplied by
    :func:`mosgeo.radial.gate_scale` of the storage dtype's margin and the output weight;
    ``base`` (``(T, d_out)``, or ``None``) is added by the up-projection's matmul. Each token is
    divided by its largest ``|z_j|`` (``μ``, detached: the mixture does not depend on it),
    so that ``‖z‖²`` and the Gram forms cannot overflow. ``gram`` (:func:`gram_matrices`
    in the compute dtype) and ``terms`` (:func:`mosgeo.radial.curvature_terms` of ``k``)
    may come from an earlier call with the same weights (the layer's inference cache);
    ``ball`` is the experts' second input ball (``(N,)``, compute dtype, or ``None``:
    :func:`mosgeo.radial.inverse_radius2`).
    ``alpha`` multiplies the adapter's output (``base + alpha·Σ_i γ_i B_i z``; a constant
    factor of the gates folded into the up-projection's ``addmm`` at no cost; with
    ``alpha ≠ 1`` the call saves no state). Returns ``(out, state)``."""
    if alpha != 1.0 and save:
        raise ValueError("mix_forward: alpha ≠ 1 is for calls without a backward (save=False)")
    if gram is not None and not save:  # the inference cache's terms
        if terms is None:
            terms = radial.curvature_terms(
                k.to(compute_dtype(z.dtype)), default_eps(z.dtype), input_map, ball
            )
        out = mix_infer(
            z, b_cat.t(), gates, gram, terms, input_map=input_map, base=base, alpha=alpha
        )
        return out, None
    dtype = z.dtype
    cdt = compute_dtype(dtype)
    eps = default_eps(dtype)  # the literal path's margins: those of the storage dtype
    t, r = z.shape
    d_out = b_cat.shape[0]
    n = k.shape[-1]
    zc = z if dtype == cdt else z.to(cdt)
    mu = torch.linalg.vector_norm(zc, float("inf"), dim=-1, keepdim=True)
    mu = mu.clamp_min(torch.finfo(cdt).tiny)
    zt = zc / mu
    bc = b_cat if b_cat.dtype == cdt else b_cat.to(cdt)
    bv = bc.view(d_out, n, r)
    zg = bz = None
    if save or t >= r:  # one top-level op each (one launch per contraction)
        gram = torch.einsum("dnr,dns->nrs", bv, bv)  # B_iᵀB_i, once per call
        zg = torch.einsum("tr,nrs->tns", zt, gram)
        q = torch.einsum("tns,ts->tn", zg, zt)
    else:  # no backward and fewer tokens than the rank (decoding): B_i z̃ directly costs
        # T·N·r·d_out multiply-adds, the Gram matrices N·r²·d_out; and the output is then
        # Σ_i γ_i B_i z̃ from it, without reading B a second time
        bz = F.linear(zt, bc.view(d_out * n, r)).view(t, d_out, n)
        q = (bz * bz).sum(1)
    nz = None
    if input_map != "lift":  # the stereographic map reads ‖z̃‖ (in [1, √r], or 0)
        nz = torch.linalg.vector_norm(zt, dim=-1, keepdim=True)
    gamma, scale = radial.gamma_forward(
        nz, q, k, gates, mu, eps=eps, input_map=input_map, inside=cdt != dtype, save=save,
        terms=terms, ball=ball,
    )  # fmt: skip
    if alpha != 1.0 and (bz is not None or base is None):
        gamma = gamma * alpha
        alpha = 1.0
    if bz is not None:
        out = torch.bmm(bz, gamma.unsqueeze(-1)).view(t, d_out)
        if cdt != dtype:
            out = out.to(dtype)
        return (out if base is None else base + out), None
    if save:
        h = torch.einsum("tn,tr->tnr", gamma, zt).reshape(t, n * r)
    else:
        h = (gamma.unsqueeze(-1) * zt.unsqueeze(1)).view(t, n * r)
    if cdt != dtype:
        h = h.to(dtype)
    out = F.linear(h, b_cat) if base is None else torch.addmm(base, h, b_cat.t(), alpha=alpha)
    if not save:
        return out, None
    return out, MixState(zt, mu, b_cat, bv, zg, gamma, h, scale)


def mix_infer(
    z: Tensor,
    up: Tensor,
    gates: Tensor,
    gram: Tensor,
    terms: radial.CurvatureTerms,
    *,
    input_map: str,
    base: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    r""":func:`mix_forward` of a call without a backward, ``base + alpha·Σ_i γ_i B_i z``, with
    the terms that depend on the weights alone computed before (a layer's inference cache):
    ``up`` (``B_catᵀ``), ``gram`` (:func:`gram_matrices` in the compute dtype) and ``terms``
    (:func:`mosgeo.radial.curvature_terms` of κ). Each form is that of :func:`mix_forward`:
    ``q_i = z̃ᵀG_iz̃`` from one ``z̃ [G_1 … G_N]`` matmul, ``γ`` by
    :func:`mosgeo.radial.gamma_forward`, the mixture as one ``addmm`` over ``B_cat``."""
    dtype = z.dtype
    cdt = compute_dtype(dtype)
    zc = z if dtype == cdt else z.to(cdt)
    mu = torch.linalg.vector_norm(zc, float("inf"), dim=-1, keepdim=True)
    zt = zc / mu.clamp_min_(torch.finfo(cdt).tiny)
    t, r = zt.shape
    n = gram.shape[1] // r
    zu = zt.unsqueeze(1)
    q = ((zt @ gram).view(t, n, r) * zu).sum(-1)
    nz = None if input_map == "lift" else torch.linalg.vector_norm(zt, dim=-1, keepdim=True)
    gamma, _ = radial.gamma_forward(
        nz, q, terms.k, gates, mu, eps=default_eps(dtype), input_map=input_map,
        inside=cdt != dtype, save=False, terms=terms,
    )  # fmt: skip
    if alpha != 1.0 and base is None:
        gamma = gamma * alpha
    h = (gamma.unsqueeze(-1) * zu).view(t, n * r)
    if cdt != dtype:
        h = h.to(dtype)
    return h @ up if base is None else torch.addmm(base, h, up, alpha=alpha)


def mix_backward(
    state: MixState, grad: Tensor, need_b: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    r"""The gradients of :func:`mix_forward` for ``grad = ∂L/∂out`` (``(T, d_out)``).

    Returns ``(∂L/∂z, ∂L/∂B_cat or None, ∂L/∂κ, ∂L/∂gates)``: ``q = z̃ᵀG_iz̃`` gives
    ``2 G_i z̃`` to ``z̃`` and ``z̃z̃ᵀ`` to ``G_i``; ``G_i = B_iᵀB_i`` gives ``2 B_i ∂G_i`` to
    ``B_i``; ``μ`` is a constant (the mixture does not depend on it)."""
    zt, mu, b_cat, bv, zg, gamma, h, scale = state
    t, r = zt.shape
    n = gamma.shape[-1]
    cdt = zt.dtype
    g_h = grad @ b_cat
    if g_h.dtype != cdt:
        g_h = g_h.to(cdt)
    g_h = g_h.view(t, n, r)
    g_gamma = torch.einsum("tnr,tr->tn", g_h, zt)
    g_z2_neg, g_q, g_k, g_gates = radial.gamma_backward(scale, g_gamma)
    g_zt = torch.einsum("tnr,tn->tr", g_h, gamma)
    g_zt = g_zt.add_(torch.einsum("tnr,tn->tr", zg, g_q), alpha=2.0)
    if g_z2_neg is not None:
        g_zt = g_zt.addcmul_(zt, g_z2_neg, value=-2.0)
    g_z = g_zt / mu
    g_b = None
    if need_b:
        g_gram = torch.einsum("tn,tr,ts->nrs", g_q, zt, zt)
        g_bv = torch.einsum("dnr,nrs->dns", bv, g_gram).reshape(b_cat.shape)
        if g_bv.dtype != h.dtype:
            g_bv = g_bv.to(h.dtype)
        # one addmm with beta, not ``(grad.t() @ h).add_(g_bv, alpha=2)``: inductor (torch
        # 2.13) fuses a matmul and an add into addmm and drops the add's alpha, a wrong
        # gradient under torch.compile (tests/tuner/test_compile_inductor.py)
        g_b = torch.addmm(g_bv, grad.t(), h, beta=2.0)
    return g_z, g_b, g_k, g_gates


class _FusedExperts(torch.autograd.Function):
    """:func:`experts_fused` with the closed-form backward of :func:`mix_backward` (not
    twice differentiable: the backward is not recorded)."""

    @staticmethod
    def forward(ctx, z, b_cat, k, gates, input_map, ball):
        ctx.value = radial.gate_scale(default_eps(z.dtype))
        cdt = compute_dtype(z.dtype)
        out, state = mix_forward(
            z, b_cat, k.to(cdt), gates.to(cdt) * ctx.value, input_map=input_map,
            ball=None if ball is None else ball.to(cdt),
        )  # fmt: skip
        ctx.save_for_backward(*state[:7], *(s for s in state.scale if s is not None))
        ctx.stereo = state.scale[-1] is not None
        ctx.dtypes = (z.dtype, k.dtype, gates.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        scale = saved[7:] if ctx.stereo else (*saved[7:], None, None)
        state = MixState(*saved[:7], scale)
        g_z, g_b, g_k, g_gates = mix_backward(state, grad, ctx.needs_input_grad[1])
        zdt, kdt, gdt = ctx.dtypes
        return g_z.to(zdt), g_b, g_k.to(kdt), (g_gates * ctx.value).to(gdt), None, None


def experts_fused(
    z: Tensor,
    b_cat: Tensor,
    k: Tensor,
    gates: Tensor,
    *,
    input_map: str = "stereographic",
    ball: Tensor | None = None,
) -> Tensor:
    r"""``Σ_i g_i o_i`` of shape ``(..., d_out)`` by the radial identity (module docstring).

    ``gates`` has shape ``(..., N)``; ``ball`` is :func:`experts_reference`'s (a constant:
    no gradient). Cost beyond the matmul: the Gram matrices
    ``B_iᵀB_i`` (``N·r²·d_out``) and ``zᵀG_iz`` (``T·N·r²``); the radial scalars and their
    derivatives are :mod:`mosgeo.radial`'s, in a fixed number of ``(T, N)`` passes.

    Half precision (float16/bfloat16 weights, no autocast): the radial scalars ``γ_i`` —
    norms, Gram forms and factors — are computed in float32 with the storage dtype's
    margins (the float32 island of :mod:`mosgeo.numerics`, as the literal path's ops,
    including ``from_spacelike``'s: its point is kept strictly inside the ball), the two
    matmuls that touch ``d_out`` stay in the storage dtype."""
    n = _check(z, b_cat, k, input_map)
    _check_ball(ball, n, input_map)
    shape = z.shape
    out = _FusedExperts.apply(
        z.reshape(-1, shape[-1]), b_cat, k, gates.reshape(-1, n), input_map, ball
    )
    return out.view(*shape[:-1], b_cat.shape[0])
