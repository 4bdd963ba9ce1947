"""MoSELoRA on a whole decoder MLP block: time and peak memory against LoRA and naive paths.

A Llama-style MLP (``gate_proj``, ``up_proj``, ``down_proj``, SiLU gating; transformers'
``LlamaMLP``) with frozen float32 base weights, at SmolLM2-135M sizes (hidden 576,
intermediate 1536) and Qwen2-1.5B sizes (hidden 1536, intermediate 8960). All three
projections are adapted by each variant:

* ``none``: the frozen block, no adapter (context: the adapters' share of the time);
* ``lora``: PEFT LoRA, r = 8 (``peft.get_peft_model``, random B);
* ``fused``: MoSELoRA default (``mosgeo_lora.wrap``: r = 8, 8 experts, top-4, fused path);
* ``hydra_cat``: HydraLoRA-style (shared A, 8 B's, dense softmax router), written as one
  ``B_cat`` matmul: the same kernel shape as ``fused`` without the geometry;
* ``hydra_loop``: (b) the same HydraLoRA adapter as a per-expert Python loop of
  ``d_out``-sized matmuls, ``out = Σ_i g_i B_i z``;
* ``reference``: MoSELoRA ``fused=False`` (the literal per-expert path, explicit radial maps);
* ``hnn``: (c) the path of prior hyperbolic work (HNN-style hyperbolic LoRA, the paper's
  Figure 3 comparison): per expert ``h = project(expmap0(z))``,
  ``v = project(mobius_matvec(B_i, h))``, ``o_i = logmap0(v)`` with ``mosgeo.math``, one κ
  per expert, the same top-4 router.

Every adapter starts from non-zero B, and every step is forward + backward of
``(y · g).sum()`` (a fixed random upstream gradient ``g``; MoSELoRA adds its load-balancing
loss gradient, coefficient 0.01, as in training) w.r.t. the adapter parameters with the base frozen.
The block input requires grad by default (as in every decoder block but the first, whose
input gradient feeds the adapters of earlier layers; ``--no-input-grad`` turns it off).
"fwd" is a forward pass under ``torch.no_grad`` (inference). Each repetition runs every
variant once in a rotated order; the table reports medians.

Peak memory (CPU): one fresh spawned process per variant builds the block and inputs, runs
one warm-up step, frees the gradients (``set_to_none``), resets the kernel's resident-set
high-water mark (``/proc/self/clear_refs``), runs one more step and reports
``VmHWM − VmRSS(before)``: the activations, gradients and transient buffers of the step,
without weights and inputs. glibc's mmap threshold is pinned at 128 KiB in that process so
freed large tensors leave the resident set at once. CUDA: ``max_memory_allocated`` minus
the allocation before the step. Also reported: the bytes autograd saves for backward
(``saved_tensors_hooks``, parameters and inputs excluded), which is deterministic.

    python benchmarks/bench_layer.py                       # full run, writes benchmarks/results/
    python benchmarks/bench_layer.py --sizes smol --tokens smol=2x128 --reps 3   # quick look
    python benchmarks/bench_layer.py --device cuda --tokens smol=8x256,1.5b=8x256
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import math
import multiprocessing as mp
import os
import queue
import re
import time
from pathlib import Path

import peft
import torch
import transformers
from _report import (
    add_common_options,
    command_line,
    fmt,
    interleaved,
    machine,
    median_ms,
    paired_quartiles,
    sync,
    write_results,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

import mosgeo.math as pmath
import mosgeo_lora
from mosgeo_lora.router import route

TARGETS = ["gate_proj", "up_proj", "down_proj"]
SIZES = {
    "smol": {"hidden": 576, "inter": 1536, "model": "SmolLM2-135M"},
    "1.5b": {"hidden": 1536, "inter": 8960, "model": "Qwen2-1.5B"},
}
DEFAULT_TOKENS = {"smol": (8, 256), "1.5b": (2, 256)}
VARIANTS = ["none", "lora", "fused", "hydra_cat", "hydra_loop", "reference", "hnn"]
# opt-in (--variants): torch.compile of the whole block; CPU compile takes minutes
COMPILED = ["lora_compiled", "fused_compiled"]
LABELS = {
    "none": "frozen block, no adapter",
    "lora": "PEFT LoRA r=8",
    "fused": "MoSELoRA fused (default)",
    "hydra_cat": "HydraLoRA, one B_cat matmul",
    "hydra_loop": "(b) HydraLoRA per-expert loop",
    "reference": "MoSELoRA reference (fused=False)",
    "hnn": "(c) exp/log-map path (HNN-style)",
    "lora_compiled": "PEFT LoRA r=8, torch.compile",
    "fused_compiled": "MoSELoRA fused, torch.compile",
}
R, N_EXPERTS, TOP_K = 8, 8, 4
KAPPA0 = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # MoSELoRA's default expert mix


# ----------------------------------------------------------------------------- baselines
class NaiveMoELinear(nn.Module):
    """A frozen linear layer plus a shared-A / N-B mixture adapter, written the naive way.

    ``kind="hydra_loop"``: HydraLoRA, dense softmax gates, ``Σ_i g_i B_i z`` by a Python loop
    of ``(T × r)·(r × d_out)`` matmuls (one ``nn.Linear`` per expert, as HydraLoRA's code).
    ``kind="hydra_cat"``: the same adapter as one ``(T × N·r)·(N·r × d_out)`` matmul.
    ``kind="hnn"``: the exp/log-map path of prior hyperbolic work, per expert
    ``logmap0(project(mobius_matvec(B_i, project(expmap0(z)))))`` with its own κ, top-k gates.
    The router reads the low-rank code ``z`` in every kind (as MoSELoRA's; HydraLoRA's own
    router reads ``x``, which would add ``T·d_in·N`` multiply-adds to these baselines).
    """

    def __init__(self, base: nn.Linear, kind: str, r: int = R, n: int = N_EXPERTS) -> None:
        super().__init__()
        self.base, self.kind, self.r, self.n = base, kind, r, n
        d_in, d_out = base.in_features, base.out_features
        self.A = nn.Linear(d_in, r, bias=False)
        self.router = nn.Linear(r, n, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        self.scaling = 16.0 / r
        if kind == "hydra_cat":
            self.B_cat = nn.Parameter(torch.randn(d_out, n * r) * 0.5)
        else:
            self.B = nn.ModuleList(nn.Linear(r, d_out, bias=False) for _ in range(n))
            for b in self.B:
                nn.init.normal_(b.weight, std=0.5)
        if kind == "hnn":
            self.k = nn.Parameter(torch.tensor(KAPPA0[:n]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter(x)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive output alone (the frozen layer not included)."""
        z = self.A(x)
        logits = self.router(z)
        if self.kind == "hydra_cat":
            g = torch.softmax(logits, dim=-1)
            h = (g.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)
            return self.scaling * (h @ self.B_cat.T)
        if self.kind == "hydra_loop":
            g = torch.softmax(logits, dim=-1)
            out = 0
            for i, b in enumerate(self.B):
                out = out + g[..., i : i + 1] * b(z)
            return self.scaling * out
        gates, _, _ = route(logits, TOP_K)
        out = 0
        for i, b in enumerate(self.B):
            k = self.k[i]
            h = pmath.project(pmath.expmap0(z, k=k), k=k)
            v = pmath.project(pmath.mobius_matvec(b.weight, h, k=k), k=k)
            out = out + gates[..., i : i + 1] * pmath.logmap0(v, k=k)
        return self.scaling * out


# ----------------------------------------------------------------------------- setup
def base_weights(size: str, seed: int, device: str) -> dict[str, nn.Parameter]:
    s = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "gate_proj": (s["inter"], s["hidden"]),
        "up_proj": (s["inter"], s["hidden"]),
        "down_proj": (s["hidden"], s["inter"]),
    }
    return {
        n: nn.Parameter((torch.randn(*sh, generator=gen) * 0.02).to(device), requires_grad=False)
        for n, sh in shapes.items()
    }


