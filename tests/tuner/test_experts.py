"""The fused radial path of the mixture-of-space experts equals the literal reference path
(outputs and every gradient, float32 and float64), including tokens beyond the ball radius,
experts at κ = 0 and B = 0 (the identity init)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mosgeo_lora.experts import experts_fused, experts_reference, input_factor
from mosgeo_lora.router import route

# Tokens beyond the ball radius sit on the projected boundary, where to_spacelike amplifies
# rounding by ~1/(2·ball_eps) ≈ 1.4e3 in float32: the two float32 paths (both ~1e-4 off the
# float64 value of ∂/∂κ there) agree to ~1e-4 of the gradient scale, not to 2e-5.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-4)}
# ∂/∂κ in float32 through boundary tokens: the two paths' rounding, amplified there, put
# them up to 3e-4 of the gradient scale apart (hypothesis found seeds 7768 and 33694); the
# values themselves stay within TOL
GRAD_TOL = {**TOL, torch.float32: dict(rtol=1e-3, atol=1e-3)}


def _problem(seed: int, dtype: torch.dtype, n: int = 5, r: int = 4, d: int = 7, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    # token norms spanning 1e-3 … 30: some beyond the ball radius of every κ < 0 expert
    scale = torch.logspace(-3, 1.5, t, dtype=dtype).unsqueeze(-1)
    z = torch.randn(t, r, generator=g, dtype=dtype)
    z = z / z.norm(dim=-1, keepdim=True) * scale
    b = torch.randn(d, n * r, generator=g, dtype=dtype) * 0.7
    k = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * 6
    k[0] = 0.0
    w = torch.randn(n, r, generator=g, dtype=dtype)
    up = torch.randn(t, d, generator=g, dtype=dtype)
    return [v.requires_grad_() for v in (z, b, k, w)] + [up]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_map", ["stereographic", "lift"])
@pytest.mark.parametrize("top_k", [1, 3, 5])
@given(seed=st.integers(0, 2**31 - 1))
def test_fused_equals_reference(dtype, input_map, top_k, seed) -> None:
    z, b, k, w, up = _problem(seed, dtype)

    def run(fused: bool) -> torch.Tensor:
        gates, _, _ = route(z @ w.T, top_k)
        gates = gates.to(dtype)
        if fused:
            return experts_fused(z, b, k, gates, input_map=input_map)
        return (experts_reference(z, b, k, input_map=input_map) * gates.unsqueeze(-1)).sum(-2)

    ref, fus = run(False), run(True)
    torch.testing.assert_close(fus, ref, **TOL[dtype])
    g_ref = torch.autograd.grad((ref * up).sum(), (z, b, k, w))
    g_fus = torch.autograd.grad((fus * up).sum(), (z, b, k, w))
    for name, a, c in zip("zbkw", g_fus, g_ref, strict=True):
        assert torch.isfinite(a).all(), name
        scale = c.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a / scale, c / scale, **GRAD_TOL[dtype], msg=f"grad {name}")


def test_zero_b_is_identity_and_has_finite_gradients() -> None:
    z, b, k, w, up = _problem(0, torch.float32)
    b0 = torch.zeros_like(b, requires_grad=True)
    gates, _, _ = route(z @ w.T, 3)
    out = experts_fused(z, b0, k, gates)
    assert torch.count_nonzero(out) == 0
    (out * up).sum().backward()
    assert torch.isfinite(b0.grad).all() and b0.grad.abs().sum() > 0


def test_lift_factor_is_one_and_stereographic_factor_is_conformal() -> None:
    z2 = torch.tensor([[0.0], [0.25], [4.0]], dtype=torch.float64)
    k = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.equal(input_factor(z2, k, "lift"), torch.ones(3, 3, dtype=torch.float64))
    a = input_factor(z2, k, "stereographic")
    # inside the ball: a = λ = 2/(1 + κ‖z‖²); κ = 0: 2
    torch.testing.assert_close(a[1], 2.0 / (1.0 + k * 0.25))
    torch.testing.assert_close(a[0], torch.full((3,), 2.0, dtype=torch.float64))
    # ‖z‖ = 2 is outside the κ = −1 ball: projected, so a·‖z‖ is the (huge) boundary value
    assert a[2, 0] * 2.0 > 1e6


def test_phi_changes_reference_output() -> None:
    z, b, k, *_ = _problem(1, torch.float64)
    plain = experts_reference(z, b, k)
    act = experts_reference(z, b, k, phi=torch.tanh)
    assert not torch.allclose(plain, act)


def test_bad_shapes_and_input_map_raise() -> None:
    z, b, k, w, _ = _problem(2, torch.float32)
    with pytest.raises(ValueError, match="input_map"):
        experts_fused(z, b, k, torch.ones(9, 5), input_map="poincare")
    with pytest.raises(ValueError, match="N·r"):
        experts_fused(z, b[:, :-1], k, torch.ones(9, 5))


@pytest.mark.parametrize("input_map", ["stereographic", "lift"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_weights_without_autocast(dtype, input_map) -> None:
    """float16/bfloat16 z, B, κ (a model converted with ``.half()``, no autocast): both paths
    return the storage dtype with finite gradients and equal the float64 evaluation on the
    same (up-cast) inputs to ~2 ulps of the output's scale: the radial factors run in the
    float32 island. (Found: the fused path's ``project_factor`` raised "value cannot be
    converted to type c10::Half without overflow" in float16, and the ``lift`` path's
    float16 gradients were not finite.)"""
    g = torch.Generator().manual_seed(0)
    n, r, d, t = 5, 4, 7, 64
    # token norms 1e-3 … 0.3 and a small B: inside every ball and chart, so the margins
    # (storage dtype vs float64) play no part in the comparison
    scale = torch.logspace(-3, -0.5, t, dtype=torch.float64).unsqueeze(-1)
    z = torch.randn(t, r, generator=g, dtype=torch.float64)
    z = (z / z.norm(dim=-1, keepdim=True) * scale).to(dtype)
    b = (torch.randn(d, n * r, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    k = ((torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 6).to(dtype)
    k[0] = 0.0
    w = torch.randn(n, r, generator=g, dtype=torch.float64)
    gates, _, _ = route(z.double() @ w.T, 2)

    def run(cast, fused):
        zz, bb, kk = (v.to(cast).requires_grad_() for v in (z, b, k))
        gg = gates.to(cast)
        if fused:
            out = experts_fused(zz, bb, kk, gg, input_map=input_map)
        else:
            out = (experts_reference(zz, bb, kk, input_map=input_map) * gg.unsqueeze(-1)).sum(-2)
        grads = torch.autograd.grad(out.sum(), (zz, bb, kk))
        return out, grads

    for fused in (True, False):
        ref, _ = run(torch.float64, fused)
        out, grads = run(dtype, fused)
        assert out.dtype == dtype
        assert all(gr.dtype == dtype and torch.isfinite(gr).all() for gr in grads), fused
        err = (out.double() - ref).abs() / ref.abs().amax(-1, keepdim=True)
        assert err.max() <= 4 * torch.finfo(dtype).eps, (fused, err.max().item())


def _mp_expert_out(z, b, kf, eps):
    """Σ over d_out of the literal expert output for one token and one κ > 0 expert
    (input_map stereographic, z inside every ball), at 50 digits."""
    import mpmath

    with mpmath.workdps(50):
        zm = [mpmath.mpf(v) for v in z]
        a = 2 / (1 + kf * sum(v * v for v in zm))
        v = [a * sum(mpmath.mpf(bij) * zj for bij, zj in zip(row, zm, strict=True)) for row in b]
        nv = mpmath.sqrt(sum(x * x for x in v))
        m = mpmath.sqrt(kf) * nv
        c = (1 - mpmath.mpf(eps)) / m if m > 1 - mpmath.mpf(eps) else mpmath.mpf(1)
        q = 1 / (1 + mpmath.sqrt(1 - kf * (c * nv) ** 2))
        return sum(c * q * x for x in v)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kf", [1e-3, 0.5, 2.0, 10.0])
def test_kappa_gradient_at_the_spherical_clip(kf, dtype) -> None:
    """κ > 0 tokens inside, just inside, just beyond and far beyond the clip radius
    (1 − ε)/√κ of the space-like chart: ∂o/∂κ of the fused and the literal path equals the
    50-digit derivative (relative 1e-9 / 2e-3 in float64 / float32) and is nonzero. At the
    clip the lift factor q is constant along it (its total κ-derivative ½‖u‖²q²/s −
    ½‖u‖²q²/s vanishes exactly), so the whole κ-gradient there comes from the clip factor
    (1 − ε)/(√κ‖v‖): a lift formula that takes the clipped norm as given, or a clip factor
    without its κ-dependence, returns 0 for every clipped token."""
    import mpmath

    from mosgeo.numerics import default_eps

    eps = default_eps(dtype)
    g = torch.Generator().manual_seed(3)
    r, d = 3, 5
    for scale in (0.5, 0.999, 1.001, 3.0, 100.0):
        z = torch.randn(1, r, generator=g, dtype=torch.float64) * 0.1 / max(1.0, kf**0.5)
        b = torch.randn(d, r, generator=g, dtype=torch.float64)
        lam = 2 / (1 + kf * (z * z).sum())
        b = b * scale * (1 - eps) / kf**0.5 / (lam * z @ b.T).norm()  # ‖B s‖ = scale·R
        zz, bb = z.to(dtype), b.to(dtype)
        zl, bl = zz[0].double().tolist(), bb.double().tolist()
        kd = float(torch.tensor(kf, dtype=dtype))  # κ as the library sees it
        with mpmath.workdps(50):
            h, k0 = mpmath.mpf("1e-30"), mpmath.mpf(kd)
            up, down = _mp_expert_out(zl, bl, k0 + h, eps), _mp_expert_out(zl, bl, k0 - h, eps)
            exact = float((up - down) / (2 * h))
        assert exact != 0
        for fused in (True, False):
            k = torch.tensor([kf], dtype=dtype, requires_grad=True)
            if fused:
                out = experts_fused(zz, bb, k, torch.ones(1, 1, dtype=dtype))
            else:
                out = experts_reference(zz, bb, k)
            (gk,) = torch.autograd.grad(out.sum(), k)
            tol = {torch.float64: 1e-9, torch.float32: 2e-3}[dtype]
            assert abs(gk.item() - exact) <= tol * abs(exact), (scale, fused, gk.item(), exact)


def _fused_vs_reference(z, b, k, gates, input_map="stereographic", tol=None):
    """Values and the gradients in z, B, κ and the gates of both paths; returns the relative
    differences per output."""
    leaves = [[v.clone().requires_grad_() for v in (z, b, k, gates)] for _ in range(2)]
    fus = experts_fused(*leaves[0], input_map=input_map)
    zr, br, kr, gr = leaves[1]
    ref = (experts_reference(zr, br, kr, input_map=input_map) * gr.unsqueeze(-1)).sum(-2)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=ref.dtype)
    g_f = torch.autograd.grad((fus * up).sum(), leaves[0])
    g_r = torch.autograd.grad((ref * up).sum(), leaves[1])
    for name, a, c in zip(("out", "z", "b", "k", "gates"), (fus, *g_f), (ref, *g_r), strict=True):
        assert torch.isfinite(a).all() and torch.isfinite(c).all(), name
        scale = c.abs().max().clamp_min(torch.finfo(c.dtype).tiny)
        torch.testing.assert_close(a / scale, c / scale, **(tol or TOL[c.dtype]), msg=name)


KAPPAS = {
    "through-0": [0.0, 1e-8, -1e-8, 1e-30, -1e-30],
    "inits": [-1.0, 1.0, 0.0, 1.0, -1.0],  # the presets' κ, on the clamps' edges (κ = 1)
    "mixed": [-2.5, -0.1, 0.0, 0.4, 3.0],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kappas", list(KAPPAS))
@pytest.mark.parametrize("input_map", ["stereographic", "lift"])
def test_fused_equals_reference_through_kappa_zero(dtype, kappas, input_map):
    """κ exactly 0, ±1e-8, ±1e-30, the presets' initial values and mixed signs: tokens inside,
    on and beyond the ball radius and the spherical clip (norms 1e-3 … 30, B ~ N(0, 0.7²))."""
    z, b, _, w, _ = _problem(11, dtype)
    k = torch.tensor(KAPPAS[kappas], dtype=dtype)
    gates, _, _ = route(z.detach() @ w.detach().T, 3)
    _fused_vs_reference(z.detach(), b.detach(), k, gates.to(dtype), input_map)


@pytest.mark.parametrize(
    ("dtype", "norm", "b_scale"),
    [(torch.float32, 1e20, 1.0), (torch.float32, 1e20, 1e3), (torch.float32, 1e10, 30.0),
     (torch.float64, 1e160, 1.0), (torch.float64, 1e20, 1e3)],
)  # fmt: skip
def test_huge_tokens_are_exact(dtype, norm, b_scale):
    """‖z‖ = 1e20 in float32 (‖z‖² overflows; the old fused path returned NaN) or 1e160 in
    float64, large B: every expert projects the token and the fused path equals the literal
    one in values and every gradient. A zero token in the same batch stays exact too (its
    gradient in z is B's, not 0/0)."""
    g = torch.Generator().manual_seed(4)
    n, r, d = 5, 4, 6
    z = torch.randn(4, r, generator=g, dtype=dtype)
    z = z / z.norm(dim=-1, keepdim=True) * torch.tensor([[norm], [norm], [1.0], [0.0]], dtype=dtype)
    b = torch.randn(d, n * r, generator=g, dtype=dtype) * b_scale
    k = torch.tensor([-1.0, 0.0, 1.0, 4.0, -0.3], dtype=dtype)
    gates = torch.rand(4, n, generator=g, dtype=dtype)
    _fused_vs_reference(z, b, k, gates)


def _mix_inputs(t: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``(z, B_cat, κ, gates, base)`` for ``t`` tokens from 1e-3 to 1e8 in norm, 6 experts of
    rank 8 with κ through 0, 11 outputs: ``z``, ``B``, ``base`` in ``dtype``, κ and the gates
    in its compute dtype."""
    g = torch.Generator().manual_seed(t)
    n, r, d = 6, 8, 11
    z = torch.randn(t, r, generator=g, dtype=torch.float64)
    z = z * torch.logspace(-3, 8, t, dtype=torch.float64).unsqueeze(-1)
    b = torch.randn(d, n * r, generator=g, dtype=torch.float64) * 0.5
    k = torch.tensor([0.0, 1e-8, -1.0, 1.0, -3.0, 2.5], dtype=torch.float64)
    gates = torch.rand(t, n, generator=g, dtype=torch.float64)
    base = torch.randn(t, d, generator=g, dtype=torch.float64)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    return z.to(dtype), b.to(dtype), k.to(cdt), gates.to(cdt), base.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("input_map", ["stereographic", "lift"])
@pytest.mark.parametrize("t", [1, 3, 8, 20])
def test_the_inference_forward_equals_the_training_forward(t, input_map, dtype):
    """Without a backward (``save=False``: evaluation, decoding) fewer tokens than the rank
    take ``‖B_i z̃‖²`` directly instead of through the Gram matrices, and no local
    derivatives are formed: the same output, huge and tiny tokens, κ through 0."""
    from mosgeo_lora.experts import mix_forward

    z, b, k, gates, _ = _mix_inputs(t, dtype)
    args = (z, b, k, gates)
    trained, state = mix_forward(*args, input_map=input_map, save=True)
    inferred, none = mix_forward(*args, input_map=input_map, save=False)
    assert none is None and state is not None
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    torch.testing.assert_close(inferred, trained, rtol=tol, atol=tol * float(trained.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("input_map", ["stereographic", "lift"])
@pytest.mark.parametrize("t", [1, 5, 40])
def test_the_cached_gram_and_terms_give_the_training_forward(t, input_map, dtype):
    """The inference path's inputs computed once per weight version (the Gram matrices as
    one ``(r, N·r)`` matrix, κ's terms) and the output weight as the ``addmm``'s ``alpha``:
    the training forward's output, with and without ``base``; huge and tiny tokens."""
    from mosgeo import radial
    from mosgeo.numerics import default_eps
    from mosgeo_lora.experts import gram_matrices, mix_forward

    z, b, k, gates, base = _mix_inputs(t, dtype)
    n = k.shape[0]
    gram = gram_matrices(b, n, k.dtype)
    terms = radial.curvature_terms(k, default_eps(dtype), input_map)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)
    for b0 in (None, base):
        trained, _ = mix_forward(z, b, k, gates * 0.5, input_map=input_map, base=b0)
        cached, state = mix_forward(
            z, b, k, gates, input_map=input_map, base=b0, save=False, gram=gram, terms=terms,
            alpha=0.5,
        )  # fmt: skip
        assert state is None
        scale = float(trained.abs().max())
        torch.testing.assert_close(cached, trained, rtol=tol, atol=tol * scale)
    with pytest.raises(ValueError, match="alpha"):
        mix_forward(z, b, k, gates, input_map=input_map, alpha=0.5)
