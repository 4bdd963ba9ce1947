r"""Charts of :mod:`mosgeo.charts`: the model lands on the hyperboloid / sphere, the charts are
inverse to each other, the ambient distance is the pull-back isometry, the space-like chart
is smooth through κ = 0 and agrees with the paper's eq. 8, and ``clip_spacelike`` keeps its
contract. float32 and float64, |κ| ∈ {1e-4, 0.25, 1, 4} of both signs (plus 0 and ±1e-9
where the function is defined there).

Tolerances are multiples of the machine epsilon ε of the dtype, set ~4–8× above the largest
error measured over 2000 random points per κ (noted at each constant); every comparison is
of quantities that are well conditioned on the sampled domain (κ < 0: ‖x‖ ≤ 0.99/√|κ|;
κ > 0: ‖x‖ ≤ 3/√κ, i.e. not at the south pole where ``from_ambient`` blows up).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mosgeo
import mosgeo.charts as pc
import mosgeo.math as pm

DTYPES = [torch.float32, torch.float64]
K_NONZERO = [s * m for m in (1e-4, 0.25, 1.0, 4.0) for s in (-1.0, 1.0)]
K_ALL = [*K_NONZERO, 0.0, 1e-9, -1e-9]
B = 64  # points per example

#: |⟨y,y⟩ − 1/κ| ≤ MODEL_C·ε·‖y‖²_Euclid (the rounding bound of a dot product; measured ≤ 3.5)
MODEL_C = 16.0
#: round trips: ‖x' − x‖ ≤ RT_C·ε·‖x‖ (measured ≤ 5.2)
RT_C = 32.0
#: isometry: |ambient_dist − dist| ≤ ISO_C·ε·cond·dist, cond ≥ 1 a condition proxy for
#: close pairs (see the test); measured ≤ 3.5 over 4000 pairs per κ
ISO_C = 32.0

settings_ = settings(max_examples=20)


def eps(dtype) -> float:
    return torch.finfo(dtype).eps


def radius(kf: float) -> float:
    return 1.0 / math.sqrt(abs(kf)) if kf != 0 else 1.0


def points(gen, n, kf, lo, hi, dtype, b=B) -> torch.Tensor:
    """``b`` points, uniform direction, norm U(lo, hi)·R (R = 1/√|κ|, 1 at κ = 0),
    rounded to ``dtype``."""
    d = torch.randn(b, n, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    r = lo + (hi - lo) * torch.rand(b, 1, generator=gen, dtype=torch.float64)
    return (d * r * radius(kf)).to(dtype)


def domain(gen, n, kf, dtype, b=B) -> torch.Tensor:
    """Points of the model's chart: the ball up to 0.99 R for κ < 0, up to 3 R for κ > 0."""
    return points(gen, n, kf, 0.0, 0.99 if kf < 0 else 3.0, dtype, b)


def norm(t: torch.Tensor) -> torch.Tensor:
    return t.double().norm(dim=-1, keepdim=True)


def assert_close_rel(got, want, c, dtype, scale=None, what=""):
    """‖got − want‖ ≤ c·ε·scale (row-wise; scale defaults to ‖want‖)."""
    err = norm(got.double() - want.double())
    scale = norm(want) if scale is None else scale
    bound = c * eps(dtype) * scale
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} rows off, worst err/(ε·scale) = "
        f"{float((err / (eps(dtype) * scale)).max()):.3g} > {c}"
    )


seeds = st.integers(0, 2**31 - 1)
dims = st.integers(2, 6)


