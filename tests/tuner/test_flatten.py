"""Issue 15's clipping control, ``MoSELoraConfig(flatten=True)`` (``moselora@flat``): every κ
fixed at 0 while the hyperbolic experts' code is still projected onto the ball they had at
init. The second input ball (``mosgeo.radial.inverse_radius2(..., ball)``) is held to the
literal maps, the fused path to the literal path (values and every gradient), the inference
cache and the compiled γ kernel to the eager training path."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from wrapped_models import adapted_layers, logits_of, tokens, wrapped  # noqa: E402

from mosgeo import radial  # noqa: E402
from mosgeo.numerics import default_eps  # noqa: E402
from mosgeo_lora import MoSELoraConfig  # noqa: E402
from mosgeo_lora.experts import experts_fused, experts_reference  # noqa: E402
from mosgeo_lora.finetune import dynamics  # noqa: E402
from mosgeo_lora.finetune.methods import MethodError, parse_method, peft_config  # noqa: E402

#: the control's layout: 3 clipped flat experts (ball |κ| = 4: radius ≈ 0.5), 5 plain ones
BALL = (4.0, 4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _codes(dtype, t=64, r=4, seed=0):
    """Codes whose norms span 0.05 … 5: inside and outside every ball used here."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, r, generator=g, dtype=dtype)
    norms = torch.logspace(-1.3, 0.7, t, dtype=dtype).unsqueeze(-1)
    return z / z.norm(dim=-1, keepdim=True) * norms


def test_a_flat_expert_with_a_ball_is_the_flat_map_of_the_clipped_code():
    """At κ = 0 every chart map is the identity up to the factor 2 and its inverse, so the
    expert's output is ``B_i z·min(1, R/‖z‖)`` with ``R = (1 − eps)/√ball``: checked against
    that formula, written here without mosgeo."""
    dtype = torch.float64
    z = _codes(dtype)
    n, r, d_out = len(BALL), z.shape[-1], 6
    b_cat = torch.randn(d_out, n * r, dtype=dtype, generator=torch.Generator().manual_seed(1))
    k = torch.zeros(n, dtype=dtype)
    ball = torch.tensor(BALL, dtype=dtype)
    out = experts_reference(z, b_cat, k, ball=ball)
    radius = (1 - default_eps(dtype)) / 2.0
    clipped = z * (radius / z.norm(dim=-1, keepdim=True)).clamp(max=1.0)
    for i in range(n):
        b = b_cat[:, i * r : (i + 1) * r]
        want = (clipped if BALL[i] else z) @ b.T
        torch.testing.assert_close(out[:, i], want, rtol=1e-12, atol=1e-12)
    # the codes on both sides of the radius: the clip is exercised, and not everywhere
    share = (z.norm(dim=-1) > radius).double().mean().item()
    assert 0.2 < share < 0.8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "k",
    [
        (0.0,) * 8,
        (-1.0, -9.0, 0.5, 0.0, -0.3, 1.0, 0.0, -2.0),  # a ball wider and narrower than κ's
    ],
    ids=["flat", "curved"],
)
def test_the_fused_experts_equal_the_literal_ones_with_a_ball(dtype, k):
    """Values and the gradients of the code, ``B``, κ and the gates (κ's too where the ball,
    not κ, sets the radius: κ then acts through the chart maps alone)."""
    z = _codes(dtype).requires_grad_()
    n, r, d_out = len(BALL), z.shape[-1], 6
    g = torch.Generator().manual_seed(2)
    b_cat = (0.5 * torch.randn(d_out, n * r, generator=g, dtype=dtype)).requires_grad_()
    kt = torch.tensor(k, dtype=dtype, requires_grad=True)
    gates = torch.rand(z.shape[0], n, generator=g, dtype=dtype).requires_grad_()
    ball = torch.tensor(BALL, dtype=dtype)
    w = torch.randn(z.shape[0], d_out, generator=g, dtype=dtype)

    def grads(out):
        return torch.autograd.grad((out * w).sum(), (z, b_cat, kt, gates))

    ref = (experts_reference(z, b_cat, kt, ball=ball) * gates.unsqueeze(-1)).sum(-2)
    fused = experts_fused(z, b_cat, kt, gates, ball=ball)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(fused, ref, **tol)
    for name, a, b in zip(("z", "B", "k", "gates"), grads(fused), grads(ref), strict=True):
        torch.testing.assert_close(a, b, **tol, msg=name)
    # the ball changes the result: without it the clipped experts would not be clipped
    plain = experts_fused(z, b_cat, kt, gates)
    assert (plain - fused).abs().max() > 1e-3


