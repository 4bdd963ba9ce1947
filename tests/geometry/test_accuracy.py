r"""Accuracy of :mod:`mosgeo.math` and :mod:`mosgeo.charts` against an mpmath reference.

The reference formulas below are written from the textbook definitions (classic Möbius
addition, ``d = 2 artan_κ‖(−x) ⊕ y‖``, ``tan_κ``/``artan_κ`` through ``tan``/``tanh``/
``atan``/``atanh`` of ``√|κ|·``, κ = 0 as the limit, the hyperboloid/sphere chart of the
paper, the chord form of the ambient distance) and evaluated with 50 significant digits;
they never call mosgeo.

Error criterion (normwise, the standard backward-stability yardstick): for an input ``a``
(all data arguments stacked; κ is *not* counted as data, so the bound is the stricter one)

    ‖f̂(a) − f(a)‖ / ‖f(a)‖  ≤  tol · max(1, cond(a)),    cond(a) = ‖J_f(a)‖₂ ‖a‖ / ‖f(a)‖,

with ``tol = 1e-12`` (float64) and ``1e-5`` (float32). ``a`` is the dtype-rounded input,
converted exactly to mpmath (the reference is evaluated at the representable input, so
input rounding is not charged to the implementation). ``J_f`` comes from central finite
differences at 50 digits (step 1e-20·‖a‖: truncation ~1e-40, cancellation ~1e-30).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import geoopt.manifolds.stereographic.math as gmath
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mosgeo.charts as pc
import mosgeo.math as pm

mp = mpmath.mp
DPS = 50
MPF = mpmath.mpf

KAPPAS = [-4.0, -1.0, -0.25, -1e-4, -1e-9, 0.0, 1e-9, 1e-4, 0.25, 1.0, 4.0]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
#: relative size of the perturbation for "close" point pairs: 1e-8 in float64; in float32
#: 1e-8 is below the rounding unit (y would round to x), so 1e-4 there.
CLOSE = {torch.float64: 1e-8, torch.float32: 1e-4}
#: points are drawn on the scale R = 1/√|κ|, capped for tiny |κ| (κ = 1e-30 would give 1e15)
R_CAP = 1.0 / math.sqrt(1e-9)

# random κ: the grid, or uniform in [−5, 5] (|κ| ≥ 1e-30 so that it is no float32 subnormal)
kappa_strategy = st.one_of(
    st.sampled_from(KAPPAS),
    st.floats(-5.0, 5.0, allow_nan=False).filter(lambda v: v == 0 or abs(v) >= 1e-30),
)


# --------------------------------------------------------------------------------------
# mpmath reference (textbook formulas, 50 digits)
# --------------------------------------------------------------------------------------


def _dot(a, b):
    return mp.fsum(p * q for p, q in zip(a, b, strict=True))


def _vnorm(a):
    return mp.sqrt(_dot(a, a))


def _sub(a, b):
    return [p - q for p, q in zip(a, b, strict=True)]


def ref_tan_k(x, k):
    if k == 0:
        return x
    s = mp.sqrt(abs(k))
    return (mp.tan(s * x) if k > 0 else mp.tanh(s * x)) / s


def ref_artan_k(x, k):
    if k == 0:
        return x
    s = mp.sqrt(abs(k))
    return (mp.atan(s * x) if k > 0 else mp.atanh(s * x)) / s


def ref_arsin_k(x, k):
    if k == 0:
        return x
    s = mp.sqrt(abs(k))
    return (mp.asin(s * x) if k > 0 else mp.asinh(s * x)) / s


def ref_mobius_add(x, y, k):
    """Classic formula ((1−2κ⟨x,y⟩−κ‖y‖²)x + (1+κ‖x‖²)y)/(1−2κ⟨x,y⟩+κ²‖x‖²‖y‖²)."""
    xy, x2, y2 = _dot(x, y), _dot(x, x), _dot(y, y)
    cx = 1 - 2 * k * xy - k * y2
    cy = 1 + k * x2
    den = 1 - 2 * k * xy + k * k * x2 * y2
    return [(cx * a + cy * b) / den for a, b in zip(x, y, strict=True)]


def ref_dist(x, y, k):
    return [2 * ref_artan_k(_vnorm(ref_mobius_add([-v for v in x], y, k)), k)]


def ref_dist0(x, k):
    return [2 * ref_artan_k(_vnorm(x), k)]


def ref_expmap0(u, k):
    n = _vnorm(u)
    c = ref_tan_k(n, k) / n
    return [c * v for v in u]


def ref_logmap0(y, k):
    n = _vnorm(y)
    c = ref_artan_k(n, k) / n
    return [c * v for v in y]


def ref_to_ambient(x, k):
    """Inverse stereographic projection, time first: ((1−κr²)/(√|κ|(1+κr²)), 2x/(1+κr²))."""
    r2 = _dot(x, x)
    den = 1 + k * r2
    return [(1 - k * r2) / (mp.sqrt(abs(k)) * den)] + [2 * v / den for v in x]


def ref_from_ambient(y, k):
    den = 1 + mp.sqrt(abs(k)) * y[0]
    return [v / den for v in y[1:]]


def ref_to_spacelike(x, k):
    den = 1 + k * _dot(x, x)
    return [2 * v / den for v in x]


def ref_from_spacelike(u, k):
    """The paper's eq. 8: x = u/(1 + √|κ| ξ), ξ = √(‖u‖² sgn(−κ) + 1/|κ|); κ = 0: the
    limit u/2."""
    if k == 0:
        return [v / 2 for v in u]
    xi = mp.sqrt(_dot(u, u) * mp.sign(-k) + 1 / abs(k))
    den = 1 + mp.sqrt(abs(k)) * xi
    return [v / den for v in u]


def _ambient_inner(y, z, k):
    t = y[0] * z[0]
    return (-t if k < 0 else t) + _dot(y[1:], z[1:])


def ref_ambient_dist(y, z, k):
    """Geodesic distance from the chord: on a sphere (hyperboloid) of radius R = 1/√|κ| a
    chord c subtends d = 2R asin(c/2R) (2R asinh(c/2R)). Defined off the model too, where
    it is the function mosgeo documents; on the model it equals the arcosh/acos form (see
    ``test_reference_is_textbook``)."""
    d = _sub(y, z)
    c2 = _ambient_inner(d, d, k)
    return [2 * ref_arsin_k(mp.sqrt(max(c2, 0)) / 2, k)]


def _split(flat, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(flat[i : i + s])
        i += s
    return out


def ref_and_cond(ref: Callable, args: list, k) -> tuple[list, float]:
    """Reference value and normwise relative condition number ‖J‖₂‖a‖/‖f‖ w.r.t. the
    stacked data arguments ``a``."""
    with mp.workdps(DPS):
        f0 = ref(*args, k)
        sizes = [len(a) for a in args]
        flat = [v for a in args for v in a]
        scale = _vnorm(flat)
        h = scale * MPF("1e-20") if scale != 0 else MPF("1e-40")
        jac = np.empty((len(f0), len(flat)))
        for j in range(len(flat)):
            p = list(flat)
            p[j] += h
            m = list(flat)
            m[j] -= h
            fp = ref(*_split(p, sizes), k)
            fm = ref(*_split(m, sizes), k)
            jac[:, j] = [float((a - b) / (2 * h)) for a, b in zip(fp, fm, strict=True)]
        fn = _vnorm(f0)
        if fn == 0:
            return f0, math.inf
        return f0, float(np.linalg.norm(jac, 2)) * float(scale) / float(fn)


def _mp_rows(t: torch.Tensor) -> list:
    """Rows of a (B, m) tensor as lists of mpf, exactly (float32 → double is exact)."""
    return [[MPF(v) for v in row] for row in t.double().tolist()]


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def _scale(kf: float) -> float:
    return min(1.0 / math.sqrt(abs(kf)), R_CAP) if kf != 0 else 1.0


@dataclass(frozen=True)
class Caps:
    """Largest norm, as a multiple of R = 1/√|κ| (1 for κ = 0), per sign of κ."""

    neg: float = 0.999
    pos: float = 3.0
    zero: float = 5.0

    def cap(self, kf: float) -> float:
        if kf < 0:
            return self.neg * _scale(kf)
        if kf > 0:
            return self.pos * _scale(kf)
        return self.zero


BALL = Caps()  # points: inside the ball for κ < 0; up to 3R (well past the equator) for κ > 0
TANGENT = Caps(neg=5.0, pos=1.4)  # tan_κ: below the first pole √κ r = π/2 ≈ 1.571
HEMISPHERE = Caps(pos=0.99)  # from_spacelike: the chart covers ‖x‖ ≤ 1/√κ


def points(gen, b: int, n: int, kf: float, mode: str, caps: Caps) -> torch.Tensor:
    """``b`` random points in R^n (float64): direction uniform, norm by ``mode``:
    ``unit`` U(0, min(2, cap)), ``ball`` U(0, cap), ``edge`` close to the cap (for κ < 0
    1 − 10^U(−3,−1) of the radius, i.e. 0.9 … 0.999), ``tiny`` 1e-10."""
    d = torch.randn(b, n, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    u = torch.rand(b, 1, generator=gen, dtype=torch.float64)
    cap = caps.cap(kf)
    if mode == "tiny":
        r = torch.full((b, 1), 1e-10, dtype=torch.float64)
    elif mode == "unit":
        r = u * min(2.0, cap)
    elif mode == "edge":
        if kf < 0:
            r = (1.0 - 10.0 ** (-1.0 - 2.0 * u)) * _scale(kf)
            r = torch.minimum(r, torch.full_like(r, cap))
        else:
            r = (0.9 + 0.1 * u) * cap
    else:
        r = u * cap
    return d * r


def pairs(gen, b, n, kf, mode, caps, dtype):
    """(x, y): independent points, or ``close`` (y = x + δ‖x‖ξ/√n) / ``anti`` (y ≈ −x)."""
    if mode in ("close", "anti"):
        x = torch.cat(
            [points(gen, b - b // 2, n, kf, "ball", caps), points(gen, b // 2, n, kf, "edge", caps)]
        )
        noise = torch.randn(b, n, generator=gen, dtype=torch.float64)
        delta = CLOSE[dtype] * x.norm(dim=-1, keepdim=True) * noise / math.sqrt(n)
        return x, (x if mode == "close" else -x) + delta
    return points(gen, b, n, kf, mode, caps), points(gen, b, n, kf, mode, caps)


def _from_mp(rows) -> torch.Tensor:
    return torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64)


def _mapped(ref, x: torch.Tensor, kf: float) -> torch.Tensor:
    """``ref`` applied row-wise at 50 digits, rounded to float64 (inputs on the model)."""
    with mp.workdps(DPS):
        return _from_mp([ref(r, MPF(kf)) for r in _mp_rows(x)])


# --------------------------------------------------------------------------------------
# the functions under test
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    ours: Callable  # (inputs, k tensor) -> tensor (B, ...)
    ref: Callable  # (*mp vectors, k) -> list of mpf
    make: Callable  # (gen, b, n, kf, mode, dtype) -> list of float64 tensors (B, ·)
    modes: tuple
    nonzero_k: bool = False  # the ambient charts need κ ≠ 0


def _one(caps):
    return lambda gen, b, n, kf, mode, dtype: [points(gen, b, n, kf, mode, caps)]


def _two(caps):
    return lambda gen, b, n, kf, mode, dtype: list(pairs(gen, b, n, kf, mode, caps, dtype))


def _scalar(caps):
    return lambda gen, b, n, kf, mode, dtype: [points(gen, b, 1, kf, mode, caps)]


def _make_from_ambient(gen, b, n, kf, mode, dtype):
    return [_mapped(ref_to_ambient, points(gen, b, n, kf, mode, BALL), kf)]


def _make_from_spacelike(gen, b, n, kf, mode, dtype):
    return [_mapped(ref_to_spacelike, points(gen, b, n, kf, mode, HEMISPHERE), kf)]


def _make_ambient_dist(gen, b, n, kf, mode, dtype):
    x, y = pairs(gen, b, n, kf, mode, BALL, dtype)
    return [_mapped(ref_to_ambient, x, kf), _mapped(ref_to_ambient, y, kf)]


M4 = ("unit", "ball", "edge", "tiny")

SPECS = [
    Spec("tan_k", lambda a, k: pm.tan_k(a[0], k), lambda x, k: [ref_tan_k(x[0], k)],
         _scalar(TANGENT), ("unit", "ball", "tiny")),
    Spec("artan_k", lambda a, k: pm.artan_k(a[0], k), lambda x, k: [ref_artan_k(x[0], k)],
         _scalar(BALL), M4),
    Spec("dist0", lambda a, k: pm.dist0(a[0], k=k), ref_dist0, _one(BALL), M4),
    Spec("expmap0", lambda a, k: pm.expmap0(a[0], k=k), ref_expmap0, _one(TANGENT),
         ("unit", "ball", "tiny")),
    Spec("logmap0", lambda a, k: pm.logmap0(a[0], k=k), ref_logmap0, _one(BALL), M4),
    Spec("mobius_add", lambda a, k: pm.mobius_add(a[0], a[1], k=k), ref_mobius_add,
         _two(BALL), (*M4, "anti")),
    Spec("dist", lambda a, k: pm.dist(a[0], a[1], k=k), ref_dist, _two(BALL), (*M4, "close")),
    Spec("to_ambient", lambda a, k: pc.to_ambient(a[0], k=k), ref_to_ambient, _one(BALL), M4,
         nonzero_k=True),
    Spec("from_ambient", lambda a, k: pc.from_ambient(a[0], k=k), ref_from_ambient,
         _make_from_ambient, M4, nonzero_k=True),
    Spec("to_spacelike", lambda a, k: pc.to_spacelike(a[0], k=k), ref_to_spacelike, _one(BALL),
         M4),
    Spec("from_spacelike", lambda a, k: pc.from_spacelike(a[0], k=k), ref_from_spacelike,
         _make_from_spacelike, M4),
    Spec("ambient_dist", lambda a, k: pc.ambient_dist(a[0], a[1], k=k), ref_ambient_dist,
         _make_ambient_dist, (*M4, "close"), nonzero_k=True),
]  # fmt: skip
SPEC_IDS = [s.name for s in SPECS]


def check(spec: Spec, dtype: torch.dtype, kf: float, inputs64: list) -> list[str]:
    """Compare mosgeo with the reference row by row; return the failures."""
    inputs = [t.to(dtype) for t in inputs64]  # the representable inputs
    k = torch.tensor(kf, dtype=dtype)
    kmp = MPF(float(k))
    with torch.no_grad():
        out = spec.ours(inputs, k)
    b = inputs[0].shape[0]
    got_rows = _mp_rows(out.reshape(b, -1))
    arg_rows = [_mp_rows(t) for t in inputs]
    bad = []
    for i in range(b):
        args = [rows[i] for rows in arg_rows]
        f, cond = ref_and_cond(spec.ref, args, kmp)
        with mp.workdps(DPS):
            err = _vnorm(_sub(got_rows[i], f))
            fn = _vnorm(f)
            rel = float(err / fn) if fn != 0 else (0.0 if err == 0 else math.inf)
        bound = TOL[dtype] * max(1.0, cond)
        if not rel <= bound:  # also catches NaN
            bad.append(
                f"{spec.name} {dtype} k={float(k)!r} args={[[float(v) for v in a] for a in args]}"
                f" got={[float(v) for v in got_rows[i]]} ref={[float(v) for v in f]}"
                f" rel_err={rel:.3g} cond={cond:.3g} bound={bound:.3g}"
            )
    return bad


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_accuracy_grid(spec: Spec, dtype: torch.dtype):
    """Every κ of the grid × every input mode, two points each (n = 3)."""
    gen = torch.Generator().manual_seed(1234)
    bad = []
    for kf in KAPPAS:
        kf = float(torch.tensor(kf, dtype=dtype))
        if spec.nonzero_k and kf == 0:
            continue
        for mode in spec.modes:
            bad += check(spec, dtype, kf, spec.make(gen, 2, 3, kf, mode, dtype))
    assert not bad, f"{len(bad)} inaccurate results:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 6),
    k=kappa_strategy,
    mode=st.integers(0, 63),
    dtype=st.sampled_from(DTYPES),
)
def test_accuracy_random(spec: Spec, seed: int, n: int, k: float, mode: int, dtype):
    kf = float(torch.tensor(k, dtype=dtype))
    assume(not (spec.nonzero_k and kf == 0))
    gen = torch.Generator().manual_seed(seed)
    mode_name = spec.modes[mode % len(spec.modes)]
    bad = check(spec, dtype, kf, spec.make(gen, 2, n, kf, mode_name, dtype))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dist_far_points_near_boundary(dtype):
    """Two independent points at 0.999 of the ball radius: the distance is ~15/√|κ| and
    well conditioned (cond ~ 100), but 1 − |κ|‖(−x)⊕y‖² ~ 1e-6 must not be formed by
    cancellation (regression: the atanh form had ~200 ε·cond in float32; the chord form ~1)."""
    gen = torch.Generator().manual_seed(0)
    spec = next(s for s in SPECS if s.name == "dist")
    bad = []
    for kf in (-4.0, -1.0, -1e-4, -1e-9):
        kf = float(torch.tensor(kf, dtype=dtype))
        d = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        d = d / d.norm(dim=-1, keepdim=True) * (0.999 / math.sqrt(-kf))
        bad += check(spec, dtype, kf, [d[:4], d[4:]])
    assert not bad, f"{len(bad)} inaccurate results:\n" + "\n".join(bad[:10])


def test_reference_is_textbook():
    """The 50-digit references agree with independent textbook identities: the
    arcosh/arccos form of the distance in the ball/sphere model, the arcosh/acos form on
    the hyperboloid/sphere, left cancellation of the Möbius sum and tan_κ∘artan_κ = id."""
    gen = torch.Generator().manual_seed(7)
    with mp.workdps(DPS):
        for kf in (-2.0, -0.3, 0.4, 3.0):
            k = MPF(kf)
            s = mp.sqrt(abs(k))
            xs = _mp_rows(points(gen, 3, 4, kf, "ball", BALL))
            ys = _mp_rows(points(gen, 3, 4, kf, "ball", BALL))
            for x, y in zip(xs, ys, strict=True):
                d2 = _dot(_sub(x, y), _sub(x, y))
                q = 2 * abs(k) * d2 / ((1 + k * _dot(x, x)) * (1 + k * _dot(y, y)))
                d = mp.acosh(1 + q) / s if kf < 0 else mp.acos(1 - q) / s
                assert abs(ref_dist(x, y, k)[0] - d) < MPF("1e-40") * (1 + d)
                ya, za = ref_to_ambient(x, k), ref_to_ambient(y, k)
                assert abs(_ambient_inner(ya, ya, k) - 1 / k) < MPF("1e-40") / abs(k)
                c = k * _ambient_inner(ya, za, k)
                d_amb = mp.acosh(c) / s if kf < 0 else mp.acos(c) / s
                assert abs(ref_ambient_dist(ya, za, k)[0] - d) < MPF("1e-35") * (1 + d)
                assert abs(d_amb - d) < MPF("1e-35") * (1 + d)
                back = ref_mobius_add([-v for v in x], ref_mobius_add(x, y, k), k)
                assert _vnorm(_sub(back, y)) < MPF("1e-40")
                assert _vnorm(_sub(ref_from_ambient(ya, k), x)) < MPF("1e-40")
                u = ref_to_spacelike(x, k)
                if kf < 0 or _dot(x, x) < 1 / k:  # from_spacelike covers the hemisphere
                    back = ref_from_spacelike(u, k)
                    assert _vnorm(_sub(back, x)) < MPF("1e-40")
                r = _vnorm(x)
                assert abs(ref_tan_k(ref_artan_k(r, k), k) - r) < MPF("1e-40")


# --------------------------------------------------------------------------------------
# regressions: inputs where geoopt is inaccurate and mosgeo is not (float64)
# --------------------------------------------------------------------------------------


def _rel(got: float, ref) -> float:
    return float(abs(MPF(got) - ref) / abs(ref))


def test_regression_geoopt_tiny_kappa_taylor():
    """geoopt evaluates artan_κ by its first-order Taylor polynomial in |κ| wherever
    ``isclose(κ, 0)`` (|κ| ≤ 1e-8), whatever ‖x‖: at κ = −1e-9, ‖x‖ = 1e4 (κ‖x‖² = −0.1,
    well inside the ball of radius 3.2e4) it uses the wrong sign of κ and is 6.6 % off."""
    x = torch.tensor([1e4, 0.0], dtype=torch.float64)
    k = torch.tensor(-1e-9, dtype=torch.float64)
    with mp.workdps(DPS):
        ref, cond = ref_and_cond(ref_dist0, _mp_rows(x[None])[0:1], MPF(float(k)))
        ref = ref[0]
    ours = pm.dist0(x, k=k).item()
    theirs = gmath.dist0(x, k=k).item()
    assert cond < 2.0
    assert _rel(ours, ref) <= 1e-15
    assert _rel(theirs, ref) > 0.05  # geoopt: 0.066


def test_regression_geoopt_artanh_clamp():
    """geoopt clamps the atanh argument at 1 − 1e-7 for every dtype: in float64 the distance
    to the origin of a point at 1 − 1e-10 of the Poincaré radius is capped at 16.8 (true:
    23.7). The error is far beyond the condition-number bound (cond ≈ 4e8 here)."""
    x = torch.tensor([1.0 - 1e-10, 0.0], dtype=torch.float64)
    k = torch.tensor(-1.0, dtype=torch.float64)
    with mp.workdps(DPS):
        ref, cond = ref_and_cond(ref_dist0, _mp_rows(x[None])[0:1], MPF(-1))
        ref = ref[0]
    ours = pm.dist0(x, k=k).item()
    theirs = gmath.dist0(x, k=k).item()
    assert _rel(ours, ref) <= TOL[torch.float64] * cond
    assert _rel(theirs, ref) > 0.25  # geoopt: 16.81 vs 23.72
    assert _rel(theirs, ref) > 100 * TOL[torch.float64] * cond  # ~700x over the bound


def test_regression_geoopt_close_points():
    """Distance between two points 1e-12 apart at ‖x‖ = 0.5 (κ = −1): geoopt forms the Möbius
    sum (−x) ⊕ y with a cancellation and keeps ~5 digits (rel. error 3e-5); mosgeo forms
    y − x first and is exact to rounding. (The normwise condition number here is ~1e12, so
    geoopt's error is inside the normwise bound; the test pins the much better accuracy.)"""
    x = torch.tensor([0.5, 0.0], dtype=torch.float64)
    y = x + torch.tensor([0.0, 1e-12], dtype=torch.float64)
    k = torch.tensor(-1.0, dtype=torch.float64)
    with mp.workdps(DPS):
        ref = ref_dist(_mp_rows(x[None])[0], _mp_rows(y[None])[0], MPF(-1))[0]
    assert _rel(pm.dist(x, y, k=k).item(), ref) <= 1e-14
    assert _rel(gmath.dist(x, y, k=k).item(), ref) > 1e-6


# --------------------------------------------------------------------------------------
# overflow: huge tangent vectors, scalars, matrices (scale before squaring)
# --------------------------------------------------------------------------------------

#: magnitudes whose square overflows the compute dtype (float16 is computed in float32:
#: its largest values square harmlessly, it is here for the "every dtype" half of the rule)
HUGE = {
    torch.float16: [6e4],
    torch.bfloat16: [1e20, 1e30, 1e37],
    torch.float32: [1e20, 1e30, 1e37],
    torch.float64: [1e160, 1e300],
}
#: normwise tolerance per dtype; half precision: the storage rounding plus the margin
#: (4 ε_s) that keeps a returned point strictly inside the ball after the cast back
HUGE_TOL = {torch.float16: 6e-3, torch.bfloat16: 4e-2, **TOL}


def _ref_unit(v):
    n = _vnorm(v)
    return [a / n for a in v]


def _ref_scale(c, v):
    return [c * a for a in v]


def _ref_lambda(x, k):
    return 2 / (1 + k * _dot(x, x))


def _ref_matvec_like(mx, x, k):
    c = ref_tan_k(_vnorm(mx) / _vnorm(x) * ref_artan_k(_vnorm(x), k), k)
    return _ref_scale(c, _ref_unit(mx))


#: op → (inputs from (point x, point y, huge vector U, huge scalar R, huge matrix W),
#:       mosgeo call, mpmath reference, is the result well conditioned for κ > 0)
OVERFLOW_OPS = {
    "expmap0": (lambda x, y, U, R, W: (U,), lambda a, k: pm.expmap0(a[0], k=k),
                lambda a, k: ref_expmap0(a[0], k), False),
    "expmap": (lambda x, y, U, R, W: (x, U), lambda a, k: pm.expmap(a[0], a[1], k=k),
               lambda a, k: ref_mobius_add(a[0], _ref_scale(
                   ref_tan_k(_ref_lambda(a[0], k) * _vnorm(a[1]) / 2, k), _ref_unit(a[1])), k),
               False),
    "mobius_scalar_mul": (lambda x, y, U, R, W: (R, x),
                          lambda a, k: pm.mobius_scalar_mul(a[0], a[1], k=k),
                          lambda a, k: _ref_scale(ref_tan_k(a[0][0] * ref_artan_k(
                              _vnorm(a[1]), k), k), _ref_unit(a[1])), False),
    "mobius_pointwise_mul": (lambda x, y, U, R, W: (U, x),
                             lambda a, k: pm.mobius_pointwise_mul(a[0], a[1], k=k),
                             lambda a, k: _ref_matvec_like(
                                 [p * q for p, q in zip(a[0], a[1], strict=True)], a[1], k),
                             False),
    "mobius_matvec": (lambda x, y, U, R, W: (W, x),
                      lambda a, k: pm.mobius_matvec(a[0], a[1], k=k),
                      lambda a, k: _ref_matvec_like(
                          [_dot(row, a[1]) for row in a[0]], a[1], k), False),
    "geodesic": (lambda x, y, U, R, W: (R, x, y),
                 lambda a, k: pm.geodesic(a[0], a[1], a[2], k=k),
                 lambda a, k: ref_mobius_add(a[1], _ref_scale(ref_tan_k(
                     a[0][0] * ref_artan_k(_vnorm(m := ref_mobius_add(
                         [-v for v in a[1]], a[2], k)), k), k), _ref_unit(m)), k), False),
    "geodesic_unit": (lambda x, y, U, R, W: (R, x, U),
                      lambda a, k: pm.geodesic_unit(a[0], a[1], a[2], k=k),
                      lambda a, k: ref_mobius_add(a[1], _ref_scale(
                          ref_tan_k(a[0][0] / 2, k), _ref_unit(a[2])), k), False),
    "norm": (lambda x, y, U, R, W: (x, U), lambda a, k: pm.norm(a[0], a[1], k=k, keepdim=True),
             lambda a, k: [_ref_lambda(a[0], k) * _vnorm(a[1])], True),
    "dist2plane": (lambda x, y, U, R, W: (x, y, U),
                   lambda a, k: pm.dist2plane(a[0], a[1], a[2], k=k, signed=True, keepdim=True),
                   lambda a, k: [ref_arsin_k(2 * _dot(m := ref_mobius_add(
                       [-v for v in a[1]], a[0], k), _ref_unit(a[2])) / (1 + k * _dot(m, m)),
                       k)], True),
    "tan_k": (lambda x, y, U, R, W: (U,), lambda a, k: pm.tan_k(a[0], k),
              lambda a, k: [ref_tan_k(v, k) for v in a[0]], False),
    "artan_k": (lambda x, y, U, R, W: (U,), lambda a, k: pm.artan_k(a[0], k),
                lambda a, k: [ref_artan_k(v, k) for v in a[0]], True),
    "arsin_k": (lambda x, y, U, R, W: (U,), lambda a, k: pm.arsin_k(a[0], k),
                lambda a, k: [ref_arsin_k(v, k) for v in a[0]], False),
}  # fmt: skip
#: where a κ-trigonometric function is out of its domain for huge arguments (atanh of a
#: value > 1, asin of a value > 1): only "finite, no NaN" is checked there
_OUT_OF_DOMAIN = {("artan_k", -1), ("arsin_k", 1)}


@pytest.mark.parametrize("kf", [-4.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 4.0])
@pytest.mark.parametrize("dtype", list(HUGE), ids=["f16", "bf16", "f32", "f64"])
@pytest.mark.parametrize("opname", list(OVERFLOW_OPS))
def test_huge_inputs_do_not_overflow(opname, dtype, kf):
    """Tangent vectors, scalars, matrices and normals whose squares overflow (‖u‖ = 1e20 …
    1e37 in float32/bfloat16, 1e160 … 1e300 in float64): the result is finite and equals
    the 50-digit reference wherever the problem is well conditioned (κ ≤ 0: the hyperbolic
    maps saturate at the rim; κ = 0: linear). κ > 0 wraps around the sphere, so
    ``tan(√κ‖u‖)`` of a huge argument has condition ≈ √κ‖u‖ ≫ 1/ε: finite only (except
    for the saturating atan). Gradients never NaN. (Found: ``expmap`` returned NaN, and
    ``expmap0`` 0 instead of a rim point, once ‖u‖² overflowed.)"""
    make, call, ref, pos_ok = OVERFLOW_OPS[opname]
    sign = (kf > 0) - (kf < 0)
    gen = torch.Generator().manual_seed(13)
    n = 4
    for mag in HUGE[dtype]:
        x = points(gen, 3, n, kf, "ball", Caps(neg=0.9, pos=1.0, zero=1.0)).to(dtype)
        y = points(gen, 3, n, kf, "ball", Caps(neg=0.9, pos=1.0, zero=1.0)).to(dtype)
        d = torch.randn(3, n, generator=gen, dtype=torch.float64)
        U = (d / d.norm(dim=-1, keepdim=True) * mag).to(dtype)
        R = torch.tensor([[mag], [-mag / 3], [mag / 7]], dtype=torch.float64).to(dtype)
        # a matrix (and pointwise weights, below) whose product with x stays representable
        W = torch.randn(n, n, generator=gen, dtype=torch.float64) * mag / (4 * _scale(kf))
        W = W.to(dtype)
        if opname == "mobius_pointwise_mul":
            U = (U.double() / max(1.0, _scale(kf))).to(dtype)
        args = [a.clone().requires_grad_() for a in make(x, y, U, R, W)]
        k = torch.tensor(kf, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        k.requires_grad_()
        out = call(args, k)
        assert out.dtype == dtype
        assert not torch.isnan(out).any(), ("NaN", mag, out)
        out_of_domain = (opname, sign) in _OUT_OF_DOMAIN
        if not out_of_domain:
            # finite, except where the exact value is beyond the dtype (float16: λ‖u‖)
            assert torch.isfinite(out).all() or dtype == torch.float16, ("inf", mag, out)
        # gradients: never NaN, at the smallest magnitude (beyond it chain-rule factors such
        # as ∂s/∂κ = ‖u‖/(2√|κ|) overflow although the gradient does not). ∂/∂κ is left out
        # where it is beyond every dtype: at κ = 0 (it grows like ‖u‖³) and for κ > 0 (like
        # ‖u‖/√κ: the tangent wraps around the sphere)
        if mag == HUGE[dtype][0]:
            wrt = [*args, k] if kf < 0 else args
            grads = torch.autograd.grad(out.float().sum(), wrt, allow_unused=True)
            bad = [i for i, g in enumerate(grads) if g is not None and torch.isnan(g).any()]
            assert not bad, ("NaN gradient", mag, bad)
        if (kf > 0 and not pos_ok) or out_of_domain:
            continue
        kmp = MPF(float(k.detach()))
        worst = 0.0
        with mp.workdps(DPS):
            for i in range(3):
                # row i of every batched argument; the matrix W is shared by the rows
                rows = [_mp_rows(a.detach()) if a is args[0] and opname == "mobius_matvec"
                        else _mp_rows(a.detach()[i:i + 1])[0] for a in args]  # fmt: skip
                want = ref(rows, kmp)
                got = [MPF(v) for v in out.detach()[i].double().reshape(-1).tolist()]
                if any(abs(v) > torch.finfo(dtype).max for v in want):
                    assert all(abs(v) > torch.finfo(dtype).max / 2 for v in got)
                    continue
                err = _vnorm(_sub(got, want)) / max(_vnorm(want), MPF(1e-300))
                worst = max(worst, float(err))
        assert worst <= HUGE_TOL[dtype], ("error", mag, worst)


# --------------------------------------------------------------------------------------
# the sphere near antipodal points
# --------------------------------------------------------------------------------------


def ref_logmap(x, y, k):
    """(2/λ_x) artan_κ‖m‖ m/‖m‖, m = (−x) ⊕ y."""
    m = ref_mobius_add([-v for v in x], y, k)
    c = 2 / _ref_lambda(x, k) * ref_artan_k(_vnorm(m), k) / _vnorm(m)
    return [c * v for v in m]


ANTIPODE_KAPPAS = [1e-12, 1e-6, 1e-2, 0.5, 1.0, 4.0, 10.0]
#: ‖x‖ in units of the radius 1/√κ: near the origin (its antipode is near infinity: the
#: dist0-like path), inside, on, beyond the radius
ANTIPODE_RADII = [1e-4, 0.3, 1.0, 3.0, 1e3]
ANTIPODE_DELTAS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]


def _near_antipodal(gen, kf, r, delta, n=3):
    """x of norm r/√κ and y = antipode(x) moved by δ·‖antipode(x)‖ in a random direction
    (float64, before rounding to the tested dtype)."""
    d = torch.randn(2, n, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    x = d[0] * r / math.sqrt(kf)
    a = -x / (kf * x.dot(x))
    return x, a + delta * a.norm() * d[1]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opname", ["dist", "logmap"])
@pytest.mark.parametrize("kf", ANTIPODE_KAPPAS)
def test_near_antipodal_points(kf, opname, dtype):
    """κ > 0, y within δ = 1e-2 … 1e-9 (relative) of the antipode of x, for x near the
    origin, inside, on and beyond the radius 1/√κ: error ≤ tol · max(1, cond) against the
    50-digit reference (tol 1e-12 / 1e-5). ``dist`` is well conditioned there (cond < 1);
    the direction of ``logmap`` is not (cond ≈ 1/δ). (Found: ``dist`` formed
    ‖(−x) ⊕ y‖² with the denominator (1 + κ‖x‖²)(1 + κ‖y‖²) − κ‖x − y‖², which cancels
    near the antipode: relative error up to ~5e-9 in float64 and ~1e-4 in float32.)"""
    gen = torch.Generator().manual_seed(17)
    fn = {"dist": lambda a, b, k: pm.dist(a, b, k=k, keepdim=True),
          "logmap": lambda a, b, k: pm.logmap(a, b, k=k)}[opname]  # fmt: skip
    ref = {"dist": ref_dist, "logmap": ref_logmap}[opname]
    k = torch.tensor(kf, dtype=dtype)
    kmp = MPF(float(k))
    worst = (0.0, None)
    for r in ANTIPODE_RADII:
        for delta in ANTIPODE_DELTAS:
            x64, y64 = _near_antipodal(gen, float(k), r, delta)
            x, y = x64.to(dtype), y64.to(dtype)
            got = fn(x, y, k).double().tolist()
            want, cond = ref_and_cond(ref, [_mp_rows(x[None])[0], _mp_rows(y[None])[0]], kmp)
            with mp.workdps(DPS):
                err = float(_vnorm(_sub([MPF(v) for v in got], want)) / _vnorm(want))
            bound = TOL[dtype] * max(1.0, cond)
            assert err <= bound, (r, delta, err, cond)
            worst = max(worst, (err / bound, (r, delta, err, cond)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_distance_to_the_antipode_is_pi_over_sqrt_k(dtype):
    """dist(x, antipode(x)) = π/√κ for κ from 1e-12 to 10 and x near the origin, inside,
    on and beyond the radius 1/√κ: to 1e-12 relative in float64 (1e-6 in float32); the
    distance of a point to itself is 0."""
    gen = torch.Generator().manual_seed(19)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}[dtype]
    for kf in ANTIPODE_KAPPAS:
        k = torch.tensor(kf, dtype=dtype)
        d = torch.randn(len(ANTIPODE_RADII), 3, generator=gen, dtype=torch.float64)
        r = torch.tensor(ANTIPODE_RADII, dtype=torch.float64)[:, None]
        x = (d / d.norm(dim=-1, keepdim=True) * r / math.sqrt(float(k))).to(dtype)
        a = pm.antipode(x, k=k)
        got = pm.dist(x, a, k=k).double()
        want = math.pi / math.sqrt(float(k))
        assert ((got - want).abs() <= tol * want).all(), (kf, (got / want - 1).tolist())
        assert (pm.dist(x, x, k=k) == 0).all()