# --------------------------------------------------------------------------------------
# to_ambient / from_ambient / lorentz_inner / ambient_dist (κ ≠ 0)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO)
@settings_
@given(seed=seeds, n=dims)
def test_to_ambient_lands_on_model(kf, dtype, seed, n):
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    x = domain(gen, n, kf, dtype)
    y = pc.to_ambient(x, k=k)
    assert y.dtype == dtype and y.shape == (B, n + 1)
    assert torch.isfinite(y).all()
    yd = y.double()
    inner = pc.lorentz_inner(yd, yd, k=kf)
    if kf < 0:
        assert (y[:, 0] > 0).all()  # upper sheet
        want = -(yd[:, 0] ** 2) + (yd[:, 1:] ** 2).sum(-1)
    else:
        want = (yd**2).sum(-1)
    # lorentz_inner is the Minkowski (κ < 0) / Euclidean (κ > 0) form
    torch.testing.assert_close(inner, want, rtol=1e-14, atol=0.0)
    err = (inner - 1.0 / float(k)).abs()
    assert (err <= MODEL_C * eps(dtype) * (yd**2).sum(-1)).all(), float(err.max())
    # the float computation of the form agrees as well
    inner_dt = pc.lorentz_inner(y, y, k=k).double()
    assert ((inner_dt - 1.0 / float(k)).abs() <= 2 * MODEL_C * eps(dtype) * (yd**2).sum(-1)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO)
@settings_
@given(seed=seeds, n=dims)
def test_from_ambient_inverts_to_ambient(kf, dtype, seed, n):
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    x = domain(gen, n, kf, dtype)
    back = pc.from_ambient(pc.to_ambient(x, k=k), k=k)
    assert back.dtype == dtype
    assert_close_rel(back, x, RT_C, dtype, what="from_ambient∘to_ambient")


def model_points(gen, n, kf, dtype, b=B) -> torch.Tensor:
    """Random points of the hyperboloid (κ < 0: y_s Gaussian of scale up to 7R, y₀ from the
    constraint) or of the sphere (κ > 0, y₀ ≥ −0.5 R: away from the south pole)."""
    R = radius(kf)
    if kf < 0:
        ys = torch.randn(b, n, generator=gen, dtype=torch.float64) * R
        ys = ys * 7.0 * torch.rand(b, 1, generator=gen, dtype=torch.float64)
        y0 = (R * R + (ys**2).sum(-1, keepdim=True)).sqrt()
        y = torch.cat([y0, ys], dim=-1)
    else:
        y = torch.randn(b, n + 1, generator=gen, dtype=torch.float64)
        y = y / y.norm(dim=-1, keepdim=True)
        y[:, 0] = y[:, 0].abs() * 1.5 - 0.5  # y₀/R ∈ [−0.5, 1]
        y[:, 1:] *= ((1 - y[:, :1] ** 2) / (y[:, 1:] ** 2).sum(-1, keepdim=True)).sqrt()
        y = y * R
    return y.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO)
