r"""Numerics of :mod:`mosgeo`: the guard table, the entire functions of ``t = κr²`` at their
series threshold, finiteness of every public op (values and gradients) in all four floating
dtypes, and the boundary projections ``project`` / ``clip_spacelike``.

Finiteness rule (section 3). The contract is "no NaN or ±inf, in outputs or gradients, for
finite in-domain inputs". NaN is never allowed; float64 must be finite, strictly. Some
*exact* values at in-domain inputs are not representable in a narrower dtype — e.g. in
float16 (max 65504) ``dλ_x/dx = −κλ_x²x`` at a point on the projected boundary of the
κ = −4 ball is ≈ 1.3e5, and in float32 ``∂ from_spacelike(u)/∂κ = u‖u‖²/8`` at κ = 0 is
≈ 1e45 for ‖u‖ = 1e15 — so in float16, bfloat16 and float32 an ``inf`` is accepted exactly
where the float64 evaluation of the same op at the same (exactly up-cast) inputs exceeds the
dtype's largest finite value; anywhere else it is a failure.

Known bugs (see ``KNOWN_BUGS``): the cells of the (op, dtype, inputs, κ) grid where mosgeo
currently fails are left out of ``test_no_nan_or_inf`` and run, per bug, by
``test_known_nonfinite_bugs`` (strict xfail), so every other cell stays a strict check and a
fix shows up as an XPASS.
"""

from __future__ import annotations

import functools
import math

import mpmath
import pytest
import torch

import mosgeo.charts as charts
import mosgeo.math as pmath
from mosgeo import numerics
from mosgeo.numerics import default_eps, guards

ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HALF = [torch.float16, torch.bfloat16]
FULL = [torch.float32, torch.float64]
DT_IDS = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64"}


def _ids(dtypes):
    return [DT_IDS[d] for d in dtypes]


# ======================================================================================
# 1. the guard table
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids(ALL_DTYPES))
def test_guards_derived_from_finfo(dtype):
    """Every entry follows the rule of the module table, from torch.finfo of the compute
    (ε_c, tiny, max) and storage (ε_s) dtypes."""
    g = guards(dtype)
    comp = torch.float32 if dtype in HALF else dtype
    assert g.dtype == dtype
    assert g.compute == comp == numerics.compute_dtype(dtype)
    fc, fs = torch.finfo(comp), torch.finfo(dtype)
    assert g.ball_eps == max(math.sqrt(fc.eps), 4.0 * fs.eps)
    assert default_eps(dtype) == g.ball_eps
    assert g.atanh_max == 1.0 - fc.eps
    assert g.min_norm == math.sqrt(fc.tiny)
    assert g.min_denom == fc.eps
    assert g.max_norm == fc.max**0.25 / 2.0
    assert g.max_exp_arg == math.log(fc.max) - 1.0
    assert g.big_scale == 2.0 ** -((5 * math.frexp(fc.max)[1]) // 8)
    tau, terms = (0.02, 10) if comp == torch.float64 else (0.05, 6)
    assert (g.series_tau, g.series_terms) == (tau, terms)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids(ALL_DTYPES))
def test_guards_do_their_job(dtype):
    """The 'why' column: each guard does what it is for, in the compute dtype."""
    g = guards(dtype)
    c = g.compute
    fc, fs = torch.finfo(c), torch.finfo(dtype)
    # series: truncation error (τ/ρ)^N < ε_c, ρ ≥ 1 the radius of convergence in t
    assert g.series_tau**g.series_terms < fc.eps
    # atanh/asin argument strictly below 1 and atanh of it finite
    a = torch.tensor(g.atanh_max, dtype=c)
    assert a < 1 and torch.isfinite(torch.atanh(a))
    # min_norm: its square is still a normal number, 1/min_norm finite
    m = torch.tensor(g.min_norm, dtype=c)
    assert m * m >= fc.tiny and torch.isfinite(1 / m)
    # min_denom: 1 + min_denom is a different number (a real margin), 1/min_denom finite
    assert torch.tensor(1.0, dtype=c) + g.min_denom > 1 and math.isfinite(1 / g.min_denom)
    # max_norm: κ²‖x‖²‖y‖² with |κ| ≤ 1 and ‖x‖, ‖y‖ ≤ max_norm is finite, with headroom
    # for the sums it enters (1 − 2κ⟨x,y⟩ + κ²‖x‖²‖y‖², products by 4)
    mn = torch.tensor(g.max_norm, dtype=c)
    assert torch.isfinite(mn**4) and torch.isfinite(8 * mn**4)
    # max_exp_arg: exp/sinh/cosh of it are finite
    e = torch.tensor(g.max_exp_arg, dtype=c)
    assert torch.isfinite(torch.exp(e)) and torch.isfinite(torch.cosh(e))
    assert torch.isfinite(torch.sinh(e))
    # big_scale: a row whose ‖x‖² overflows, scaled by it, has squares that neither overflow
    # (largest entry max, 2^20 entries) nor underflow (its largest entry ≥ √max/2^10)
    b = torch.tensor(g.big_scale, dtype=c)
    assert torch.isfinite((torch.tensor(fc.max, dtype=c) * b) ** 2 * 2**20)
    assert (torch.tensor(fc.max, dtype=c).sqrt() / 2**10 * b) ** 2 >= fc.tiny
    # ball_eps: the margin survives rounding to the *storage* dtype — (1 − ε)·(1 + ε_s/2) < 1
    assert (1 - g.ball_eps) * (1 + fs.eps / 2) < 1
    assert torch.tensor(1 - g.ball_eps, dtype=dtype) < 1


@pytest.mark.parametrize(
    "dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128]
)
def test_guards_reject_non_floating_dtypes(dtype):
    with pytest.raises(TypeError):
        guards(dtype)
    with pytest.raises(TypeError):
        default_eps(dtype)


def _mp_ratio(name: str):
    """f(t) = g(√t)/√t via mpmath (complex √ for t < 0), with the limit 1 at t = 0."""
    fn = {"tan": mpmath.tan, "artan": mpmath.atan, "sin": mpmath.sin, "arsin": mpmath.asin}[name]

    def f(t):
        if t == 0:
            return mpmath.mpf(1)
        s = mpmath.sqrt(t)
        return mpmath.re(fn(s) / s)

    return f


NAMES = ["tan", "artan", "sin", "arsin"]


