"""mosgeo vs geoopt: core stereographic ops, same process, interleaved, medians.

Times dist, expmap0, logmap0, mobius_add and mobius_matvec on a (100k × 64) float32 batch for
κ ∈ {−1, 0, +1} and a mixed-sign per-row batch κ of shape (B, 1), forward only and
forward+backward (gradients w.r.t. the data inputs). Each repetition runs both libraries
back to back in alternating order; the table reports medians and the ratio mosgeo/geoopt
(< 1: mosgeo faster).

    python benchmarks/bench_core.py                 # full run, writes benchmarks/results/
    python benchmarks/bench_core.py --rows 20000 --reps 5   # quick look
    python benchmarks/bench_core.py --ops mobius_matvec --out /tmp/core   # one op
"""

from __future__ import annotations

import argparse
import functools
import time

import geoopt.manifolds.stereographic.math as gmath
import torch
from _report import (
    add_common_options,
    command_line,
    interleaved,
    machine,
    markdown_table,
    median_ms,
    write_results,
)

import mosgeo.compiled as cmath
import mosgeo.math as mmath

OPS = ["dist", "expmap0", "logmap0", "mobius_add", "mobius_matvec"]


def make_inputs(rows: int, n: int, kname: str, gen: torch.Generator) -> dict:
    if kname == "mixed":
        # one κ per row: a third each negative, zero-ish and positive
        k = torch.empty(rows, 1).uniform_(-2.0, 2.0, generator=gen)
        k[::3] = 0.0
    else:
        k = torch.tensor(float(kname))
    # points well inside the ball for κ < 0 (norm ≤ 0.5/√|κ|)
    x = torch.randn(rows, n, generator=gen) * (0.4 / n**0.5)
    y = torch.randn(rows, n, generator=gen) * (0.4 / n**0.5)
    u = torch.randn(rows, n, generator=gen) * (0.8 / n**0.5)
    m = torch.randn(n, n, generator=gen) / n**0.5
    return {"k": k, "x": x, "y": y, "u": u, "m": m}