def build(variant: str, size: str, weights: dict, seed: int, device: str) -> dict:
    """The adapted block of ``variant`` on the shared frozen ``weights``."""
    if variant in COMPILED:
        v = build(variant.removesuffix("_compiled"), size, weights, seed, device)
        v["model"] = torch.compile(v["model"])
        return v
    s = SIZES[size]
    cfg = LlamaConfig(
        hidden_size=s["hidden"], intermediate_size=s["inter"], hidden_act="silu", mlp_bias=False
    )
    with torch.device("meta"):
        mlp = LlamaMLP(cfg)
    for name in TARGETS:
        getattr(mlp, name).weight = weights[name]
    torch.manual_seed(seed)
    if variant == "none":
        model = mlp
    elif variant == "lora":
        lcfg = peft.LoraConfig(r=R, target_modules=TARGETS, init_lora_weights=False)
        model = peft.get_peft_model(mlp, lcfg)
    elif variant in ("fused", "reference"):
        model = mosgeo_lora.wrap(
            mlp, target_modules=TARGETS, init_weights=False, fused=variant == "fused"
        )
    else:
        for name in TARGETS:
            setattr(mlp, name, NaiveMoELinear(getattr(mlp, name), variant))
        model = mlp
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    return {"model": model, "params": params}


def make_inputs(size: str, batch: int, seq: int, seed: int, device: str, input_grad: bool):
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, seq, SIZES[size]["hidden"], generator=gen).to(device)
    g = torch.randn(batch, seq, SIZES[size]["hidden"], generator=gen).to(device)
    return x.requires_grad_(input_grad), g


