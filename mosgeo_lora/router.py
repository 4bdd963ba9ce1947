r"""Top-k routing over the experts and the Switch-style load-balancing loss.

Routing is on the low-rank code ``z = A x`` (``W_g`` is ``N × r``), so the router costs
``O(T·N·r)``. Top-k is *dense masking*: every expert's gate is computed and the ones not
chosen are multiplied by 0. Shapes stay static (``torch.compile``) and every expert's
parameters take part in every step (DDP needs no ``find_unused_parameters``).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["route", "load_balancing_loss"]


def route(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gates from router logits ``(…, N)``.

    * ``top_k ≥ N``: dense softmax (HydraLoRA).
    * ``1 < top_k < N``: softmax, keep the ``top_k`` largest, renormalise to sum 1.
    * ``top_k = 1``: the raw softmax probability of the chosen expert (Switch); the
      renormalised gate would be the constant 1 and the router would get no gradient from
      the task loss.

    Returns ``(gates, probs, mask)``: gates ``(…, N)``, the full softmax ``probs`` and the
    0/1 ``mask`` of chosen experts (float, no gradient).
    """
    n = logits.shape[-1]
    # float32 at least: a half-precision softmax over experts rounds small gates to 0
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits, dim=-1, dtype=wide)
    if top_k >= n:
        return probs, probs, torch.ones_like(probs)
    idx = probs.topk(top_k, dim=-1).indices
    mask = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
    kept = probs * mask
    if top_k == 1:
        return kept, probs, mask
    return kept / kept.sum(-1, keepdim=True), probs, mask


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
