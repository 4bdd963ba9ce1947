r"""Top-k routing over the experts and the Switch-style load-balancing loss.

Routing is on the low-rank code ``z = A x`` (``W_g`` is ``N × r``), so the router costs
``O(T·N·r)``; or, with ``MoSELoraConfig(router_input="input")`` (the ``hydralora`` preset's
default, as HydraLoRA's code), on the layer input ``x`` (``N × d_in``, ``O(T·N·d_in)``). The
functions here see only the logits.

Top-k is *dense masking*: every expert's gate is computed and the ones not
chosen are multiplied by 0. Shapes stay static (``torch.compile``) and every expert's
parameters take part in every step (DDP needs no ``find_unused_parameters``).

The gates and their derivative are closed forms of the softmax ``p``, the 0/1 mask ``m`` of
the chosen experts and their probability mass ``S = Σ_j m_j p_j`` (``1 < k < N``)::

    g = p ⊙ m / S
    ∂L/∂logits = g ⊙ (∂L/∂g − ⟨∂L/∂g, g⟩) + p ⊙ (c − ⟨c, p⟩)

where the second term is the load-balancing loss's gradient (:mod:`mosgeo_lora.balance`,
``c = 0`` without it): :func:`route_forward` and :func:`route_backward` compute them with no
autograd graph (the fused layer calls them inside its own autograd Function), :func:`route`
is the same as a differentiable function.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

__all__ = ["route", "route_forward", "route_gates", "route_backward", "load_balancing_loss"]


def route_forward(
    logits: Tensor, top_k: int, value: float = 1.0
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""``(value · gates, probs, value · mask)`` from router logits ``(T, N)``, no graph.

    * ``top_k ≥ N``: dense softmax (HydraLoRA); the mask is ``None`` (every expert).
    * ``1 < top_k < N``: softmax, keep the ``top_k`` largest (``torch.topk``'s choice among
      ties), renormalise to sum 1.
    * ``top_k = 1``: the raw softmax probability of the chosen expert (Switch); the
      renormalised gate would be the constant 1 and the router would get no gradient from
      the task loss.

    ``value`` is a constant folded into the gates and the mask at no cost (the fused layer's
    output scale); float32 at least (a half-precision softmax over experts rounds small gates
    to 0).
    """
    n = logits.shape[-1]
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits, dim=-1, dtype=wide)
    if top_k >= n:
        return (probs * value if value != 1.0 else probs), probs, None
    top, idx = probs.topk(top_k, dim=-1)
    mask = torch.zeros_like(probs).scatter_(-1, idx, value)
    if top_k == 1:
        return probs * mask, probs, mask
    return probs * (mask / top.sum(-1, keepdim=True)), probs, mask


def route_gates(logits: Tensor, top_k: int, value: float = 1.0) -> tuple[Tensor, Tensor | None]:
    r"""``(value · gates, chosen)``: :func:`route_forward`'s gates for a call with no backward
    and no balance term (evaluation, decoding), and the ``(T, top_k)`` indices of the chosen
    experts (``None`` when dense).

    For ``1 < top_k < N`` the renormalised gates ``p_i / Σ_chosen p_j`` are the softmax of
    the chosen logits alone, ``e^{l_i} / Σ_chosen e^{l_j}``: top-k on the logits (the same
    experts: the softmax is monotone), a softmax over ``top_k`` values and one scatter —
    no softmax over every expert, no mask and no sum, which a backward would need."""
    n = logits.shape[-1]
    if top_k >= n or top_k == 1:
        gates, _, mask = route_forward(logits, top_k, value)
        return gates, (None if mask is None else mask.argmax(-1, keepdim=True))
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    top, chosen = logits.topk(top_k, dim=-1)
    g = torch.softmax(top, dim=-1, dtype=wide)
    if value != 1.0:
        g = g.mul_(value)
    gates = torch.zeros(logits.shape, dtype=wide, device=logits.device)
    return gates.scatter_(-1, chosen, g), chosen


