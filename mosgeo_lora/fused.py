r"""The fused adapter of one layer: ``A``, the router, the gates, the balance term and the
mixture of space experts as one autograd node.

.. math::
    out = base + \frac{α}{r} \sum_i g_i(z)\, o_i(z), \qquad z = A x

(with ``Spec.router_on_input`` the gates read the layer input, ``g_i(x)``: HydraLoRA's router).

Forward and backward are closed forms, each a fixed number of kernels whatever the number of
experts: the two small linears, :func:`mosgeo_lora.router.route_forward` /
:func:`~mosgeo_lora.router.route_backward` (the load-balancing loss's gradient
``scale · ∂aux/∂logits`` of :func:`mosgeo_lora.balance.balance_terms` is added to the
router's softmax backward, where the old ``BalanceGradient`` node added it to the logits'
gradient), :func:`mosgeo_lora.experts.mix_forward` / :func:`~mosgeo_lora.experts.mix_backward`
(one Gram matrix per call) and :mod:`mosgeo.radial`'s per-(token, expert) scalar. The output
scale ``α/r`` and the clip margin are folded into the gates; ``base`` (the frozen layer's
output) is added by the up-projection's ``addmm``.

What autograd would keep per elementwise op — a node, its saved inputs, its backward kernels —
is one node here: one adapted layer's forward+backward runs 131 top-level aten ops instead of
436 (``tests/tuner/test_ops.py``, ``docs/design.md`` §2.2). Where
:func:`mosgeo.radial.compiling` says so (a GPU, under the default kernel ``"auto"``:
:func:`mosgeo.radial.set_kernel`) the forward, the backward and :func:`infer` each run as one
compiled function — the matmuls and a few fused kernels, ~42 launches, LoRA's count — with
the eager code as the fallback of a failed compilation. A call that needs no
gradient (evaluation, decoding) runs the forward alone, without the node or the local
derivatives; a layer's evaluation and decoding calls take :func:`infer`, which reuses the
weight-only terms (:func:`constants`) across calls. The balance coefficients are kept on the
node (not saved for backward), so activation checkpointing's recomputation cannot change them
(:mod:`mosgeo_lora.balance`). Not twice differentiable (the backward is not recorded).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mosgeo import radial
from mosgeo.numerics import compute_dtype, default_eps

from .balance import balance_terms
from .experts import MixState, gram_matrices, mix_backward, mix_forward, mix_infer
from .router import route_backward, route_forward, route_gates

Tensor = torch.Tensor

__all__ = ["Spec", "adapter", "Constants", "constants", "infer"]


class Spec(NamedTuple):
    """The static part of one call (Python values: a compiled graph specialises on them)."""

    #: Experts per token.
    top_k: int
    #: ``"stereographic"`` or ``"lift"``.
    input_map: str
    #: The output scale ``α/r``.
    scaling: float
    #: The balance loss's gradient is added in backward.
    balance: bool
    #: The routing counts are returned (routing statistics).
    counts: bool
    #: The balance loss's value is returned.
    aux: bool
    #: The router reads the layer input ``x`` (``W_g`` is ``N × d_in``, HydraLoRA's router),
    #: not the code ``z = A x`` (``N × r``).
    router_on_input: bool = False
    #: Per expert, ``|κ|`` of a second ball its code is projected onto (0: none), or ``None``
    #: (no expert has one): :meth:`mosgeo_lora.MoSELoraConfig.input_balls`.
    ball: tuple[float, ...] | None = None


def _curvatures(k_learn, k_fixed, rho, cdt) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``(κ, scaled)``: the experts' curvatures in the compute dtype ``cdt`` (``κ e^{-2ρ}``
    with an input scale), and ``scaled = (κ e^{-2ρ}, e^{-2ρ})`` (``None`` without one)."""
    k = k_fixed
    if k_learn is not None:
        k = torch.cat((k_learn, k_fixed if k_fixed.dtype == k_learn.dtype else
                       k_fixed.to(k_learn.dtype)))  # fmt: skip
    if k.dtype != cdt:
        k = k.to(cdt)
    if rho is None:
        return k, None
    # s·o_i(z/s) is o_i at curvature κ_i/s², s = e^ρ
    e = (rho if rho.dtype == cdt else rho.to(cdt)).mul(-2.0).exp_()
    k = k * e
    return k, (k, e)