@settings_
@given(seed=seeds, n=dims)
def test_to_ambient_inverts_from_ambient(kf, dtype, seed, n):
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    y = model_points(gen, n, kf, dtype)
    yy = pc.lorentz_inner(y.double(), y.double(), k=kf)
    assert ((yy - 1 / kf).abs() <= 8 * eps(dtype) * (y.double() ** 2).sum(-1)).all()
    x = pc.from_ambient(y, k=k)
    if kf < 0:
        assert (norm(x) < radius(kf)).all()
    back = pc.to_ambient(x, k=k)
    # x near the boundary (large y₀): to_ambient amplifies the rounding of x by ~√|κ|·|y₀|
    cond = 1 + math.sqrt(abs(kf)) * y[:, :1].double().abs()
    assert_close_rel(back, y, RT_C, dtype, scale=norm(y) * cond, what="to_ambient∘from_ambient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO)
@settings_
@given(seed=seeds, n=dims)
def test_ambient_dist_is_the_isometry(kf, dtype, seed, n):
    """ambient_dist(to_ambient(x), to_ambient(y)) = dist(x, y); and the textbook
    κ⟨y, z⟩ = cosh(√|κ| d) (κ < 0) / cos(√κ d) (κ > 0) holds for the ambient images."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    x = points(gen, n, kf, 0.0, 0.9 if kf < 0 else 2.0, dtype)
    y = points(gen, n, kf, 0.0, 0.9 if kf < 0 else 2.0, dtype)
    ya, za = pc.to_ambient(x, k=k), pc.to_ambient(y, k=k)
    d_amb = pc.ambient_dist(ya, za, k=k)
    d = pm.dist(x, y, k=k)
    assert d_amb.shape == (B,) and pc.ambient_dist(ya, za, k=k, keepdim=True).shape == (B, 1)
    err = (d_amb.double() - d.double()).abs()
    # ambient_dist of *rounded* ambient points is ill-conditioned for close pairs: the
    # rounding of y, z (ε‖y‖) against the chord Δ = y − z, and for κ < 0 the Minkowski
    # cancellation −Δ₀² + ‖Δ_s‖². Condition proxy (≈ 1 for far pairs):
    delta = (ya - za).double()
    chord2 = pc.lorentz_inner(delta, delta, k=kf).abs()
    cond = 1 + (norm(ya) + norm(za)).squeeze(-1) * norm(delta).squeeze(-1) / chord2
    rel = err / (d.double() * cond)
    assert (rel <= ISO_C * eps(dtype)).all(), float(rel.max() / eps(dtype))
    # textbook form, float64 images (well conditioned away from d = 0)
    ya64, za64 = pc.to_ambient(x.double(), k=kf), pc.to_ambient(y.double(), k=kf)
    c = kf * pc.lorentz_inner(ya64, za64, k=kf)
    s = math.sqrt(abs(kf))
    d64 = pm.dist(x.double(), y.double(), k=kf)
    want = torch.cosh(s * d64) if kf < 0 else torch.cos(s * d64)
    torch.testing.assert_close(c, want, rtol=1e-10, atol=1e-10)


def test_lorentz_inner_conventions():
    """Time first; −y₀z₀ + ⟨y_s, z_s⟩ for κ < 0, Euclidean for κ > 0; keepdim; (B, 1) κ."""
    y = torch.tensor([[2.0, 1.0, 0.5], [3.0, -1.0, 2.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 4.0, -2.0], [0.5, 1.0, 1.0]], dtype=torch.float64)
    minkowski = torch.tensor([-2.0 + 4.0 - 1.0, -1.5 - 1.0 + 2.0], dtype=torch.float64)
    euclid = torch.tensor([2.0 + 4.0 - 1.0, 1.5 - 1.0 + 2.0], dtype=torch.float64)
    assert torch.equal(pc.lorentz_inner(y, z, k=-1.0), minkowski)
    assert torch.equal(pc.lorentz_inner(y, z, k=0.5), euclid)
    assert pc.lorentz_inner(y, z, k=-1.0, keepdim=True).shape == (2, 1)
    kb = torch.tensor([[-1.0], [0.5]], dtype=torch.float64)
    assert torch.equal(pc.lorentz_inner(y, z, k=kb), torch.stack([minkowski[0], euclid[1]]))
    assert torch.equal(pc.lorentz_inner(y, z, k=-1.0), pc.lorentz_inner(z, y, k=-1.0))


# --------------------------------------------------------------------------------------
# to_spacelike / from_spacelike (every κ)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_ALL)
@settings_
@given(seed=seeds, n=dims)
def test_spacelike_round_trips(kf, dtype, seed, n):
    """from∘to = id on the chart (κ < 0: the ball, κ > 0: the hemisphere ‖x‖ ≤ 0.9/√κ,
    κ = 0: everything) and to∘from = id (κ ≤ 0: any u, here ‖u‖ ≤ 5R; κ > 0:
    ‖u‖ ≤ 0.9/√κ)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    hi = 0.99 if kf < 0 else (0.9 if kf > 0 else 5.0)
    x = points(gen, n, kf, 0.0, hi, dtype)
    back = pc.from_spacelike(pc.to_spacelike(x, k=k), k=k)
    assert back.dtype == dtype
    assert_close_rel(back, x, RT_C, dtype, what="from_spacelike∘to_spacelike")
    u = points(gen, n, kf, 0.0, 0.9 if kf > 0 else 5.0, dtype)
    back = pc.to_spacelike(pc.from_spacelike(u, k=k), k=k)
    # to_spacelike amplifies by λ_x = 2/(1+κ‖x‖²) ≤ 1 + ‖u‖√|κ| for κ < 0 (≈ 6 here)
    assert_close_rel(back, u, 4 * RT_C, dtype, what="to_spacelike∘from_spacelike")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO + [1e-9, -1e-9])