def malloc_reuse() -> bool:
    """Keep freed CPU memory in glibc's heap (no mmap, no trim), so a step does not pay
    first-touch page faults that depend on the allocator's history rather than on the
    variant (measured: PEFT LoRA's step took 15k minor faults under the default settings, the
    other variants none). Returns False where glibc's ``mallopt`` is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def step(v: dict, x: torch.Tensor, g: torch.Tensor, backward: bool) -> torch.Tensor:
    """One forward (+ backward) of ``v``; returns the loss (or the output's sum)."""
    model = v["model"]
    if not backward:
        with torch.no_grad():
            return model(x).sum()
    for p in v["params"]:
        p.grad = None
    x.grad = None
    y = model(x)  # MoSELoRA adds its balance gradient (coefficient 0.01) in backward
    loss = (y * g).sum()
    loss.backward()
    return loss.detach()


def counted_step(v: dict, x, g) -> tuple[torch.Tensor, int, int]:
    """One fwd+bwd step: its loss, its matmul FLOPs (``torch.utils.flop_counter``) and the
    bytes of the distinct storages autograd saves for backward (parameters, buffers and the
    input excluded: they exist without the step)."""
    skip = {t.untyped_storage().data_ptr() for t in v["model"].parameters()}
    skip |= {t.untyped_storage().data_ptr() for t in v["model"].buffers()}
    skip.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with FlopCounterMode(display=False) as fc:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = step(v, x, g, backward=True)
    return loss, fc.get_total_flops(), sum(seen.values())


# ----------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _mem_child(spec: dict, q) -> None:
    try:
        torch.set_num_threads(spec["threads"])
        w = base_weights(spec["size"], spec["seed"], "cpu")
        v = build(spec["variant"], spec["size"], w, spec["seed"], "cpu")
        x, g = make_inputs(
            spec["size"], spec["batch"], spec["seq"], spec["seed"], "cpu", spec["input_grad"]
        )
        step(v, x, g, backward=True)  # warm-up: lazy init, allocator, code paths
        for p in v["params"]:
            p.grad = None
        x.grad = None
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        before = _status_kib("VmRSS")
        step(v, x, g, backward=True)
        q.put({"peak_mb": (_status_kib("VmHWM") - before) / 1024, "rest_mb": before / 1024})
    except Exception as e:  # pragma: no cover - reported by the parent
        q.put({"error": repr(e)})


def peak_memory_cpu(spec: dict) -> dict:
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_mem_child, args=(spec, q))
    p.start()
    while True:
        try:
            out = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                out = {"error": f"the process exited with code {p.exitcode}"}
                break
    p.join()
    if "error" in out:
        raise RuntimeError(f"memory measurement of {spec['variant']} failed: {out['error']}")
    return out


