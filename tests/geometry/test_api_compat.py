"""``mosgeo.math`` is a drop-in for ``geoopt.manifolds.stereographic.math``.

* every public function of geoopt's module exists here with a compatible signature
  (enumerated programmatically, so a new geoopt function shows up as a failure);
* ``import mosgeo.math as pmath`` runs geoopt-style model code unchanged with the same numbers;
* the geoopt bugs mosgeo fixes, each tested for *both* behaviours (geoopt's and ours), so a
  geoopt upgrade that fixes them is noticed.
"""

from __future__ import annotations

import inspect
import math

import geoopt.manifolds.stereographic.math as gmath
import pytest
import torch

import mosgeo.math as mmath

F64 = torch.float64
GMOD = gmath.__name__

# public Python functions defined in geoopt's module (not the helpers it imports)
GEOOPT_FUNCTIONS = sorted(
    name
    for name, obj in vars(gmath).items()
    if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == GMOD
)
# public TorchScript functions defined there (tan_k, artan_k, …: ``__module__`` is torch.jit)
GEOOPT_SCRIPTED = sorted(
    name
    for name, obj in vars(gmath).items()
    if not name.startswith("_")
    and isinstance(obj, torch.jit.ScriptFunction)
    and obj.qualified_name == f"__torch__.{GMOD}.{name}"
)

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
# options whose defaults must match geoopt's exactly
OPTIONS = {"dim", "keepdim", "signed", "scaled", "reducedim", "lincomb", "posweight", "order"}


def kt(v) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


# --------------------------------------------------------------------------------------
# every public function, compatible signatures
# --------------------------------------------------------------------------------------


def test_enumeration_finds_geoopt_api() -> None:
    assert {"mobius_add", "expmap", "dist", "project", "weighted_midpoint"} <= set(GEOOPT_FUNCTIONS)
    assert {"tan_k", "artan_k", "sin_k", "arsin_k", "tan_k_zero_taylor"} <= set(GEOOPT_SCRIPTED)


def test_every_geoopt_function_exists() -> None:
    missing = [
        n for n in GEOOPT_FUNCTIONS + GEOOPT_SCRIPTED if not callable(getattr(mmath, n, None))
    ]
    assert not missing, f"mosgeo.math lacks geoopt functions: {missing}"


def test_public_functions_are_in_all() -> None:
    missing = [n for n in GEOOPT_FUNCTIONS + GEOOPT_SCRIPTED if n not in mmath.__all__]
    assert not missing, f"not in mosgeo.math.__all__: {missing}"


@pytest.mark.parametrize("name", GEOOPT_FUNCTIONS)
def test_signature_compatible(name: str) -> None:
    theirs = inspect.signature(getattr(gmath, name)).parameters
    ours = inspect.signature(getattr(mmath, name)).parameters
    # same positional parameters, same names, same order
    assert [n for n, p in ours.items() if p.kind in POSITIONAL] == [
        n for n, p in theirs.items() if p.kind in POSITIONAL
    ], f"{name}: positional parameters differ"
    # a geoopt default is kept (ours may add a default where geoopt has none: inner's v)
    for n, p in theirs.items():
        if p.kind in POSITIONAL and p.default is not inspect.Parameter.empty:
            assert ours[n].default == p.default, f"{name}({n}) default"
    # *args / *fns where geoopt has them
    for kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        assert [n for n, p in ours.items() if p.kind == kind] == [
            n for n, p in theirs.items() if p.kind == kind
        ], f"{name}: {kind}"
    # keyword-only curvature
    if "k" in theirs:
        assert ours["k"].kind == inspect.Parameter.KEYWORD_ONLY, f"{name}: k not keyword-only"
        assert ours["k"].default is inspect.Parameter.empty, f"{name}: k must be required"
    # options: same kind and default
    for n, p in theirs.items():
        if n in OPTIONS:
            assert n in ours, f"{name}: option {n!r} missing"
            assert ours[n].kind == p.kind, f"{name}({n}) kind"
            assert ours[n].default == p.default, f"{name}({n}) default"
    # geoopt's eps=-1 means "default": ours None; both accepted (checked numerically below)
    if "eps" in theirs:
        assert theirs["eps"].default == -1 and ours["eps"].default in (None, -1)
    # extras must be optional
    for n, q in ours.items():
        if n not in theirs:
            assert q.default is not inspect.Parameter.empty or q.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ), f"{name}: extra parameter {n!r} is required"