@pytest.mark.parametrize("name", NAMES)
def test_series_coefficients_match_mpmath(name):
    """c_n of tan(√t)/√t, atan(√t)/√t, sin(√t)/√t, asin(√t)/√t against mpmath.taylor
    (60 digits) to 1e-15 relative."""
    terms = 14
    ours = numerics.series_coefficients(name, terms)
    assert len(ours) == terms
    with mpmath.workdps(60):
        ref = mpmath.taylor(_mp_ratio(name), 0, terms - 1)
    for n, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert abs(a - float(b)) <= 1e-15 * abs(float(b)), (name, n, a, b)


def test_series_coefficients_unknown_name():
    with pytest.raises(ValueError):
        numerics.series_coefficients("cos", 4)


# ======================================================================================
# 2. the entire functions of t = κr²: accuracy, continuity across the series threshold
# ======================================================================================

RATIO = {
    "tan": pmath.tan_ratio,
    "artan": pmath.artan_ratio,
    "sin": pmath.sin_ratio,
    "arsin": pmath.arsin_ratio,
}
#: in-domain t ranges (tan: pole at t = π²/4 ≈ 2.47; artan: t > −1; arsin: t < 1)
T_RANGE = {
    "tan": (-40.0, 2.3),
    "artan": (-0.98, 40.0),
    "sin": (-40.0, 40.0),
    "arsin": (-40.0, 0.98),
}


def _mp_value_and_cond(name: str, t: float):
    """f(t) and the relative condition number |t f'(t)/f(t)| (60 digits)."""
    f = _mp_ratio(name)
    with mpmath.workdps(60):
        v = f(mpmath.mpf(t))
        d = mpmath.diff(f, mpmath.mpf(t))
        return v, d, abs(t * d / v)


@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
@pytest.mark.parametrize("name", NAMES)
def test_ratio_accuracy_against_mpmath(name, dtype):
    """f(t) to a few ulps over its domain. Tolerance 4ε·(1 + 2 cond(t)): the closed form
    rounds s = √|t| (relative ε/2), which f amplifies by |s f_s/f| = 2|t f'/f|."""
    eps = torch.finfo(dtype).eps
    lo, hi = T_RANGE[name]
    tau = guards(dtype).series_tau
    ts = [lo + (hi - lo) * i / 40 for i in range(41)]
    ts += [0.0, tau, -tau, 0.5 * tau, -0.5 * tau, 1e-8, -1e-8]
    for t in ts:
        tt = torch.tensor(t, dtype=dtype)
        t_exact = float(tt)  # the value the function sees
        v, _, cond = _mp_value_and_cond(name, t_exact)
        got = float(RATIO[name](tt))
        tol = 4 * eps * (1 + 2 * float(cond))
        assert abs(got - float(v)) <= tol * abs(float(v)), (name, t_exact, got, float(v))


def _ratio_and_grad(name: str, t: torch.Tensor):
    t = t.detach().clone().requires_grad_(True)
    v = RATIO[name](t)
    (g,) = torch.autograd.grad(v, t)
    return v.detach(), g


@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
@pytest.mark.parametrize("name", NAMES)
def test_ratio_continuous_across_series_threshold(name, dtype):
    """At t = ±τ (closed form) and the adjacent float towards 0 (series): values agree within
    4 ulps and derivatives within 8ε/τ relative, and both match mpmath.

    The true change between adjacent floats is |f'|·ulp(τ) < 0.1 ulp of f. The derivative of
    the closed form subtracts two terms of size ≈ 1/√τ to get a result of size ≈ √τ (e.g.
    d/ds tan(s)/s = sec²s/s − tan s/s²), which costs a factor ≈ 1.5/τ in relative accuracy."""
    eps = torch.finfo(dtype).eps
    tau = guards(dtype).series_tau
    for sign in (1.0, -1.0):
        closed = torch.tensor(sign * tau, dtype=dtype)
        series = torch.nextafter(closed, torch.zeros_like(closed))
        assert series.abs() < tau <= closed.abs()
        v_c, g_c = _ratio_and_grad(name, closed)
        v_s, g_s = _ratio_and_grad(name, series)
        torch.testing.assert_close(v_s, v_c, rtol=4 * eps, atol=0)
        torch.testing.assert_close(g_s, g_c, rtol=8 * eps / tau, atol=0)
        for t, v, g in ((closed, v_c, g_c), (series, v_s, g_s)):
            ref_v, ref_d, _ = _mp_value_and_cond(name, float(t))
            assert abs(float(v) - float(ref_v)) <= 4 * eps * abs(float(ref_v))
            assert abs(float(g) - float(ref_d)) <= 8 * eps / tau * abs(float(ref_d))


@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
@pytest.mark.parametrize("name", NAMES)
def test_ratio_finite_everywhere(name, dtype):
    """Out-of-domain and extreme t (the clamped branches) give finite values and gradients."""
    big = torch.finfo(dtype).max
    t = torch.tensor([-big, -1e30, -1.0, -1 - 1e-3, 0.0, 1.0, 1 + 1e-3, 2.467, 1e30, big],
                     dtype=dtype, requires_grad=True)  # fmt: skip
    v = RATIO[name](t)
    (g,) = torch.autograd.grad(v.sum(), t)
    assert torch.isfinite(v).all() and torch.isfinite(g).all(), (v, g)


# ======================================================================================
# 3. no NaN or inf, in outputs or gradients, for finite in-domain inputs
# ======================================================================================

KAPPAS = [-4.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 4.0]
N = 4
CONFIGS = [
    "random",
    "boundary",
    "origin",
    "origin_both",
    "equal",
    "equal_boundary",
    "small",
    "tiny",
    "tinier",
    "huge",
    "huge_vs_random",
]


SMALL = {"small", "tiny", "tinier"}
HUGE = {"huge", "huge_vs_random"}


def _kdtype(dtype):
    return torch.float32 if dtype in HALF else dtype


def _dirs(gen, rows):
    d = torch.randn(rows, N, generator=gen, dtype=torch.float64)
    return d / d.norm(dim=-1, keepdim=True)