def peak_memory_cuda(v: dict, x, g) -> dict:
    for p in v["params"]:
        p.grad = None
    x.grad = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(v, x, g, backward=True)
    torch.cuda.synchronize()
    return {
        "peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
        "rest_mb": before / 2**20,
    }


# ----------------------------------------------------------------------------- driver
def _timed_step(v: dict, x, g, backward: bool, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    step(v, x, g, backward)
    sync(device)
    return time.perf_counter() - t0


def bench_size(size: str, batch: int, seq: int, args) -> list[dict]:
    dev = args.device
    w = base_weights(size, args.seed, dev)
    variants = {name: build(name, size, w, args.seed, dev) for name in args.variants}
    x, g = make_inputs(size, batch, seq, args.seed, dev, args.input_grad)
    rows = {name: {"size": size, "variant": name} for name in variants}
    for name, v in variants.items():
        if name in COMPILED:
            t0 = time.perf_counter()
            step(v, x, g, backward=True)
            step(v, x, g, backward=False)
            rows[name]["compile_s"] = time.perf_counter() - t0
        loss, flops, saved = counted_step(v, x, g)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss}")
        rows[name]["gflop_step"] = flops / 1e9
        rows[name]["saved_mb"] = saved / 2**20
        rows[name]["params_m"] = sum(p.numel() for p in v["params"]) / 1e6
    for backward in (False, True):
        key = "step" if backward else "fwd"
        runs = {
            name: functools.partial(_timed_step, v, x, g, backward, dev)
            for name, v in variants.items()
        }
        times = interleaved(runs, args.reps, args.warmup)
        for name in variants:
            rows[name][f"{key}_ms"] = median_ms(times[name])
            rows[name][f"{key}_times"] = [t * 1e3 for t in times[name]]
        print(
            f"[{size}] {key}: "
            + "  ".join(f"{n} {rows[n][f'{key}_ms']:.1f}" for n in variants)
            + " ms",
            flush=True,
        )
    if not args.no_memory:
        for name in variants:
            if name in COMPILED and not dev.startswith("cuda"):
                continue  # a fresh process would compile again inside the measurement
            if dev.startswith("cuda"):
                mem = peak_memory_cuda(variants[name], x, g)
            else:
                spec = {
                    "variant": name,
                    "size": size,
                    "batch": batch,
                    "seq": seq,
                    "seed": args.seed,
                    "threads": args.threads,
                    "input_grad": args.input_grad,
                }
                mem = peak_memory_cpu(spec)
            rows[name].update(mem)
        print(
            f"[{size}] peak MB: "
            + "  ".join(f"{n} {rows[n]['peak_mb']:.1f}" for n in variants if "peak_mb" in rows[n]),
            flush=True,
        )
    for row in rows.values():
        for ref in ("lora", "fused"):
            if ref in rows:
                for key in ("fwd_ms", "step_ms", "gflop_step", "peak_mb", "saved_mb"):
                    if key in row and rows[ref].get(key):
                        row[f"{key}/{ref}"] = row[key] / rows[ref][key]
    return list(rows.values())