@settings_
@given(seed=seeds, n=dims)
def test_to_spacelike_is_space_part_of_to_ambient(kf, dtype, seed, n):
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    x = domain(gen, n, kf, dtype)
    u = pc.to_spacelike(x, k=k)
    assert_close_rel(u, pc.to_ambient(x, k=k)[:, 1:], 4.0, dtype, what="space part")
    # and |time| = ξ = √(1/|κ| − sgn(κ)‖u‖²) (κ > 0: ± for the two hemispheres). ξ from the
    # rounded u: κ > 0 near the equator ξ² = 1/κ − ‖u‖² cancels, error ≤ √(ε)·R
    if abs(kf) >= 1e-4:
        y0 = pc.to_ambient(x.double(), k=kf)[:, 0].abs()
        u2 = (u.double() ** 2).sum(-1)
        xi = (1 / abs(kf) - math.copysign(1.0, kf) * u2).clamp_min(0).sqrt()
        tol = 16 * eps(dtype) * y0 + 4 * math.sqrt(eps(dtype)) * radius(kf)
        assert ((y0 - xi).abs() <= tol).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings_
@given(seed=seeds, n=dims)
def test_from_spacelike_at_zero_is_half_and_continuous(dtype, seed, n):
    """κ = 0: x = u/2 exactly (the continuous extension; the paper's eq. 8 as printed gives
    u). κ = ±1e-9: x = u/2·(1 + κ‖u‖²/4 + O(κ²)), so |x − u/2| ≤ (1e-9‖u‖²/4 + 2ε)·‖u/2‖."""
    gen = torch.Generator().manual_seed(seed)
    u = points(gen, n, 0.0, 0.0, 3.0, dtype)
    assert torch.equal(pc.from_spacelike(u, k=torch.tensor(0.0, dtype=dtype)), u / 2)
    assert torch.equal(pc.from_spacelike(u, k=0.0), u / 2)
    assert torch.equal(pc.from_spacelike(u, k=-0.0), u / 2)
    for kf in (1e-9, -1e-9):
        x = pc.from_spacelike(u, k=torch.tensor(kf, dtype=dtype))
        slack = 1.01e-9 * norm(u) ** 2 / 4 + 2 * eps(dtype)
        assert_close_rel(x, u / 2, 1.0, dtype, scale=norm(u / 2) * slack / eps(dtype))
        # and the first-order term has the right sign: ‖x‖ grows with κ
        if dtype == torch.float64:
            x64 = pc.from_spacelike(u, k=kf)
            want = u / 2 * (1 + kf * (u**2).sum(-1, keepdim=True) / 4)
            torch.testing.assert_close(x64, want, rtol=1e-15, atol=1e-300)
    # to_spacelike at 0: u = 2x
    assert torch.equal(pc.to_spacelike(u, k=0.0), 2 * u)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO)
@settings_
@given(seed=seeds, n=dims)
def test_from_spacelike_matches_paper_eq8(kf, dtype, seed, n):
    """Paper eq. 8 with the time coordinate: x = u/(1 + √|κ| ξ), ξ = √(‖u‖² sgn(−κ) + 1/|κ|),
    evaluated naively in float64 (fine at these |κ| ≥ 1e-4)."""
    gen = torch.Generator().manual_seed(seed)
    u = points(gen, n, kf, 0.0, 0.95 if kf > 0 else 5.0, dtype)
    u64 = u.double()
    xi = ((u64**2).sum(-1, keepdim=True) * math.copysign(1.0, -kf) + 1 / abs(kf)).sqrt()
    want = u64 / (1 + math.sqrt(abs(kf)) * xi)
    got = pc.from_spacelike(u, k=torch.tensor(kf, dtype=dtype))
    # κ > 0 at ‖u‖ → 1/√κ: d x/d u ~ 1/ξ grows; ≤ 0.95 keeps the conditioning ≤ ~3
    assert_close_rel(got, want, RT_C, dtype, what="eq. 8")