def _inputs(config: str, k64: torch.Tensor, dtype: torch.dtype, seed: int) -> dict:
    """Finite, in-domain inputs, one row per κ row (``k64`` is (B, 1) float64)."""
    B = k64.shape[0]
    gen = torch.Generator().manual_seed(seed)
    kd = k64.to(_kdtype(dtype))
    unit = k64.abs().rsqrt().clamp(max=1.0)
    huge_c = 1e4 if dtype == torch.float16 else 1e30

    def ordinary():
        r = 0.5 * unit * torch.rand(B, 1, generator=gen, dtype=torch.float64)
        return (_dirs(gen, B) * r).to(dtype)

    def big_raw():
        return (_dirs(gen, B) * huge_c).to(dtype)

    # The projected boundary is built with eps = default_eps(dtype), the documented margin
    # of the storage dtype, explicitly: the default is checked in section 4 (it used to be
    # the float32 margin for half inputs, which put a bfloat16 point exactly on the boundary,
    # no in-domain input).
    eps = default_eps(dtype)

    def boundary():
        # on the projected boundary for κ < 0, an ordinary point for κ ≥ 0
        p = pmath.project(big_raw(), k=kd, eps=eps)
        return torch.where(k64 < 0, p, ordinary())

    def huge():
        # κ < 0: on the boundary; κ ≥ 0: pulled back to max_norm/max(1, √κ)
        return pmath.project(big_raw(), k=kd, eps=eps)

    # small and tiny points: scales down to where ‖x‖² underflows, per dtype (float16 is
    # computed in float32, its smallest inputs are its subnormals)
    scales = {
        torch.float16: (1e-4, 1e-6, 6e-8),
        torch.bfloat16: (1e-12, 1e-18, 1e-20),
        torch.float32: (1e-12, 1e-18, 1e-20),
        torch.float64: (1e-12, 1e-100, 1e-130),
    }[dtype]
    scale = dict(zip(("small", "tiny", "tinier"), scales, strict=True)).get(config, 1.0)
    tiny_v = (scale * (1 + torch.arange(N, dtype=torch.float64))).expand(B, N).to(dtype)
    zero = torch.zeros(B, N, dtype=dtype)
    if config == "random":
        x, y = ordinary(), ordinary()
    elif config == "boundary":
        x, y = boundary(), boundary()
    elif config == "origin":
        x, y = zero, ordinary()
    elif config == "origin_both":
        x, y = zero, zero.clone()
    elif config == "equal":
        x = ordinary()
        y = x.clone()
    elif config == "equal_boundary":
        x = boundary()
        y = x.clone()
    elif config in ("small", "tiny", "tinier"):
        x, y = tiny_v, -0.5 * tiny_v
    elif config == "huge":
        x, y = huge(), huge()
    elif config == "huge_vs_random":
        x, y = huge(), ordinary()
    else:  # pragma: no cover
        raise AssertionError(config)
    # tangent vectors of moderate size (float16: ‖u‖ ≤ 0.25 so that λ²⟨u, v⟩ stays below
    # 65504 on the κ = −4 boundary, λ ≈ 256)
    tan_scale = 0.25 if dtype == torch.float16 else 1.0
    u = (_dirs(gen, B) * tan_scale).to(dtype)
    if config in ("small", "tiny", "tinier"):
        u = (0.5 * tiny_v.double()).flip(-1).to(dtype)
    v = (_dirs(gen, B) * tan_scale * 0.5).to(dtype)
    inp = {
        "x": x,
        "y": y,
        "u": u,
        "v": v,
        "big": big_raw(),
        "r": torch.linspace(-1.5, 1.5, B, dtype=torch.float64).reshape(B, 1).to(dtype),
        "t": torch.linspace(0.0, 1.0, B, dtype=torch.float64).reshape(B, 1).to(dtype),
        "w": (torch.rand(B, N, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype),
        "m": (torch.randn(N, N, generator=gen, dtype=torch.float64) / 2).to(dtype),
        # midpoint weights, shape (2, B): negative ones exercise posweight's antipodes — not
        # for small points: the antipode of a small point is near the sphere's pole, nearly
        # antipodal to the other small point, where the midpoint is ill-conditioned
        # (condition ≈ 1/(√κ‖x‖)) and its exact gradient exceeds float16
        "wts": torch.stack(
            [
                torch.linspace(-1.5, 1.5, B, dtype=torch.float64),
                torch.linspace(1.0, 2.0, B, dtype=torch.float64),
            ]
        ).to(dtype),
    }
    # ambient points for κ ≠ 0 (computed in float64, then stored in dtype). Rows where
    # κ = 0 or where the ambient point does not fit the dtype (float16: the time coordinate
    # near the κ = −1e-8 boundary is ≈ 1e7) are no finite input of the ambient ops: they
    # are zeroed here and left out of those ops by the row mask "amb_ok".
    ks = torch.where(k64 == 0, 1.0, k64)
    ax = charts.to_ambient(x.double(), k=ks).to(dtype)
    ay = charts.to_ambient(y.double(), k=ks).to(dtype)
    ok = (k64 != 0) & torch.isfinite(ax).all(-1, keepdim=True)
    ok &= torch.isfinite(ay).all(-1, keepdim=True)
    inp["ax"] = torch.where(ok, ax, 0.0)
    inp["ay"] = torch.where(ok, ay, 0.0)
    inp["amb_ok"] = ok[:, 0]
    # the space-like coordinate of x (float16: up to ≈ 2.6e6 near the κ = −1e-8 boundary,
    # not representable — such rows are zeroed) and large space-like vectors (‖u‖ ≈ 1e15,
    # float16 1e4) for the inverse chart; ‖u‖ = 1e30 is the separate overflow test below
    sx = charts.to_spacelike(x.double(), k=k64).to(dtype)
    inp["sx"] = torch.where(torch.isfinite(sx).all(-1, keepdim=True), sx, 0.0)
    big_u = 1e4 if dtype == torch.float16 else 1e15
    inp["bigu"] = (_dirs(gen, B) * big_u).to(dtype)
    if config in SMALL:
        inp["wts"] = inp["wts"].abs()
    return inp


#: op name → (function of the input dict and κ, needs κ ≠ 0)
OPS = {
    "dist": (lambda i, k: pmath.dist(i["x"], i["y"], k=k), False),
    "dist0": (lambda i, k: pmath.dist0(i["x"], k=k), False),
    "expmap": (lambda i, k: pmath.expmap(i["x"], i["u"], k=k), False),
    "expmap0": (lambda i, k: pmath.expmap0(i["u"], k=k), False),
    "logmap": (lambda i, k: pmath.logmap(i["x"], i["y"], k=k), False),
    "logmap0": (lambda i, k: pmath.logmap0(i["x"], k=k), False),
    "mobius_add": (lambda i, k: pmath.mobius_add(i["x"], i["y"], k=k), False),
    "mobius_sub": (lambda i, k: pmath.mobius_sub(i["x"], i["y"], k=k), False),
    "mobius_scalar_mul": (lambda i, k: pmath.mobius_scalar_mul(i["r"], i["x"], k=k), False),
    "mobius_matvec": (lambda i, k: pmath.mobius_matvec(i["m"], i["x"], k=k), False),
    "mobius_pointwise_mul": (lambda i, k: pmath.mobius_pointwise_mul(i["w"], i["x"], k=k), False),
    "gyration": (lambda i, k: pmath.gyration(i["x"], i["y"], i["u"], k=k), False),
    "parallel_transport": (lambda i, k: pmath.parallel_transport(i["x"], i["y"], i["u"], k=k),
                           False),
    "parallel_transport0": (lambda i, k: pmath.parallel_transport0(i["x"], i["u"], k=k), False),
    "parallel_transport0back": (lambda i, k: pmath.parallel_transport0back(i["x"], i["u"], k=k),
                                False),
    "geodesic": (lambda i, k: pmath.geodesic(i["t"], i["x"], i["y"], k=k), False),
    "geodesic_unit": (lambda i, k: pmath.geodesic_unit(i["r"], i["x"], i["u"], k=k), False),
    "dist2plane": (lambda i, k: pmath.dist2plane(i["x"], i["y"], i["u"], k=k), False),
    "dist2plane_signed": (lambda i, k: pmath.dist2plane(i["x"], i["y"], i["u"], k=k,
                                                        signed=True, scaled=True), False),
    "weighted_midpoint": (lambda i, k: pmath.weighted_midpoint(
        torch.stack([i["x"], i["y"]]), k=k, reducedim=[0]), False),
    "weighted_midpoint_w": (lambda i, k: pmath.weighted_midpoint(
        torch.stack([i["x"], i["y"]]), i["wts"], k=k, reducedim=[0], posweight=True,
        lincomb=True), False),
    "project": (lambda i, k: pmath.project(torch.stack([i["x"], i["big"]]), k=k), False),
    "lambda_x": (lambda i, k: pmath.lambda_x(i["x"], k=k), False),
    "inner": (lambda i, k: pmath.inner(i["x"], i["u"], i["v"], k=k), False),
    "norm": (lambda i, k: pmath.norm(i["x"], i["u"], k=k), False),
    "egrad2rgrad": (lambda i, k: pmath.egrad2rgrad(i["x"], i["u"], k=k), False),
    "antipode": (lambda i, k: pmath.antipode(i["x"], k=k), False),
    "to_spacelike": (lambda i, k: charts.to_spacelike(i["x"], k=k), False),
    "clip_spacelike": (lambda i, k: charts.clip_spacelike(torch.stack([i["u"], i["big"]]), k=k),
                       False),
    "from_spacelike∘clip": (lambda i, k: charts.from_spacelike(charts.clip_spacelike(
        torch.stack([i["sx"], i["u"], i["bigu"]]), k=k), k=k), False),
    "to_ambient": (lambda i, k: charts.to_ambient(i["x"], k=k), True),
    "from_ambient": (lambda i, k: charts.from_ambient(i["ax"], k=k), True),
    "ambient_dist": (lambda i, k: charts.ambient_dist(i["ax"], i["ay"], k=k), True),
    "lorentz_inner": (lambda i, k: charts.lorentz_inner(i["ax"], i["ay"], k=k), True),
}  # fmt: skip
LEAVES = ["x", "y", "u", "v", "big", "r", "t", "w", "m", "ax", "ay", "sx", "bigu", "wts"]
ROWWISE = ["x", "y", "u", "v", "big", "r", "t", "w", "ax", "ay", "sx", "bigu"]


@functools.cache
def _cached_inputs(config: str, klabel: str, dtype: torch.dtype) -> dict:
    """The inputs of one grid cell, shared by every op (they are cloned before use)."""
    k64 = {lab: k for lab, k, _ in _kappa_variants()}[klabel]
    return _inputs(config, k64, dtype, seed=CONFIGS.index(config))


def _kappa_variants():
    """(label, κ (B, 1) float64 rows, scalar?) — each κ alone as a 0-dim tensor, and the
    mixed (7, 1) batch."""
    out = [(f"k={kv:g}", torch.tensor([[kv]], dtype=torch.float64), True) for kv in KAPPAS]
    out.append(("batch", torch.tensor(KAPPAS, dtype=torch.float64).reshape(-1, 1), False))
    return out


def _run(op, inp: dict, k64: torch.Tensor, scalar: bool, dtype, kdtype):
    """Evaluate op with leaf inputs in dtype (κ in kdtype); return output and gradients."""
    leaves = {n: inp[n].detach().clone().to(dtype).requires_grad_(True) for n in LEAVES}
    kk = (k64.reshape(()) if scalar else k64).to(kdtype).detach().clone().requires_grad_(True)
    out = op(leaves, kk)
    targets = [leaves[n] for n in LEAVES] + [kk]
    grads = torch.autograd.grad(out, targets, grad_outputs=torch.ones_like(out), allow_unused=True)
    names = [*LEAVES, "k"]
    return out.detach(), {n: g for n, g in zip(names, grads, strict=True) if g is not None}


def _restrict_rows(inp: dict, k64: torch.Tensor, rows: torch.Tensor):
    out = dict(inp)
    for n in ROWWISE:
        out[n] = inp[n][rows]
    return out, k64[rows]


def _nonfinite_problems(name, got, ref_fn, dtype) -> list[str]:
    """Entries of ``got`` that are NaN, or ±inf where the float64 value is representable."""
    bad = ~torch.isfinite(got)
    if not bad.any():
        return []
    if torch.isnan(got).any():
        return [f"{name}: NaN"]
    if dtype == torch.float64:
        return [f"{name}: inf"]
    ref = ref_fn()
    fits = ref.abs() <= torch.finfo(dtype).max
    if (bad & fits).any():
        return [f"{name}: inf where the float64 value {ref[bad & fits][:3].tolist()} fits"]
    return []


POS_K = {"k=1e-08", "k=1", "k=4", "batch"}
BF16, F32 = torch.bfloat16, torch.float32

#: bug id → (reason, [(op, dtype)], configs, κ variants): the grid cells where mosgeo fails
KNOWN_BUGS: dict = {}


def _known_bug(opname, dtype, config, klabel):
    for bug, (_, cells, cfgs, ks) in KNOWN_BUGS.items():
        if (opname, dtype) in cells and config in cfgs and klabel in ks:
            return bug
    return None


def _nonfinite_grid(opname, dtype, select) -> list[str]:
    """Run ``opname`` over the grid cells ``select(config, klabel)`` accepts; return the
    problems found (empty: all finite under the module's rule)."""
    op, needs_nonzero_k = OPS[opname]
    kdtype = _kdtype(dtype)
    problems: list[str] = []
    for klabel, k64_all, scalar in _kappa_variants():
        for config in CONFIGS:
            if not select(config, klabel):
                continue
            inp = _cached_inputs(config, klabel, dtype)
            k64 = k64_all
            if needs_nonzero_k:
                rows = inp["amb_ok"]
                if not rows.any():
                    continue
                inp, k64 = _restrict_rows(inp, k64, rows)
            for n in LEAVES:
                assert torch.isfinite(inp[n]).all(), (config, n)
            out, grads = _run(op, inp, k64, scalar, dtype, kdtype)
            assert out.dtype == dtype, (opname, out.dtype)
            ref: dict = {}

            def reference(ref=ref, inp=inp, k64=k64, scalar=scalar):
                if not ref:
                    o, g = _run(op, inp, k64, scalar, torch.float64, torch.float64)
                    ref["out"], ref["grads"] = o, g
                return ref

            where = f"[{klabel}, {config}]"
            problems += _nonfinite_problems(f"{where} value", out, lambda: reference()["out"],
                                            dtype)  # fmt: skip
            for n, g in grads.items():
                problems += _nonfinite_problems(
                    f"{where} grad {n}", g, lambda n=n: reference()["grads"][n], dtype
                )
    return problems


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids(ALL_DTYPES))
@pytest.mark.parametrize("opname", list(OPS))
def test_no_nan_or_inf(opname, dtype):
    """Outputs and gradients (w.r.t. every tensor input and κ) are finite for every config
    of inputs (random, on the projected boundary, origin, x = y, small/tiny, huge) and every
    κ in {−4, −1, −1e-8, 0, 1e-8, 1, 4}, scalar and as a mixed (7, 1) batch; see the module
    docstring for the representability rule and the known-bug cells left out here."""

    def select(config, klabel):
        return _known_bug(opname, dtype, config, klabel) is None

    problems = _nonfinite_grid(opname, dtype, select)
    assert not problems, "\n".join(problems[:20])


