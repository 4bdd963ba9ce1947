"""Tutorial: geometry with mosgeo (the code of docs/tutorial-geometry.md).

The documentation page includes this file section by section (the ``[doc:…]`` markers), and
``tests/test_docs.py`` runs it, so the page cannot drift from the code. It prints what the
page quotes and writes three figures:

* ``kappa_path.png``: a learnable κ goes from hyperbolic through flat to spherical;
* ``charts.png``: the stereographic charts of the hyperbola and the circle (n = 1);
* ``tree.png``: a ternary tree embedded in the Poincaré disk and in the Euclidean plane.

Run: ``python examples/tutorial_geometry.py [--out docs/_static/figures] [--steps 800]``
(about 20 s on one CPU thread).
"""

# ruff: noqa: E402  (each tutorial section imports what it uses, where the page shows it)
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "figures")
parser.add_argument("--steps", type=int, default=800, help="steps of the κ fit (default 800)")
parser.add_argument("--tree-steps", type=int, default=250, help="steps per tree level")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)

# [doc:switch]
import geoopt.manifolds.stereographic.math as gmath  # before

import mosgeo.math as pmath  # after: same names, same calls

torch.manual_seed(0)
x = 0.1 * torch.randn(4, 5, dtype=torch.float64)  # inside the unit ball
y = 0.1 * torch.randn(4, 5, dtype=torch.float64)
k = torch.tensor(-1.0, dtype=torch.float64)
for name in ("mobius_add", "dist", "logmap", "expmap", "gyration"):
    fn_g, fn_m = getattr(gmath, name), getattr(pmath, name)
    inputs = (x, y, x + y) if name == "gyration" else (x, y)
    err = (fn_g(*inputs, k=k) - fn_m(*inputs, k=k)).abs().max().item()
    print(f"switch: {name:10s} max |geoopt - mosgeo| = {err:.1e}")

# what geoopt cannot do: one call for a batch of curvatures of mixed sign, one per row
k_rows = torch.tensor([[-1.0], [-1e-9], [0.0], [1.0]], dtype=torch.float64)
print("switch: per-row κ, dist shape", tuple(pmath.dist(x, y, k=k_rows).shape))
# [/doc:switch]

# [doc:kappa]
import mosgeo

n, edge = 12, 0.5  # twelve months on a cycle, neighbouring months 0.5 apart
i = torch.arange(n)
hops = (i[:, None] - i[None, :]).abs()
graph = torch.minimum(hops, n - hops).double() * edge  # shortest-path distance on the cycle
a, b = torch.triu_indices(n, n, 1)  # all pairs
target = graph[a, b]
k_star = (2 * math.pi / (n * edge)) ** 2  # the sphere whose great circle is 12 × 0.5 long

manifold = mosgeo.Stereographic(k=-1.0, learnable=True).double()  # start hyperbolic
angle = 2 * math.pi * i.double() / n
points = torch.nn.Parameter(0.3 * torch.stack([angle.cos(), angle.sin()], -1))
points.data += 0.02 * torch.randn_like(points)  # a rough circle, not the answer
start = points.detach().clone()
opt = torch.optim.Adam(
    [{"params": [points], "lr": 0.01}, {"params": manifold.parameters(), "lr": 0.02}]
)
kappas, losses = [], []
for _ in range(args.steps):
    opt.zero_grad()
    p = manifold.projx(points)  # keeps the points inside the ball while κ < 0
    loss = (manifold.dist(p[a], p[b]) - target).pow(2).mean()
    loss.backward()
    opt.step()
    kappas.append(manifold.k.item())
    losses.append(loss.item())
crossed = next(s for s, kv in enumerate(kappas) if kv > 0)
print(f"kappa: κ crossed 0 at step {crossed}; final κ = {kappas[-1]:.4f} (κ* = {k_star:.4f})")
print(f"kappa: final stress {losses[-1]:.1e}")
# [/doc:kappa]