def adapter_flops(d_in: int, d_out: int, t: int) -> dict:
    """Forward multiply-add FLOPs (×2) of the adapter matmuls of one layer, T tokens."""
    lora = 2 * t * R * (d_in + d_out)
    fused = 2 * t * (R * d_in + R * N_EXPERTS + N_EXPERTS * R * R + N_EXPERTS * R * d_out)
    fused += 2 * N_EXPERTS * R * R * d_out  # Gram matrices B_iᵀB_i (token-independent)
    return {"lora": lora, "fused": fused, "base": 2 * t * d_in * d_out}


# ----------------------------------------------------------------------------- report
def paired(a: dict, b: dict, key: str = "step") -> list[float] | None:
    """Quartiles of the per-repetition ratios ``a/b`` (both ran in the same repetition)."""
    return paired_quartiles(a.get(f"{key}_times") or [], b.get(f"{key}_times") or [])


def targets(results: list[dict], sizes: list[str]) -> list[dict]:
    out = []
    by = {(r["size"], r["variant"]): r for r in results}

    def add(size, target, value, met, pair=None):
        out.append({"size": size, "target": target, "value": value, "met": met, "paired": pair})

    for size in sizes:
        f, lo, hnn = by.get((size, "fused")), by.get((size, "lora")), by.get((size, "hnn"))
        none = by.get((size, "none"))
        if f and lo:
            ratio = f["step_ms"] / lo["step_ms"]
            add(
                size, "block fwd+bwd time, fused / LoRA ≤ 1.15", ratio, ratio <= 1.15, paired(f, lo)
            )
        if f and hnn:
            ratio = hnn["step_ms"] / f["step_ms"]
            add(
                size,
                "block fwd+bwd time, (c) exp/log path / fused ≥ 8",
                ratio,
                ratio >= 8,
                paired(hnn, f),
            )
            if none:
                ratio = (hnn["step_ms"] - none["step_ms"]) / (f["step_ms"] - none["step_ms"])
                add(
                    size,
                    "adapter fwd+bwd time (block − frozen block), (c) / fused ≥ 8",
                    ratio,
                    ratio >= 8,
                )
        if f and lo and "peak_mb" in f:
            ratio = f["peak_mb"] / lo["peak_mb"]
            add(size, "peak step memory, fused / LoRA ≤ 1.10", ratio, ratio <= 1.10)
    return out


