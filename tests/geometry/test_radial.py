r""":mod:`mosgeo.radial`, the fused per-(token, expert) scalar ``γ`` of a mixture of radial chart
maps, against the generic radial factors it fuses.

* Values and every gradient (``‖z‖²``, the Gram form ``q``, κ, the gates) equal those of the
  composition ``project_factor → spacelike_scale → clip_spacelike_factor →
  spacelike_inverse_scale`` (autograd through the generic functions), float32 and float64,
  κ through 0 (0, ±1e-8, mixed signs), tokens inside, at and beyond the projection radius and
  the spherical clip (hypothesis).
* ``gradcheck`` of the closed-form backward in float64 at ordinary points and just beside
  each branch switch (projection radius, clip radius), never on a kink.
* The per-token factor μ changes nothing, and makes a token of norm 1e160 (float64) exact.
* Half precision: computed in float32 with the storage dtype's margin, the output point kept
  strictly inside the storage dtype's ball, the result cast back.
"""

from __future__ import annotations

import pytest
import torch
from conftest import curvatures
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

import mosgeo.charts as pc
import mosgeo.math as pm
from mosgeo import radial
from mosgeo.numerics import default_eps, safe_sqrt

MAPS = list(radial.INPUT_MAPS)


def composed(z2, q, k, gates, input_map, eps, inside=False):
    """γ from the generic radial factors (the literal expert's maps, radially)."""
    n = safe_sqrt(z2)
    if input_map == "stereographic":
        p = pm.project_factor(n, k, eps)
        a = p * pc.spacelike_scale(p * p * z2, k)
    else:
        a = torch.ones_like(q)
    v = a * safe_sqrt(q)  # ‖B_i s_i‖
    c1 = pc.clip_spacelike_factor(v, k, eps)
    c = c1 * pc.spacelike_inverse_scale((c1 * v) ** 2, k)
    if inside:
        c = c * pm.ball_factor(c * v, k, eps)
    return gates * a * c


