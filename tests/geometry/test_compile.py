"""The ops run under ``torch.compile(fullgraph=True)`` on a mixed-sign curvature batch.

One combined function of the main ops and charts is compiled with the default (inductor)
backend, forward and backward (gradients w.r.t. x and κ) against eager. Per-op checks use
``backend="aot_eager"`` (traces forward and backward graphs like inductor, without code
generation) and the ``Stereographic`` class methods are compiled with ``fullgraph=True``,
which fails on any graph break (argument validation is skipped while compiling).
"""

from __future__ import annotations

import shutil

import pytest
import torch

import mosgeo.charts as charts
import mosgeo.math as pmath
from mosgeo import PoincareBall, Stereographic, _compat

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.skipif(
        not _compat.compile_supported(), reason=f"needs torch>={_compat.COMPILE_MIN_TORCH}"
    ),
]

# κ = 0, ±1e-9 (the series branch), hyperbolic and spherical rows in one batch
K_MIXED = [[-1.0], [0.0], [1e-9], [-1e-9], [2.0]]
B, N = len(K_MIXED), 4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    k = torch.tensor(K_MIXED, dtype=dtype)
    x = torch.randn(B, N, generator=g, dtype=dtype) * 0.2
    y = torch.randn(B, N, generator=g, dtype=dtype) * 0.2
    u = torch.randn(B, N, generator=g, dtype=dtype) * 0.3
    m = torch.randn(N, N, generator=g, dtype=dtype)
    r = torch.tensor(0.7, dtype=dtype)
    return x, y, u, m, r, k


def _run(fn, x, y, u, m, r, k):
    """Outputs and the gradients of Σ out² w.r.t. x and κ."""
    xs = x.clone().requires_grad_(True)
    ks = k.clone().requires_grad_(True)
    outs = fn(xs, y, u, m, r, ks)
    loss = sum((o.float() ** 2).sum() for o in outs)
    gx, gk = torch.autograd.grad(loss, [xs, ks])
    return [o.detach() for o in outs], gx, gk


def _compare(eager, compiled, atol=1e-5, rtol=1e-4):
    # eager runs first: it fills mosgeo's series-coefficient cache, which dynamo would
    # otherwise trace through (pure-Python Fraction arithmetic, seconds of tracing)
    (o1, gx1, gk1), (o2, gx2, gk2) = compiled, eager
    assert len(o1) == len(o2)
    for i, (a, b) in enumerate(zip(o1, o2, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda s, i=i: f"out {i}: {s}")
    torch.testing.assert_close(gx1, gx2, atol=atol, rtol=rtol)
    torch.testing.assert_close(gk1, gk2, atol=atol, rtol=rtol)
    for t in (*o1, gx1, gk1):
        assert torch.isfinite(t).all()


def combined(x, y, u, m, r, k):
    d = pmath.dist(x, y, k=k)
    a = pmath.mobius_add(x, y, k=k)
    e0 = pmath.expmap0(u, k=k)
    l0 = pmath.logmap0(x, k=k)
    e = pmath.expmap(x, u, k=k)
    lg = pmath.logmap(x, y, k=k)
    mv = pmath.mobius_matvec(m, x, k=k)
    sm = pmath.mobius_scalar_mul(r, x, k=k)
    p = pmath.project(x * 3, k=k)
    s = charts.to_spacelike(x, k=k)
    c = charts.clip_spacelike(s * 3, k=k)
    fs = charts.from_spacelike(c, k=k)
    return d, a, e0, l0, e, lg, mv, sm, p, s, c, fs


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="inductor's CPU backend needs a C++ compiler",
)
def test_combined_ops_inductor_fullgraph() -> None:
    """Default backend (inductor): forward values and gradients in x and κ equal eager."""
    data = _data()
    compiled = torch.compile(combined, fullgraph=True)
    eager = _run(combined, *data)
    _compare(eager, _run(compiled, *data))