def _known_bug_params():
    out = []
    for bug, (reason, cells, _, _) in KNOWN_BUGS.items():
        for opname, dt in cells:
            mark = pytest.mark.xfail(strict=True, reason=reason)
            out.append(pytest.param(bug, opname, dt, id=f"{bug}-{opname}-{DT_IDS[dt]}",
                                    marks=mark))  # fmt: skip
    return out


@pytest.mark.parametrize(("bug", "opname", "dtype"), _known_bug_params())
def test_known_nonfinite_bugs(bug, opname, dtype):
    """The grid cells of one known bug: they must become finite once it is fixed."""

    def select(config, klabel):
        return _known_bug(opname, dtype, config, klabel) == bug

    problems = _nonfinite_grid(opname, dtype, select)
    assert not problems, "\n".join(problems[:20])


HALF_CONSISTENT_OPS = [n for n in OPS if n not in ("project", "clip_spacelike",
                                                    "from_spacelike∘clip")]  # fmt: skip


#: the ops of OPS that return a point: in half precision their float32 result is projected
#: with the storage dtype's margin before the cast back (section 5)
POINT_RESULT = {"mobius_add", "mobius_sub", "mobius_scalar_mul", "mobius_matvec",
                "mobius_pointwise_mul", "expmap", "expmap0", "geodesic", "geodesic_unit",
                "weighted_midpoint", "weighted_midpoint_w", "antipode", "from_ambient"}  # fmt: skip


