r"""Gradients of :mod:`mosgeo.math` and :mod:`mosgeo.charts` in float64, w.r.t. the data
inputs *and* the curvature κ (a leaf tensor that requires grad).

* ``gradcheck`` (and ``gradgradcheck`` for a few) at κ = 0 exactly, ±1e-9, ±1e-3, ±0.5, ±2
  and a mixed-sign (B, 1) batch that contains 0; both the series branch (|κr²| < τ) and
  the closed form are exercised (r up to 0.6·min(1, 1/√|κ|)).
* ∂/∂κ is continuous through κ = 0: at κ = ±1e-9 it equals its value at κ = 0 to 1e-6
  *relative* (geoopt's ∂dist/∂κ at κ = −1e-9 has the wrong sign).
* ∂dist/∂κ equals a 50-digit mpmath derivative of the textbook distance (and the series
  value −2‖x−y‖(⟨x,y⟩ + ‖x−y‖²/3) at κ = 0).
"""

from __future__ import annotations

import math

import geoopt.manifolds.stereographic.math as gmath
import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import mosgeo.charts as pc
import mosgeo.math as pm

DT = torch.float64
N = 3  # point dimension

#: κ cases: scalars, and a mixed-sign (B, 1) batch that contains 0
K_CASES = {
    "0": 0.0,
    "+1e-9": 1e-9,
    "-1e-9": -1e-9,
    "+1e-3": 1e-3,
    "-1e-3": -1e-3,
    "+0.5": 0.5,
    "-0.5": -0.5,
    "+2": 2.0,
    "-2": -2.0,
    "batch": [-2.0, -1e-9, 0.0, 1e-9, 0.7],
}
#: the ambient charts are singular at κ = 0 (time coordinate 1/√|κ|): no κ = 0, ±1e-9
K_NONZERO = {
    i: v for i, v in K_CASES.items() if i in ("+1e-3", "-1e-3", "+0.5", "-0.5", "+2", "-2")
}
K_NONZERO["batch"] = [-2.0, -1e-3, 0.7, 1e-3]


def make_k(kv) -> torch.Tensor:
    if isinstance(kv, list):
        return torch.tensor(kv, dtype=DT).reshape(-1, 1).requires_grad_()
    return torch.tensor(kv, dtype=DT, requires_grad=True)


def rows(kv) -> int:
    return len(kv) if isinstance(kv, list) else 3


def safe_radius(kv) -> float:
    """min(1, 1/√max|κ|): radius scale that is inside the ball / far from the poles."""
    kmax = max(abs(v) for v in kv) if isinstance(kv, list) else abs(kv)
    return min(1.0, 1.0 / math.sqrt(kmax)) if kmax > 0 else 1.0


def pts(gen, b, n, kv, lo=0.1, hi=0.6) -> torch.Tensor:
    """b random points with norms U(lo, hi)·safe_radius(κ)."""
    d = torch.randn(b, n, generator=gen, dtype=DT)
    d = d / d.norm(dim=-1, keepdim=True)
    r = lo + (hi - lo) * torch.rand(b, 1, generator=gen, dtype=DT)
    return (d * r * safe_radius(kv)).requires_grad_()


def uni(gen, shape, lo, hi) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=DT)).requires_grad_()


# --------------------------------------------------------------------------------------
# the functions: name -> builder(gen, kv) -> (fn, inputs); κ is the last input
# --------------------------------------------------------------------------------------


def _pair(gen, kv):
    b = rows(kv)
    return pts(gen, b, N, kv), pts(gen, b, N, kv)


def b_dist(gen, kv):
    x, y = _pair(gen, kv)
    return (lambda x, y, k: pm.dist(x, y, k=k)), (x, y)


def b_dist0(gen, kv):
    return (lambda x, k: pm.dist0(x, k=k)), (pts(gen, rows(kv), N, kv),)


def b_expmap(gen, kv):
    x, u = _pair(gen, kv)
    return (lambda x, u, k: pm.expmap(x, u, k=k)), (x, u)


def b_expmap0(gen, kv):
    return (lambda u, k: pm.expmap0(u, k=k)), (pts(gen, rows(kv), N, kv),)