def problem(seed, dtype, n=6, r=4, d=7, t=9, k=None):
    """Tokens of norm 1e-3 … 30 (beyond every κ < 0 ball radius), B ~ N(0, 0.7²) (many κ > 0
    tokens clipped), κ: 0, ±1e-8, then the given or random curvatures."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 1.5, t, dtype=torch.float64).unsqueeze(-1)
    z = torch.randn(t, r, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=-1, keepdim=True) * scale
    b = torch.randn(d, n * r, generator=g, dtype=torch.float64) * 0.7
    gram = torch.einsum("dnr,dns->nrs", b.view(d, n, r), b.view(d, n, r))
    z2 = (z * z).sum(-1, keepdim=True)
    q = torch.einsum("tr,nrs,ts->tn", z, gram, z)
    if k is None:
        k = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 6
        k[:3] = torch.tensor([0.0, 1e-8, -1e-8])
    gates = torch.rand(t, n, generator=g, dtype=torch.float64)
    return [v.to(dtype) for v in (z2, q, torch.as_tensor(k, dtype=torch.float64), gates)]


#: float64: the composition carries rounding noise of ~1e-12 of the gradient scale where the
#: fused backward is exactly 0 (a clipped expert does not depend on ‖z‖). float32: a token on
#: the projected rim, where to_spacelike amplifies rounding by ~1/(2·ball_eps) ≈ 1.4e3, is
#: ~4e-4 off the float64 value in both float32 paths (the bound of tests/tuner/test_experts.py)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def _compare(args, input_map, dtype, k_rtol=None, ref_dtype=torch.float64):
    """The fused γ in ``dtype`` against the composition in ``ref_dtype`` with ``dtype``'s
    margin (float64 by default: the float32 composition is itself ~1e-4 off near the clip)."""
    eps = default_eps(dtype)
    fused_args = [v.to(dtype).requires_grad_() for v in args]
    ref_args = [v.to(ref_dtype).requires_grad_() for v in args]
    fused = radial.adapter_scale(*fused_args, input_map=input_map)
    ref = composed(*ref_args, input_map, eps)
    torch.testing.assert_close(fused, ref.to(dtype), **TOL[dtype])
    up = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    g_f = torch.autograd.grad((fused * up).sum(), fused_args)
    g_r = torch.autograd.grad((ref * up.to(ref_dtype)).sum(), ref_args, materialize_grads=True)
    for name, a, c in zip(("z2", "q", "k", "gates"), g_f, g_r, strict=True):
        c = c.to(dtype)
        assert torch.isfinite(a).all(), name
        if input_map == "lift" and name == "z2":
            assert not a.any()  # the lift does not read ‖z‖
            continue
        if name == "k" and k_rtol is not None:  # per expert: sizes differ by many decades
            torch.testing.assert_close(a, c, rtol=k_rtol, atol=0, msg="grad k")
        s = c.abs().amax(0, keepdim=True).clamp_min(1.0)
        torch.testing.assert_close(a / s, c / s, **TOL[dtype], msg=f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_map", MAPS)
@given(seed=st.integers(0, 2**31 - 1))
def test_equals_the_composed_radial_factors(dtype, input_map, seed):
    _compare(problem(seed, dtype), input_map, dtype)


@pytest.mark.parametrize("input_map", MAPS)
@given(ks=st.lists(curvatures, min_size=4, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_equals_the_composed_radial_factors_for_every_curvature(input_map, ks, seed):
    _compare(problem(seed, torch.float64, n=4, k=ks), input_map, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [[0.0, 0.5, 1.0, 3.0, -1.0], [1e-30, -1e-30, 1e-8, -1e-8, 20.0]])
def test_tokens_beyond_the_max_norm_bound(dtype, k):
    """κ ≥ 0 projects at ``max_norm/max(1, √κ)`` (≈ 2e9 in float32, 6e76 in float64): tokens
    around that bound, where the radius is clamped (0 ≤ κ ≤ 1) or follows κ (κ > 1)."""
    top = {torch.float32: 9.7, torch.float64: 77.2}[dtype]
    z2, q, kk, gates = problem(2, torch.float64, n=5, k=k)
    norms = torch.logspace(top - 1.5, top + 1.0, z2.shape[0], dtype=torch.float64).unsqueeze(-1)
    args = [z2 / z2 * norms**2, q / z2 * norms**2, kk, gates]
    # in dtype: the bound is dtype's max_norm
    _compare(args, "stereographic", dtype, 1e-9 if dtype == torch.float64 else 1e-3, dtype)


def _near_switches(side: float):
    """float64 (z2, q, κ, gates) with one expert's token just beyond (side > 0) or inside
    (side < 0) the projection radius, and one expert's token just beyond or inside the clip
    (relative distance 1e-3: the finite differences of gradcheck stay on one side)."""
    eps = default_eps(torch.float64)
    k = torch.tensor([-1.0, 0.8, 2.0, -0.3], dtype=torch.float64)
    radius = (1 - eps) / k[0].abs().sqrt()
    z2 = torch.tensor([[(radius * (1 + side * 1e-3)) ** 2], [0.3]], dtype=torch.float64)
    q = torch.full((2, 4), 0.4, dtype=torch.float64)
    a = 2 / (1 + k[1] * z2[1, 0])  # token 1 is inside every radius: a = λ
    q[1, 1] = (1 - eps) ** 2 * (1 + side * 1e-3) / (k[1] * a * a)  # κ‖B s‖² at the clip
    gates = torch.tensor([[0.3, 0.2, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    return z2, q, k, gates


@pytest.mark.parametrize("input_map", MAPS)
@pytest.mark.parametrize("side", [-1.0, 1.0], ids=["inside", "beyond"])
def test_gradcheck_beside_the_branch_switches(input_map, side):
    args = [v.requires_grad_() for v in _near_switches(side)]
    mu = torch.tensor([[0.7], [1.3]], dtype=torch.float64)

    def fn(z2, q, k, g):
        return radial.adapter_scale(z2, q, k, g, input_map=input_map, mu=mu)

    assert gradcheck(fn, args)
    # and the switches are where the test puts them: same values as the composition
    _compare(_near_switches(side), input_map, torch.float64)


@pytest.mark.parametrize("input_map", MAPS)
def test_gradcheck_at_ordinary_points_and_kappa_zero(input_map):
    z2, q, k, gates = problem(3, torch.float64, n=5, t=6, k=[0.0, 1e-8, -1e-8, -1.5, 0.9])
    args = [v.requires_grad_() for v in (z2, q, k, gates)]
    assert gradcheck(lambda *a: radial.adapter_scale(*a, input_map=input_map), args)


@pytest.mark.parametrize("input_map", MAPS)
def test_the_per_token_factor_changes_nothing(input_map):
    """γ̃ multiplies z/μ: γ̃/μ (the coefficient of z) is the same for every μ, and a token of
    norm 1e160 (its ‖z‖² overflows float64) is exact through μ = its largest entry."""
    z2, q, k, gates = problem(5, torch.float64)
    mu = torch.logspace(-3, 3, z2.shape[0], dtype=torch.float64).unsqueeze(-1)
    plain = radial.adapter_scale(z2, q, k, gates, input_map=input_map)
    scaled = radial.adapter_scale(z2 / mu**2, q / mu**2, k, gates, input_map=input_map, mu=mu)
    torch.testing.assert_close(scaled / mu, plain, rtol=1e-12, atol=0)
    if input_map == "lift":
        return  # the lift does not project: κ‖B z‖² must be finite
    # 1e160 and 1e100 are beyond every expert's projection radius (κ ≥ 0: max_norm ≈ 6e76):
    # the same projected points, so the same coefficient of z/μ
    unit = z2[:1] / z2[:1]
    got = radial.adapter_scale(unit, q[:1] / z2[:1], k, gates[:1], mu=unit * 1e160)
    ref = radial.adapter_scale(unit, q[:1] / z2[:1], k, gates[:1], mu=unit * 1e100)
    assert torch.isfinite(got).all() and (got != 0).all()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("input_map", MAPS)
def test_half_precision_is_the_float32_island(dtype, input_map):
    """float16/bfloat16 arguments: the float32 computation with the storage dtype's margin and
    the output point kept strictly inside the storage dtype's ball (from_spacelike's rule),
    cast back; finite gradients in the storage dtype."""
    z2, q, k, gates = problem(7, torch.float32)
    z2, q = z2 * 4, q * 4  # tokens far beyond the κ < 0 balls: o_i near their rim
    args = [v.to(dtype).requires_grad_() for v in (z2, q, k, gates)]
    got = radial.adapter_scale(*args, input_map=input_map)
    assert got.dtype == dtype
    up = [v.detach().float() for v in args]
    ref = composed(*up, input_map, default_eps(dtype), inside=True).to(dtype)
    torch.testing.assert_close(got, ref, rtol=2 * torch.finfo(dtype).eps, atol=0)
    grads = torch.autograd.grad(got.float().sum(), args)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_bad_input_map_raises():
    z2, q, k, gates = problem(0, torch.float64)
    with pytest.raises(ValueError, match="input_map"):
        radial.adapter_scale(z2, q, k, gates, input_map="poincare")


def test_project_factor_reads_the_same_radius():
    """``project_factor`` is ``1/max(1, ‖x‖·√inverse_radius2)``: the radius the fused scalar
    uses, whatever κ (tiny, 0, the κ ≥ 0 bound)."""
    k = torch.tensor([-4.0, -1e-30, 0.0, 1e-30, 0.5, 9.0], dtype=torch.float64)
    eps = default_eps(torch.float64)
    n = torch.logspace(-3, 40, 50, dtype=torch.float64).unsqueeze(-1)
    radius = radial.inverse_radius2(k, eps).rsqrt()
    torch.testing.assert_close(pm.project_factor(n, k), (radius / n).clamp_max(1.0))


# --------------------------------------------------------------------------------------
# the compiled kernel (radial.set_kernel("compiled")): the same γ and gradients as the eager
# one, in two fused kernels
# --------------------------------------------------------------------------------------


@pytest.fixture
def compiled_kernel():
    from mosgeo import _compat

    if not _compat.compile_supported():
        pytest.skip(f"needs torch>={_compat.COMPILE_MIN_TORCH}")
    previous = radial.set_kernel("compiled")
    yield
    radial.set_kernel(previous)


def _gamma_and_grads(args, input_map, mu=None):
    leaves = [v.clone().requires_grad_() for v in args]
    gamma = radial.adapter_scale(*leaves, input_map=input_map, mu=mu)
    weights = torch.linspace(-1.0, 2.0, gamma.numel(), dtype=gamma.dtype).view_as(gamma)
    grads = torch.autograd.grad((gamma * weights).sum(), leaves)
    return gamma, grads


@pytest.mark.parametrize("t", [1, 9], ids=["one-token", "tokens"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("input_map", MAPS)
def test_the_compiled_kernel_equals_the_eager_one(input_map, dtype, t, compiled_kernel):
    """Values and the gradients of ``‖z‖²``, ``q``, κ and the gates, κ through 0, tokens
    inside and beyond the projection radius and the clip, a single token (decoding) too."""
    z2, q, k, gates = problem(3, torch.float64, t=t)
    args = [v.to(dtype) for v in (z2, q, k, gates)]
    mu = torch.logspace(-2, 2, t, dtype=torch.float64).unsqueeze(-1).to(dtype)
    got = _gamma_and_grads(args, input_map, mu)
    radial.set_kernel("eager")
    ref = _gamma_and_grads(args, input_map, mu)
    # a sum over experts (the gradient of ‖z‖²) cancels: the bound is relative to its scale
    rtol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    for a, b in zip((got[0], *got[1]), (ref[0], *ref[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_the_compiled_kernel_reads_each_margin(compiled_kernel):
    """One process, the same shapes, two margins (those of float16 and bfloat16): each
    call gets its own margin. (Found: passed as a float argument, the margin became a
    symbolic input that inductor baked into the kernel; the bfloat16 call then ran with
    float16's margin, γ 3 % off.)"""
    z2, q, k, gates = (v.float() for v in problem(5, torch.float64))
    for eps in (2.0**-8, 2.0**-5, 2.0**-8):
        radial.set_kernel("compiled")
        got, _ = radial.gamma_forward(z2.sqrt(), q, k, gates, None, eps=eps,
                                      input_map="stereographic", inside=True)  # fmt: skip
        radial.set_kernel("eager")
        ref, _ = radial.gamma_forward(z2.sqrt(), q, k, gates, None, eps=eps,
                                      input_map="stereographic", inside=True)  # fmt: skip
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("input_map", MAPS)
def test_the_compiled_kernel_is_one_graph_each_way(input_map, compiled_kernel):
    """No graph break: each direction is one fused kernel, not a chain of eager pieces."""
    import torch._dynamo

    z2, q, k, gates = (v.float() for v in problem(7, torch.float64))
    nz = None if input_map == "lift" else z2.sqrt()
    fwd = radial._forward_kernel(1e-4, input_map, False, True)
    explained = torch._dynamo.explain(fwd._torchdynamo_orig_callable)(nz, q, k, gates, None)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    if input_map != "lift":  # with a second input ball (MoSELoraConfig.flatten) too
        ball = torch.rand_like(k)
        explained = torch._dynamo.explain(fwd._torchdynamo_orig_callable)(
            nz, q, k, gates, None, ball
        )
        assert explained.graph_count == 1 and explained.graph_break_count == 0
    _, saved = fwd(nz, q, k, gates, None)
    explained = torch._dynamo.explain(radial.scale_backward)(saved, torch.ones_like(q))
    assert explained.graph_count == 1 and explained.graph_break_count == 0


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        radial.set_kernel("triton")
    assert radial.KERNELS == ("auto", "eager", "compiled")
    assert radial.get_kernel() in radial.KERNELS


# --------------------------------------------------------------------------------------
# "auto" (the default): compiled on a GPU where Triton is installed, eager on a CPU, and
# eager with a warning for a variant whose compilation fails
# --------------------------------------------------------------------------------------


def test_auto_is_the_default_and_compiles_only_off_the_cpu(monkeypatch):
    import importlib
    import os

    if "MOSGEO_RADIAL_KERNEL" not in os.environ:  # the module's own default
        source = importlib.util.find_spec("mosgeo.radial").origin
        assert 'os.environ.get("MOSGEO_RADIAL_KERNEL", "auto")' in open(source).read()
    monkeypatch.setattr(radial, "compile_supported", lambda: True)  # whatever this torch
    previous = radial.set_kernel("auto")
    try:
        for triton in (True, False):
            monkeypatch.setattr(radial, "_triton_available", lambda t=triton: t)
            assert radial.kernel_for(torch.device("cpu")) == "eager"
            assert radial.kernel_for(torch.device("meta")) == "eager"  # e.g. an empty model
            assert radial.kernel_for(torch.device("cuda", 0)) == ("compiled" if triton else "eager")
        radial.set_kernel("compiled")
        assert radial.kernel_for(torch.device("cpu")) == "compiled"
        radial.set_kernel("eager")
        assert radial.kernel_for(torch.device("cuda", 0)) == "eager"
    finally:
        radial.set_kernel(previous)


@pytest.fixture
def failing_compiler(monkeypatch):
    """ "auto" made to compile on the CPU, with a compiler that fails: ``calls`` counts the
    attempts."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no working C compiler\nmore lines")

    monkeypatch.setattr(radial, "_forward_kernel", lambda *a: broken)
    monkeypatch.setattr(radial, "_backward_kernel", lambda: broken)
    monkeypatch.setattr(radial, "_COMPILED", {})
    monkeypatch.setattr(radial, "dispatch_mode_active", lambda: False)
    previous = radial.set_kernel("auto")
    monkeypatch.setattr(
        radial,
        "kernel_for",
        lambda device: "eager" if radial.get_kernel() == "eager" else "compiled",
    )
    yield calls
    radial.set_kernel(previous)


def test_auto_runs_eager_where_compiling_fails_and_warns_once(failing_compiler):
    import warnings

    z2, q, k, gates = problem(13, torch.float64)
    args = [v.clone() for v in (z2, q, k, gates)]
    failed = "compiling the kernel 'γ forward' failed on cpu.*no working C"
    with pytest.warns(RuntimeWarning, match=failed):
        got = _gamma_and_grads(args, "stereographic")
    assert len(failing_compiler) == 2  # the forward and the backward kernel, once each
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        again = _gamma_and_grads(args, "stereographic")
    assert len(failing_compiler) == 2
    radial.set_kernel("eager")
    ref = _gamma_and_grads(args, "stereographic")
    for a, b, c in zip((got[0], *got[1]), (ref[0], *ref[1]), (again[0], *again[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(c, b, rtol=0, atol=0)


def test_auto_does_not_blame_the_compiler_for_bad_inputs(failing_compiler):
    """A call the eager code refuses too (here: shapes that do not broadcast) raises the
    eager error, with no warning, and leaves the variant untried."""
    import warnings

    z2, q, k, gates = problem(13, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeError, match="size of tensor"):
            radial.gamma_forward(z2.sqrt(), q, k[:-1], gates, None, eps=1e-3,
                                 input_map="stereographic", save=False)  # fmt: skip
    assert radial._COMPILED == {}


def test_a_compiler_failure_raises_when_compiled_is_asked_for(failing_compiler):
    radial.set_kernel("compiled")
    z2, q, k, gates = problem(13, torch.float64)
    with pytest.raises(RuntimeError, match="no working C compiler"):
        radial.adapter_scale(z2, q, k, gates)


def test_auto_raises_a_later_failure_of_a_kernel_that_compiled(monkeypatch):
    """Only a variant's first call may fall back: a kernel that ran once and then fails
    (out of memory, a bad input) raises, as the eager code would."""
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("out of memory")
        return radial._eager_forward(*args[:5], 1e-3, "stereographic", False, False, None,
                                     args[5] if len(args) > 5 else None)  # fmt: skip

    monkeypatch.setattr(radial, "_forward_kernel", lambda *a: flaky)
    monkeypatch.setattr(radial, "_COMPILED", {})
    monkeypatch.setattr(radial, "dispatch_mode_active", lambda: False)
    monkeypatch.setattr(radial, "kernel_for", lambda device: "compiled")
    previous = radial.set_kernel("auto")
    try:
        z2, q, k, gates = problem(13, torch.float64)
        kw = dict(eps=1e-3, input_map="stereographic", save=False)
        radial.gamma_forward(z2.sqrt(), q, k, gates, None, **kw)
        with pytest.raises(RuntimeError, match="out of memory"):
            radial.gamma_forward(z2.sqrt(), q, k, gates, None, **kw)
    finally:
        radial.set_kernel(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("input_map", MAPS)
def test_the_compiled_kernel_on_a_gpu_equals_the_eager_one(input_map, dtype, compiled_kernel):
    """The same kernel as Triton code: values and gradients equal the eager kernel's on the
    GPU and the CPU's (issue 13, item 4: the parity test runs wherever a GPU exists)."""
    z2, q, k, gates = problem(11, torch.float64, t=33)
    args = [v.to(dtype) for v in (z2, q, k, gates)]
    mu = torch.logspace(-2, 2, 33, dtype=torch.float64).unsqueeze(-1).to(dtype)
    on_gpu = _gamma_and_grads([a.cuda() for a in args], input_map, mu.cuda())
    radial.set_kernel("eager")
    eager_gpu = _gamma_and_grads([a.cuda() for a in args], input_map, mu.cuda())
    eager_cpu = _gamma_and_grads(args, input_map, mu)
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, ref in ((on_gpu, eager_gpu), (on_gpu, eager_cpu)):
        for a, b in zip((got[0], *got[1]), (ref[0], *ref[1]), strict=True):
            b = b.to(a.device)
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (Triton)")
def test_auto_compiles_on_a_gpu_without_falling_back(monkeypatch):
    """The default kernel on a GPU is the compiled one, and it compiles there (a fallback
    would warn): values equal the eager kernel's."""
    import warnings

    monkeypatch.setattr(radial, "_COMPILED", {})
    previous = radial.set_kernel("auto")
    try:
        assert radial.kernel_for(torch.device("cuda")) == "compiled"
        z2, q, k, gates = (v.float().cuda() for v in problem(17, torch.float64, t=33))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = _gamma_and_grads([z2, q, k, gates], "stereographic")
        assert set(radial._COMPILED.values()) == {True} and len(radial._COMPILED) == 2
        radial.set_kernel("eager")
        ref = _gamma_and_grads([z2, q, k, gates], "stereographic")
    finally:
        radial.set_kernel(previous)
    for a, b in zip((got[0], *got[1]), (ref[0], *ref[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