@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
@pytest.mark.parametrize("opname", HALF_CONSISTENT_OPS)
def test_half_precision_is_float32_cast_back(opname, dtype):
    """float16/bfloat16 inputs: the output has the input dtype and equals the float32
    computation on the same (exactly up-cast) inputs, cast back (within one ulp) — for
    point-returning ops after ``ball_factor`` with the storage dtype's margin."""
    op, needs_nonzero_k = OPS[opname]
    for klabel, k64_all, scalar in _kappa_variants():
        for config in CONFIGS:
            inp = _cached_inputs(config, klabel, dtype)
            k64 = k64_all
            if needs_nonzero_k:
                rows = inp["amb_ok"]
                if not rows.any():
                    continue
                inp, k64 = _restrict_rows(inp, k64, rows)
            _assert_half_matches_f32(op, inp, k64, scalar, dtype, f"{opname} {config}",
                                     opname in POINT_RESULT)  # fmt: skip


def _assert_half_matches_f32(op, inp, k64, scalar, dtype, where, point=False):
    k32 = (k64.reshape(()) if scalar else k64).float()
    with torch.no_grad():
        half = op({n: inp[n].to(dtype) for n in LEAVES}, k32)
        ref = op({n: inp[n].to(dtype).float() for n in LEAVES}, k32)
        if point:
            n = ref.double().norm(dim=-1, keepdim=True).float()
            ref = ref * pmath.ball_factor(n, k32, default_eps(dtype))
        ref = ref.to(dtype)
    assert half.dtype == dtype, where
    same = (half == ref) | (torch.isnan(half) & torch.isnan(ref))
    if not same.all():
        # within one ulp of the storage dtype
        up = torch.nextafter(ref, torch.full_like(ref, math.inf))
        down = torch.nextafter(ref, torch.full_like(ref, -math.inf))
        ok = same | (half == up) | (half == down)
        assert ok.all(), (where, half[~ok][:4], ref[~ok][:4])


# ======================================================================================
# 4. project and clip_spacelike
# ======================================================================================


def _big_points(dtype, rows=64, seed=0):
    """Random directions with norms from 1e-3 to the largest finite scale of the dtype."""
    gen = torch.Generator().manual_seed(seed)
    hi = 4.0 if dtype == torch.float16 else 30.0
    expo = -3 + (hi + 3) * torch.rand(rows, 1, generator=gen, dtype=torch.float64)
    return (_dirs(gen, rows) * 10**expo).to(dtype)


def _project_ball_check(dtype, kv):
    eps = default_eps(dtype)
    x = _big_points(dtype)
    k = torch.tensor(kv, dtype=_kdtype(dtype))
    p = pmath.project(x, k=k)
    assert p.dtype == dtype and torch.isfinite(p).all()
    n = p.double().norm(dim=-1)
    radius = 1 / math.sqrt(-float(k))  # of κ as stored
    # rounding slack: the scale is computed in the compute dtype (a few ε_c), then the
    # components are rounded to the storage dtype (relative ε_s/2)
    ec = torch.finfo(guards(dtype).compute).eps
    es = torch.finfo(dtype).eps
    bound = (1 - eps) * radius * (1 + 4 * ec) * (1 + es / 2)
    assert (n <= bound).all(), (n.max().item(), bound)
    assert (n < radius).all(), "after the cast back the point must be strictly inside the ball"
    # points that were outside end up on the projected radius, same direction
    outside = x.double().norm(dim=-1) > radius
    cos = torch.nn.functional.cosine_similarity(p.double(), x.double(), dim=-1)
    assert (cos[outside] > 1 - 4 * es).all()