fig = Figure(figsize=(10.0, 3.3), layout="constrained")
ax, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.2, 1.0, 0.8])
steps = range(len(kappas))
ax.axhspan(min(kappas) - 0.2, 0, color="#d62728", alpha=0.08, lw=0)
ax.axhspan(0, max(kappas) + 0.2, color="#1f77b4", alpha=0.08, lw=0)
ax.axhline(0.0, color="black", lw=0.8, ls="--")
ax.axhline(k_star, color="#1f77b4", lw=0.8, ls=":", label=f"κ* = {k_star:.3f}")
ax.plot(steps, kappas, color="black", lw=1.5, label="learned κ")
ax.axvline(crossed, color="grey", lw=0.8)
ax.text(crossed, min(kappas) - 0.1, f" crosses 0 at step {crossed}", fontsize=8, va="bottom")
ax.text(len(kappas) * 0.98, -0.5, "hyperbolic", color="#d62728", ha="right", fontsize=9)
ax.text(len(kappas) * 0.98, 0.3, "spherical", color="#1f77b4", ha="right", fontsize=9)
ax.set_ylim(min(kappas) - 0.2, max(kappas) + 0.2)
ax.set_xlabel("Adam step")
ax.set_ylabel("curvature κ")
ax.legend(loc="upper left", fontsize=8)
ax2.semilogy(steps, losses, color="black")
ax2.set_xlabel("Adam step")
ax2.set_ylabel("stress (mean squared distance error)")
end = manifold.projx(points).detach()
circle = torch.linspace(0, 2 * math.pi, 200)
radius = manifold.k.item() ** -0.5  # the equator of the sphere, in the chart
ax3.plot(radius * circle.cos(), radius * circle.sin(), color="#1f77b4", lw=0.8, ls=":")
for pts, style, lab in ((start, "o", "start"), (end, "o-", "end")):
    closed = torch.cat([pts, pts[:1]])
    ax3.plot(
        closed[:, 0],
        closed[:, 1],
        style,
        ms=4,
        lw=0.8,
        label=lab,
        color="grey" if lab == "start" else "black",
    )
ax3.set_aspect("equal")
ax3.set_title(
    "the months: start (grey), end (black);\ndotted: the equator, radius 1/√κ", fontsize=8
)
ax3.tick_params(labelsize=7)
fig.suptitle("Twelve months on a cycle: the learned curvature moves to the sphere", fontsize=10)
fig.savefig(args.out / "kappa_path.png", dpi=110)

# [doc:charts]
from mosgeo import charts

x = torch.tensor([[0.3, -0.2, 0.1], [-0.1, 0.4, 0.2]], dtype=torch.float64)
for kv in (-1.0, 1.0):
    k = torch.tensor(kv, dtype=torch.float64)
    yx = charts.to_ambient(x, k=k)  # (time, space): n + 1 coordinates
    on_model = kv * charts.lorentz_inner(yx, yx, k=k)  # = 1 on the hyperboloid / sphere
    back = (charts.from_ambient(yx, k=k) - x).abs().max().item()
    gap = (charts.ambient_dist(yx[0], yx[1], k=k) - pmath.dist(x[0], x[1], k=k)).abs().item()
    print(
        f"charts: κ = {kv:+.0f}: max |κ⟨y, y⟩ - 1| = {(on_model - 1).abs().max():.0e}, "
        f"round trip {back:.0e}, |d_ambient - d| = {gap:.0e}"
    )

# the space-like chart: defined for every κ, smooth through 0, inverse of each other
for kv in (-1.0, -1e-12, 0.0, 1e-12, 1.0):
    k = torch.tensor(kv, dtype=torch.float64)
    u = charts.to_spacelike(x, k=k)
    back = (charts.from_spacelike(u, k=k) - x).abs().max().item()
    print(f"charts: κ = {kv:+.0e}: u/x = {(u / x)[0, 0].item():.6f}, round trip {back:.0e}")
# [/doc:charts]

fig = Figure(figsize=(8.0, 3.8), layout="constrained")
axes = fig.subplots(1, 2)
xs = torch.tensor([[-0.8], [-0.45], [0.2], [0.6]], dtype=torch.float64)
for ax, kv in zip(axes, (-1.0, 1.0), strict=True):
    k = torch.tensor(kv, dtype=torch.float64)
    if kv < 0:
        s = torch.linspace(-2.2, 2.2, 200, dtype=torch.float64)
        ax.plot(s, (1 + s * s).sqrt(), color="#d62728", lw=1.5, label="hyperboloid ⟨y, y⟩_L = 1/κ")
        chart = torch.linspace(-0.999, 0.999, 2)
        title = "κ = −1: the Poincaré disk (n = 1: an interval)"
    else:
        t = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
        ax.plot(t.cos(), t.sin(), color="#1f77b4", lw=1.5, label="sphere ⟨y, y⟩ = 1/κ")
        chart = torch.linspace(-2.2, 2.2, 2)
        title = "κ = +1: the projected sphere (the whole line)"
    ax.plot(chart, [0, 0], color="black", lw=2.5, label="chart: the points x")
    ya = charts.to_ambient(xs, k=k)  # (time, space) rows
    for xv, (y0, y1) in zip(xs[:, 0].tolist(), ya.tolist(), strict=True):
        ax.plot([0, y1], [-1, y0], color="grey", lw=0.8, ls="--")  # from the pole (−1/√|κ|, 0)
        ax.plot([xv], [0], "o", color="black", ms=4)
        ax.plot([y1], [y0], "o", color="#d62728" if kv < 0 else "#1f77b4", ms=5)
    ax.plot([0], [-1], "k*", ms=8, label="projection pole")
    ax.set_aspect("equal")
    ax.set_xlim(-2.3, 2.3)
    ax.set_ylim(-1.3, 2.6)
    ax.set_xlabel("space-like coordinate")
    ax.set_ylabel("time coordinate y₀")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