def _ball(spec: Spec, like: Tensor) -> Tensor | None:
    """``spec.ball`` as a tensor of ``like``'s dtype and device (``None`` without one), built
    once per dtype and device: no host-to-device copy per call on a GPU."""
    if spec.ball is None:
        return None
    return _ball_tensor(spec.ball, like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _ball_tensor(ball: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    # a normal tensor even when first asked for under inference_mode (it serves training too)
    with torch.inference_mode(False):
        return torch.tensor(ball, dtype=dtype, device=device)


def _forward(x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec, save):
    """The forward pass of :func:`adapter`: ``(out, counts, value, aux, saved, scaled)``,
    where ``saved`` (``None`` unless ``save``) is what the backward needs and ``scaled`` is
    ``(κ e^{-2ρ}, e^{-2ρ})`` (``None`` without an input scale)."""
    shape = x.shape
    x2 = x if x.dim() == 2 else x.reshape(-1, shape[-1])
    z = F.linear(x2, a_w)
    logits = F.linear(x2 if spec.router_on_input else z, g_w)
    dtype = z.dtype
    cdt = compute_dtype(dtype)
    value = radial.gate_scale(default_eps(dtype), spec.scaling)
    gates, probs, mask = route_forward(logits, spec.top_k, value)
    counts = c = aux = None
    alpha = 1.0
    if spec.balance or spec.counts or spec.aux:
        counts, c, alpha, aux = balance_terms(
            probs, mask, spec.top_k, weights, value=value, scale=scale,
            grad=spec.balance, aux=spec.aux,
        )  # fmt: skip
    k, scaled = _curvatures(k_learn, k_fixed, rho, cdt)
    if gates.dtype != cdt:
        gates = gates.to(cdt)
    d_out = b_w.shape[0]
    base2 = None
    if base is not None:
        base2 = base if base.dim() == 2 else base.reshape(-1, d_out)
    out, state = mix_forward(
        z, b_w, k, gates, input_map=spec.input_map, base=base2, save=save, ball=_ball(spec, k),
        alpha=1.0,  # not the default: a compiled trace lifts a default float to a graph input
    )  # fmt: skip
    if x.dim() != 2:
        out = out.view(*shape[:-1], d_out)
    saved = None
    if save:
        saved = ((x2, z, a_w, g_w, probs, gates, mask, *state[:7], *state.scale), (c, alpha))
    return out, counts, value, aux, saved, scaled


def _spec_text(spec: Spec) -> tuple:
    """``spec`` with its floats as text: a compiled kernel's closure holds that, and rebuilds
    the floats inside the traced code (:func:`_spec_of`), where they are constants (dynamo
    makes a float argument or closure value symbolic, and inductor's cache then serves a
    kernel baked with one value to another: :func:`mosgeo.radial.set_kernel`'s note)."""
    ball = None if spec.ball is None else tuple(repr(float(b)) for b in spec.ball)
    return (*spec[:2], repr(float(spec.scaling)), *spec[3:7], ball)


def _spec_of(text: tuple) -> Spec:
    ball = None if text[7] is None else tuple(float(b) for b in text[7])
    return Spec(*text[:2], float(text[2]), *text[3:7], ball)


@functools.cache
def _forward_kernel(spec_text: tuple, scale_text: str | None, save: bool):
    """:func:`_forward` of one static variant, compiled; the balance factor ``alpha`` is
    folded into ``c`` (so that it leaves the kernel a tensor, and the backward's variant does
    not depend on the token count). ``scale_text``: a float ``scale`` as text (``None``: the
    tensor argument)."""

    def forward(x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale):
        spec = _spec_of(spec_text)
        if scale_text is not None:
            scale = float(scale_text)
        out, counts, value, aux, saved, scaled = _forward(
            x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec, save
        )
        if saved is not None:
            tensors, (c, alpha) = saved
            saved = (tensors, (c if c is None else c * alpha, 1.0))
        return out, counts, aux, saved, scaled

    return torch.compile(forward, dynamic=True)


def _detached(*tensors):
    """``tensors`` detached (``None`` kept): what the compiled kernels read. They run where no
    gradient is recorded anyway, and a parameter's shape, or whether a tensor requires a
    gradient, would be a guard of the compiled code: one recompilation per layer shape and
    per input that does or does not require a gradient (the first adapted layer's).
    ``.data``, not ``detach()``: the same tensor without autograd and without a dispatched
    op (28 ``aten::detach`` per layer and step otherwise)."""
    return tuple(None if t is None else t.data for t in tensors)


def _run_forward(x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec, save):
    """:func:`_forward`, compiled where :func:`mosgeo.radial.compiling` says so (a GPU under
    the default kernel, ``"auto"``): the whole forward as a few fused kernels and the
    matmuls, instead of ~100 kernel launches."""
    args = (x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec, save)
    if not radial.compiling(x.device):
        return _forward(*args)
    tensor_scale = isinstance(scale, torch.Tensor)
    text = _spec_text(spec)
    scale_text = None if tensor_scale else repr(float(scale))
    kernel = _forward_kernel(text, scale_text, save)
    key = ("adapter forward", x.dtype, x.numel() == x.shape[-1], text, scale_text, save,
           rho is not None, k_learn is not None, base is not None, weights is not None)  # fmt: skip

    def compiled():
        out, counts, aux, saved, scaled = kernel(
            *_detached(x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights),
            scale if tensor_scale else None,
        )
        value = radial.gate_scale(default_eps(out.dtype), spec.scaling)
        return out, counts, value, aux, saved, scaled

    return radial.run_kernel(key, x.device, compiled, lambda: _forward(*args))


def _backward(grad, tensors, c, alpha, scaled, meta, need, rho_dtype):
    """The gradients of :func:`adapter`'s inputs (``None`` where ``need`` says no): the
    backward of :class:`_Adapter` from what its forward saved."""
    spec, value, shape, dtype, dense, n_learn, k_dtype = meta
    x2, z, a_w, g_w, probs, gates, mask, *rest = tensors
    state = MixState(*rest[:7], tuple(rest[7:]))
    g2 = grad if grad.dim() == 2 else grad.reshape(-1, grad.shape[-1])
    g_z, g_b, g_k, g_gates = mix_backward(state, g2, need[4])
    g_logits = route_backward(g_gates, probs, gates, mask, spec.top_k, value, c, alpha)
    if g_logits.dtype != dtype:
        g_logits = g_logits.to(dtype)
    if g_z.dtype != dtype:
        g_z = g_z.to(dtype)
    g_x = g_a = g_gw = g_kl = None
    if not spec.router_on_input:
        g_z = torch.addmm(g_z, g_logits, g_w)
    if need[0]:
        g_x = g_z @ a_w
        if spec.router_on_input:  # the router's share of ∂L/∂x
            g_x = torch.addmm(g_x, g_logits, g_w)
        if len(shape) != 2:
            g_x = g_x.view(shape)
    if need[2]:
        g_a = g_z.t() @ x2
    if need[3]:
        g_gw = g_logits.t() @ (x2 if spec.router_on_input else z)
    g_rho = None
    if scaled is not None:  # κ_eff = κ e^{-2ρ}: ∂/∂κ = e, ∂/∂ρ = -2 κ_eff
        k_eff, e = scaled
        if need[7]:
            g_rho = torch.dot(g_k, k_eff).mul(-2.0).reshape(1)
            if g_rho.dtype != rho_dtype:
                g_rho = g_rho.to(rho_dtype)
        if need[5]:
            g_k = g_k * e
    if need[5]:
        g_kl = g_k[:n_learn]
        if g_kl.dtype != k_dtype:
            g_kl = g_kl.to(k_dtype)
    g_base = grad if need[1] else None
    return g_x, g_base, g_a, g_gw, g_b, g_kl, g_rho


@functools.cache
def _backward_kernel(spec_text: tuple, static: tuple, need: tuple, rho_dtype):
    """:func:`_backward` of one static variant (``static`` is the ``meta`` of
    :class:`_Adapter` without ``spec``, ``value`` and the input's shape), compiled."""

    def backward(grad, tensors, c, scaled):
        spec = _spec_of(spec_text)
        value = radial.gate_scale(default_eps(static[0]), spec.scaling)
        shape = (*grad.shape[:-1], tensors[2].shape[1])  # the input's: (…, d_in) of A
        meta = (spec, value, shape, *static)
        return _backward(grad, tensors, c, 1.0, scaled, meta, need, rho_dtype)

    return torch.compile(backward, dynamic=True)


class _Adapter(torch.autograd.Function):
    """:func:`adapter` with its closed-form backward."""

    @staticmethod
    def forward(ctx, x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec):
        ctx.set_materialize_grads(False)  # no zero tensors for the outputs without a gradient
        out, counts, value, aux, (tensors, balance), scaled = _run_forward(
            x, base, a_w, g_w, b_w, k_learn, k_fixed, rho, weights, scale, spec, True
        )
        ctx.balance = balance  # on the node, not saved: checkpointing must not recompute it
        ctx.scaled = scaled  # two (N,)/(1,) tensors of the input scale, or None
        ctx.rho_dtype = None if rho is None else rho.dtype
        ctx.meta = (spec, value, x.shape, tensors[1].dtype, tensors[6] is None, 0 if k_learn is None
                    else k_learn.shape[0], None if k_learn is None else k_learn.dtype)  # fmt: skip
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(*(t for t in (counts, aux) if t is not None))
        return out, counts, value, aux

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, *_):
        tensors = ctx.saved_tensors
        c, alpha = ctx.balance
        need = tuple(ctx.needs_input_grad[:8])
        meta = ctx.meta
        # a forward that ran eager (a fallback) may leave alpha ≠ 1: its backward runs eager
        if radial.compiling(grad.device) and isinstance(alpha, float) and alpha == 1.0:
            spec, _, shape, *static = meta
            text = _spec_text(spec)
            kernel = _backward_kernel(text, tuple(static), need, ctx.rho_dtype)
            key = ("adapter backward", grad.dtype, grad.numel() == grad.shape[-1], text,
                   tuple(static), need, ctx.rho_dtype, c is None, ctx.scaled is None)  # fmt: skip
            grads = radial.run_kernel(
                key, grad.device,
                lambda: kernel(grad, _detached(*tensors), c, ctx.scaled),
                lambda: _backward(grad, tensors, c, alpha, ctx.scaled, meta, need, ctx.rho_dtype),
            )  # fmt: skip
        else:
            grads = _backward(grad, tensors, c, alpha, ctx.scaled, meta, need, ctx.rho_dtype)
        g_x, g_base, g_a, g_gw, g_b, g_kl, g_rho = grads
        return g_x, g_base, g_a, g_gw, g_b, g_kl, None, g_rho, None, None, None


def adapter(
    x: Tensor,
    base: Tensor | None,
    weights: tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor],
    spec: Spec,
    token_weights: Tensor | None = None,
    scale: Tensor | float = 1.0,
    log_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, float, Tensor | None]:
    r"""``base + (α/r) Σ_i g_i o_i(A x)`` and the call's routing data.

    Args:
        x: the layer input ``(..., d_in)``, in the adapter's dtype.
        base: the frozen layer's output ``(..., d_out)`` in the adapter's dtype, or ``None``
            (the adapter's output alone).
        weights: ``(A, W_g, B_cat, κ_learnable or None, κ_fixed)``.
        spec: the static settings (:class:`Spec`).
        token_weights: ``w`` (``(T, 1)``, float32 at least: 1 = real token), or ``None``.
        scale: the balance loss's factor in the objective.
        log_scale: ``ρ`` (``(1,)``) of the layer's learnable input scale ``s = e^ρ``
            (``MoSELoraConfig.input_scale``), or ``None``: every expert then computes
            ``s·o_i(z/s)``, which is ``o_i`` at curvature ``κ_i e^{-2ρ}`` (what runs here, on
            ``(N,)``-sized tensors: 8 more aten ops per call with the backward,
            ``tests/tuner/test_ops.py``; ``∂L/∂ρ = -2 Σ_i κ_i^{eff} ∂L/∂κ_i^{eff}``).

    Returns:
        ``(out, counts, value, aux)``: ``counts / value`` are the routing slots per expert
        (``None`` when not asked for or dense), and ``aux`` the balance loss (or ``None``).
    """
    a_w, g_w, b_w, k_learn, k_fixed = weights
    args = (x, base, a_w, g_w, b_w, k_learn, k_fixed, log_scale, token_weights, scale, spec)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, base, a_w, g_w, b_w, k_learn, log_scale)
    ):
        return _Adapter.apply(*args)
    # no gradient asked for (evaluation, decoding): no autograd node, no local derivatives
    return _run_forward(*args, False)[:4]