@pytest.mark.parametrize("kv", [-4.0, -1.0, -1e-4, -25.0])
@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
def test_project_ball_bound(dtype, kv):
    """κ < 0: ‖project(x)‖ ≤ (1 − eps)/√|κ| (up to rounding), strictly inside the ball."""
    _project_ball_check(dtype, kv)


@pytest.mark.parametrize("kv", [-4.0, -1.0])
@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
def test_project_ball_bound_half(dtype, kv):
    """Same bound with the storage dtype's eps, and strictly inside after the cast back."""
    _project_ball_check(dtype, kv)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids(ALL_DTYPES))
def test_project_identity_inside(dtype):
    """Points already inside (κ < 0) and ordinary points (κ ≥ 0) are returned unchanged,
    bit for bit; also for a mixed (B, 1) batch of κ."""
    gen = torch.Generator().manual_seed(1)
    eps = default_eps(dtype)
    for kv in [-4.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 4.0]:
        lim = (1 - 2 * eps) / math.sqrt(-kv) if kv < 0 else 100.0
        r = torch.rand(32, 1, generator=gen, dtype=torch.float64) * lim
        x = (_dirs(gen, 32) * r).to(dtype)
        assert torch.equal(pmath.project(x, k=torch.tensor(kv)), x), kv
    ks = torch.tensor([[-1.0], [0.0], [1.0], [-4.0]])
    x = (_dirs(gen, 4) * 0.4).to(dtype)
    assert torch.equal(pmath.project(x, k=ks), x)


def test_project_huge_spherical_point_float32():
    """κ = 1, float32 point with components 1e30: project returns a finite point in the same
    direction (geoopt's norm overflows to inf and it returns 0 — documented difference)."""
    x = torch.full((4,), 1e30, dtype=torch.float32)
    k = torch.tensor(1.0)
    p = pmath.project(x, k=k)
    assert torch.isfinite(p).all() and (p.norm() > 0)
    cos = torch.nn.functional.cosine_similarity(p.double(), x.double(), dim=-1)
    assert cos.item() == pytest.approx(1.0, abs=1e-7)
    assert p.norm().item() == pytest.approx(guards(torch.float32).max_norm, rel=1e-6)
    # every op accepts it
    y = torch.tensor([0.1, -0.2, 0.3, 0.0])
    for v in (pmath.dist(p, y, k=k), pmath.logmap(y, p, k=k), pmath.mobius_add(p, y, k=k)):
        assert torch.isfinite(v).all()

    import geoopt.manifolds.stereographic.math as gmath

    assert torch.equal(gmath.project(x, k=k), torch.zeros_like(x))


def _clip_check(dtype, kv):
    eps = default_eps(dtype)
    u = _big_points(dtype, seed=2)
    k = torch.tensor(kv, dtype=_kdtype(dtype))
    c = charts.clip_spacelike(u, k=k)
    assert c.dtype == dtype and torch.isfinite(c).all()
    n = c.double().norm(dim=-1)
    radius = 1 / math.sqrt(float(k))  # of κ as stored
    ec = torch.finfo(guards(dtype).compute).eps
    es = torch.finfo(dtype).eps
    assert (n <= (1 - eps) * radius * (1 + 4 * ec) * (1 + es / 2)).all(), n.max().item()
    assert (n < radius).all(), "after the cast back ‖u‖ must be strictly below 1/√κ"


@pytest.mark.parametrize("kv", [1e-4, 1.0, 4.0, 25.0])
@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
def test_clip_spacelike_bound(dtype, kv):
    """κ > 0: ‖clip_spacelike(u)‖ ≤ (1 − eps)/√κ (up to rounding)."""
    _clip_check(dtype, kv)


@pytest.mark.parametrize("kv", [1.0, 4.0])
@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
def test_clip_spacelike_bound_half(dtype, kv):
    _clip_check(dtype, kv)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_ids(ALL_DTYPES))
def test_clip_spacelike_identity(dtype):
    """Identity (bit for bit) for κ ≤ 0 on any u, and for κ > 0 on ‖u‖ ≤ R."""
    u = _big_points(dtype, seed=3)
    for kv in [-4.0, -1.0, -1e-8, 0.0]:
        assert torch.equal(charts.clip_spacelike(u, k=torch.tensor(kv)), u)
    gen = torch.Generator().manual_seed(4)
    for kv in [1e-8, 1.0, 4.0]:
        lim = (1 - 2 * default_eps(dtype)) / math.sqrt(kv)
        r = torch.rand(32, 1, generator=gen, dtype=torch.float64) * lim
        w = (_dirs(gen, 32) * r).to(dtype)
        assert torch.equal(charts.clip_spacelike(w, k=torch.tensor(kv)), w)


def _clip_gradient_bound(dtype, kv):
    kv = float(torch.tensor(kv, dtype=_kdtype(dtype)))  # κ as stored
    eps = default_eps(dtype)
    R = (1 - eps) / math.sqrt(kv)
    C = R / math.sqrt(1 / kv - R * R)
    # slack for the cancellation in 1/κ − R² ≈ 2ε/κ when R is rounded (relative ε_c):
    # C moves by ≈ ε_c/(2 eps) relative; plus a few ulps
    ec = torch.finfo(guards(dtype).compute).eps
    slack = 1 + 2 * ec / eps + 8 * ec
    gen = torch.Generator().manual_seed(5)
    rows = 64
    hi = 4.0 if dtype == torch.float16 else 30.0
    scale = torch.cat(
        [
            torch.tensor([0.5, 0.9, 0.999, 1.0, 1.0 - eps / 2, 1.0 + eps, 2.0]) * R,
            10 ** (hi * torch.rand(rows, generator=gen, dtype=torch.float64)) * R,
        ]
    ).reshape(-1, 1)
    u = (_dirs(gen, scale.shape[0]) * scale).to(dtype).requires_grad_(True)
    c = charts.clip_spacelike(u, k=torch.tensor(kv, dtype=_kdtype(dtype)))
    a = torch.sqrt(1 / kv - c.double().pow(2).sum(-1))
    (g,) = torch.autograd.grad(a.sum(), u)
    gn = g.double().norm(dim=-1)
    assert torch.isfinite(gn).all(), gn
    assert (gn <= C * slack).all(), (gn.max().item(), C)