def b_logmap(gen, kv):
    x, y = _pair(gen, kv)
    return (lambda x, y, k: pm.logmap(x, y, k=k)), (x, y)


def b_logmap0(gen, kv):
    return (lambda y, k: pm.logmap0(y, k=k)), (pts(gen, rows(kv), N, kv),)


def b_mobius_add(gen, kv):
    x, y = _pair(gen, kv)
    return (lambda x, y, k: pm.mobius_add(x, y, k=k)), (x, y)


def b_mobius_scalar_mul(gen, kv):
    r = uni(gen, (rows(kv), 1), -1.5, 1.5)
    return (lambda r, x, k: pm.mobius_scalar_mul(r, x, k=k)), (r, pts(gen, rows(kv), N, kv))


def b_mobius_matvec(gen, kv):
    m = torch.randn(N + 1, N, generator=gen, dtype=DT)
    m = (m / torch.linalg.matrix_norm(m, 2)).requires_grad_()  # ‖M‖₂ = 1: below the poles
    return (lambda m, x, k: pm.mobius_matvec(m, x, k=k)), (m, pts(gen, rows(kv), N, kv))


def b_mobius_pointwise_mul(gen, kv):
    w = uni(gen, (rows(kv), N), -1.5, 1.5)
    return (lambda w, x, k: pm.mobius_pointwise_mul(w, x, k=k)), (w, pts(gen, rows(kv), N, kv))


def b_gyration(gen, kv):
    b = rows(kv)
    a, c, u = pts(gen, b, N, kv), pts(gen, b, N, kv), pts(gen, b, N, kv)
    return (lambda a, c, u, k: pm.gyration(a, c, u, k=k)), (a, c, u)


def b_parallel_transport(gen, kv):
    b = rows(kv)
    x, y, v = pts(gen, b, N, kv), pts(gen, b, N, kv), pts(gen, b, N, kv)
    return (lambda x, y, v, k: pm.parallel_transport(x, y, v, k=k)), (x, y, v)


def b_geodesic(gen, kv):
    t = uni(gen, (rows(kv), 1), -1.5, 1.5)
    x, y = _pair(gen, kv)
    return (lambda t, x, y, k: pm.geodesic(t, x, y, k=k)), (t, x, y)


def b_geodesic_unit(gen, kv):
    t = uni(gen, (rows(kv), 1), -1.0, 1.0)
    x, u = _pair(gen, kv)
    return (lambda t, x, u, k: pm.geodesic_unit(t, x, u, k=k)), (t, x, u)


def b_dist2plane(gen, kv):
    b = rows(kv)
    x, p, a = pts(gen, b, N, kv), pts(gen, b, N, kv), pts(gen, b, N, kv, 0.5, 1.5)
    return (lambda x, p, a, k: pm.dist2plane(x, p, a, k=k)), (x, p, a)


def b_dist2plane_signed(gen, kv):
    b = rows(kv)
    x, p, a = pts(gen, b, N, kv), pts(gen, b, N, kv), pts(gen, b, N, kv, 0.5, 1.5)
    return (lambda x, p, a, k: pm.dist2plane(x, p, a, k=k, signed=True, scaled=True)), (x, p, a)


def b_lambda_x(gen, kv):
    return (lambda x, k: pm.lambda_x(x, k=k)), (pts(gen, rows(kv), N, kv),)


def b_inner(gen, kv):
    b = rows(kv)
    x, u, v = pts(gen, b, N, kv), pts(gen, b, N, kv), pts(gen, b, N, kv)
    return (lambda x, u, v, k: pm.inner(x, u, v, k=k, keepdim=True)), (x, u, v)


def b_egrad2rgrad(gen, kv):
    x, g = _pair(gen, kv)
    return (lambda x, g, k: pm.egrad2rgrad(x, g, k=k)), (x, g)


def _scalar_fn(f):
    def build(gen, kv):
        x = pts(gen, rows(kv), 1, kv).detach().requires_grad_()  # (B, 1), signed
        return (lambda x, k: f(x, k)), (x,)

    return build


