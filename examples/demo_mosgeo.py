"""A short tour of mosgeo (`make geometry-demo`).

1. One code path for every curvature: distances are smooth in κ through 0.
2. A learnable κ moves from hyperbolic through flat to spherical under plain Adam.
3. geoopt's RiemannianAdam finds a Fréchet mean on a mosgeo manifold.
4. The charts into the Lorentz hyperboloid / sphere are exact isometries.
"""

from __future__ import annotations

import geoopt
import torch

import mosgeo
import mosgeo.math as pmath
from mosgeo import charts

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

x = torch.tensor([0.3, -0.2, 0.1])
y = torch.tensor([-0.1, 0.4, 0.2])

print("1) dist(x, y) for κ across 0 (value, ∂/∂κ):")
for kv in [-1.0, -1e-9, 0.0, 1e-9, 1.0]:
    k = torch.tensor(kv, requires_grad=True)
    d = pmath.dist(x, y, k=k)
    (g,) = torch.autograd.grad(d, k)
    print(f"   κ = {kv:+.0e}: d = {d.item():.12f}, ∂d/∂κ = {g.item():+.12f}")

print("2) learn κ so that dist(x, y) hits the distance it has at κ = +0.5, from κ = -1:")
target = pmath.dist(x, y, k=torch.tensor(0.5)).detach()
manifold = mosgeo.Stereographic(k=-1.0, learnable=True)
opt = torch.optim.Adam(manifold.parameters(), lr=0.05)
path = []
for _ in range(400):
    opt.zero_grad()
    loss = (manifold.dist(x, y) - target) ** 2
    loss.backward()
    opt.step()
    path.append(manifold.k.item())
crossed = next(i for i, kv in enumerate(path) if kv > 0)
print(f"   κ crossed 0 at step {crossed}; final κ = {path[-1]:.6f} (target 0.5)")

print("3) Fréchet mean with geoopt.optim.RiemannianAdam on a mosgeo PoincareBall:")
ball = mosgeo.PoincareBall(c=1.0)
center = torch.tensor([0.4, -0.3, 0.2])
offsets = 0.3 * torch.cat([torch.eye(3), -torch.eye(3)])
points = ball.mobius_add(center.expand_as(offsets), offsets)  # symmetric around `center`
mean = geoopt.ManifoldParameter(ball.origin(3), manifold=ball)
ropt = geoopt.optim.RiemannianAdam([mean], lr=0.05)
for _ in range(300):
    ropt.zero_grad()
    ball.dist(mean.expand_as(points), points).pow(2).sum().backward()
    ropt.step()
print(
    f"   found {mean.data.numpy().round(6)}, exact {center.numpy()}, "
    f"error {ball.dist(mean.data, center).item():.2e}"
)

print("4) charts: ambient distance equals the stereographic distance:")
for kv in [-4.0, -0.25, 0.25, 4.0]:
    k = torch.tensor(kv)
    a, b = pmath.project(x, k=k), pmath.project(y, k=k)
    ya, yb = charts.to_ambient(a, k=k), charts.to_ambient(b, k=k)
    on_model = charts.lorentz_inner(ya, ya, k=k).item() * kv
    err = (charts.ambient_dist(ya, yb, k=k) - pmath.dist(a, b, k=k)).abs().item()
    print(f"   κ = {kv:+.2f}: κ⟨y, y⟩ = {on_model:.15f}, |d_ambient − d| = {err:.1e}")
