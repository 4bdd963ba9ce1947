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
    r"""κ-stereographic model: Poincaré ball (κ < 0), Euclidean space (κ = 0) and the
    stereographic projection of the sphere (κ > 0) in one class.

    Parameters
    ----------
    k : float or tensor
        Curvature: a scalar, or shape ``(m, 1)`` for m manifolds at once.
    learnable : bool
        Hold κ as an ``nn.Parameter`` (trainable, free to change sign) instead of a buffer.
    dim : int, optional
        Point dimension ``n``; when given, points of another size are rejected.
    validate_args : bool
        Check shapes and κ on every call (see the module docstring).
    """

    ndim = 1
    reversible = False
    name = property(lambda self: self.__class__.__name__)
    __scaling__ = Manifold.__scaling__.copy()

    def __init__(
        self,
        k: Union[float, Tensor] = 0.0,
        learnable: bool = False,
        dim: int | None = None,
        validate_args: bool = True,
    ):
        super().__init__()
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
        """``1/√|κ|`` (infinite at κ = 0)."""
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

    def _project(self, x: Tensor, project: bool, dim: int) -> Tensor:
        return pmath.project(x, k=self.k, dim=dim) if project else x

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
        self._check(x, y, dim=dim)
        return pmath.dist(x, y, k=self.k, keepdim=keepdim, dim=dim)

    def dist2(self, x: Tensor, y: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        return self.dist(x, y, keepdim=keepdim, dim=dim) ** 2

    def egrad2rgrad(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, u, dim=dim)
        return pmath.egrad2rgrad(x, u, k=self.k, dim=dim)

    def retr(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, u, dim=dim)
        return pmath.project(x + u, k=self.k, dim=dim)

    def projx(self, x: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, dim=dim)
        return pmath.project(x, k=self.k, dim=dim)

    def project(self, x: Tensor, *, dim: int = -1, eps: float | None = None) -> Tensor:
        """:func:`mosgeo.math.project` with this manifold's κ."""
        self._check(x, dim=dim)
        return pmath.project(x, k=self.k, dim=dim, eps=eps)

    def proju(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
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
        self._check(x, u, v if v is not None else u, dim=dim)
        return pmath.inner(x, u, v, k=self.k, keepdim=keepdim, dim=dim)

    def norm(self, x: Tensor, u: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        self._check(x, u, dim=dim)
        return pmath.norm(x, u, k=self.k, keepdim=keepdim, dim=dim)

    def lambda_x(self, x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
        self._check(x, dim=dim)
        return pmath.lambda_x(x, k=self.k, dim=dim, keepdim=keepdim)

    # ---------------------------------------------------------------- maps
    def expmap(self, x: Tensor, u: Tensor, *, project: bool = True, dim: int = -1) -> Tensor:
        self._check(x, u, dim=dim)
        return self._project(pmath.expmap(x, u, k=self.k, dim=dim), project, dim)

    def logmap(self, x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, y, dim=dim)
        return pmath.logmap(x, y, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(u=-1))
    def expmap0(self, u: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(u, dim=dim)
        return self._project(pmath.expmap0(u, k=self.k, dim=dim), project, dim)

    @__scaling__(ScalingInfo(1))
    def logmap0(self, x: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, dim=dim)
        return pmath.logmap0(x, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(1))
    def dist0(self, x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
        self._check(x, dim=dim)
        return pmath.dist0(x, k=self.k, dim=dim, keepdim=keepdim)

    def transp(self, x: Tensor, y: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, y, v, dim=dim)
        return pmath.parallel_transport(x, y, v, k=self.k, dim=dim)

    def transp0(self, y: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        self._check(y, u, dim=dim)
        return pmath.parallel_transport0(y, u, k=self.k, dim=dim)

    def transp0back(self, y: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        self._check(y, u, dim=dim)
        return pmath.parallel_transport0back(y, u, k=self.k, dim=dim)

    def transp_follow_retr(self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        y = self.retr(x, u, dim=dim)
        return self.transp(x, y, v, dim=dim)

    def transp_follow_expmap(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        y = self.expmap(x, u, dim=dim, project=project)
        return self.transp(x, y, v, dim=dim)

    def expmap_transp(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1, project: bool = True
    ) -> tuple[Tensor, Tensor]:
        y = self.expmap(x, u, dim=dim, project=project)
        return y, self.transp(x, y, v, dim=dim)

    def retr_transp(
        self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1
    ) -> tuple[Tensor, Tensor]:
        y = self.retr(x, u, dim=dim)
        return y, self.transp(x, y, v, dim=dim)

    # ---------------------------------------------------------------- gyrovector ops
    def mobius_add(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_add(x, y, k=self.k, dim=dim), project, dim)

    def mobius_sub(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_sub(x, y, k=self.k, dim=dim), project, dim)

    def mobius_coadd(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_coadd(x, y, k=self.k, dim=dim), project, dim)

    def mobius_cosub(self, x: Tensor, y: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(x, y, dim=dim)
        return self._project(pmath.mobius_cosub(x, y, k=self.k, dim=dim), project, dim)

    def mobius_scalar_mul(
        self, r: Tensor, x: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        self._check(x, dim=dim)
        return self._project(pmath.mobius_scalar_mul(r, x, k=self.k, dim=dim), project, dim)

    def mobius_pointwise_mul(
        self, w: Tensor, x: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
        self._check(w, x, dim=dim)
        return self._project(pmath.mobius_pointwise_mul(w, x, k=self.k, dim=dim), project, dim)

    def mobius_matvec(self, m: Tensor, x: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        self._check(x, dim=dim)
        if m.dim() < 2 or m.shape[-1] != x.shape[dim]:
            raise ValueError(
                f"matrix of shape {tuple(m.shape)} cannot multiply points of size {x.shape[dim]}"
            )
        return self._project(pmath.mobius_matvec(m, x, k=self.k, dim=dim), project, dim)

    def gyration(self, x: Tensor, y: Tensor, z: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, y, z, dim=dim)
        return pmath.gyration(x, y, z, k=self.k, dim=dim)

    def antipode(self, x: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, dim=dim)
        return pmath.antipode(x, k=self.k, dim=dim)

    def geodesic(self, t: Tensor, x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, y, dim=dim)
        return pmath.geodesic(t, x, y, k=self.k, dim=dim)

    @__scaling__(ScalingInfo(t=-1))
    def geodesic_unit(
        self, t: Tensor, x: Tensor, u: Tensor, *, dim: int = -1, project: bool = True
    ) -> Tensor:
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
        self._check(x, p, a, dim=dim)
        return pmath.dist2plane(
            x, p, a, k=self.k, dim=dim, keepdim=keepdim, signed=signed, scaled=scaled
        )

    @__scaling__(ScalingInfo.NotCompatible)
    def mobius_fn_apply(
        self, fn: Callable, x: Tensor, *args: Any, dim: int = -1, project: bool = True, **kwargs
    ) -> Tensor:
        self._check(x, dim=dim)
        res = pmath.mobius_fn_apply(fn, x, *args, k=self.k, dim=dim, **kwargs)
        return self._project(res, project, dim)

    @__scaling__(ScalingInfo.NotCompatible)
    def mobius_fn_apply_chain(
        self, x: Tensor, *fns: Callable, project: bool = True, dim: int = -1
    ) -> Tensor:
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
        self._check(dim=dim)
        return pmath.sproj(x, k=self.k, dim=dim)

    def inv_sproj(self, x: Tensor, *, dim: int = -1) -> Tensor:
        self._check(x, dim=dim)
        return pmath.inv_sproj(x, k=self.k, dim=dim)

    # ---------------------------------------------------------------- charts
    def to_ambient(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """:func:`mosgeo.charts.to_ambient` (κ ≠ 0)."""
        self._check(x, dim=dim)
        return charts.to_ambient(x, k=self.k, dim=dim)

    def from_ambient(self, y: Tensor, *, dim: int = -1) -> Tensor:
        """:func:`mosgeo.charts.from_ambient` (κ ≠ 0)."""
        self._check(dim=dim)
        return charts.from_ambient(y, k=self.k, dim=dim)

    def to_spacelike(self, x: Tensor, *, dim: int = -1) -> Tensor:
        """:func:`mosgeo.charts.to_spacelike`."""
        self._check(x, dim=dim)
        return charts.to_spacelike(x, k=self.k, dim=dim)

    def from_spacelike(self, u: Tensor, *, dim: int = -1) -> Tensor:
        """:func:`mosgeo.charts.from_spacelike`."""
        self._check(u, dim=dim)
        return charts.from_spacelike(u, k=self.k, dim=dim)

    def clip_spacelike(self, u: Tensor, *, dim: int = -1, eps: float | None = None) -> Tensor:
        """:func:`mosgeo.charts.clip_spacelike`."""
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
        r"""``exp₀(v)``, ``v ~ N(mean, (std²/n) I)`` (geoopt's ``random_normal``)."""
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
        r"""Sample of the wrapped normal ``exp_μ(v/λ_μ)``, ``v ~ N(0, std² I)`` (geoopt's
        ``wrapped_normal``); its density is :meth:`wrapped_normal_log_prob`."""
        size = size2shape(*size)
        self._assert_check_shape(size, "x")
        dtype, device = self._sample_dtype(dtype, device)
        v = torch.randn(size, device=device, dtype=dtype) * std
        lam = self.lambda_x(mean, keepdim=True)
        return geoopt.ManifoldTensor(self.expmap(mean, v / lam), manifold=self)

    def wrapped_normal_log_prob(self, x: Tensor, mean: Tensor, std=1, *, dim: int = -1) -> Tensor:
        """Log density of :meth:`wrapped_normal` w.r.t. the Riemannian volume
        (see :class:`mosgeo.distributions.WrappedNormal`)."""
        from .distributions import WrappedNormal

        self._check(x, mean, dim=dim)
        return WrappedNormal(mean, std, manifold=self).log_prob(x)

    def origin(self, *size, dtype=None, device=None, seed=42) -> geoopt.ManifoldTensor:
        """The origin ``0`` (the same point for every κ)."""
        return geoopt.ManifoldTensor(
            torch.zeros(*size, dtype=dtype or self.k.dtype, device=device or self.k.device),
            manifold=self,
        )

    def extra_repr(self) -> str:
        k = self.k.detach()
        kk = f"{k.item():.4g}" if k.numel() == 1 else f"shape={tuple(k.shape)}"
        learn = isinstance(self.k, torch.nn.Parameter) or any(
            p.requires_grad for p in self.parameters()
        )
        return f"k={kk}, learnable={learn}" + (f", dim={self.dim}" if self.dim else "")


class StereographicExact(Stereographic):
    """:class:`Stereographic` whose retraction is the exact exponential map."""

    reversible = True
    retr_transp = Stereographic.expmap_transp
    transp_follow_retr = Stereographic.transp_follow_expmap
    retr = Stereographic.expmap

    def extra_repr(self) -> str:
        return super().extra_repr() + ", exact"


class PoincareBall(Stereographic):
    r"""Poincaré ball with curvature ``κ = −c`` (``c > 0``); ``c = softplus(ρ)`` is learned
    through an unconstrained ``ρ`` when ``learnable``, so κ stays negative."""

    def __init__(self, c: Union[float, Tensor] = 1.0, learnable: bool = False, **kwargs):
        c_t = torch.as_tensor(c)
        if bool(torch.isfinite(c_t).all()) and not bool((c_t > 0).all()):
            raise ValueError(f"PoincareBall needs c > 0 (κ = -c), got {c_t.tolist()}")
        super().__init__(k=c, learnable=learnable, **kwargs)

    def _init_curvature(self, k: Tensor, learnable: bool) -> None:
        self.isp_c = torch.nn.Parameter(_inv_softplus(k), requires_grad=learnable)

    @property
    def c(self) -> Tensor:
        return torch.nn.functional.softplus(self.isp_c)

    @property
    def k(self) -> Tensor:
        return -self.c


class PoincareBallExact(PoincareBall, StereographicExact):
    """:class:`PoincareBall` with the exact exponential map as retraction."""


class SphereProjection(Stereographic):
    r"""Stereographic projection of the sphere with curvature ``κ > 0`` (``softplus`` of a
    free parameter when ``learnable``, so κ stays positive)."""

    def __init__(self, k: Union[float, Tensor] = 1.0, learnable: bool = False, **kwargs):
        k_t = torch.as_tensor(k)
        if bool(torch.isfinite(k_t).all()) and not bool((k_t > 0).all()):
            raise ValueError(f"SphereProjection needs k > 0, got {k_t.tolist()}")
        super().__init__(k=k, learnable=learnable, **kwargs)

    def _init_curvature(self, k: Tensor, learnable: bool) -> None:
        self.isp_k = torch.nn.Parameter(_inv_softplus(k), requires_grad=learnable)

    @property
    def k(self) -> Tensor:
        return torch.nn.functional.softplus(self.isp_k)


class SphereProjectionExact(SphereProjection, StereographicExact):
    """:class:`SphereProjection` with the exact exponential map as retraction."""


class Euclidean(Stereographic):
    """Flat space as the κ = 0 member of the family (κ fixed)."""

    def __init__(self, dim: int | None = None, validate_args: bool = True):
        super().__init__(k=0.0, learnable=False, dim=dim, validate_args=validate_args)