def test_the_ball_needs_the_stereographic_map_and_one_entry_per_expert():
    z, b_cat, k = torch.randn(3, 4), torch.randn(5, 8), torch.zeros(2)
    with pytest.raises(ValueError, match="stereographic"):
        experts_reference(z, b_cat, k, input_map="lift", ball=torch.ones(2))
    with pytest.raises(ValueError, match="stereographic"):
        radial.curvature_terms(k, 1e-5, "lift", torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        experts_fused(z, b_cat, k, torch.rand(3, 2), ball=torch.ones(3))


def test_the_config_fixes_every_kappa_at_zero_and_keeps_the_hyperbolic_balls():
    cfg = MoSELoraConfig(flatten=True, hyperbolic_init=-4.0)
    assert cfg.initial_curvatures() == [0.0] * 8
    assert sum(cfg.curved_mask()) == 0
    assert cfg.input_balls() == (4.0,) * 3 + (0.0,) * 5
    assert MoSELoraConfig().input_balls() is None
    assert MoSELoraConfig(preset="moselora-e", flatten=True).input_balls() is None
    for bad in (dict(input_map="lift"), dict(input_scale=2.0)):
        with pytest.raises(ValueError, match="flatten"):
            MoSELoraConfig(flatten=True, **bad)
    model = wrapped(flatten=True)
    for layer in adapted_layers(model).values():
        assert "default" not in layer.moselora_k  # no learnable κ
        assert layer.curvatures("default").abs().max() == 0


def test_the_flat_tag():
    m = parse_method("moselora@flat")
    assert m.flatten and m.is_moselora
    assert not parse_method("moselora").flatten
    assert peft_config(m, wrapped(), 10).flatten
    for bad in ("moselora-e@flat", "hydralora@flat", "moselora@flat@klr=1e-2",
                "moselora@flat@scale", "moselora@flat@flat"):  # fmt: skip
        with pytest.raises(MethodError):
            parse_method(bad)


def _flat_model(dtype, fused=True):
    # hyperbolic_init -4: a ball of radius 0.5, so that a share of this model's codes is
    # clipped (checked below)
    model = wrapped(fused=fused, flatten=True, init_weights=False, hyperbolic_init=-4.0)
    return model.to(dtype)


def _forward_backward(model, ids):
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_flattened_model_fused_equals_reference(dtype):
    """A whole wrapped model: logits, loss and every gradient, both paths; a share of its
    (token, clipped expert) pairs strictly between 0 and 1 (the boundary share of
    :mod:`~mosgeo_lora.finetune.dynamics`, which counts the flattened experts)."""
    ids = tokens()
    fused = _flat_model(dtype)
    reference = _flat_model(dtype, fused=False)
    reference.load_state_dict(fused.state_dict())
    (out_f, g_f), (out_r, g_r) = (_forward_backward(m, ids) for m in (fused, reference))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out_f.logits, out_r.logits, rtol=tol, atol=tol)
    assert g_f.keys() == g_r.keys()
    for n, g in g_f.items():
        top = g_r[n].abs().max().item()
        assert top > 0, n
        torch.testing.assert_close(g, g_r[n], rtol=0, atol=10 * tol * top, msg=n)
    share = dynamics.boundary_share(fused, ids.tolist())["share"]
    assert share is not None and 0.05 < share < 0.95, share
    # without the balls (moselora-e) there is no hyperbolic expert to count
    plain = wrapped(preset="moselora-e", init_weights=False, num_hyperbolic=0, num_spherical=0)
    assert dynamics.boundary_share(plain, ids.tolist())["share"] is None


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_the_inference_cache_and_the_compiled_kernel_give_the_training_path(kernel):
    """No-grad calls (the cached constants, also one token at a time) give the logits of the
    training path with the eager kernel; so do both with the compiled γ kernel."""
    ids = tokens()
    model = _flat_model(torch.float64)
    model.train()
    want = model(input_ids=ids).logits.detach()  # grad enabled: the fused autograd path
    previous = radial.set_kernel(kernel)
    try:
        model.eval()
        got = logits_of(model, ids)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        one = logits_of(model, ids[:1, :1])
        torch.testing.assert_close(one, want[:1, :1], rtol=1e-10, atol=1e-10)
        model.train()
        again = model(input_ids=ids).logits.detach()
        torch.testing.assert_close(again, want, rtol=1e-10, atol=1e-10)
    finally:
        radial.set_kernel(previous)