def b_weighted_midpoint(gen, kv):
    b = rows(kv)
    xs = torch.stack([pts(gen, b, N, kv, 0.1, 0.4).detach() for _ in range(4)]).requires_grad_()
    w = uni(gen, (4, b), 0.2, 1.5)
    return (lambda xs, w, k: pm.weighted_midpoint(xs, w, k=k, reducedim=[0])), (xs, w)


def b_to_spacelike(gen, kv):
    return (lambda x, k: pc.to_spacelike(x, k=k)), (pts(gen, rows(kv), N, kv),)


def b_from_spacelike(gen, kv):
    return (lambda u, k: pc.from_spacelike(u, k=k)), (pts(gen, rows(kv), N, kv, 0.1, 0.9),)


def b_clip_spacelike(gen, kv):
    """Half the rows well inside (‖u‖ ≤ 0.8/√κ), half clipped (‖u‖ ≥ 1.3/√κ) for κ > 0:
    away from the kink at ‖u‖ = (1 − ε)/√κ."""
    b = rows(kv)
    u = torch.cat([pts(gen, b - b // 2, N, kv, 0.1, 0.8), pts(gen, b // 2, N, kv, 1.3, 2.0)])
    return (lambda u, k: pc.clip_spacelike(u, k=k)), (u.detach().requires_grad_(),)


def b_to_ambient(gen, kv):
    return (lambda x, k: pc.to_ambient(x, k=k)), (pts(gen, rows(kv), N, kv),)


def _on_model(gen, kv):
    x = pts(gen, rows(kv), N, kv).detach()
    k = make_k(kv).detach()
    return pc.to_ambient(x, k=k).requires_grad_()


def b_from_ambient(gen, kv):
    return (lambda y, k: pc.from_ambient(y, k=k)), (_on_model(gen, kv),)


def b_ambient_dist(gen, kv):
    y, z = _on_model(gen, kv), _on_model(gen, kv)
    return (lambda y, z, k: pc.ambient_dist(y, z, k=k)), (y, z)


BUILDERS = {
    "dist": b_dist,
    "dist0": b_dist0,
    "expmap": b_expmap,
    "expmap0": b_expmap0,
    "logmap": b_logmap,
    "logmap0": b_logmap0,
    "mobius_add": b_mobius_add,
    "mobius_scalar_mul": b_mobius_scalar_mul,
    "mobius_matvec": b_mobius_matvec,
    "mobius_pointwise_mul": b_mobius_pointwise_mul,
    "gyration": b_gyration,
    "parallel_transport": b_parallel_transport,
    "geodesic": b_geodesic,
    "geodesic_unit": b_geodesic_unit,
    "dist2plane": b_dist2plane,
    "dist2plane_signed_scaled": b_dist2plane_signed,
    "lambda_x": b_lambda_x,
    "inner": b_inner,
    "egrad2rgrad": b_egrad2rgrad,
    "tan_k": _scalar_fn(pm.tan_k),
    "artan_k": _scalar_fn(pm.artan_k),
    "sin_k": _scalar_fn(pm.sin_k),
    "arsin_k": _scalar_fn(pm.arsin_k),
    "weighted_midpoint": b_weighted_midpoint,
    "to_spacelike": b_to_spacelike,
    "from_spacelike": b_from_spacelike,
    "clip_spacelike": b_clip_spacelike,
}
#: κ ≠ 0 only
BUILDERS_NONZERO = {
    "to_ambient": b_to_ambient,
    "from_ambient": b_from_ambient,
    "ambient_dist": b_ambient_dist,
}


def _seed(*parts) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate("/".join(map(str, parts)))) % 2**31


def _check(name, builder, kv, second_order=False):
    gen = torch.Generator().manual_seed(_seed(name, kv))
    fn, inputs = builder(gen, kv)
    k = make_k(kv)
    args = (*inputs, k)
    with torch.no_grad():
        assert torch.isfinite(fn(*args)).all()
    assert gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)
    if second_order:
        assert gradgradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("kid", list(K_CASES))
@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradcheck(name, kid):
    _check(name, BUILDERS[name], K_CASES[kid])


@pytest.mark.parametrize("kid", list(K_NONZERO))
@pytest.mark.parametrize("name", list(BUILDERS_NONZERO))
def test_gradcheck_ambient(name, kid):
    _check(name, BUILDERS_NONZERO[name], K_NONZERO[kid])


SECOND_ORDER = ["dist", "expmap", "logmap", "expmap0", "logmap0", "mobius_add", "tan_k",
                "artan_k", "to_spacelike", "from_spacelike"]  # fmt: skip


@pytest.mark.parametrize("kid", ["0", "-1e-9", "+1e-3", "-0.5", "+2", "batch"])
@pytest.mark.parametrize("name", SECOND_ORDER)
def test_gradgradcheck(name, kid):
    _check(name, BUILDERS[name], K_CASES[kid], second_order=True)


@settings(max_examples=15)
@given(
    name=st.sampled_from(sorted(BUILDERS)),
    seed=st.integers(0, 2**31 - 1),
    k=st.one_of(
        st.floats(-3.0, 3.0, allow_nan=False),
        st.sampled_from([0.0, -1e-9, 1e-9, -1e-7, 1e-7, -0.0, 1e-30, -1e-30]),
    ),
)
def test_gradcheck_random(name, seed, k):
    """Random κ (including tiny and ±0) and random points, every function."""
    gen = torch.Generator().manual_seed(seed)
    fn, inputs = BUILDERS[name](gen, k)
    args = (*inputs, make_k(k))
    assert gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------
# κ-gradients stay finite for tiny |κ| (no NaN "for any finite κ", docs/design.md §3.3)
# --------------------------------------------------------------------------------------

TINY_KS = [
    (torch.float64, 1e-250),
    (torch.float64, -1e-250),
    (torch.float64, 1e-310),  # subnormal
    (torch.float32, 1e-30),
    (torch.float32, -1e-30),
    (torch.float32, 1e-40),  # subnormal
]
BUILDERS_TINY = {
    **BUILDERS,
    "project": lambda gen, kv: ((lambda x, k: pm.project(x, k=k)), (pts(gen, 3, N, kv, 0.5, 3.0),)),
}


def _tiny_params():
    for name in BUILDERS_TINY:
        for dtype, kv in TINY_KS:
            yield pytest.param(name, dtype, kv, id=f"{name}-{str(dtype)[6:]}-{kv:g}")


@pytest.mark.parametrize("name, dtype, kv", list(_tiny_params()))
def test_gradients_finite_at_tiny_kappa(name, dtype, kv):
    """Values and all gradients (data and κ) are finite at |κ| far below any series
    threshold, normal and subnormal, float32 and float64."""
    gen = torch.Generator().manual_seed(0)
    fn, inputs = BUILDERS_TINY[name](gen, 0.0)
    inputs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    k = torch.tensor(kv, dtype=dtype, requires_grad=True)
    out = fn(*inputs, k)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), (*inputs, k))
    for g in grads:
        assert torch.isfinite(g).all(), g