class Constants(NamedTuple):
    """Everything a call without a backward reads of the weights and settings alone
    (:func:`constants`): valid while ``A``, ``W_g``, ``B``, κ, ρ and the settings are
    unchanged, so a layer builds it once for a whole generation and a call does tensor ops
    only."""

    #: ``(A, W_g, B_cat)``.
    weights: tuple[Tensor, Tensor, Tensor]
    #: ``B_catᵀ`` (a view): the up-projection's ``addmm`` operand, not transposed per call.
    up: Tensor
    #: :func:`mosgeo.radial.curvature_terms` of κ (``κ e^{-2ρ}`` with an input scale), in the
    #: compute dtype.
    terms: radial.CurvatureTerms
    #: :func:`mosgeo_lora.experts.gram_matrices` of ``B_cat``, ``(r, N·r)``, compute dtype.
    gram: Tensor
    #: The call's static settings.
    spec: Spec
    #: The gates' constant factor: :func:`mosgeo.radial.gate_scale` of the storage dtype's
    #: margin and the output scale ``α/r`` (the up-projection's ``addmm`` ``alpha``).
    value: float


def constants(
    weights: tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor],
    spec: Spec,
    log_scale: Tensor | None = None,
) -> Constants:
    """The :class:`Constants` of ``weights`` (:func:`adapter`'s, in the adapter's dtype) and
    ``spec`` (its ``balance``, ``counts`` and ``aux`` are not read)."""
    a_w, g_w, b_w, k_learn, k_fixed = weights
    dtype = a_w.dtype
    cdt = compute_dtype(dtype)
    # autocast off: the Gram matrices' einsum would run in its low dtype, and the cache
    # serves calls in and out of autocast
    with torch.no_grad(), torch.autocast(a_w.device.type, enabled=False):
        k, _ = _curvatures(k_learn, k_fixed, log_scale, cdt)
        terms = radial.curvature_terms(k, default_eps(dtype), spec.input_map, _ball(spec, k))
        gram = gram_matrices(b_w, k.shape[0], cdt)
    value = radial.gate_scale(default_eps(dtype), spec.scaling)
    return Constants((a_w, g_w, b_w), b_w.t(), terms, gram, spec, value)