OPS = {
    "dist": lambda x, y, u, m, r, k: pmath.dist(x, y, k=k, keepdim=True),
    "dist0": lambda x, y, u, m, r, k: pmath.dist0(x, k=k),
    "mobius_add": lambda x, y, u, m, r, k: pmath.mobius_add(x, y, k=k),
    "mobius_coadd": lambda x, y, u, m, r, k: pmath.mobius_coadd(x, y, k=k),
    "gyration": lambda x, y, u, m, r, k: pmath.gyration(x, y, u, k=k),
    "expmap": lambda x, y, u, m, r, k: pmath.expmap(x, u, k=k),
    "logmap": lambda x, y, u, m, r, k: pmath.logmap(x, y, k=k),
    "geodesic": lambda x, y, u, m, r, k: pmath.geodesic(r, x, y, k=k),
    "geodesic_unit": lambda x, y, u, m, r, k: pmath.geodesic_unit(r, x, u, k=k),
    "parallel_transport": lambda x, y, u, m, r, k: pmath.parallel_transport(x, y, u, k=k),
    "dist2plane": lambda x, y, u, m, r, k: pmath.dist2plane(x, y, u, k=k, signed=True),
    "mobius_pointwise_mul": lambda x, y, u, m, r, k: pmath.mobius_pointwise_mul(u, x, k=k),
    "mobius_fn_apply": lambda x, y, u, m, r, k: pmath.mobius_fn_apply(torch.tanh, x, k=k),
    "inner": lambda x, y, u, m, r, k: pmath.inner(x, u, y, k=k),
    "egrad2rgrad": lambda x, y, u, m, r, k: pmath.egrad2rgrad(x, u, k=k),
    "antipode": lambda x, y, u, m, r, k: pmath.antipode(x, k=k),
    "to_ambient": lambda x, y, u, m, r, k: charts.to_ambient(x, k=k),
    "from_ambient": lambda x, y, u, m, r, k: charts.from_ambient(charts.to_ambient(x, k=k), k=k),
    "tan_k": lambda x, y, u, m, r, k: pmath.tan_k(x, k),
    "artan_k": lambda x, y, u, m, r, k: pmath.artan_k(x, k),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_aot_eager_fullgraph(name: str) -> None:
    fn = OPS[name]

    def wrapped(*args):
        return (fn(*args),)

    data = _data(torch.float64)
    compiled = torch.compile(wrapped, backend="aot_eager", fullgraph=True)
    if name in ("to_ambient", "from_ambient"):  # κ ≠ 0 only: drop the κ = 0 and ±1e-9 rows
        x, y, u, m, r, k = data
        rows = [0, 4]
        data = (x[rows], y[rows], u[rows], m, r, k[rows])
    eager = _run(wrapped, *data)
    _compare(eager, _run(compiled, *data), atol=1e-10, rtol=1e-9)


def test_half_precision_island_compiles() -> None:
    """float16 inputs are computed in float32 and cast back, also when compiled."""
    x, y, *_, k = _data()
    x16, y16, k16 = x.half(), y.half(), k.half()
    fn = torch.compile(lambda a, b, c: pmath.dist(a, b, k=c), backend="aot_eager", fullgraph=True)
    out = fn(x16, y16, k16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, pmath.dist(x16, y16, k=k16))


def test_manifold_methods_compile_without_graph_breaks() -> None:
    """``Stereographic`` methods with a learnable (B, 1) κ under fullgraph=True: the host-side
    validation is skipped while tracing, so there is no graph break; values and gradients
    (x and κ) equal eager, where validation runs."""
    x, y, u, m, r, k = _data()
    M = Stereographic(k, learnable=True)

    def methods(x, y, u, m, r, k_unused):
        return (
            M.dist(x, y),
            M.mobius_add(x, y),
            M.expmap(x, u),
            M.logmap(x, y),
            M.expmap0(u),
            M.logmap0(x),
            M.projx(x * 9),
            M.egrad2rgrad(x, u),
            M.inner(x, u),
            M.transp(x, y, u),
            M.mobius_matvec(m, x),
            M.mobius_scalar_mul(r, x),
            M.to_spacelike(x),
            M.from_spacelike(M.clip_spacelike(u * 5)),
        )

    def run(fn):
        xs = x.clone().requires_grad_(True)
        outs = fn(xs, y, u, m, r, k)
        loss = sum((o**2).sum() for o in outs)
        gx, gk = torch.autograd.grad(loss, [xs, M.k])
        return [o.detach() for o in outs], gx, gk

    compiled = torch.compile(methods, backend="aot_eager", fullgraph=True)
    eager = run(methods)
    _compare(eager, run(compiled))
    # a mismatched call still raises eagerly
    with pytest.raises(ValueError):
        M.dist(torch.zeros(3, N), torch.zeros(3, N))


def test_fixed_sign_subclass_compiles() -> None:
    """PoincareBall's κ = −softplus(ρ) property, learnable, under fullgraph=True."""
    x, y, *_ = _data()
    P = PoincareBall(torch.full((B, 1), 2.0), learnable=True)

    def fn(a, b):
        return P.dist(a, b) + P.dist0(P.mobius_add(a, b))

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(x, y)
    ref = fn(x, y)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(compiled(x, y).sum(), [P.isp_c])
    (g2,) = torch.autograd.grad(fn(x, y).sum(), [P.isp_c])
    torch.testing.assert_close(g1, g2)