# --------------------------------------------------------------------------------------
# clip_spacelike
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_ALL)
@settings_
@given(seed=seeds, n=dims)
def test_clip_spacelike_contract(kf, dtype, seed, n):
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor(kf, dtype=dtype)
    u = points(gen, n, kf, 0.0, 3.0, dtype)
    c = pc.clip_spacelike(u, k=k)
    assert c.dtype == dtype and c.shape == u.shape
    if kf <= 0:
        assert torch.equal(c, u)  # identity for κ ≤ 0
        return
    e = mosgeo.numerics.default_eps(dtype)
    rmax = (1 - e) / math.sqrt(float(k))
    nu, nc = norm(u), norm(c)
    assert (nc <= rmax * (1 + 4 * eps(dtype))).all()  # the norm bound
    inside = nu <= rmax
    assert torch.equal(c[inside.squeeze(-1)], u[inside.squeeze(-1)])  # identity inside
    out = ~inside.squeeze(-1)
    torch.testing.assert_close(nc[out], torch.full_like(nc[out], rmax), rtol=4 * eps(dtype), atol=0)
    # radial: c = s·u with 0 < s ≤ 1
    s = (c.double() * u.double()).sum(-1, keepdim=True) / nu**2
    assert ((s > 0) & (s <= 1 + 8 * eps(dtype))).all()
    assert_close_rel(c, s * u.double(), 4.0, dtype, what="radial")
    # after the clip, from_spacelike is on its chart (finite, ‖x‖ ≤ R)
    x = pc.from_spacelike(c, k=k)
    assert torch.isfinite(x).all() and (norm(x) <= radius(kf) * (1 + 4 * eps(dtype))).all()
    # custom eps
    c2 = pc.clip_spacelike(u, k=k, eps=0.1)
    assert (norm(c2) <= 0.9 / math.sqrt(float(k)) * (1 + 4 * eps(dtype))).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_spacelike_continuous_as_k_to_zero(dtype):
    """‖clip(u, κ)‖ = min(‖u‖, (1−ε)/√κ) → ‖u‖ as κ → 0+, and clip = id at κ = 0, ±1e-9 for
    moderate u; the clip radius of a huge u follows (1−ε)/√κ continuously."""
    gen = torch.Generator().manual_seed(0)
    u = points(gen, 4, 0.0, 0.5, 3.0, dtype, b=16)
    for kf in (0.0, 1e-9, -1e-9, 1e-7, -0.0):
        assert torch.equal(pc.clip_spacelike(u, k=torch.tensor(kf, dtype=dtype)), u)
    big = points(gen, 4, 0.0, 1.0, 1.0, dtype, b=4) * 1e6
    e = mosgeo.numerics.default_eps(dtype)
    prev = 0.0
    for j in range(2, 16):
        kf = 10.0**-j
        nrm = norm(pc.clip_spacelike(big, k=torch.tensor(kf, dtype=dtype)))
        want = min(1e6, (1 - e) / math.sqrt(kf))
        torch.testing.assert_close(nrm, torch.full_like(nrm, want), rtol=8 * eps(dtype), atol=0)
        assert float(nrm.min()) >= prev * (1 - 8 * eps(dtype))  # monotone in 1/κ
        prev = float(nrm.max())
    assert torch.equal(pc.clip_spacelike(big, k=torch.tensor(0.0, dtype=dtype)), big)