# --------------------------------------------------------------------------------------
# second derivatives at the origin
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["lambda_x", "egrad2rgrad", "expmap0", "logmap0", "to_spacelike", "mobius_add"]
)
def test_gradgradcheck_at_origin(name):
    """The origin is the most common point (``origin()``, init of embeddings): second
    derivatives there (gradient penalties, Hessian-vector products, MAML) must be finite
    and correct. All these functions are smooth (polynomial/analytic in x) at x = 0."""
    gen = torch.Generator().manual_seed(3)
    fn, inputs = BUILDERS[name](gen, 0.7)
    inputs = (torch.zeros_like(inputs[0]).requires_grad_(), *inputs[1:])
    assert gradgradcheck(fn, (*inputs, make_k(0.7)), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("kv", [-2.0, -1e-9, 0.0, 0.7, 3.0])
@pytest.mark.parametrize("which", ["a = 0", "b = 0"])
def test_mobius_add_and_expmap_derivatives_at_the_identity(which, kv):
    """``a ⊕ 0 = 0 ⊕ a = a`` is exact by overriding coefficient *values* there: first and
    second derivatives in a, b and κ at the identity must still be those of the formula
    (finite differences step off the identity, the analytic ones do not). κ = 3 with
    ‖a‖ ≈ 1.5 is the far (Ungar) regime."""
    gen = torch.Generator().manual_seed(11)
    a = pts(gen, 3, N, kv, 0.3, 0.6) * (3.0 if kv == 3.0 else 1.0)
    z = torch.zeros_like(a)
    left, right = (z, a) if which == "a = 0" else (a, z)
    args = (left.requires_grad_(), right.requires_grad_(), make_k(kv))
    for fn in (lambda p, q, k: pm.mobius_add(p, q, k=k), lambda p, q, k: pm.expmap(p, q, k=k)):
        assert gradcheck(fn, args)
        assert gradgradcheck(fn, args)


# --------------------------------------------------------------------------------------
# dist at x == y
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", list(K_CASES))
def test_dist_gradient_at_coincident_points_is_zero(kid):
    """dist is not differentiable at x = y; the gradient must be finite: 0 in x, y and κ
    (dist(x, x) = 0 for every κ, so ∂/∂κ = 0 exactly)."""
    kv = K_CASES[kid]
    gen = torch.Generator().manual_seed(11)
    x = pts(gen, rows(kv), N, kv)
    y = x.detach().clone().requires_grad_()
    k = make_k(kv)
    d = pm.dist(x, y, k=k)
    assert (d == 0).all()
    gx, gy, gk = torch.autograd.grad(d.sum(), (x, y, k))
    for g in (gx, gy, gk):
        assert torch.isfinite(g).all()
        assert (g == 0).all()


# --------------------------------------------------------------------------------------
# continuity of ∂/∂κ through κ = 0
# --------------------------------------------------------------------------------------

TINY = 1e-9
#: |∂f/∂κ(±1e-9) − ∂f/∂κ(0)| ≤ CONT_RTOL·|∂f/∂κ(0)| (relative; the exact difference is
#: O(1e-9·∂²f/∂κ²) for a smooth f, so 1e-6 leaves room, while geoopt's wrong sign gives 2)
CONT_RTOL = 1e-6


def _dk(fn, k0: float) -> torch.Tensor:
    """∂f/∂κ at κ = k0 (the Jacobian column of the whole output)."""
    k = torch.tensor(k0, dtype=DT)
    return torch.autograd.functional.jacobian(fn, k)


def _assert_continuous(fn, what):
    j0 = _dk(fn, 0.0)
    scale = float(j0.norm())
    assert scale > 1e-6, f"{what}: ∂/∂κ at 0 is too small to compare ({scale})"
    for k0 in (TINY, -TINY):
        diff = float((_dk(fn, k0) - j0).norm())
        assert diff <= CONT_RTOL * scale, f"{what}: κ={k0}: |Δ|={diff:.3g}, |∂/∂κ(0)|={scale:.3g}"


def _point_pair(seed, n):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, generator=gen, dtype=DT)
    r = 0.1 + 0.8 * torch.rand(2, 1, generator=gen, dtype=DT)
    return x / x.norm(dim=-1, keepdim=True) * r


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 6))
def test_dist_dk_continuous_at_zero(seed, n):
    x, y = _point_pair(seed, n)
    _assert_continuous(lambda k: pm.dist(x, y, k=k), "dist")


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 6))
def test_other_dk_continuous_at_zero(seed, n):
    x, y = _point_pair(seed, n)
    _assert_continuous(lambda k: pm.expmap0(x, k=k), "expmap0")
    _assert_continuous(lambda k: pm.logmap0(x, k=k), "logmap0")
    _assert_continuous(lambda k: pm.mobius_add(x, y, k=k), "mobius_add")
    _assert_continuous(lambda k: pc.to_spacelike(x, k=k), "to_spacelike")
    _assert_continuous(lambda k: pc.from_spacelike(x, k=k), "from_spacelike")