def route_backward(
    grad: Tensor | None,
    probs: Tensor,
    gates: Tensor,
    mask: Tensor | None,
    top_k: int,
    value: float = 1.0,
    balance: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    r"""``∂L/∂logits`` (module docstring) for ``grad = ∂L/∂(value · gates)`` and the balance
    coefficients ``c = alpha · balance`` (``(N,)`` or ``(T, N)``; ``None``: no balance term).

    ``probs``, ``gates`` and ``mask`` are :func:`route_forward`'s outputs."""
    n = probs.shape[-1]
    if 1 < top_k < n:  # g ⊙ (∂g − ⟨∂g, g⟩), with the value folded: value·g is what we have
        if grad is None:
            out = torch.zeros_like(probs)
        else:
            gg = grad * gates
            out = torch.addcmul(gg, gates, gg.sum(-1, keepdim=True), value=-1.0 / value)
        if balance is None:
            return out
        pc = probs * balance
        out = out.add_(pc, alpha=alpha)
        return out.addcmul_(probs, pc.sum(-1, keepdim=True), value=-alpha)
    # top-1 and dense: the gates are value·p (masked), so the softmax backward takes v directly
    if grad is None:
        v = torch.zeros_like(probs)
    else:
        v = grad * mask if mask is not None else grad * value
    if balance is not None:
        v = v.add_(balance, alpha=alpha)
    pv = probs * v
    return pv.addcmul_(probs, pv.sum(-1, keepdim=True), value=-1.0)


class _Route(torch.autograd.Function):
    """:func:`route` with the closed-form backward of :func:`route_backward` (not twice
    differentiable: the backward is not recorded)."""

    @staticmethod
    def forward(ctx, logits: Tensor, top_k: int):
        gates, probs, mask = route_forward(logits, top_k)
        ctx.top_k, ctx.dtype = top_k, logits.dtype
        ctx.save_for_backward(probs, gates, mask)
        if mask is None:
            mask = torch.ones_like(probs)
        ctx.mark_non_differentiable(mask)
        return gates, probs, mask

    @staticmethod
    @once_differentiable
    def backward(ctx, g_gates: Tensor, g_probs: Tensor, _):
        probs, gates, mask = ctx.saved_tensors
        out = route_backward(g_gates, probs, gates, mask, ctx.top_k)
        if g_probs is not None:  # a loss of the probabilities themselves (the balance loss)
            pg = probs * g_probs
            out = out + pg.addcmul_(probs, pg.sum(-1, keepdim=True), value=-1.0)
        return out.to(ctx.dtype), None


def route(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gates from router logits ``(…, N)`` (:func:`route_forward`), differentiable.

    Returns ``(gates, probs, mask)``: gates ``(…, N)``, the full softmax ``probs`` (both
    differentiable in ``logits``) and the 0/1 ``mask`` of chosen experts (float, no
    gradient).
    """
    shape = logits.shape
    gates, probs, mask = _Route.apply(logits.reshape(-1, shape[-1]), top_k)
    return gates.view(shape), probs.view(shape), mask.view(shape)


def load_balancing_loss(
    probs: Tensor, mask: Tensor, top_k: int, token_mask: Tensor | None = None
) -> Tensor:
    r"""Switch-Transformer auxiliary loss ``N · Σ_i f_i P_i``.

    ``f_i`` is the fraction of routing slots given to expert ``i`` (``mask`` summed over
    tokens, divided by ``T·k``) and ``P_i`` the mean router probability; both over the
    non-padding tokens (``token_mask`` broadcastable to ``probs[..., 0]``, 1 = real token).
    Equals 1 for perfectly balanced routing; ``f`` carries no gradient, ``P`` does.
    """
    n = probs.shape[-1]
    p = probs.reshape(-1, n)
    m = mask.reshape(-1, n)
    if token_mask is not None:
        w = token_mask.expand(probs.shape[:-1]).reshape(-1, 1).to(p.dtype)
    else:
        w = torch.ones_like(p[:, :1])
    count = w.sum().clamp_min(1.0)
    frac = (m * w).sum(0) / (count * min(top_k, n))
    mean_p = (p * w).sum(0) / count
    return n * (frac.detach() * mean_p).sum()