@pytest.mark.parametrize("kv", [1e-4, 1.0, 4.0])
@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
def test_clip_spacelike_gradient_bound(dtype, kv):
    """‖∇_u a(u)‖ ≤ C_u(κ, R) = R/√(1/κ − R²) with a(u) = √(1/κ − ‖clip(u)‖²),
    R = (1 − eps)/√κ, for u from inside the chart to 1e30 (the appendix's gradient bound)."""
    _clip_gradient_bound(dtype, kv)


@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
def test_clip_spacelike_gradient_bound_half(dtype):
    _clip_gradient_bound(dtype, 1.0)


@pytest.mark.parametrize("opname", ["project", "clip_spacelike"])
@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
def test_half_precision_projection_uses_storage_eps(opname, dtype):
    """project/clip_spacelike on float16/bfloat16 equal the float32 computation with the
    storage dtype's eps (default_eps(dtype)), cast back."""
    gen = torch.Generator().manual_seed(6)
    x = (_dirs(gen, 16) * 10.0).to(dtype)
    fn = pmath.project if opname == "project" else charts.clip_spacelike
    kv = -1.0 if opname == "project" else 1.0
    got = fn(x, k=torch.tensor(kv))
    ref = fn(x.float(), k=torch.tensor(kv), eps=default_eps(dtype)).to(dtype)
    assert torch.equal(got, ref)


#: the radial factors of the fused adapter path: (function of (s, κ), κ, uses the margin)
RADIAL_FACTORS = {
    "project_factor": (lambda s, k, **kw: pmath.project_factor(s, k, **kw), -1.0, True),
    "ball_factor": (lambda s, k, **kw: pmath.ball_factor(s, k, **kw), -1.0, True),
    "clip_spacelike_factor": (lambda s, k, **kw: charts.clip_spacelike_factor(s, k, **kw),
                              1.0, True),
    "spacelike_scale": (lambda s, k, **kw: charts.spacelike_scale(s, k), -1.0, False),
    "spacelike_inverse_scale": (lambda s, k, **kw: charts.spacelike_inverse_scale(s, k), 0.7,
                                False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RADIAL_FACTORS))
@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
def test_half_precision_radial_factors_are_float32_cast_back(name, dtype):
    """The radial factors the fused adapter path calls follow the float32 island like every
    op: float16/bfloat16 arguments give the float32 computation (with the storage dtype's
    margin, as ``project``/``clip_spacelike``) cast back. (Found: ``project_factor`` raised
    "value cannot be converted to type c10::Half without overflow" in float16, and the
    others computed in half precision.)"""
    fn, kv, uses_eps = RADIAL_FACTORS[name]
    gen = torch.Generator().manual_seed(9)
    s = (torch.rand(64, 1, generator=gen, dtype=torch.float64) * 1.4).to(dtype)
    k = torch.full((3,), kv, dtype=dtype) * torch.tensor([1.0, 0.5, 1e-3], dtype=dtype)
    got = fn(s, k)
    kw = {"eps": default_eps(dtype)} if uses_eps else {}
    ref = fn(s.float(), k.float(), **kw).to(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, ref), (got[got != ref][:4], ref[got != ref][:4])


def _huge_norms(dtype):
    """Norms from 1e10 up to finfo.max/8 (‖u‖² overflows beyond √max)."""
    top = math.log10(torch.finfo(dtype).max / 8)
    return [10.0**e for e in (10, top / 2 + 1, top - 2, top)]


@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
def test_clip_spacelike_huge_u_keeps_direction(dtype):
    """κ > 0, ‖u‖ up to finfo.max/8: clip_spacelike(u) = R·u/‖u‖ with R = (1 − eps)/√κ,
    gradients in u and κ finite. (Found: with ``torch.linalg.vector_norm`` the norm of such a
    u overflowed and the clip returned 0 with a NaN κ-gradient.)"""
    gen = torch.Generator().manual_seed(7)
    norms = torch.tensor(_huge_norms(dtype), dtype=torch.float64).reshape(-1, 1)
    u = (_dirs(gen, norms.shape[0]) * norms).to(dtype).requires_grad_(True)
    k = torch.tensor(4.0, dtype=dtype, requires_grad=True)
    c = charts.clip_spacelike(u, k=k)
    R = (1 - default_eps(dtype)) / 2.0
    cn = c.detach().double().norm(dim=-1)
    torch.testing.assert_close(cn, torch.full_like(cn, R), rtol=8 * torch.finfo(dtype).eps, atol=0)
    ud = u.detach().double()
    ud = ud / ud.abs().amax(-1, keepdim=True)  # ‖u‖² would overflow even in float64
    cos = torch.nn.functional.cosine_similarity(c.detach().double(), ud, dim=-1)
    assert (cos > 1 - 1e-6).all()
    gu, gk = torch.autograd.grad(c.sum(), [u, k])
    assert torch.isfinite(gu).all() and torch.isfinite(gk).all()


@pytest.mark.parametrize("dtype", FULL, ids=_ids(FULL))
def test_from_spacelike_huge_u(dtype):
    """κ ≤ 0 (the lift is defined on all of R^n): from_spacelike of ‖u‖ up to finfo.max/8
    is u/(1 + √(1 − κ‖u‖²)) — for κ < 0 ≈ u/(√|κ|‖u‖), for κ = 0 exactly u/2 — with finite
    gradients in u and κ."""
    gen = torch.Generator().manual_seed(8)
    norms = torch.tensor(_huge_norms(dtype), dtype=torch.float64).reshape(-1, 1)
    u64 = _dirs(gen, norms.shape[0]) * norms
    eps = torch.finfo(dtype).eps
    for kv in (-4.0, -1.0, 0.0):
        u = u64.to(dtype).requires_grad_(True)
        k = torch.tensor(kv, dtype=dtype, requires_grad=True)
        x = charts.from_spacelike(u, k=k)
        ud = u.detach().double()
        m = ud.abs().amax(-1, keepdim=True)
        n = m * (ud / m).norm(dim=-1, keepdim=True)  # ‖u‖² would overflow even in float64
        # exact: u/(1 + √(1 + |κ|n²)) = (u/n)/(1/n + √(1/n² + |κ|)) (1/n² may underflow,
        # harmless next to |κ|); κ = 0: u/2
        ref = ud / 2 if kv == 0 else (ud / n) / (1 / n + torch.sqrt(1 / n**2 - kv))
        torch.testing.assert_close(x.detach().double(), ref, rtol=8 * eps, atol=0)
        gu, gk = torch.autograd.grad(x.sum(), [u, k])
        assert torch.isfinite(gu).all(), kv
        # ∂x/∂κ at κ = 0 is u‖u‖²/8: beyond the float range for these u (true overflow)
        if kv != 0.0:
            assert torch.isfinite(gk).all(), kv