def test_dist_dk_continuous_in_a_batch():
    """The same point pair in rows of a (B, 1) κ batch [−1e-9, 0, 1e-9]: one backward."""
    x, y = _point_pair(5, 4)
    k = torch.tensor([[-TINY], [0.0], [TINY]], dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(pm.dist(x.expand(3, -1), y.expand(3, -1), k=k).sum(), k)
    g = g.flatten()
    assert abs(g[0] - g[1]) <= CONT_RTOL * abs(g[1])
    assert abs(g[2] - g[1]) <= CONT_RTOL * abs(g[1])


def _dist_dk_at_zero(x, y) -> float:
    """Series: dist = 2‖m‖(1 − κ‖m‖²/3 + …), ‖m‖² = ‖d‖²/D, ∂D/∂κ|₀ = 2⟨x,y⟩, so
    ∂dist/∂κ|₀ = −2‖d‖(⟨x, y⟩ + ‖d‖²/3) with d = y − x."""
    d = float((y - x).norm())
    return -2.0 * d * (float(x @ y) + d * d / 3.0)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 6))
def test_geoopt_dist_dk_has_wrong_sign_at_tiny_negative_k(seed, n):
    """geoopt's ``artan_k`` uses its Taylor branch for |κ| ≤ 1e-8 and evaluates it with
    ``abs_zero_grad(κ) = |κ|``, so for κ = −1e-9 the κ-derivative of the artan part has the
    wrong sign. For orthogonal points (⟨x, y⟩ = 0, where the Möbius part of ∂dist/∂κ
    vanishes) the total: true −2‖d‖³/3 < 0, geoopt +2‖d‖³/3 > 0. mosgeo is right."""
    x, y = _point_pair(seed, n)
    y = y - (y @ x) / (x @ x) * x  # orthogonal to x
    true = _dist_dk_at_zero(x, y)
    assert true < 0
    k = torch.tensor(-TINY, dtype=DT, requires_grad=True)
    (ours,) = torch.autograd.grad(pm.dist(x, y, k=k), k)
    k = torch.tensor(-TINY, dtype=DT, requires_grad=True)
    (theirs,) = torch.autograd.grad(gmath.dist(x, y, k=k), k)
    assert abs(float(ours) - true) <= CONT_RTOL * abs(true)
    assert float(theirs) > 0  # geoopt: wrong sign
    assert abs(float(theirs) + true) <= 1e-6 * abs(true)  # exactly the mirrored value