fig.suptitle("to_ambient / from_ambient: a point x and its image on the model", fontsize=10)
fig.savefig(args.out / "charts.png", dpi=110)

# [doc:tree]
import geoopt

branching, depth = 3, 3
parent, level = [-1], [0]
for d in range(1, depth + 1):  # breadth first: the nodes of each level get consecutive ids
    for p in [v for v in range(len(parent)) if level[v] == d - 1]:
        parent += [p] * branching
        level += [d] * branching
nodes = len(parent)


def ancestors(v: int) -> list[int]:
    out = [v]
    while parent[out[-1]] >= 0:
        out.append(parent[out[-1]])
    return out


tree_dist = torch.zeros(nodes, nodes, dtype=torch.float64)
for u in range(nodes):
    for v in range(nodes):
        common = next(w for w in ancestors(u) if w in ancestors(v))
        tree_dist[u, v] = level[u] + level[v] - 2 * level[common]

parent_t, level_t = torch.tensor(parent), torch.tensor(level)
scale = 1.0  # length of a tree edge


def embed(space: mosgeo.Stereographic) -> torch.Tensor:
    """Grow the tree level by level: new nodes start next to their parent, then every node
    placed so far moves to fit the tree distances (relative stress)."""
    torch.manual_seed(0)
    emb = geoopt.ManifoldParameter(space.origin(nodes, 2, dtype=torch.float64), manifold=space)
    for lv in range(1, depth + 1):
        new = (level_t == lv).nonzero().squeeze(-1)
        with torch.no_grad():
            nudge = 0.01 * torch.randn(len(new), 2, dtype=torch.float64)
            emb[new] = space.expmap(emb[parent_t[new]], nudge)
        placed = (level_t <= lv).nonzero().squeeze(-1)
        ia, ib = placed[torch.triu_indices(len(placed), len(placed), 1)]
        ropt = geoopt.optim.RiemannianAdam([emb], lr=0.05)
        for _ in range(args.tree_steps):
            ropt.zero_grad()
            ratio = space.dist(emb[ia], emb[ib]) / (scale * tree_dist[ia, ib])
            (ratio - 1).pow(2).mean().backward()
            ropt.step()
    return emb.detach()


ia, ib = torch.triu_indices(nodes, nodes, 1)
results = {}
for label, space in (("Poincaré disk", mosgeo.PoincareBall(c=1.0)), ("plane", mosgeo.Euclidean())):
    space = space.double()
    emb = embed(space)
    ratio = space.dist(emb[ia], emb[ib]) / (scale * tree_dist[ia, ib])
    mad = (ratio - 1).abs().mean().item()  # mean relative distortion of the distances
    worst = (ratio.max() / ratio.min()).item()  # 1 for an isometry up to scale
    results[label] = (space, emb, mad, worst)
    print(f"tree: {label:13s} {nodes} nodes, mean distortion {mad:.3f}, worst {worst:.2f}")
# [/doc:tree]

fig = Figure(figsize=(8.0, 4.7), layout="constrained")
axes = fig.subplots(1, 2)
colors = ["black", "#d62728", "#ff7f0e", "#2ca02c"]
t = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None]
for ax, (label, (space, emb, mad, worst)) in zip(axes, results.items(), strict=True):
    for v in range(1, nodes):  # every edge as a geodesic of its space
        arc = space.geodesic(t, emb[parent[v]].expand(len(t), 2), emb[v].expand(len(t), 2))
        ax.plot(arc[:, 0], arc[:, 1], color="grey", lw=0.8, zorder=1)
    for lv in range(depth + 1):
        sel = level_t == lv
        ax.scatter(emb[sel, 0], emb[sel, 1], s=18, color=colors[lv], zorder=2, label=f"depth {lv}")
    if label == "Poincaré disk":
        c = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(c.cos(), c.sin(), color="black", lw=1.0)
    ax.set_aspect("equal")
    ax.set_title(f"{label}: mean distortion {mad:.3f}, worst {worst:.2f}", fontsize=9)
    ax.tick_params(labelsize=7)
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside lower center", ncol=depth + 1, fontsize=8)
fig.suptitle(
    f"A ternary tree of depth {depth} ({nodes} nodes, edge length {scale:g}) embedded "
    "with RiemannianAdam",
    fontsize=10,
)
fig.savefig(args.out / "tree.png", dpi=110)

for name in ("kappa_path.png", "charts.png", "tree.png"):
    print("wrote", args.out / name)