def test_the_ball_tensor_is_built_once_and_serves_training_after_inference_mode():
    """The per-call ball is cached per dtype and device (no host-to-device copy per call on a
    GPU); one first built under ``inference_mode`` still serves a training step after it."""
    from mosgeo_lora import fused

    fused._ball_tensor.cache_clear()
    ids = tokens()
    model = _flat_model(torch.float32)
    model.eval()
    with torch.inference_mode():
        model(input_ids=ids)
    _, grads = _forward_backward(model, ids)
    assert all(torch.isfinite(g).all() for g in grads.values())
    info = fused._ball_tensor.cache_info()
    assert info.currsize == 1 and info.hits > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_flattened_model_in_half_precision(dtype):
    """float16 / bfloat16 weights (no autocast): both paths finite, the fused path's logits
    (and, in float16, every adapter gradient) as close to the float32 model's as the literal
    path's are (the difference is the half-precision model's own rounding)."""
    ids = tokens()
    full = _flat_model(torch.float32)
    out32, g32 = _forward_backward(full, ids)
    runs = {}
    for fused in (True, False):
        model = _flat_model(torch.float32, fused=fused)
        model.load_state_dict(full.state_dict())
        runs[fused] = _forward_backward(model.to(dtype), ids)
    err = {}
    for fused, (out, grads) in runs.items():
        assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
        assert grads.keys() == g32.keys()
        err[fused] = (out.logits.float() - out32.logits).abs().max().item()
        for n, g in grads.items():
            assert torch.isfinite(g).all(), n
    assert err[True] <= 1.5 * err[False] + 1e-3, err
    if dtype == torch.bfloat16:  # its gradients are rounding (errors of 15-40 % of the
        return  # largest entry on both paths, in torch 2.6 and 2.13): finite is the check
    for n, g in g32.items():
        top = g.abs().max().item()
        e_fused = (runs[True][1][n].float() - g).abs().max().item()
        e_literal = (runs[False][1][n].float() - g).abs().max().item()
        assert e_fused <= 2 * e_literal + 0.02 * top, (n, e_fused, e_literal, top)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_fused_experts_with_a_ball_in_half_precision(dtype):
    """The half-precision fused experts (radial scalars in float32 with the storage dtype's
    margins) against the literal maps on the same inputs (which run in their float32 island
    with those margins too): within the storage dtype's rounding, and the ball's clip is
    far above it."""
    z = _codes(torch.float64)
    n, r, d_out = len(BALL), z.shape[-1], 6
    g = torch.Generator().manual_seed(3)
    b_cat = 0.5 * torch.randn(d_out, n * r, generator=g, dtype=torch.float64)
    k = torch.tensor((-1.0, -9.0, 0.5, 0.0, -0.3, 1.0, 0.0, -2.0), dtype=torch.float64)
    gates = torch.rand(z.shape[0], n, generator=g, dtype=torch.float64)
    z, b_cat, k, gates = (v.to(dtype) for v in (z, b_cat, k, gates))
    ball = torch.tensor(BALL, dtype=dtype)
    fused = experts_fused(z, b_cat, k, gates, ball=ball)
    assert fused.dtype == dtype
    ref = (experts_reference(z, b_cat, k, ball=ball).float() * gates.float().unsqueeze(-1)).sum(-2)
    tol = 3 * torch.finfo(dtype).eps * ref.abs().max().item()
    torch.testing.assert_close(fused.float(), ref, rtol=0, atol=tol)
    plain = (experts_reference(z, b_cat, k).float() * gates.float().unsqueeze(-1)).sum(-2)
    assert (plain - ref).abs().max() > 5 * tol  # the clip is well above the rounding