# --------------------------------------------------------------------------------------
# ∂dist/∂κ against a 50-digit reference
# --------------------------------------------------------------------------------------


def _mp_dist(x, y, k):
    """Textbook: 2 artan_κ‖(−x) ⊕_κ y‖ with the classic Möbius formula; κ = 0: 2‖y − x‖."""
    mp = mpmath.mp
    nx = [-v for v in x]
    xy = mp.fsum(a * b for a, b in zip(nx, y, strict=True))
    x2 = mp.fsum(a * a for a in nx)
    y2 = mp.fsum(b * b for b in y)
    den = 1 - 2 * k * xy + k * k * x2 * y2
    m = [
        ((1 - 2 * k * xy - k * y2) * a + (1 + k * x2) * b) / den for a, b in zip(nx, y, strict=True)
    ]
    r = mp.sqrt(mp.fsum(v * v for v in m))
    if k == 0:
        return 2 * r
    s = mp.sqrt(abs(k))
    return 2 * (mp.atan(s * r) if k > 0 else mp.atanh(s * r)) / s


@pytest.mark.parametrize("k0", [-2.0, -0.5, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 0.5, 2.0])
def test_dist_dk_matches_mpmath(k0):
    """Relative error ≤ 1e-10 (the derivative's own conditioning is O(1) here)."""
    gen = torch.Generator().manual_seed(_seed("mp", k0))
    for _ in range(3):
        x, y = pts(gen, 2, 4, k0).detach()
        k = torch.tensor(k0, dtype=DT, requires_grad=True)
        (ours,) = torch.autograd.grad(pm.dist(x, y, k=k), k)
        with mpmath.workdps(50):
            xm = [mpmath.mpf(v) for v in x.tolist()]
            ym = [mpmath.mpf(v) for v in y.tolist()]
            ref = mpmath.diff(lambda kk, xm=xm, ym=ym: _mp_dist(xm, ym, kk), mpmath.mpf(k0))
        assert abs(float(ours) - float(ref)) <= 1e-10 * abs(float(ref)), (float(ours), ref)
        if k0 == 0.0:
            assert abs(_dist_dk_at_zero(x, y) - float(ref)) <= 1e-12 * abs(float(ref))
