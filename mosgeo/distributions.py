r"""Wrapped normal distribution on the κ-stereographic model.

Sampling: ``v ~ N(0, diag σ²)`` in an orthonormal frame at the origin, moved to ``μ`` and
mapped onto the manifold, ``z = exp_μ(v/λ_μ)`` (geoopt's ``wrapped_normal``). Its density
w.r.t. the Riemannian volume is, with ``v = λ_μ log_μ(z)`` and ``r = ‖v‖ = d_κ(μ, z)``,

.. math::
    \log p(z) = \log N(v; 0, \operatorname{diag}σ²) − (n − 1)\log S(κ r²),
    \qquad S(t) = \frac{\sin\sqrt t}{\sqrt t},

since ``exp_μ`` scales volume by ``(sin_κ(r)/r)^{n−1}`` (Mathieu et al. 2019; Skopek et al.
2020). ``S`` is entire in ``t = κr²``, so the log density is smooth in κ through 0 where it
is the Gaussian. For κ > 0 it is the density of the wrap with ``r < π/√κ`` (the mass of the
other wraps is ``≈ P(‖v‖ > π/√κ)``, negligible for ``σ ≪ π/√κ``).
"""

from __future__ import annotations

import math as _m
from typing import Union

import torch

from . import math as pmath

Tensor = torch.Tensor

__all__ = ["WrappedNormal"]


class WrappedNormal:
    """Wrapped normal ``WN(μ, diag σ²)`` on a :class:`mosgeo.Stereographic` manifold.

    ``rsample`` is reparameterised (differentiable in ``loc``, ``scale`` and κ); ``log_prob``
    is w.r.t. the Riemannian volume (multiply by ``λ_z^n`` for the Lebesgue density in the
    chart). The density is in the module docstring.

    Args:
        loc: The mean μ, a point of shape ``(..., n)``.
        scale: σ > 0; broadcasts against ``loc`` (a scalar, ``(..., 1)`` or ``(..., n)``).
        manifold: The manifold whose κ is used.
        k: The curvature instead of a manifold.

    Raises:
        ValueError: Both or neither of ``manifold`` and ``k`` are given, or ``scale`` is not
            positive.
    """

    def __init__(self, loc: Tensor, scale: Union[Tensor, float], manifold=None, k=None):
        if (manifold is None) == (k is None):
            raise ValueError("give exactly one of manifold= or k=")
        self.k = manifold.k if manifold is not None else torch.as_tensor(k, dtype=loc.dtype)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        self.loc = loc
        self.scale = scale
        self.n = loc.shape[-1]

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Reparameterised sample of shape ``sample_shape + broadcast(loc, scale).shape``.

        ``exp_μ(v/λ_μ)`` with ``v ~ N(0, diag σ²)``, projected strictly inside the ball.
        """
        shape = torch.Size(sample_shape) + torch.broadcast_shapes(self.loc.shape, self.scale.shape)
        v = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device) * self.scale
        lam = pmath.lambda_x(self.loc, k=self.k, keepdim=True)
        # exp saturates at the ball boundary in low precision: keep samples strictly inside
        return pmath.project(pmath.expmap(self.loc, v / lam, k=self.k), k=self.k)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Sample without gradient: :meth:`rsample` under ``torch.no_grad()``."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, z: Tensor, lebesgue: bool | None = False) -> Tensor:
        """Log density ``log p(z)`` w.r.t. the Riemannian volume.

        Args:
            z: Points of shape ``(..., n)``.
            lebesgue: Density w.r.t. ``dz`` in the chart instead (adds ``n log λ_z``).
        """
        k = self.k if isinstance(self.k, Tensor) else torch.as_tensor(self.k)
        k = k.to(z.dtype)
        lam = pmath.lambda_x(self.loc, k=k, keepdim=True)
        v = lam * pmath.logmap(self.loc, z, k=k)
        r2 = v.pow(2).sum(-1, keepdim=True)
        scale = self.scale.expand(v.shape)
        gauss = (-0.5 * (v / scale) ** 2 - scale.log() - 0.5 * _m.log(2 * _m.pi)).sum(-1)
        jac = (self.n - 1) * pmath.sin_ratio(k * r2).clamp_min(torch.finfo(z.dtype).tiny).log()
        out = gauss - jac.squeeze(-1)
        if lebesgue:
            out = out + self.n * pmath.lambda_x(z, k=k).log()
        return out