def to_markdown(results: list[dict], meta: dict, analysis: str) -> str:
    lines = [
        "# MoSELoRA on a decoder MLP block: time and memory",
        "",
        f"`{meta['command']}` — {meta['threads']} thread(s), device {meta['device']}, median of "
        f"{meta['reps']} interleaved repetitions after {meta['warmup']} warm-up; torch "
        f"{meta['torch']}, transformers {meta['transformers']}, peft {meta['peft']}, "
        f"{meta['machine']}. Total run time {meta['runtime_s']:.0f} s.",
        "",
        "Block: transformers `LlamaMLP` (gate/up/down, SiLU gating), frozen float32 base "
        "weights, all three projections adapted. MoSELoRA: r = 8, 8 experts (3 hyperbolic, "
        "3 spherical, 2 Euclidean), top-4 by dense masking, balance loss 0.01 (its "
        "gradient, added in backward). "
        "LoRA: PEFT, r = 8. HydraLoRA-style and (c): shared A (r = 8), 8 B's, router on "
        "z = A x. Every adapter starts from random (non-zero) B. fwd+bwd: forward and "
        "backward of (y·g).sum() with a fixed random g, gradients w.r.t. the adapter "
        f"parameters{' and the block input' if meta['input_grad'] else ''} (base frozen). "
        "fwd: forward under no_grad."
        + (
            " The timing process keeps freed memory in glibc's heap (`mallopt`: no mmap, no "
            "trim) so that no variant pays allocator-history-dependent page faults "
            "(`--malloc-default` turns this off)."
            if meta.get("malloc_reuse")
            else ""
        ),
        "",
        "Columns: *ms* medians; *adapter ms*: fwd+bwd minus the frozen block's; */LoRA*, "
        "*/fused* time ratios; *GFLOP* matmul FLOPs of one "
        "fwd+bwd step counted by `torch.utils.flop_counter` (elementwise work not counted); "
        "*peak MB*: peak memory of one fwd+bwd step above the resting state (activations, "
        "gradients, transients; "
        + (
            "`torch.cuda.max_memory_allocated`"
            if meta["device"].startswith("cuda")
            else "fresh process per variant, Linux VmHWM − VmRSS after `clear_refs`"
        )
        + "); *saved MB*: tensors autograd keeps for backward (parameters and input excluded); "
        "*params M*: trainable adapter parameters (millions).",
        "",
    ]
    for size in meta["sizes"]:
        s = SIZES[size]
        b, t = meta["tokens"][size]
        lines += [
            f"## {s['model']} MLP: hidden {s['hidden']}, intermediate {s['inter']}, "
            f"{b} × {t} = {b * t} tokens",
            "",
            "| variant | fwd ms | fwd+bwd ms | adapter ms | fwd+bwd /LoRA | fwd+bwd /fused | "
            "fwd /LoRA | GFLOP fwd+bwd | GFLOP /LoRA | peak MB | peak /LoRA | saved MB | "
            "params M |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        none = next((r for r in results if r["size"] == size and r["variant"] == "none"), None)
        for r in results:
            if r["size"] != size:
                continue
            adapter = r["step_ms"] - none["step_ms"] if none else None
            lines.append(
                f"| {LABELS[r['variant']]} | {r['fwd_ms']:.1f} | {r['step_ms']:.1f} | "
                f"{fmt(adapter, 1)} | "
                f"{fmt(r.get('step_ms/lora'))} | {fmt(r.get('step_ms/fused'))} | "
                f"{fmt(r.get('fwd_ms/lora'))} | {r['gflop_step']:.2f} | "
                f"{fmt(r.get('gflop_step/lora'))} | {fmt(r.get('peak_mb'), 1)} | "
                f"{fmt(r.get('peak_mb/lora'))} | {r['saved_mb']:.1f} | {r['params_m']:.3f} |"
            )
        lines.append("")
    lines += [
        "## Targets",
        "",
        "*measured*: ratio of the medians (decides *met*); *paired*: median [quartiles] of the "
        "per-repetition ratios of the two variants, which ran back to back in each repetition.",
        "",
        "| size | target | measured | paired | met |",
        "|---|---|---:|---:|---|",
    ]
    for t in targets(results, meta["sizes"]):
        p = t["paired"]
        pair = f"{p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]" if p else "–"
        lines.append(
            f"| {SIZES[t['size']]['model']} | {t['target']} | {t['value']:.2f} | {pair} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    lines += ["", analysis.strip(), ""]
    return "\n".join(lines) + "\n"


def auto_analysis(results: list[dict], meta: dict) -> str:
    """Numbers for the analysis section: per-layer adapter FLOP ratios and time shares."""
    by = {(r["size"], r["variant"]): r for r in results}
    lines = ["## Analysis (numbers)", ""]
    for size in meta["sizes"]:
        s = SIZES[size]
        b, t = meta["tokens"][size]
        layer = {
            "gate/up": adapter_flops(s["hidden"], s["inter"], b * t),
            "down": adapter_flops(s["inter"], s["hidden"], b * t),
        }
        parts = []
        for name, f in layer.items():
            parts.append(
                f"{name}: adapter forward FLOPs fused/LoRA = {f['fused'] / f['lora']:.1f}×, "
                f"fused adapter = {100 * f['fused'] / f['base']:.1f} % of the base matmul "
                f"(LoRA {100 * f['lora'] / f['base']:.1f} %)"
            )
        lines.append(f"- {s['model']}: " + "; ".join(parts) + ".")
        none, lo, fu = by.get((size, "none")), by.get((size, "lora")), by.get((size, "fused"))
        if none and lo and fu:
            ad_lo = lo["step_ms"] - none["step_ms"]
            ad_fu = fu["step_ms"] - none["step_ms"]
            fl_lo = lo["gflop_step"] - none["gflop_step"]
            fl_fu = fu["gflop_step"] - none["gflop_step"]
            time_ratio = f"{ad_fu / ad_lo:.1f}×" if ad_lo > 0 else "n/a (below the noise)"
            lines.append(
                f"  fwd+bwd over the frozen block: LoRA adds {ad_lo:.1f} ms "
                f"({fl_lo:.2f} GFLOP), MoSELoRA fused adds {ad_fu:.1f} ms ({fl_fu:.2f} GFLOP): "
                f"time ratio {time_ratio}, matmul-FLOP ratio {fl_fu / fl_lo:.1f}×; the frozen "
                f"block itself takes {none['step_ms']:.1f} ms ({none['gflop_step']:.2f} GFLOP)."
            )
    return "\n".join(lines)


def parse_tokens(spec: str) -> dict[str, tuple[int, int]]:
    out = dict(DEFAULT_TOKENS)
    for item in filter(None, spec.split(",")):
        size, bt = item.split("=")
        b, t = bt.lower().split("x")
        out[size.strip()] = (int(b), int(t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="smol,1.5b", help="comma list of: " + ",".join(SIZES))
    ap.add_argument(
        "--tokens",
        default="",
        help="batch × seq per size, e.g. smol=8x256,1.5b=2x256 (defaults: "
        + ",".join(f"{k}={b}x{t}" for k, (b, t) in DEFAULT_TOKENS.items())
        + ")",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma list of {VARIANTS} and the opt-in {COMPILED}",
    )
    add_common_options(ap, reps=7, warmup=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-input-grad", dest="input_grad", action="store_false")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument(
        "--malloc-default",
        action="store_true",
        help="keep glibc's default malloc settings in the timing process (default: heap reuse)",
    )
    ap.add_argument("--analysis", type=Path, default=Path(__file__).parent / "layer_analysis.md")
    ap.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: re-write layer.md from --out/layer.json (e.g. after editing the "
        "analysis file)",
    )
    args = ap.parse_args()
    if args.render:
        payload = json.loads((args.out / "layer.json").read_text())
        write(payload["meta"], payload["results"], args)
        return
    args.variants = [v for v in args.variants.split(",") if v]
    sizes = [s for s in args.sizes.split(",") if s]
    tokens = parse_tokens(args.tokens)
    for v in args.variants:
        if v not in VARIANTS + COMPILED:
            ap.error(f"unknown variant {v!r}; choose from {VARIANTS + COMPILED}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    reuse = False if args.malloc_default or args.device != "cpu" else malloc_reuse()
    t_start = time.perf_counter()
    results = []
    for size in sizes:
        results += bench_size(size, *tokens[size], args)
    runtime = time.perf_counter() - t_start

    meta = {
        "command": command_line(
            "bench_layer.py",
            ap,
            args,
            skip=("out", "analysis", "render"),
            flags={"input_grad": "--no-input-grad"},
        ),
        "sizes": sizes,
        "tokens": {s: tokens[s] for s in sizes},
        "reps": args.reps,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": args.device,
        "input_grad": args.input_grad,
        "malloc_reuse": reuse,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "machine": machine(args.device),
        "runtime_s": runtime,
    }
    write(meta, results, args)
    print(f"({runtime:.0f} s)")


def write(meta: dict, results: list[dict], args) -> None:
    analysis = auto_analysis(results, meta)
    if args.analysis.exists():
        analysis += "\n\n" + args.analysis.read_text()
    payload = {"meta": meta, "results": results, "targets": targets(results, meta["sizes"])}
    write_results(args.out, "layer", payload, to_markdown(results, meta, analysis))


if __name__ == "__main__":
    main()