# --------------------------------------------------------------------------------------
# Stereographic methods = functions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", K_NONZERO + [0.0, [[-1.0], [0.0], [0.5]]])
def test_class_methods_match_functions(kf, dtype):
    gen = torch.Generator().manual_seed(1)
    man = mosgeo.Stereographic(torch.tensor(kf, dtype=dtype))
    k = man.k
    kscal = kf if not isinstance(kf, list) else -1.0
    x = points(gen, 3, kscal, 0.0, 0.5, dtype, b=3)
    u = pc.to_spacelike(x, k=k)
    assert torch.equal(man.to_spacelike(x), pc.to_spacelike(x, k=k))
    assert torch.equal(man.from_spacelike(u), pc.from_spacelike(u, k=k))
    assert torch.equal(man.clip_spacelike(3 * u), pc.clip_spacelike(3 * u, k=k))
    assert torch.equal(man.clip_spacelike(3 * u, eps=0.1), pc.clip_spacelike(3 * u, k=k, eps=0.1))
    if isinstance(kf, list) or kf == 0.0:
        return  # the ambient charts need κ ≠ 0
    y = man.to_ambient(x)
    assert torch.equal(y, pc.to_ambient(x, k=k))
    assert torch.equal(man.from_ambient(y), pc.from_ambient(y, k=k))
    # and the subclasses that fix the sign of κ (κ stored through a softplus: use theirs)
    kt = torch.tensor(abs(kf), dtype=dtype)
    sub = mosgeo.PoincareBall(kt) if kf < 0 else mosgeo.SphereProjection(kt)
    torch.testing.assert_close(sub.k, k, rtol=8 * eps(dtype), atol=0)
    assert torch.equal(sub.to_ambient(x), pc.to_ambient(x, k=sub.k))
    assert torch.equal(sub.from_ambient(y), pc.from_ambient(y, k=sub.k))
    assert torch.equal(sub.to_spacelike(x), pc.to_spacelike(x, k=sub.k))
    assert torch.equal(sub.from_spacelike(u), pc.from_spacelike(u, k=sub.k))
    assert torch.equal(sub.clip_spacelike(3 * u), pc.clip_spacelike(3 * u, k=sub.k))


# --------------------------------------------------------------------------------------
# one radial formula for the lift
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kf", [*K_ALL, -25.0])
def test_from_spacelike_is_its_radial_factor(kf, dtype):
    """``from_spacelike(u) = u · spacelike_inverse_scale(‖u‖², κ)`` bit for bit — the fused
    path's factor *is* the chart's (one formula), for clipped, inner, tiny and huge u (‖u‖²
    overflowing: the factor takes the norm then), with equal gradients in u and κ.
    (Found: the two computed the same factor two ways, √(1 − κ‖u‖²) from the square vs
    √(1 − κ n·n) from the norm with their own derivatives, and did not agree.)"""
    from mosgeo.numerics import sqnorm_norm

    gen = torch.Generator().manual_seed(5)
    huge = 1e30 if dtype == torch.float32 else 1e200
    scales = torch.tensor([1e-6, 0.3, 0.999, 3.0, 1e3, huge], dtype=torch.float64)
    d = torch.randn(len(scales), 4, generator=gen, dtype=torch.float64)
    u = d / d.norm(dim=-1, keepdim=True) * scales[:, None] * min(1.0, radius(kf))
    u = pc.clip_spacelike(u.to(dtype), k=kf)
    k = torch.tensor(kf, dtype=dtype)
    u1, k1 = u.clone().requires_grad_(), k.clone().requires_grad_()
    u2, k2 = u.clone().requires_grad_(), k.clone().requires_grad_()
    chart = pc.from_spacelike(u1, k=k1)
    q2, n2 = sqnorm_norm(u2)
    fused = u2 * pc.spacelike_inverse_scale(q2, k2, n2)
    assert torch.equal(chart, fused)
    g1 = torch.autograd.grad(chart.sum(), [u1, k1])
    g2 = torch.autograd.grad(fused.sum(), [u2, k2])
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)
