"""Top-k routing by dense masking and the Switch load-balancing loss."""

from __future__ import annotations

import pytest
import torch

from mosgeo_lora.router import load_balancing_loss, route, route_forward, route_gates


def test_topk_renormalised_and_masked() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 4.0]])
    gates, probs, mask = route(logits, 2)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    assert mask.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    torch.testing.assert_close(gates.sum(-1), torch.ones(2))
    assert (gates[mask == 0] == 0).all()
    torch.testing.assert_close(gates[0, :2], probs[0, :2] / probs[0, :2].sum())


def test_top1_is_the_raw_probability_and_trains_the_router() -> None:
    logits = torch.randn(6, 4, requires_grad=True)
    gates, probs, mask = route(logits, 1)
    torch.testing.assert_close(gates.sum(-1), (probs * mask).sum(-1))
    assert (gates.sum(-1) < 1).all()  # not renormalised to the constant 1
    (gates * torch.randn(6, 4)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_dense_when_top_k_covers_all_experts() -> None:
    logits = torch.randn(5, 3)
    gates, probs, mask = route(logits, 3)
    torch.testing.assert_close(gates, probs)
    assert (mask == 1).all()


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed() -> None:
    n = 4
    uniform = torch.zeros(8, n)
    _, p, m = route(uniform + torch.arange(8.0).unsqueeze(-1) * 0, 2)
    # tie-break picks the same experts: f is not uniform, but P is, so the loss is 1
    assert load_balancing_loss(p, m, 2).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[10.0, 9.0, 0.0, 0.0]]).repeat(8, 1)
    _, p, m = route(collapsed, 2)
    assert load_balancing_loss(p, m, 2).item() > 1.9


def test_balance_loss_ignores_padding_and_has_router_gradient() -> None:
    logits = torch.randn(2, 5, 4, requires_grad=True)
    token_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    _, p, m = route(logits, 2)
    loss = load_balancing_loss(p, m, 2, token_mask)
    keep = token_mask.bool()
    ref = load_balancing_loss(p[keep], m[keep], 2)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert logits.grad[0, 3:].abs().sum() == 0  # padding gets no gradient
    assert logits.grad[0, :3].abs().sum() > 0


def _literal_route(logits, top_k):
    """The gates by autograd: softmax, the top-k mask, renormalised (top_k > 1)."""
    probs = torch.softmax(logits, -1)
    if top_k >= logits.shape[-1]:
        return probs, probs
    mask = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, -1).indices, 1.0)
    kept = probs * mask
    return (kept if top_k == 1 else kept / kept.sum(-1, keepdim=True)), probs


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_closed_form_backward_equals_autograd(top_k) -> None:
    """``route``'s gates and probabilities and their gradients, from the closed-form
    backward, equal autograd through the literal softmax-mask-renormalise (float64)."""
    g = torch.Generator().manual_seed(top_k)
    logits = torch.randn(2, 7, 4, generator=g, dtype=torch.float64) * 3
    up_g, up_p = (torch.randn(2, 7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    gates, probs, _ = route(a, top_k)
    ref_gates, ref_probs = _literal_route(b, top_k)
    torch.testing.assert_close(gates, ref_gates)
    torch.testing.assert_close(probs, ref_probs)
    (ga,) = torch.autograd.grad((gates * up_g + probs * up_p).sum(), a)
    (gb,) = torch.autograd.grad((ref_gates * up_g + ref_probs * up_p).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_ties_are_broken_as_topk_breaks_them() -> None:
    """Tied probabilities (a zero token: every logit equal) pick exactly k experts, the ones
    ``torch.topk`` picks: deterministic, and equal to the mask of the literal route."""
    logits = torch.zeros(3, 4)
    logits[1] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    _, probs, mask = route(logits, 2)
    assert (mask.sum(-1) == 2).all()
    ref = torch.zeros_like(probs).scatter_(-1, probs.topk(2, -1).indices, 1.0)
    assert torch.equal(mask, ref)


@pytest.mark.parametrize("tensor_scale", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_balance_terms_give_the_loss_and_its_gradient(padded, tensor_scale) -> None:
    """:func:`~mosgeo_lora.balance.balance_terms` (the fused layer's balance term) equals
    :func:`load_balancing_loss` and ``scale`` times its autograd gradient in the logits, with
    the attention mask's padding left out and the scale a float or a 0-dim tensor."""
    from mosgeo_lora.balance import balance_terms
    from mosgeo_lora.router import route_backward, route_forward

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 5, generator=g, dtype=torch.float64).requires_grad_()
    token_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]) if padded else None
    scale = torch.tensor(0.3, dtype=torch.float64) if tensor_scale else 0.3
    _, p, m = route(logits, 2)
    loss = load_balancing_loss(p, m, 2, token_mask)
    (grad,) = torch.autograd.grad(loss * scale, logits)
    value = 0.7  # a constant folded into the mask, as the fused layer folds α/r
    flat = logits.detach().reshape(-1, 5)
    gates, probs, mask = route_forward(flat, 2, value)
    w = None if token_mask is None else token_mask.reshape(-1, 1).to(torch.float64)
    counts, c, alpha, aux = balance_terms(probs, mask, 2, w, value=value, scale=scale, aux=True)
    torch.testing.assert_close(aux, loss.detach())
    torch.testing.assert_close(counts / value, (m.reshape(-1, 5) * (1 if w is None else w)).sum(0))
    got = route_backward(None, probs, gates, mask, 2, value, c, alpha)
    torch.testing.assert_close(got.reshape(grad.shape), grad)
    if padded:
        assert not got.reshape(2, 6, 5)[0, 4:].any()  # padding gets no balance gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_the_inference_gates_are_the_training_gates(top_k, dtype) -> None:
    """``route_gates`` (no backward: top-k of the logits, a softmax over the chosen) gives
    ``route_forward``'s gates and chooses the experts of its mask, with the value folded."""
    g = torch.Generator().manual_seed(top_k)
    logits = (torch.randn(64, 8, generator=g) * 3).to(dtype)
    value = 0.75
    gates, _, mask = route_forward(logits, top_k, value)
    inferred, chosen = route_gates(logits, top_k, value)
    assert inferred.dtype == gates.dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(inferred, gates, rtol=tol, atol=tol)
    if top_k >= 8:
        assert chosen is None and mask is None
        return
    picked = torch.zeros(64, 8).scatter_(-1, chosen, 1.0)
    torch.testing.assert_close(picked, (mask > 0).float(), rtol=0, atol=0)