def infer(x: Tensor, base: Tensor | None, consts: Constants) -> tuple[Tensor, Tensor | None]:
    r""":func:`adapter`'s output for a call that needs no gradient and no balance term
    (evaluation, decoding), with everything that depends on the weights alone in ``consts``
    (:func:`constants`): the fewest ops per call, and no Python work but the ops (one adapted
    layer decoding one token: 42 top-level aten ops with the base layer's matmul, against 59
    for :func:`adapter` without a gradient; ``tests/tuner/test_ops.py``).

    Returns ``(out, chosen)``: ``chosen`` the indices of each token's experts (``(T,
    top_k)``; ``None`` when dense), from which a layer counts its routing
    (:func:`mosgeo_lora.router.route_gates`)."""
    if not radial.compiling(x.device):
        return _infer(x, base, consts)
    text = _spec_text(consts.spec)
    kernel = _infer_kernel(text, repr(float(consts.value)))
    t = consts.terms
    tensors = (*consts.weights, consts.up, consts.gram, t.k, t.ir, t.ir2, t.kr2, t.follows, t.ball)
    key = ("adapter inference", x.dtype, x.numel() == x.shape[-1], text, consts.value,
           base is not None, t.ir is not None, t.ball is not None)  # fmt: skip
    return radial.run_kernel(
        key,
        x.device,
        lambda: kernel(*_detached(x, base, *tensors)),
        lambda: _infer(x, base, consts),
    )


