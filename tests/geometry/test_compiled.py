"""``mosgeo.compiled``: the ops of ``mosgeo.math`` under ``torch.compile`` give the eager
values and gradients, and compile once per kind of curvature, whatever the batch size or the
curvature's value."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import mosgeo.compiled as cmath
import mosgeo.math as pmath
from mosgeo import _compat

pytestmark = pytest.mark.skipif(
    not _compat.compile_supported(), reason=f"needs torch>={_compat.COMPILE_MIN_TORCH}"
)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _points(rows: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, 16, generator=g) * 0.1).to(dtype)
    y = (torch.randn(rows, 16, generator=g) * 0.1).to(dtype)
    k = torch.empty(rows, 1).uniform_(-2.0, 2.0, generator=g).to(dtype)
    k[::3] = 0.0
    return x, y, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_dist_values_and_gradients(dtype):
    x, y, k = _points(64, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, y, k)]
    eager = pmath.dist(*leaves[:2], k=leaves[2], keepdim=True)
    eager.sum().backward()
    same = [t.clone().requires_grad_() for t in (x, y, k)]
    compiled = cmath.dist(*same[:2], k=same[2], keepdim=True)
    compiled.sum().backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol)
    for a, b in zip(same, leaves, strict=True):  # ∂/∂x, ∂/∂y and ∂/∂κ
        torch.testing.assert_close(a.grad, b.grad, rtol=10 * tol, atol=10 * tol)


def test_one_compilation_per_kind_of_curvature():
    x, y, k = _points(48)
    cmath.expmap0(x, k=k)  # the per-row kind
    cmath.expmap0(x, k=-1.0)  # the scalar kind
    start = _graphs()
    for rows in (32, 80, 200):  # new batch sizes
        xb, _, kb = _points(rows, seed=rows)
        torch.testing.assert_close(cmath.expmap0(xb, k=kb), pmath.expmap0(xb, k=kb))
    for value in (-0.5, 0.0, 1e-9, 2.0):  # new curvature values, as Python floats
        torch.testing.assert_close(cmath.expmap0(x, k=value), pmath.expmap0(x, k=value))
    assert _graphs() == start, "a batch size or a curvature value recompiled"


def test_mobius_matvec_compiles_once_per_kind_of_curvature_forward_and_backward():
    """The op compiled with its own inductor options (``mosgeo.compiled._OPTIONS``): new batch
    sizes and curvature values reuse the graphs, gradients included."""
    m = torch.randn(16, 16, generator=torch.Generator().manual_seed(1)) * 0.3

    def both(module, x, k):
        leaves = [t.clone().requires_grad_() for t in (m, x)]
        out = module.mobius_matvec(*leaves, k=k)
        out.sum().backward()
        return out, leaves[0].grad, leaves[1].grad

    x, _, k = _points(48)
    both(cmath, x, k)  # the per-row kind
    both(cmath, x, -1.0)  # the scalar kind
    start = _graphs()
    for rows in (32, 80, 200):
        xb, _, kb = _points(rows, seed=rows)
        for kk in (kb, -1.0, 0.0, 1e-9, 0.5):
            for c, e in zip(both(cmath, xb, kk), both(pmath, xb, kk), strict=True):
                torch.testing.assert_close(c, e)
    assert _graphs() == start, "a batch size or a curvature value recompiled"


def test_compiled_mobius_matvec_float64_values_and_gradcheck():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.4
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.2
    k = torch.tensor([[-1.0], [0.0], [1e-9], [0.7], [-3.0], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        cmath.mobius_matvec(m, x, k=k), pmath.mobius_matvec(m, x, k=k), rtol=1e-12, atol=1e-14
    )
    leaves = (m.clone().requires_grad_(), x.clone().requires_grad_())
    # gradcheck calls backward with retain_graph: compile the training graph without buffer
    # donation (a compiled backward may write into the saved Mx, which is then gone)
    with torch._functorch.config.patch(donated_buffer=False):
        assert torch.autograd.gradcheck(lambda a, b: cmath.mobius_matvec(a, b, k=k), leaves)


def test_the_compiled_ops_are_the_math_ops():
    x, y, k = _points(40)
    torch.testing.assert_close(cmath.mobius_add(x, y, k=k), pmath.mobius_add(x, y, k=k))
    assert set(cmath.OPS) <= set(pmath.__all__)
    assert cmath.dist.__wrapped__ is pmath.dist
    with pytest.raises(AttributeError):
        cmath.not_an_op  # noqa: B018


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_half_precision_points_stay_inside_the_ball(dtype):
    # the strictly-inside rule of point-returning ops runs outside the compiled graph, as
    # in eager mode: ‖expmap0(u)‖ < 1 in the storage dtype even for long tangent vectors
    u = torch.zeros(4, 2)
    u[:, 0] = torch.tensor([5.0, 10.0, 30.0, 1e4])
    u = u.to(dtype)
    y = cmath.expmap0(u, k=-1.0)
    assert y.dtype == dtype
    assert (y.float().norm(dim=-1) < 1).all(), y
    torch.testing.assert_close(y, pmath.expmap0(u, k=-1.0), rtol=0, atol=0)


@pytest.mark.parametrize("op", ["expmap0", "logmap0", "mobius_matvec"])
def test_the_radial_ops_compiled_give_the_eager_values_and_gradients(op):
    """The ops whose per-row factor is computed once per row under compile
    (``mosgeo._compat.realize``) and whose norm is one pass with two sums there
    (``mosgeo.numerics.sqnorm_norm``): rows of norm 1e-30 … 1e30 (a float32 square overflows
    from 1.8e19), mixed κ."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 16, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    scale = torch.logspace(-30, 30, 40, dtype=torch.float64).unsqueeze(-1)
    k = torch.empty(40, 1, dtype=torch.float64).uniform_(-0.8, 0.8, generator=g)
    k[::4] = 0.0
    if op == "logmap0":
        x = x * 0.9  # points: inside every ball of |κ| ≤ 0.8
    else:  # beyond norm 1, κ ≤ 0: tan_κ of a huge argument (κ > 0) is rounding noise
        x = x * scale
        k = torch.where(scale > 1, -k.abs(), k)
    x, k = x.float(), k.float()
    m = torch.randn(16, 16, generator=g) * 0.3
    weights = torch.randn(40, 16, generator=g)

    def run(module):
        leaf = x.clone().requires_grad_()
        args = (m, leaf) if op == "mobius_matvec" else (leaf,)
        out = getattr(module, op)(*args, k=k)
        (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
        return out, grad

    (out_c, grad_c), (out_e, grad_e) = run(cmath), run(pmath)
    assert torch.isfinite(out_c).all() and torch.isfinite(grad_c).all()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_norm_of_rows_whose_square_overflows(dtype):
    """Under compile ``sqnorm_norm`` takes ``‖x‖`` of a row whose square overflowed from the
    squares of ``x·big_scale`` over its large entries only, in the same pass: rows of norm
    1e-30 … 1e30 (float32, whose square overflows from 1.8e19) or 1e-300 … 1e300 (float64),
    a zero row, a row with one huge entry, rows mixing huge and small entries. The square is
    the eager one, the norm within a few ulp of a max-scaled float64 reference."""
    from mosgeo.numerics import guards, sqnorm_norm

    e = 30 if dtype == torch.float32 else 300
    g = torch.Generator().manual_seed(5)
    x = torch.randn(44, 16, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True) * torch.logspace(-e, e, 44, dtype=torch.float64)[:, None]
    x[0] = 0.0
    x[1] = 0.0
    x[1, 3] = -(10.0**e)
    x[2, :8] = 10.0 ** (e - 2)  # half huge, half small: the small ones are dropped
    x[2, 8:] = 1.0
    x[3, ::2] = 10.0 ** (e // 2 + 4)  # each square finite, their sum not
    x = x.to(dtype)
    compiled = torch.compile(lambda t: sqnorm_norm(t), fullgraph=True, dynamic=False)
    (q2_c, n_c), (q2_e, n_e) = compiled(x), sqnorm_norm(x)
    torch.testing.assert_close(n_c, n_e, rtol=4 * torch.finfo(dtype).eps, atol=0)
    torch.testing.assert_close(q2_c, q2_e, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.isfinite(n_c).all()
    amax = x.double().abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    ref = amax * (x.double() / amax).norm(dim=-1, keepdim=True)
    # tiny rows: their squares underflow, eager and compiled alike (a guard for large ones)
    big = ref > 1e3 * guards(dtype).min_norm
    assert big[1:].sum() > 30
    torch.testing.assert_close(n_c.double()[big], ref[big], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.isinf(q2_c[3]).all()


# --------------------------------------------------------------------------------------
# the training form of the compiled mobius_matvec: mosgeo.math._LinearScale
# --------------------------------------------------------------------------------------

#: κ < 0, κ = 0, tiny |κ| of both signs, κ > 0, and one κ per row
LINEAR_KS = {
    "-2": -2.0,
    "-1e-12": -1e-12,
    "0": 0.0,
    "+1e-12": 1e-12,
    "+0.7": 0.7,
    "rows": [[-2.0], [-1e-9], [0.0], [1e-9], [0.7], [3.0]],
}


def _plain_scale(y, x, k, dim=-1):
    """Autograd through the formula: what ``mobius_matvec`` runs eagerly."""
    from mosgeo.math import _linear_factor, _radial
    from mosgeo.numerics import sqnorm, sqnorm_norm

    return _radial(y, _linear_factor(sqnorm(x, dim), *sqnorm_norm(y, dim), k))


@pytest.mark.parametrize("kid", list(LINEAR_KS))
def test_linear_scale_backward_is_autograd_of_the_formula(kid):
    """The hand-made backward (per-row derivatives taken in the forward) gives autograd's
    gradients of the same formula in y, x and κ, in float64, through the series branch and
    both closed forms; gradcheck and gradgradcheck (its double backward) pass."""
    from torch.autograd import gradcheck, gradgradcheck

    from mosgeo.math import _LinearScale

    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.2  # inside the κ = −2 ball
    y = torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.4
    y[1] = 0.0  # Mx = 0
    k = torch.tensor(LINEAR_KS[kid], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (y, x, k)]
    ref = [t.clone().requires_grad_() for t in (y, x, k)]
    out = _LinearScale.apply(*leaves, -1)
    want = _plain_scale(*ref)
    torch.testing.assert_close(out, want, rtol=1e-15, atol=0)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), leaves)
    exp = torch.autograd.grad((want * w).sum(), ref)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-300)
    assert gradcheck(lambda *t: _LinearScale.apply(*t, -1), leaves)
    assert gradgradcheck(lambda *t: _LinearScale.apply(*t, -1), leaves)


def test_linear_scale_broadcast_rows_and_other_dims():
    """Per-row derivatives of rows that share a broadcast x or κ (batched M, dim = 0)."""
    from torch.autograd import gradcheck

    g = torch.Generator().manual_seed(8)
    m = torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x = (torch.randn(5, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    k = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)

    def batched(m, x, k):
        from mosgeo.math import _LinearScale

        return _LinearScale.apply(torch.matmul(m, x.unsqueeze(-1)).squeeze(-1), x, k, -1)

    assert gradcheck(batched, (m, x, k))
    m2 = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = (torch.randn(5, 6, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    k2 = torch.tensor([[-1.0, 0.0, 0.5, 1e-9, -2.0, 1.0]], dtype=torch.float64)

    def dim0(m, x, k):
        from mosgeo.math import _LinearScale

        return _LinearScale.apply(torch.tensordot(x, m, dims=([0], [1])).movedim(-1, 0), x, k, 0)

    assert gradcheck(dim0, (m2, x2, k2.requires_grad_()))


def test_linear_scale_float32_rows_of_huge_and_tiny_norm():
    """float32 rows of norm 1e-30 … 1e30, κ ≤ 0 beyond norm 1: the derivatives of F are of
    order F/‖Mx‖², subnormal or 0 for ‖Mx‖ ≳ 1e15, so they are kept times ‖Mx‖; the
    gradients in M and x are autograd's of the formula (without that scaling they are
    0.5 % … 60 % off on those rows)."""
    from mosgeo.math import _LinearScale

    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 16, generator=g, dtype=torch.float64)
    scale = torch.logspace(-30, 30, 40, dtype=torch.float64).unsqueeze(-1)
    x = x / x.norm(dim=-1, keepdim=True) * scale
    k = torch.empty(40, 1, dtype=torch.float64).uniform_(-0.8, 0.8, generator=g)
    k[::4] = 0.0
    k = torch.where(scale > 1, -k.abs(), k).float()
    x = x.float()
    m = torch.randn(16, 16, generator=g) * 0.3
    w = torch.randn(40, 16, generator=g)

    def grads(scale_fn):
        leaves = [t.clone().requires_grad_() for t in (m, x)]
        out = scale_fn(leaves[1] @ leaves[0].T, leaves[1], k)
        return torch.autograd.grad((out * w).sum(), leaves)

    got = grads(lambda *t: _LinearScale.apply(*t, -1))
    for a, b in zip(got, grads(_plain_scale), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_mobius_matvec_half_precision_gradients(dtype):
    """Half precision runs the float32 graph (the island): values and gradients in m and x
    finite and those of eager mode, κ < 0, 0, tiny and > 0 per row."""
    g = torch.Generator().manual_seed(9)
    m = (torch.randn(16, 16, generator=g) * 0.3).to(dtype)
    x = (torch.randn(48, 16, generator=g) * 0.1).to(dtype)
    k = torch.tensor([-2.0, -1e-9, 0.0, 1e-9, 0.7, 1.0] * 8, dtype=dtype).unsqueeze(-1)

    def both(module):
        leaves = [t.clone().requires_grad_() for t in (m, x)]
        out = module.mobius_matvec(*leaves, k=k)
        out.float().square().sum().backward()
        return out, leaves[0].grad, leaves[1].grad

    for c, e in zip(both(cmath), both(pmath), strict=True):
        assert c.dtype == dtype and torch.isfinite(c).all()
        torch.testing.assert_close(c, e, rtol=0.02, atol=1e-3)


def test_compiled_mobius_matvec_curvature_gradient():
    """A learnt κ (a leaf that requires grad) through the compiled training graph: ∂/∂κ,
    ∂/∂M and ∂/∂x are eager mode's in float64, κ scalar (< 0, 0, tiny, > 0) and per row."""
    g = torch.Generator().manual_seed(10)
    m = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.4
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.2

    def both(module, kv):
        leaves = [t.clone().requires_grad_() for t in (m, x, torch.tensor(kv, dtype=m.dtype))]
        out = module.mobius_matvec(*leaves[:2], k=leaves[2])
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    for kv in (-1.0, 0.0, 1e-12, -1e-12, 0.5, [[-1.0], [0.0], [1e-9], [0.7], [-3.0], [2.0]]):
        for c, e in zip(both(cmath, kv), both(pmath, kv), strict=True):
            torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-14)