@pytest.mark.parametrize("name", GEOOPT_SCRIPTED)
def test_scripted_signature_compatible(name: str) -> None:
    """geoopt's TorchScript helpers (``tan_k(x, k)``, ``tan_k_zero_taylor(x, k, order=-1)``):
    same argument names in order, all positional, same defaults."""
    schema = getattr(gmath, name).schema.arguments
    ours = list(inspect.signature(getattr(mmath, name)).parameters.values())
    assert [p.name for p in ours] == [a.name for a in schema]
    for p, a in zip(ours, schema, strict=True):
        assert p.kind in POSITIONAL, f"{name}({p.name}) must be positional as in geoopt"
        if a.has_default_value():
            assert p.default == a.default_value, f"{name}({p.name}) default"
        else:
            assert p.default is inspect.Parameter.empty


@pytest.mark.parametrize("eps", [None, -1, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_project_default_eps_spellings(eps, dtype) -> None:
    x = torch.tensor([[3.0, 4.0], [0.1, 0.2]], dtype=dtype)
    k = torch.tensor(-1.0, dtype=dtype)
    ref = mmath.project(x, k=k)
    torch.testing.assert_close(mmath.project(x, k=k, eps=eps), ref, rtol=0, atol=0)
    # an explicit eps is honoured (geoopt meaning: radius (1 − eps)/√|κ|)
    n = mmath.project(x, k=k, eps=0.01).norm(dim=-1)
    torch.testing.assert_close(n, torch.tensor([0.99, 0.2236068], dtype=dtype))
    torch.testing.assert_close(
        mmath.project(x, k=k, eps=0.01), gmath.project(x, k=k, eps=0.01), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kv", [-1.0, -0.3, 0.0, 0.5, 2.0])
@pytest.mark.parametrize("name", ["tan_k", "artan_k", "sin_k", "arsin_k"])
def test_scripted_kappa_trig_matches_geoopt(name: str, kv: float) -> None:
    # in-domain arguments: |√κ x| < 1 for artan/arsin with κ > 0 and artan with κ < 0
    x = torch.linspace(-0.9, 0.9, 41, dtype=F64) / max(abs(kv), 1.0) ** 0.5
    k = kt(kv)
    torch.testing.assert_close(getattr(mmath, name)(x, k), getattr(gmath, name)(x, k))


@pytest.mark.parametrize("name", ["tanh", "artanh", "arsinh", "abs_zero_grad"])
def test_scripted_helpers_match_geoopt(name: str) -> None:
    x = torch.linspace(-0.99, 0.99, 41, dtype=F64)
    torch.testing.assert_close(getattr(mmath, name)(x), getattr(gmath, name)(x))
    # abs_zero_grad: |x| with derivative +1 at 0, as geoopt
    z = torch.zeros(1, dtype=F64, requires_grad=True)
    if name == "abs_zero_grad":
        (g,) = torch.autograd.grad(mmath.abs_zero_grad(z).sum(), [z])
        assert g.item() == 1.0


@pytest.mark.parametrize("order", [-1, 0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", ["tan_k", "artan_k", "sin_k", "arsin_k"])
def test_zero_taylor_matches_geoopt_for_positive_k(name: str, order: int) -> None:
    x = torch.linspace(-0.5, 0.5, 11, dtype=F64)
    k = kt(0.3)
    fn = f"{name}_zero_taylor"
    torch.testing.assert_close(getattr(mmath, fn)(x, k, order), getattr(gmath, fn)(x, k, order))
    torch.testing.assert_close(
        getattr(mmath, fn)(x, k, order=order), getattr(gmath, fn)(x, k, order=order)
    )


# --------------------------------------------------------------------------------------
# geoopt-style model code with ``pmath`` swapped
# --------------------------------------------------------------------------------------


def mobius_linear(pmath, x, weight, bias, k):
    """Hyperbolic linear layer (Ganea et al. 2018) as written against geoopt's pmath."""
    out = pmath.mobius_matvec(weight, x, k=k)
    out = pmath.mobius_add(out, pmath.expmap0(bias, k=k), k=k)
    out = pmath.project(out, k=k)
    out = pmath.mobius_fn_apply(torch.tanh, out, k=k)
    return pmath.project(out, k=k)


def hyperbolic_mlr(pmath, x, p_tangent, a, k):
    """Hyperbolic multinomial logistic regression: signed, scaled distances to gyroplanes."""
    p = pmath.expmap0(p_tangent, k=k)
    a = pmath.parallel_transport0(p, a, k=k)
    lam = pmath.lambda_x(p, k=k, keepdim=True)
    return pmath.dist2plane(x.unsqueeze(-2), p, a, k=k, signed=True, scaled=True) * lam.squeeze(-1)


def model(pmath, params, x, y, k):
    h = mobius_linear(pmath, x, params["w1"], params["b1"], k)
    h = pmath.mobiusify(torch.nn.functional.softplus)(h, k=k)
    h = mobius_linear(pmath, h, params["w2"], params["b2"], k)
    logits = hyperbolic_mlr(pmath, h, params["p"], params["a"], k)
    loss = torch.nn.functional.cross_entropy(logits, y)
    # a prototype term, gyromidpoint pooling and a geodesic, as hyperbolic models do
    centre = pmath.weighted_midpoint(h, k=k, reducedim=[0])
    loss = loss + pmath.dist(h, centre, k=k).pow(2).mean() * 0.1
    loss = (
        loss
        + pmath.logmap0(pmath.geodesic(torch.tensor(0.3, dtype=F64), h, centre, k=k), k=k)
        .pow(2)
        .mean()
    )
    loss = loss + pmath.mobius_scalar_mul(torch.tensor(0.5, dtype=F64), h, k=k).pow(2).mean()
    loss = loss + pmath.dist0(pmath.mobius_pointwise_mul(params["w1"][0], x, k=k), k=k).mean()
    return loss, logits


@pytest.mark.parametrize("kv", [-1.0, -0.5, 0.0, 0.7])
def test_geoopt_style_model_runs_with_mosgeo_math(kv: float) -> None:
    g = torch.Generator().manual_seed(0)
    n, hdim, classes, batch = 4, 5, 3, 16

    def rnd(*shape, s=0.3):
        return (torch.randn(*shape, dtype=F64, generator=g) * s).requires_grad_(True)

    params = {
        "w1": rnd(hdim, n),
        "b1": rnd(hdim, s=0.1),
        "w2": rnd(hdim, hdim),
        "b2": rnd(hdim, s=0.1),
        "p": rnd(classes, hdim, s=0.2),
        "a": rnd(classes, hdim),
    }
    x = mmath.expmap0(torch.randn(batch, n, dtype=F64, generator=g) * 0.3, k=kt(kv))
    y = torch.randint(0, classes, (batch,), generator=g)
    results = []
    for pmath in (gmath, mmath):
        k = kt(kv).requires_grad_(True)
        loss, logits = model(pmath, params, x, y, k)
        grads = torch.autograd.grad(loss, [*params.values(), k])
        results.append((loss.detach(), logits.detach(), grads))
    (l1, z1, g1), (l2, z2, g2) = results
    assert torch.isfinite(l2)
    torch.testing.assert_close(z2, z1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(l2, l1, rtol=1e-9, atol=1e-10)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_manifold_class_accepts_mosgeo_math_swap() -> None:
    """geoopt's own manifold code calls ``math.<fn>(…, k=self.k)``: the same calls on
    mosgeo.math with geoopt's keyword spelling (``xs=``, ``weights=``) work."""
    xs = torch.randn(6, 3, dtype=F64) * 0.2
    k = kt(-1.0)
    w = torch.rand(6, dtype=F64)
    torch.testing.assert_close(
        mmath.weighted_midpoint(xs=xs, weights=w, k=k, reducedim=[0], dim=-1, keepdim=False),
        gmath.weighted_midpoint(xs=xs, weights=w, k=k, reducedim=[0], dim=-1, keepdim=False),
    )
    torch.testing.assert_close(
        mmath.dist2plane(xs, xs.flip(0), xs + 1, dim=-1, k=k, keepdim=False),
        gmath.dist2plane(xs, xs.flip(0), xs + 1, dim=-1, k=k, keepdim=False),
    )


# --------------------------------------------------------------------------------------
# geoopt bugs mosgeo fixes (both behaviours asserted)
# --------------------------------------------------------------------------------------


def test_inner_keepdim_false_shape() -> None:
    """geoopt: ``lambda_x(keepdim=True)² · sum(keepdim=False)`` is a (B, 1)·(B,) outer
    product, (B, B); mosgeo: (B,), the diagonal of geoopt's result."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, dtype=F64, generator=g) * 0.2
    u = torch.randn(4, 3, dtype=F64, generator=g)
    v = torch.randn(4, 3, dtype=F64, generator=g)
    k = kt(-1.0)
    theirs = gmath.inner(x, u, v, k=k)
    ours = mmath.inner(x, u, v, k=k)
    assert theirs.shape == (4, 4)  # geoopt's bug
    assert ours.shape == (4,)
    torch.testing.assert_close(ours, torch.diagonal(theirs))
    torch.testing.assert_close(
        mmath.inner(x, u, v, k=k, keepdim=True), gmath.inner(x, u, v, k=k, keepdim=True)
    )


def test_dist_keepdim_false_with_per_row_curvature() -> None:
    """geoopt: with a (B, 1) κ, ``dist(keepdim=False)`` broadcasts (B,) against (B, 1): (B, B)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, dtype=F64, generator=g) * 0.2
    y = torch.randn(4, 3, dtype=F64, generator=g) * 0.2
    k = kt([[-1.0], [-0.5], [0.5], [1.0]])
    theirs = gmath.dist(x, y, k=k)
    ours = mmath.dist(x, y, k=k)
    assert theirs.shape == (4, 4) and ours.shape == (4,)
    torch.testing.assert_close(ours, torch.diagonal(theirs))


def test_dist_curvature_gradient_sign_near_zero() -> None:
    """geoopt switches to a first-order polynomial in |κ| only where κ is numerically 0: at
    κ = −1e-8 its ∂d/∂κ has the wrong sign. mosgeo's matches the derivative at κ = 0."""
    x, y = kt([0.1, 0.2]), kt([0.3, -0.1])

    def grad(mod, kv):
        k = kt(kv).requires_grad_(True)
        (g,) = torch.autograd.grad(mod.dist(x, y, k=k), [k])
        return g.item()

    at_zero = grad(mmath, 0.0)
    assert at_zero < 0  # distances shrink as κ grows
    assert grad(gmath, 0.0) == pytest.approx(at_zero, rel=1e-9)  # geoopt right at exactly 0
    assert grad(mmath, -1e-8) == pytest.approx(at_zero, rel=1e-6)
    assert grad(mmath, 1e-8) == pytest.approx(at_zero, rel=1e-6)
    theirs = grad(gmath, -1e-8)
    assert theirs > 0, theirs  # geoopt's bug: wrong sign
    # finite difference confirms the sign of the true derivative
    h = 1e-5
    fd = (mmath.dist(x, y, k=kt(h)) - mmath.dist(x, y, k=kt(-h))).item() / (2 * h)
    assert fd == pytest.approx(at_zero, rel=1e-6)


@pytest.mark.parametrize(
    "name, closed",
    [
        ("tan_k", lambda s, x: math.tanh(s * x) / s),
        ("artan_k", lambda s, x: math.atanh(s * x) / s),
        ("sin_k", lambda s, x: math.sinh(s * x) / s),
        ("arsin_k", lambda s, x: math.asinh(s * x) / s),
    ],
)
def test_zero_taylor_uses_signed_curvature(name: str, closed) -> None:
    """geoopt's ``*_zero_taylor`` evaluate the series with |κ|: for κ < 0 they give the
    spherical function. mosgeo's match the hyperbolic closed form; geoopt's equal mosgeo's
    at +|κ|."""
    kv, xv = -0.1, 0.5
    x, k = kt(xv), kt(kv)
    fn = f"{name}_zero_taylor"
    exact = closed(abs(kv) ** 0.5, xv)
    ours = getattr(mmath, fn)(x, k).item()
    theirs = getattr(gmath, fn)(x, k).item()
    assert ours == pytest.approx(exact, rel=1e-9)
    assert abs(theirs - exact) > 1e-3  # geoopt's bug
    assert theirs == pytest.approx(getattr(mmath, fn)(x, -k).item(), rel=1e-12)


def test_artanh_clamp_caps_float64_distances() -> None:
    """geoopt clamps atanh's argument at 1 − 1e-7 in every dtype: in float64 distances to
    the origin are capped at 2·atanh(1 − 1e-7) ≈ 16.8."""
    r = 1 - 1e-12
    x = kt([r, 0.0])
    exact = 2 * math.atanh(r)  # ≈ 28.3
    assert mmath.dist0(x, k=kt(-1.0)).item() == pytest.approx(exact, rel=1e-3)
    assert gmath.dist0(x, k=kt(-1.0)).item() == pytest.approx(2 * math.atanh(1 - 1e-7), rel=1e-6)


def test_arsinh_accuracy_for_large_negative_arguments() -> None:
    """geoopt's ``log(x + √(1 + x²))`` cancels for x ≪ −1; mosgeo's is ``torch.asinh``."""
    x = kt([-1e4, -1e8])
    exact = torch.tensor([math.asinh(-1e4), math.asinh(-1e8)], dtype=F64)
    torch.testing.assert_close(mmath.arsinh(x), exact, rtol=1e-14, atol=0)
    assert ((gmath.arsinh(x) - exact).abs() / exact.abs()).max() > 1e-3  # geoopt's bug
