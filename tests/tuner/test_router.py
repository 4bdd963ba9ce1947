"""Top-k routing by dense masking and the Switch load-balancing loss."""

from __future__ import annotations

import pytest
import torch

from mosgeo_lora.router import load_balancing_loss, route


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