# ======================================================================================
# 5. half precision: every point-returning op stays strictly inside the ball
# ======================================================================================


def _rim_points(gen, rows, kv, dtype):
    """Points on the storage dtype's projected rim of the κ ball (the largest legal ones)."""
    d = _dirs(gen, rows) * 10.0 / math.sqrt(-kv)
    return pmath.project(d.to(dtype), k=kv)


def _ambient_far(gen, rows, kv, dtype):
    """Hyperboloid points far out (time coordinate ≈ 1e6/√|κ|, float16: 1e3/√|κ| that it
    can store), stored in ``dtype``."""
    x = _dirs(gen, rows) * (1 - (1e-3 if dtype == torch.float16 else 1e-6)) / math.sqrt(-kv)
    return charts.to_ambient(x, k=kv).to(dtype)


#: point-returning op → function of (generator, rows, κ, dtype, scale of the big inputs)
POINT_OPS = {
    "mobius_add": lambda g, b, kv, dt, s: pmath.mobius_add(
        _rim_points(g, b, kv, dt), _rim_points(g, b, kv, dt), k=kv),
    "mobius_sub": lambda g, b, kv, dt, s: pmath.mobius_sub(
        _rim_points(g, b, kv, dt), _rim_points(g, b, kv, dt), k=kv),
    "mobius_coadd": lambda g, b, kv, dt, s: pmath.mobius_coadd(
        _rim_points(g, b, kv, dt), _rim_points(g, b, kv, dt), k=kv),
    "mobius_cosub": lambda g, b, kv, dt, s: pmath.mobius_cosub(
        _rim_points(g, b, kv, dt), _rim_points(g, b, kv, dt), k=kv),
    "mobius_scalar_mul": lambda g, b, kv, dt, s: pmath.mobius_scalar_mul(
        torch.full((b, 1), s, dtype=dt), _rim_points(g, b, kv, dt) * 0.5, k=kv),
    "mobius_pointwise_mul": lambda g, b, kv, dt, s: pmath.mobius_pointwise_mul(
        (torch.rand(b, N, generator=g, dtype=torch.float64) * s).to(dt),
        _rim_points(g, b, kv, dt) * 0.5, k=kv),
    "mobius_matvec": lambda g, b, kv, dt, s: pmath.mobius_matvec(
        (torch.randn(N, N, generator=g, dtype=torch.float64) * s).to(dt),
        _rim_points(g, b, kv, dt) * 0.5, k=kv),
    "mobius_fn_apply": lambda g, b, kv, dt, s: pmath.mobius_fn_apply(
        lambda v: v * s, _rim_points(g, b, kv, dt) * 0.5, k=kv),
    "mobius_fn_apply_chain": lambda g, b, kv, dt, s: pmath.mobius_fn_apply_chain(
        _rim_points(g, b, kv, dt) * 0.5, lambda v: v * s, torch.tanh, lambda v: v * s, k=kv),
    "expmap0": lambda g, b, kv, dt, s: pmath.expmap0(
        (_dirs(g, b) * s / math.sqrt(-kv)).to(dt), k=kv),
    "expmap": lambda g, b, kv, dt, s: pmath.expmap(
        _rim_points(g, b, kv, dt) * 0.5, (_dirs(g, b) * s / math.sqrt(-kv)).to(dt), k=kv),
    "geodesic": lambda g, b, kv, dt, s: pmath.geodesic(
        torch.full((b, 1), s, dtype=dt), _rim_points(g, b, kv, dt) * 0.5,
        _rim_points(g, b, kv, dt) * 0.5, k=kv),
    "geodesic_unit": lambda g, b, kv, dt, s: pmath.geodesic_unit(
        torch.full((b, 1), s / math.sqrt(-kv), dtype=dt), _rim_points(g, b, kv, dt) * 0.5,
        _dirs(g, b).to(dt), k=kv),
    "weighted_midpoint": lambda g, b, kv, dt, s: pmath.weighted_midpoint(
        _rim_points(g, b, kv, dt).reshape(b, 1, N).expand(b, 2, N), k=kv, reducedim=[1],
        lincomb=True),
    "antipode": lambda g, b, kv, dt, s: pmath.antipode(_rim_points(g, b, kv, dt), k=kv),
    "sproj": lambda g, b, kv, dt, s: pmath.sproj(
        _ambient_far(g, b, kv, dt).roll(-1, dims=-1), k=kv),
    "from_ambient": lambda g, b, kv, dt, s: charts.from_ambient(_ambient_far(g, b, kv, dt),
                                                                k=kv),
    "from_spacelike": lambda g, b, kv, dt, s: charts.from_spacelike(
        (_dirs(g, b) * min(s * 10 / math.sqrt(-kv), 3e4)).to(dt), k=kv),
    "project": lambda g, b, kv, dt, s: pmath.project(
        (_dirs(g, b) * s / math.sqrt(-kv)).to(dt), k=kv),
}  # fmt: skip


@pytest.mark.parametrize("scale", [5.0, 10.0, 1000.0])
@pytest.mark.parametrize("dtype", HALF, ids=_ids(HALF))
@pytest.mark.parametrize("opname", list(POINT_OPS))
def test_half_precision_points_stay_inside_the_ball(opname, dtype, scale):
    """Every op that returns a point returns it strictly inside the κ < 0 ball *after the
    cast back* to float16/bfloat16, for inputs on the projected rim and big tangent vectors,
    scalars, matrices, lengths (``scale`` 5 … 1000): ‖y‖·√|κ| < 1 for the stored y. The
    float32 result is projected with the storage margin before the cast, as ``project``'s.
    (Found: expmap0 of ‖u‖ = 5 and 10 at κ = −1 returned ‖y‖ ≥ 1 in both dtypes.)"""
    gen = torch.Generator().manual_seed(21)
    for kv in (-4.0, -1.0, -0.25, -1e-3):
        y = POINT_OPS[opname](gen, 32, kv, dtype, scale)
        assert y.dtype == dtype and torch.isfinite(y).all(), (kv, y)
        r = y.double().norm(dim=-1) * math.sqrt(-kv)
        assert (r < 1).all(), (kv, r.max().item())
