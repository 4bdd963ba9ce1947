"""The paper's Figure 3: the time of the space conversion, the exp/log-map route of prior
hyperbolic work against MoSELoRA's fused route, as the hidden dimension grows and as the
number of adapted layers grows.

Both routes are the adapter alone (the frozen layer is not timed): a shared ``A`` (r = 8),
8 experts with top-4 routing on ``z = A x`` and one curvature each (3 hyperbolic, 3
spherical, 2 Euclidean), forward and backward of ``(Δ · g).sum()`` for a fixed random ``g``
on T tokens.

* exp/log (HNN-style, ``bench_layer.NaiveMoELinear(kind="hnn")``): per expert
  ``logmap0(project(mobius_matvec(B_i, project(expmap0(z)))))`` with ``mosgeo.math``;
* fused: ``MoSELoraLinear.adapter_delta`` (the radial identity: one ``B_cat`` matmul).

(a) one layer, d_in = d_out = d for d in 256 … 4096; (b) L layers of d = 1024 in a chain,
L in 1 … 32. Same process, interleaved (``_report.interleaved``), medians; the ratio
exp/log ÷ fused sits beside the paper's "up to 4×" (measured there on GPUs).

    python benchmarks/bench_figure3.py                       # writes results/figure3.* and
                                                             # docs/_static/figures/figure3.png
    python benchmarks/bench_figure3.py --tokens 128 --reps 3 --dims 256,1024 --layers 1,4
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
from _report import (
    add_common_options,
    command_line,
    interleaved,
    machine,
    markdown_table,
    median_ms,
    sync,
    write_results,
)
from bench_layer import N_EXPERTS, NaiveMoELinear, R
from torch import nn

import mosgeo_lora

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "_static" / "figures" / "figure3.png"
PAPER_SPEEDUP = 4.0  # "significant speedups up to 4× over the standard exp-log scheme"


def adapters(kind: str, d: int, layers: int, seed: int, device: str) -> list:
    """``layers`` adapter callables of one kind on d → d linear layers."""
    torch.manual_seed(seed)
    out = []
    for _ in range(layers):
        base = nn.Linear(d, d, bias=False).requires_grad_(False)
        if kind == "exp/log":
            module = NaiveMoELinear(base, "hnn").to(device)
            out.append((module, module.adapter))
        else:
            config = mosgeo_lora.MoSELoraConfig(r=R, num_experts=N_EXPERTS, init_weights=False)
            module = mosgeo_lora.MoSELoraLinear(base, "default", config).to(device)
            out.append((module, functools.partial(module.adapter_delta, adapter_name="default")))
    return out


def step(chain: list, x: torch.Tensor, g: torch.Tensor) -> None:
    """Forward and backward of every adapter of the chain, each on the previous output."""
    for module, _ in chain:
        module.zero_grad(set_to_none=True)
    h = x
    for _, adapter in chain:
        h = h + adapter(h)
    (h * g).sum().backward()


def _timed(chain, x, g, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    step(chain, x, g)
    sync(device)
    return time.perf_counter() - t0


def measure(d: int, layers: int, args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.tokens, d, generator=gen).to(args.device)
    g = torch.randn(args.tokens, d, generator=gen).to(args.device)
    chains = {
        kind: adapters(kind, d, layers, args.seed, args.device) for kind in ("exp/log", "fused")
    }
    runs = {kind: functools.partial(_timed, c, x, g, args.device) for kind, c in chains.items()}
    times = interleaved(runs, args.reps, args.warmup)
    row = {"d": d, "layers": layers, **{f"{k}_ms": median_ms(t) for k, t in times.items()}}
    row["ratio"] = row["exp/log_ms"] / row["fused_ms"]
    print(f"d={d:5d} layers={layers:3d}  exp/log {row['exp/log_ms']:9.2f} ms  fused "
          f"{row['fused_ms']:8.2f} ms  ratio {row['ratio']:.2f}", flush=True)  # fmt: skip
    return row


def plot(by_dim: list[dict], by_layers: list[dict], path: Path, meta: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], by_dim, "d", "hidden dimension d"),
        (axes[1], by_layers, "layers", "layers"),
    )
    for ax, rows, key, label in panels:
        xs = [r[key] for r in rows]
        for kind, color in (("exp/log", "#d62728"), ("fused", "#1f77b4")):
            name = "exp/log maps" if kind == "exp/log" else "MoSELoRA (fused)"
            ax.plot(xs, [r[f"{kind}_ms"] for r in rows], "o-", color=color, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_yscale("log")
        ax.set_xlabel(label, fontsize=11)
        ax.set_ylabel("fwd+bwd time (ms)", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        for r in rows:
            ax.annotate(f"{r['ratio']:.1f}×", (r[key], r["exp/log_ms"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=9)  # fmt: skip
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=10
    )
    axes[0].set_title(f"(a) one layer, {meta['tokens']} tokens", fontsize=11)
    axes[1].set_title(f"(b) layers of d = {meta['layer_dim']}", fontsize=11)
    fig.suptitle("Space-conversion time, exp/log route vs fused (ratio above the points); "
                 f"{meta['device_name']}", fontsize=11)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def to_markdown(by_dim: list[dict], by_layers: list[dict], meta: dict) -> str:
    def table(rows, key):
        return markdown_table(
            [key, "exp/log ms", "fused ms", "exp/log ÷ fused"],
            ([r[key], f"{r['exp/log_ms']:.2f}", f"{r['fused_ms']:.2f}", f"{r['ratio']:.1f}"]
             for r in rows),
        )  # fmt: skip

    ratios = [r["ratio"] for r in by_dim + by_layers]
    return (
        "# The paper's Figure 3: exp/log route vs fused route\n\n"
        f"`{meta['command']}` — {meta['tokens']} tokens, adapter only (r = {R}, {N_EXPERTS} "
        f"experts, top-4), forward+backward, median of {meta['reps']} interleaved repetitions; "
        f"torch {meta['torch']}, {meta['device_name']}.\n\n"
        f"Ratio exp/log ÷ fused: {min(ratios):.1f}–{max(ratios):.1f}× (the paper reports up "
        f"to {PAPER_SPEEDUP:.0f}× on GPUs).\n\n"
        "## (a) one layer, d_in = d_out = d\n\n" + table(by_dim, "d") + "\n\n"
        f"## (b) a chain of layers, d = {meta['layer_dim']}\n\n" + table(by_layers, "layers") + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dims", default="256,512,1024,2048,4096")
    ap.add_argument("--layers", default="1,2,4,8,16,32")
    ap.add_argument("--layer-dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--figure", type=Path, default=FIGURE)
    add_common_options(ap, reps=5, warmup=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    by_dim = [measure(int(d), 1, args) for d in args.dims.split(",")]
    by_layers = [measure(args.layer_dim, int(n), args) for n in args.layers.split(",")]
    meta = {
        "command": command_line("bench_figure3.py", ap, args, skip=("out", "figure")),
        "tokens": args.tokens,
        "layer_dim": args.layer_dim,
        "reps": args.reps,
        "torch": torch.__version__,
        "device_name": machine(args.device),
    }
    payload = {"meta": meta, "by_dim": by_dim, "by_layers": by_layers}
    write_results(args.out, "figure3", payload, to_markdown(by_dim, by_layers, meta))
    print(f"wrote {plot(by_dim, by_layers, args.figure, meta)}")


if __name__ == "__main__":
    main()