class _Floor:
    """The Euclidean work a Möbius matrix-vector product cannot avoid: ``x @ Mᵀ`` forward,
    and its two gradient matmuls backward (timed with the same leaves)."""

    @staticmethod
    def mobius_matvec(m: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return x @ m.T


#: the ops that have a floor column
FLOOR_OPS = ("mobius_matvec",)


def call(lib, op: str, inp: dict) -> torch.Tensor:
    k = inp["k"]
    if op == "dist":
        # keepdim=True: geoopt's keepdim=False with a (B, 1) κ broadcasts to (B, B)
        return lib.dist(inp["x"], inp["y"], k=k, keepdim=True)
    if op == "expmap0":
        return lib.expmap0(inp["u"], k=k)
    if op == "logmap0":
        return lib.logmap0(inp["x"], k=k)
    if op == "mobius_add":
        return lib.mobius_add(inp["x"], inp["y"], k=k)
    if op == "mobius_matvec":
        return lib.mobius_matvec(inp["m"], inp["x"], k=k)
    raise ValueError(op)


def timed(lib, op: str, inp: dict, backward: bool, grad_out: dict) -> float:
    if backward:
        leaves = {n: t.detach().requires_grad_() for n, t in inp.items() if n != "k"}
        inp = {**inp, **leaves}
    t0 = time.perf_counter()
    out = call(lib, op, inp)
    if backward:
        g = grad_out.get(out.shape)
        if g is None:
            g = grad_out[out.shape] = torch.randn(out.shape)
        out.backward(g)
    return time.perf_counter() - t0


def bench(
    rows: int,
    n: int,
    reps: int,
    warmup: int,
    seed: int,
    compiled: bool,
    ops: list[str] | None = None,
) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    results = []
    libs = [("geoopt", gmath), ("mosgeo", mmath)] + ([("compiled", cmath)] if compiled else [])
    for kname in ["-1", "0", "1", "mixed"]:
        inp = make_inputs(rows, n, kname, gen)
        grad_out: dict = {}
        for op in ops or OPS:
            for backward in (False, True):
                contenders = libs + ([("floor", _Floor)] if op in FLOOR_OPS else [])
                runs = {
                    name: functools.partial(timed, lib, op, inp, backward, grad_out)
                    for name, lib in contenders
                }
                first = runs["compiled"]() if compiled else None  # the compilation
                times = interleaved(runs, reps, warmup)
                med = {name: median_ms(ts) for name, ts in times.items()}
                row = {
                    "k": kname,
                    "op": op,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "geoopt_ms": med["geoopt"],
                    "mosgeo_ms": med["mosgeo"],
                    "ratio": med["mosgeo"] / med["geoopt"],
                }
                if "floor" in med:
                    row["floor_ms"] = med["floor"]
                    row["floor_ratio"] = med["floor"] / med["geoopt"]
                if compiled:
                    row["compiled_ms"] = med["compiled"]
                    row["compiled_ratio"] = med["compiled"] / med["geoopt"]
                    row["first_call_s"] = first
                results.append(row)
                print(
                    f"k={kname:>5} {op:14s} {results[-1]['pass']:8s} geoopt {med['geoopt']:8.2f} ms"
                    f"  mosgeo {med['mosgeo']:8.2f} ms  ratio {results[-1]['ratio']:.3f}",
                    flush=True,
                )
    return results


def to_markdown(results: list[dict], meta: dict) -> str:
    compiled = "compiled_ms" in results[0]
    lines = [
        "# mosgeo vs geoopt: core ops",
        "",
        f"`{meta['command']}` — {meta['rows']} × {meta['n']} float32, {meta['threads']} "
        f"thread(s), median of {meta['reps']} interleaved repetitions; torch "
        f"{meta['torch']}, geoopt {meta['geoopt']}, {meta['machine']}.",
        "",
        "ratio = mosgeo / geoopt (below 1: mosgeo faster). fwd+bwd: gradients w.r.t. the "
        "data inputs.",
        "",
        markdown_table(
            ["κ", "op", "pass", "geoopt ms", "mosgeo ms", "ratio"]
            + (["compiled ms", "compiled ratio", "first call s"] if compiled else []),
            (
                [
                    r["k"],
                    r["op"],
                    r["pass"],
                    f"{r['geoopt_ms']:.2f}",
                    f"{r['mosgeo_ms']:.2f}",
                    f"{r['ratio']:.2f}",
                ]
                + (
                    [
                        f"{r['compiled_ms']:.2f}",
                        f"{r['compiled_ratio']:.2f}",
                        f"{r['first_call_s']:.1f}",
                    ]
                    if compiled
                    else []
                )
                for r in results
            ),
            align="lllrrr" + ("rrr" if compiled else ""),
        ),
    ]
    worst = max((r for r in results if r["pass"] == "fwd+bwd"), key=lambda r: r["ratio"])
    lines += [
        "",
        f"Worst fwd+bwd ratio: {worst['ratio']:.2f} ({worst['op']}, κ = {worst['k']}).",
        *(
            [
                "",
                "compiled: the same ops through `mosgeo.compiled` (torch.compile, inductor, "
                "fullgraph, dynamic shapes); compiled ratio = compiled / geoopt; first call s = "
                "the first call's time, compilation included. Worst fwd+bwd compiled ratio: "
                + "{r[compiled_ratio]:.2f} ({r[op]}, κ = {r[k]}).".format(
                    r=max(
                        (r for r in results if r["pass"] == "fwd+bwd"),
                        key=lambda r: r["compiled_ratio"],
                    )
                ),
            ]
            if compiled
            else []
        ),
        *(
            [
                "",
                "floor: the Euclidean work no Möbius matrix-vector product avoids, `x @ Mᵀ` "
                "with the same gradients (one matmul forward, two backward), in the same "
                "interleaved run: "
                + "; ".join(
                    f"κ = {r['k']} {r['pass']} {r['floor_ms']:.2f} ms = "
                    f"{r['floor_ratio']:.2f}× geoopt"
                    for r in results
                    if "floor_ms" in r
                )
                + ".",
            ]
            if any("floor_ms" in r for r in results)
            else []
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument(
        "--no-compiled", dest="compiled", action="store_false", help="skip the compiled column"
    )
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list of {OPS} to time")
    add_common_options(ap, reps=15, warmup=2)
    args = ap.parse_args()
    ops = [op for op in args.ops.split(",") if op]
    if not ops or set(ops) - set(OPS):
        ap.error(f"--ops: a comma list of {OPS}")
    torch.set_num_threads(args.threads)
    import geoopt

    meta = {
        "command": command_line("bench_core.py", ap, args, flags={"compiled": "--no-compiled"}),
        "rows": args.rows,
        "n": args.dim,
        "reps": args.reps,
        "threads": args.threads,
        "torch": torch.__version__,
        "geoopt": geoopt.__version__,
        "machine": machine(),
    }
    results = bench(args.rows, args.dim, args.reps, args.warmup, args.seed, args.compiled, ops)
    write_results(args.out, "core", {"meta": meta, "results": results}, to_markdown(results, meta))


if __name__ == "__main__":
    main()
