r"""``Stereographic``: the κ-stereographic manifold as a geoopt ``Manifold``.

A thin layer over :mod:`mosgeo.math` and :mod:`mosgeo.charts`. Every method of geoopt's
``Stereographic`` exists with the same signature and meaning, so ``geoopt.ManifoldParameter``
and ``geoopt.optim.RiemannianAdam`` work with it and code written for geoopt's class runs
unchanged. ``k`` may be a scalar or have shape ``(m, 1)`` (m curvatures at once, e.g. one
per expert); it is a buffer, or an ``nn.Parameter`` when ``learnable``.

Argument validation (``validate_args=True``, as in ``torch.distributions``): methods raise
``ValueError`` for mismatched point dimensions, a curvature that does not broadcast against
the points, or a non-finite κ. The κ check reads κ on the host; pass ``validate_args=False``
to skip it (it is also skipped while ``torch.compile`` traces).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import geoopt
import torch
from geoopt.manifolds.base import Manifold, ScalingInfo
from geoopt.utils import size2shape

from . import charts
from . import math as pmath
from .numerics import guards

#: The projection margins of the manifold classes (their ``margin`` argument).
MARGINS = ("geoopt", "tight")

Tensor = torch.Tensor

__all__ = [
    "Stereographic",
    "StereographicExact",
    "PoincareBall",
    "PoincareBallExact",
    "SphereProjection",
    "SphereProjectionExact",
    "Euclidean",
]


def _inv_softplus(y: Tensor) -> Tensor:
    # log(exp(y) - 1) without overflow for large y
    return y + torch.log(-torch.expm1(-y))


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


class Stereographic(Manifold):
    r"""The κ-stereographic model: Poincaré ball, Euclidean space or projected sphere.

    κ < 0 is the Poincaré ball of radius 1/√|κ|, κ = 0 Euclidean space (metric scaled by 2,
    as in geoopt) and κ > 0 the stereographic projection of the sphere of radius 1/√κ: one
    class and one code path, smooth in κ through 0. Each method evaluates a formula of
    :mod:`mosgeo.math` (or :mod:`mosgeo.charts`) with this manifold's κ; its docstring links
    to it. Every method takes ``dim``, the axis of the vectors (default −1); the methods
    that return points take ``project=True``, which applies :meth:`projx` to the result.

    Args:
        k: Curvature: a scalar, or shape ``(m, 1)`` for m manifolds at once.
        learnable: Hold κ as an ``nn.Parameter`` (trainable, free to change sign) instead
            of a buffer.
        dim: Point dimension ``n``; when given, points of another size are rejected.
        validate_args: Check shapes and κ on every call (see the module docstring).
        margin: The margin of :meth:`projx` (and every ``project=True``) inside the ball's
            boundary: ``"geoopt"`` (default) geoopt's 4e-3 (float32) / 1e-5 (float64), or
            ``"tight"``, the margin of :func:`mosgeo.math.project` (√ε: 3.5e-4 / 1.5e-8),
            which reaches 1.4× farther from the origin but keeps too few digits of
            points driven repeatedly to the rim (``docs/geoopt.md``, "The rim").

    Raises:
        ValueError: ``k`` is not finite, or neither a scalar nor of shape ``(m, 1)``; ``dim``
            is not a positive int.
    """

    #: One manifold dimension, as points are vectors (geoopt's ``Manifold.ndim``).
    ndim = 1
    #: Whether the retraction is reversible, a geoopt flag its samplers need; ``False`` here,
    #: ``True`` for :class:`StereographicExact`, whose retraction is the exponential map.
    reversible = False
    #: The class name, e.g. ``"PoincareBall"`` (geoopt's ``Manifold.name``).
    name = property(lambda self: self.__class__.__name__)
    __scaling__ = Manifold.__scaling__.copy()

    def __init__(
        self,
        k: Union[float, Tensor] = 0.0,
        learnable: bool = False,
        dim: int | None = None,
        validate_args: bool = True,
        margin: str = "geoopt",
    ):
        super().__init__()
        if margin not in MARGINS:
            raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
        self.margin = margin
        k = torch.as_tensor(k)
        if not torch.is_floating_point(k):
            k = k.to(torch.get_default_dtype())
        self._validate_k_value(k)
        scalar = k.dim() == 0 or (k.dim() == 1 and k.numel() == 1)
        if not (scalar or (k.dim() == 2 and k.shape[1] == 1)):
            raise ValueError(
                f"k must be a scalar or have shape (m, 1) (one curvature per row), "
                f"got shape {tuple(k.shape)}"
            )
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.dim = dim
        self.validate_args = validate_args
        self._init_curvature(k.detach().clone(), learnable)

    def _init_curvature(self, k: Tensor, learnable: bool) -> None:
        if learnable:
            self.k = torch.nn.Parameter(k)
        else:
            self.register_buffer("k", k)

    @staticmethod
    def _validate_k_value(k: Tensor) -> None:
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"curvature k must be finite, got {k.tolist()}")

    # ---------------------------------------------------------------- validation
    @property
    def radius(self) -> Tensor:
        """Radius ``1/√|κ|`` of the ball or sphere (infinite at κ = 0)."""
        return self.k.abs().sqrt().reciprocal()

    def _check(self, *tensors: Tensor, dim: int = -1) -> None:
        if not self.validate_args or _is_compiling():
            return
        k = self.k
        if not bool(torch.isfinite(k.detach()).all()):
            raise ValueError(f"curvature k is not finite: {k.detach().tolist()}")
        sizes = []
        for t in tensors:
            if not isinstance(t, Tensor):
                continue
            if t.dim() == 0:
                raise ValueError("points and tangent vectors need at least one dimension")
            sizes.append(t.shape[dim])
        if len(set(sizes)) > 1:
            raise ValueError(f"point/vector dimensions differ along dim={dim}: {sizes}")
        if self.dim is not None and sizes and sizes[0] != self.dim:
            raise ValueError(f"{self.name} has dim={self.dim}, got vectors of size {sizes[0]}")
        shapes = []
        for t in tensors:
            if isinstance(t, Tensor):
                s = list(t.shape)
                s[dim] = 1
                shapes.append(s)
        try:
            batch = torch.broadcast_shapes(*shapes) if shapes else ()
            torch.broadcast_shapes(batch, k.shape)
        except RuntimeError:
            raise ValueError(
                f"shapes do not broadcast: points {[tuple(t.shape) for t in tensors]} "
                f"with curvature k of shape {tuple(k.shape)} (k must broadcast against the "
                f"points with dim={dim} reduced to 1)"
            ) from None

    def _eps(self, x: Tensor) -> float | None:
        """The projection margin for points of ``x``'s dtype (see ``margin``)."""
        return guards(x.dtype).geoopt_ball_eps if self.margin == "geoopt" else None

    def _project(self, x: Tensor, project: bool, dim: int) -> Tensor:
        return pmath.project(x, k=self.k, dim=dim, eps=self._eps(x)) if project else x

    def _check_point_on_manifold(
        self, x: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, dim: int = -1
    ) -> tuple[bool, str | None]:
        k = self.k.detach()
        if not bool(torch.isfinite(k).all()):
            return False, f"curvature k is not finite: {k.tolist()}"
        if not bool(torch.isfinite(x).all()):
            return False, "x has non-finite entries"
        n = torch.linalg.vector_norm(x.detach().to(k.dtype), dim=dim, keepdim=True)
        outside = (k < 0) & (n * k.abs().sqrt() >= 1.0 + rtol)
        if bool(outside.any()):
            worst = (n * k.abs().sqrt()).masked_fill(~outside, 0).max().item()
            return False, (
                f"x lies outside the ball: ‖x‖·√|κ| = {worst:.6g} ≥ 1 (κ < 0 needs "
                f"‖x‖ < 1/√|κ|; use project / projx)"
            )
        return True, None

    def _check_vector_on_tangent(
        self, x: Tensor, u: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, dim: int = -1
    ) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(u).all()):
            return False, "u has non-finite entries"
        return True, None

    # ---------------------------------------------------------------- metric
    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        """Geodesic distance ``d_κ(x, y)``, by :func:`mosgeo.math.dist`."""
        self._check(x, y, dim=dim)
        return pmath.dist(x, y, k=self.k, keepdim=keepdim, dim=dim)

    def dist2(self, x: Tensor, y: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        """Squared geodesic distance ``d_κ(x, y)²``, from :func:`mosgeo.math.dist`."""
        return self.dist(x, y, keepdim=keepdim, dim=dim) ** 2

    def egrad2rgrad(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        """Riemannian gradient ``u / λ_x²`` from the Euclidean gradient ``u``.

        The formula is :func:`mosgeo.math.egrad2rgrad`.
        """
        self._check(x, u, dim=dim)
        return pmath.egrad2rgrad(x, u, k=self.k, dim=dim)

    def retr(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        """First-order retraction: ``x + u``, projected by :func:`mosgeo.math.project`.

        :class:`StereographicExact` uses the exponential map (:meth:`expmap`) instead.
        """
        self._check(x, u, dim=dim)
        return pmath.project(x + u, k=self.k, dim=dim, eps=self._eps(x))

    def projx(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """``x`` moved into the usable part of the manifold, by :func:`mosgeo.math.project`."""
        self._check(x, dim=dim)
        return pmath.project(x, k=self.k, dim=dim, eps=self._eps(x))

    def project(self, x: Tensor, *, dim: int = -1, eps: float | None = None) -> Tensor:
        """Projection onto the usable part of the manifold, by :func:`mosgeo.math.project`.

        ``eps``: the margin inside the ball's boundary (default: the class's ``margin``).
        """
        self._check(x, dim=dim)
        return pmath.project(x, k=self.k, dim=dim, eps=self._eps(x) if eps is None else eps)

    def proju(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        """``u`` as a tangent vector at ``x``: unchanged, broadcast against ``x``.

        Every vector of ℝⁿ is tangent at every point of the chart.
        """
        self._check(x, u, dim=dim)
        return u.expand(torch.broadcast_shapes(x.shape, u.shape))

    def inner(
        self,
        x: Tensor,
        u: Tensor,
        v: Tensor | None = None,
        *,
        keepdim: bool = False,
        dim: int = -1,
    ) -> Tensor:
        """Riemannian inner product ``⟨u, v⟩_x = λ_x² ⟨u, v⟩``, by :func:`mosgeo.math.inner`.

        ``v = u`` if omitted.
        """
        self._check(x, u, v if v is not None else u, dim=dim)
        return pmath.inner(x, u, v, k=self.k, keepdim=keepdim, dim=dim)

    def norm(self, x: Tensor, u: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        """Riemannian norm ``‖u‖_x = λ_x ‖u‖``, by :func:`mosgeo.math.norm`."""
        self._check(x, u, dim=dim)
        return pmath.norm(x, u, k=self.k, keepdim=keepdim, dim=dim)

    def lambda_x(self, x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
        """Conformal factor ``λ_x = 2/(1 + κ‖x‖²)``, by :func:`mosgeo.math.lambda_x`."""
        self._check(x, dim=dim)
        return pmath.lambda_x(x, k=self.k, dim=dim, keepdim=keepdim)

    # ---------------------------------------------------------------- maps
    def expmap(self, x: Tensor, u: Tensor, *, project: bool = True, dim: int = -1) -> Tensor:
        """Exponential map ``exp_x(u)``, by :func:`mosgeo.math.expmap`."""
        self._check(x, u, dim=dim)
        return self._project(pmath.expmap(x, u, k=self.k, dim=dim), project, dim)

    def logmap(self, x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
        """Logarithmic map ``log_x(y)``, by :func:`mosgeo.math.logmap`."""
        self._check(x, y, dim=dim)
        return pmath.logmap(x, y, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(u=-1))
    def expmap0(self, u: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Exponential map at the origin ``exp₀(u)``, by :func:`mosgeo.math.expmap0`."""
        self._check(u, dim=dim)
        return self._project(pmath.expmap0(u, k=self.k, dim=dim), project, dim)

    @__scaling__(ScalingInfo(1))
    def logmap0(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """Logarithmic map at the origin ``log₀(x)``, by :func:`mosgeo.math.logmap0`."""
        self._check(x, dim=dim)
        return pmath.logmap0(x, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(1))
    def dist0(self, x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
        """Distance to the origin ``d_κ(0, x)``, by :func:`mosgeo.math.dist0`."""
        self._check(x, dim=dim)
        return pmath.dist0(x, k=self.k, dim=dim, keepdim=keepdim)

    def transp(self, x: Tensor, y: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        """Parallel transport of ``v`` from ``x`` to ``y``.

        The formula is :func:`mosgeo.math.parallel_transport`.
        """
        self._check(x, y, v, dim=dim)
        return pmath.parallel_transport(x, y, v, k=self.k, dim=dim)

    def transp0(self, y: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        """Parallel transport of ``u`` from the origin to ``y``.

        The formula is :func:`mosgeo.math.parallel_transport0`.
        """
        self._check(y, u, dim=dim)
        return pmath.parallel_transport0(y, u, k=self.k, dim=dim)

    def transp0back(self, y: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        """Parallel transport of ``u`` from ``y`` back to the origin.

        The formula is :func:`mosgeo.math.parallel_transport0back`.
        """
        self._check(y, u, dim=dim)
        return pmath.parallel_transport0back(y, u, k=self.k, dim=dim)

    def transp_follow_retr(self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        """Parallel transport of ``v`` from ``x`` to ``retr(x, u)``.

        :meth:`retr`, then :func:`mosgeo.math.parallel_transport`.
        """
        y = self.retr(x, u, dim=dim)
        return self.transp(x, y, v, dim=dim)

    def transp_follow_expmap(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        """Parallel transport of ``v`` from ``x`` to ``exp_x(u)``.

        :func:`mosgeo.math.expmap`, then :func:`mosgeo.math.parallel_transport`.
        """
        y = self.expmap(x, u, dim=dim, project=project)
        return self.transp(x, y, v, dim=dim)

    def expmap_transp(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1, project: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``(y, v')``: the point ``y = exp_x(u)`` and ``v`` transported from ``x`` to it.

        :func:`mosgeo.math.expmap` and :func:`mosgeo.math.parallel_transport`.
        """
        y = self.expmap(x, u, dim=dim, project=project)
        return y, self.transp(x, y, v, dim=dim)

    def retr_transp(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1
    ) -> tuple[Tensor, Tensor]:
        """``(y, v')``: the point ``y = retr(x, u)`` and ``v`` transported from ``x`` to it.

        :meth:`retr` and :func:`mosgeo.math.parallel_transport`.
        """
        y = self.retr(x, u, dim=dim)
        return y, self.transp(x, y, v, dim=dim)

    # ---------------------------------------------------------------- gyrovector ops
    def mobius_add(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Möbius addition ``x ⊕_κ y``, by :func:`mosgeo.math.mobius_add`."""
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_add(x, y, k=self.k, dim=dim), project, dim)

    def mobius_sub(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Möbius subtraction ``x ⊖_κ y = x ⊕_κ (−y)``, by :func:`mosgeo.math.mobius_sub`."""
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_sub(x, y, k=self.k, dim=dim), project, dim)

    def mobius_coadd(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Möbius coaddition ``x ⊞_κ y``, by :func:`mosgeo.math.mobius_coadd`."""
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_coadd(x, y, k=self.k, dim=dim), project, dim)

    def mobius_cosub(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Möbius cosubtraction ``x ⊟_κ y = x ⊞_κ (−y)``, by :func:`mosgeo.math.mobius_cosub`."""
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_cosub(x, y, k=self.k, dim=dim), project, dim)

    def mobius_scalar_mul(
        self, r: Tensor, x: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        """Möbius scalar multiplication ``r ⊗_κ x``, by :func:`mosgeo.math.mobius_scalar_mul`."""
        self._check(x, dim=dim)
        return self._project(pmath.mobius_scalar_mul(r, x, k=self.k, dim=dim), project, dim)

    def mobius_pointwise_mul(
        self, w: Tensor, x: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        """Möbius pointwise multiplication ``w ⊙_κ x``.

        The formula is :func:`mosgeo.math.mobius_pointwise_mul`.
        """
        self._check(w, x, dim=dim)
        return self._project(pmath.mobius_pointwise_mul(w, x, k=self.k, dim=dim), project, dim)

    def mobius_matvec(self, m: Tensor, x: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        """Möbius matrix-vector product ``M ⊗_κ x``, by :func:`mosgeo.math.mobius_matvec`.

        Raises:
            ValueError: ``m`` is not a matrix whose last dimension is the points' size.
        """
        self._check(x, dim=dim)
        if m.dim() < 2 or m.shape[-1] != x.shape[dim]:
            raise ValueError(
                f"matrix of shape {tuple(m.shape)} cannot multiply points of size {x.shape[dim]}"
            )
        return self._project(pmath.mobius_matvec(m, x, k=self.k, dim=dim), project, dim)

    def gyration(self, x: Tensor, y: Tensor, z: Tensor, *, dim: int = -1) -> Tensor:
        """Gyration ``gyr[x, y]z``, by :func:`mosgeo.math.gyration`."""
        self._check(x, y, z, dim=dim)
        return pmath.gyration(x, y, z, k=self.k, dim=dim)

    def antipode(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """Antipode of ``x`` (``−x`` for κ ≤ 0), by :func:`mosgeo.math.antipode`."""
        self._check(x, dim=dim)
        return pmath.antipode(x, k=self.k, dim=dim)

    def geodesic(self, t: Tensor, x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
        """Point ``γ(t)`` of the geodesic with ``γ(0) = x`` and ``γ(1) = y``.

        The formula is :func:`mosgeo.math.geodesic`.
        """
        self._check(x, y, dim=dim)
        return pmath.geodesic(t, x, y, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(t=-1))
    def geodesic_unit(
        self, t: Tensor, x: Tensor, u: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        """Point at time ``t`` of the unit-speed geodesic from ``x`` in direction ``u``.

        The formula is :func:`mosgeo.math.geodesic_unit`.
        """
        self._check(x, u, dim=dim)
        return self._project(pmath.geodesic_unit(t, x, u, k=self.k, dim=dim), project, dim)

    @__scaling__(ScalingInfo(1))
    def dist2plane(
        self,
        x: Tensor,
        p: Tensor,
        a: Tensor,
        *,
        dim: int = -1,
        keepdim: bool = False,
        signed: bool = False,
        scaled: bool = False,
    ) -> Tensor:
        """Distance from ``x`` to the gyroplane through ``p`` with normal ``a``.

        The formula is :func:`mosgeo.math.dist2plane`.

        Args:
            signed: Keep the sign (the side of the plane ``x`` is on).
            scaled: Multiply the distance by ``‖a‖``.
        """
        self._check(x, p, a, dim=dim)
        return pmath.dist2plane(
            x, p, a, k=self.k, dim=dim, keepdim=keepdim, signed=signed, scaled=scaled
        )

    @__scaling__(ScalingInfo.NotCompatible)
    def mobius_fn_apply(
        self, fn: Callable, x: Tensor, *args: Any, dim: int = -1, project: bool = True, **kwargs
    ) -> Tensor:
        """Möbius version of ``fn``: ``exp₀(fn(log₀(x), *args, **kwargs))``.

        The formula is :func:`mosgeo.math.mobius_fn_apply`.
        """
        self._check(x, dim=dim)
        res = pmath.mobius_fn_apply(fn, x, *args, k=self.k, dim=dim, **kwargs)
        return self._project(res, project, dim)

    @__scaling__(ScalingInfo.NotCompatible)
    def mobius_fn_apply_chain(
        self, x: Tensor, *fns: Callable, project: bool = True, dim: int = -1
    ) -> Tensor:
        """Möbius version of the composition of ``fns`` (first applied first).

        The formula is :func:`mosgeo.math.mobius_fn_apply_chain`.
        """
        self._check(x, dim=dim)
        res = pmath.mobius_fn_apply_chain(x, *fns, k=self.k, dim=dim)
        return self._project(res, project, dim)

    def weighted_midpoint(
        self,
        xs: Tensor,
        weights: Tensor | None = None,
        *,
        reducedim: list[int] | None = None,
        dim: int = -1,
        keepdim: bool = False,
        lincomb: bool = False,
        posweight: bool = False,
        project: bool = True,
    ) -> Tensor:
        """Weighted gyromidpoint of the points ``xs``.

        The formula, and the meaning of ``reducedim``, ``lincomb`` and ``posweight``, are in
        :func:`mosgeo.math.weighted_midpoint`.
        """
        self._check(xs, dim=dim)
        mid = pmath.weighted_midpoint(
            xs,
            weights,
            k=self.k,
            reducedim=reducedim,
            dim=dim,
            keepdim=keepdim,
            lincomb=lincomb,
            posweight=posweight,
        )
        return self._project(mid, project, dim)

    def sproj(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """Stereographic projection from ℝⁿ⁺¹ (time last), by :func:`mosgeo.math.sproj`."""
        self._check(dim=dim)
        return pmath.sproj(x, k=self.k, dim=dim)

    def inv_sproj(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """Inverse of :meth:`sproj`, into ℝⁿ⁺¹ (time last), by :func:`mosgeo.math.inv_sproj`."""
        self._check(x, dim=dim)
        return pmath.inv_sproj(x, k=self.k, dim=dim)

    # ---------------------------------------------------------------- charts
    def to_ambient(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """The point on the hyperboloid or sphere, by :func:`mosgeo.charts.to_ambient` (κ ≠ 0)."""
        self._check(x, dim=dim)
        return charts.to_ambient(x, k=self.k, dim=dim)

    def from_ambient(self, y: Tensor, *, dim: int = -1) -> Tensor:
        """The chart point of an ambient point, by :func:`mosgeo.charts.from_ambient` (κ ≠ 0)."""
        self._check(dim=dim)
        return charts.from_ambient(y, k=self.k, dim=dim)

    def to_spacelike(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """Space-like coordinate ``u = λ_x x``, by :func:`mosgeo.charts.to_spacelike`."""
        self._check(x, dim=dim)
        return charts.to_spacelike(x, k=self.k, dim=dim)

    def from_spacelike(self, u: Tensor, *, dim: int = -1) -> Tensor:
        """The chart point of a space-like ``u``, by :func:`mosgeo.charts.from_spacelike`."""
        self._check(u, dim=dim)
        return charts.from_spacelike(u, k=self.k, dim=dim)

    def clip_spacelike(self, u: Tensor, *, dim: int = -1, eps: float | None = None) -> Tensor:
        """Gradient-bound projection of ``u``, by :func:`mosgeo.charts.clip_spacelike`."""
        self._check(u, dim=dim)
        return charts.clip_spacelike(u, k=self.k, dim=dim, eps=eps)

    # ---------------------------------------------------------------- sampling
    def _sample_dtype(self, dtype: torch.dtype | None, device) -> tuple:
        k = self.k
        if device is not None and torch.device(device) != k.device:
            raise ValueError(
                f"device {device} does not match the manifold's device {k.device}; move the "
                f"manifold with .to(device) or pass device=None"
            )
        return (dtype or k.dtype), k.device

    @__scaling__(ScalingInfo(std=-1), "random")
    def random_normal(self, *size, mean=0, std=1, dtype=None, device=None) -> geoopt.ManifoldTensor:
        r"""Random points ``exp₀(v)``, ``v ~ N(mean, (std²/n) I)`` (geoopt's ``random_normal``).

        Args:
            *size: Shape of the sample; the last entry is the point dimension n.
            dtype: Default: κ's dtype.
            device: Default: κ's device (another one is an error: move the manifold).
        """
        size = size2shape(*size)
        self._assert_check_shape(size, "x")
        dtype, device = self._sample_dtype(dtype, device)
        v = torch.randn(size, device=device, dtype=dtype) * std / size[-1] ** 0.5 + mean
        return geoopt.ManifoldTensor(self.expmap0(v), manifold=self)

    random = random_normal

    @__scaling__(ScalingInfo(std=-1))
    def wrapped_normal(
        self, *size, mean: Tensor, std=1, dtype=None, device=None
    ) -> geoopt.ManifoldTensor:
        r"""Sample of the wrapped normal ``exp_μ(v/λ_μ)``, ``v ~ N(0, std² I)``.

        As geoopt's ``wrapped_normal``; its density is :meth:`wrapped_normal_log_prob`.

        Args:
            *size: Shape of the sample; the last entry is the point dimension n.
            mean: The center μ, a point that broadcasts against ``size``.
        """
        size = size2shape(*size)
        self._assert_check_shape(size, "x")
        dtype, device = self._sample_dtype(dtype, device)
        v = torch.randn(size, device=device, dtype=dtype) * std
        lam = self.lambda_x(mean, keepdim=True)
        return geoopt.ManifoldTensor(self.expmap(mean, v / lam), manifold=self)

    def wrapped_normal_log_prob(self, x: Tensor, mean: Tensor, std=1, *, dim: int = -1) -> Tensor:
        """Log density of :meth:`wrapped_normal` w.r.t. the Riemannian volume.

        The formula is in :class:`mosgeo.distributions.WrappedNormal`.
        """
        from .distributions import WrappedNormal

        self._check(x, mean, dim=dim)
        return WrappedNormal(mean, std, manifold=self).log_prob(x)

    def origin(self, *size, dtype=None, device=None, seed=42) -> geoopt.ManifoldTensor:
        """The origin ``0``, the same point for every κ (``seed``: unused, geoopt's signature)."""
        return geoopt.ManifoldTensor(
            torch.zeros(*size, dtype=dtype or self.k.dtype, device=device or self.k.device),
            manifold=self,
        )

    def extra_repr(self) -> str:
        """κ, whether it is learnable, and ``dim``: the details of ``repr(manifold)``."""
        k = self.k.detach()
        kk = f"{k.item():.4g}" if k.numel() == 1 else f"shape={tuple(k.shape)}"
        learn = isinstance(self.k, torch.nn.Parameter) or any(
            p.requires_grad for p in self.parameters()
        )
        tight = ", margin='tight'" if self.margin == "tight" else ""
        return f"k={kk}, learnable={learn}" + (f", dim={self.dim}" if self.dim else "") + tight


class StereographicExact(Stereographic):
    """:class:`Stereographic` whose retraction is the exact exponential map.

    ``retr``, ``retr_transp`` and ``transp_follow_retr`` are :meth:`~Stereographic.expmap`,
    :meth:`~Stereographic.expmap_transp` and :meth:`~Stereographic.transp_follow_expmap`.
    """

    #: ``True``, since the retraction is the exponential map, which is reversible.
    reversible = True
    retr_transp = Stereographic.expmap_transp
    transp_follow_retr = Stereographic.transp_follow_expmap
    retr = Stereographic.expmap

    def extra_repr(self) -> str:
        """As :meth:`Stereographic.extra_repr`, marked ``exact``."""
        return super().extra_repr() + ", exact"


class PoincareBall(Stereographic):
    r"""Poincaré ball with curvature ``κ = −c < 0``.

    When ``learnable``, ``c = softplus(ρ)`` is learned through an unconstrained ``ρ``, so κ
    stays negative.

    Args:
        c: ``−κ > 0``: a scalar, or shape ``(m, 1)`` for m balls at once.
        learnable: Train ``c``.
        **kwargs: ``dim``, ``validate_args`` and ``margin`` of :class:`Stereographic`.

    Raises:
        ValueError: ``c`` is not positive.
    """

    def __init__(self, c: Union[float, Tensor] = 1.0, learnable: bool = False, **kwargs):
        c_t = torch.as_tensor(c)
        if bool(torch.isfinite(c_t).all()) and not bool((c_t > 0).all()):
            raise ValueError(f"PoincareBall needs c > 0 (κ = -c), got {c_t.tolist()}")
        super().__init__(k=c, learnable=learnable, **kwargs)

    def _init_curvature(self, k: Tensor, learnable: bool) -> None:
        self.isp_c = torch.nn.Parameter(_inv_softplus(k), requires_grad=learnable)

    @property
    def c(self) -> Tensor:
        """``c = −κ > 0``, ``softplus`` of the free parameter."""
        return torch.nn.functional.softplus(self.isp_c)

    @property
    def k(self) -> Tensor:
        """The curvature ``κ = −c < 0``."""
        return -self.c


class PoincareBallExact(PoincareBall, StereographicExact):
    """:class:`PoincareBall` with the exact exponential map as retraction."""


class SphereProjection(Stereographic):
    r"""Stereographic projection of the sphere with curvature ``κ > 0``.

    When ``learnable``, κ is ``softplus`` of a free parameter, so it stays positive.

    Args:
        k: ``κ > 0``: a scalar, or shape ``(m, 1)`` for m spheres at once.
        learnable: Train κ.
        **kwargs: ``dim``, ``validate_args`` and ``margin`` of :class:`Stereographic`.

    Raises:
        ValueError: ``k`` is not positive.
    """

    def __init__(self, k: Union[float, Tensor] = 1.0, learnable: bool = False, **kwargs):
        k_t = torch.as_tensor(k)
        if bool(torch.isfinite(k_t).all()) and not bool((k_t > 0).all()):
            raise ValueError(f"SphereProjection needs k > 0, got {k_t.tolist()}")
        super().__init__(k=k, learnable=learnable, **kwargs)

    def _init_curvature(self, k: Tensor, learnable: bool) -> None:
        self.isp_k = torch.nn.Parameter(_inv_softplus(k), requires_grad=learnable)

    @property
    def k(self) -> Tensor:
        """The curvature ``κ > 0``, ``softplus`` of the free parameter."""
        return torch.nn.functional.softplus(self.isp_k)


class SphereProjectionExact(SphereProjection, StereographicExact):
    """:class:`SphereProjection` with the exact exponential map as retraction."""


class Euclidean(Stereographic):
    """Flat space as the κ = 0 member of the family (κ fixed).

    ``dim`` and ``validate_args`` are those of :class:`Stereographic`.
    """

    def __init__(self, dim: int | None = None, validate_args: bool = True):
        super().__init__(k=0.0, learnable=False, dim=dim, validate_args=validate_args)