@functools.cache
def _infer_kernel(spec_text: tuple, value_text: str):
    """:func:`_infer` of one static variant, compiled (the constants' tensors as arguments,
    their floats as text: :func:`_spec_text`)."""

    def run(x, base, a_w, g_w, b_w, up, gram, k, ir, ir2, kr2, follows, ball):
        terms = radial.CurvatureTerms(k, ir, ir2, kr2, follows, ball)
        consts = Constants((a_w, g_w, b_w), up, terms, gram, _spec_of(spec_text), float(value_text))
        return _infer(x, base, consts)

    return torch.compile(run, dynamic=True)


def _infer(x: Tensor, base: Tensor | None, consts: Constants) -> tuple[Tensor, Tensor | None]:
    a_w, g_w, b_w = consts.weights
    spec = consts.spec
    shape = x.shape
    x2 = x if x.dim() == 2 else x.reshape(-1, shape[-1])
    z = F.linear(x2, a_w)
    logits = F.linear(x2 if spec.router_on_input else z, g_w)
    gates, chosen = route_gates(logits, spec.top_k)
    d_out = b_w.shape[0]
    if base is not None and base.dim() != 2:
        base = base.reshape(-1, d_out)
    out = mix_infer(
        z, consts.up, gates, consts.gram, consts.terms, input_map=spec.input_map, base=base,
        alpha=consts.value,
    )  # fmt: skip
    if x.dim() != 2:
        out = out.view(*shape[:-1], d_out)
    return out, chosen
