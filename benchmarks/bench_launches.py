"""Kernel launches of a whole model, MoSELoRA against PEFT LoRA: the GPU's fixed cost, counted
on any device.

On a GPU every op is a kernel launch (5–10 µs of host time), and a short-sequence step or a
decoding step of a small model is launch-bound: its time is about its launch count times that
cost. This counts the launches of one training forward+backward (batch 8 × 64) and of one
decoded token (greedy, batch 1, KV cache) of SmolLM2-135M's shape (30 layers, the feed-forward
projections adapted: 90 layers, ``bench_step.build``), for PEFT LoRA r = 8, MoSELoRA eager, and
MoSELoRA with the compiled kernel (``mosgeo.radial.set_kernel("compiled")``, the default
``"auto"`` on a GPU). A launch is a profiler event that is an aten op with no aten ancestor and
not a metadata-only op (a view, ``detach``, an allocation), or a kernel that
``torch.compile`` generated (``torch._inductor.config.cpp.enable_kernel_profile`` makes the
CPU's visible; on a GPU, Triton may split or fuse differently). Counted once, after a warm-up
call (the compiled variant compiles there); nothing is timed.

    python benchmarks/bench_launches.py            # about 3 minutes on one CPU core
"""

from __future__ import annotations

import argparse

import torch
import torch._inductor.config as inductor_config
from _report import RESULTS, markdown_table, write_results
from bench_step import SHAPES, build, decode, run_meta
from torch.profiler import ProfilerActivity, profile

from mosgeo import radial

#: (label, adapter, kernel)
VARIANTS = (
    ("PEFT LoRA r=8", "lora", "eager"),
    ("MoSELoRA, eager", "moselora", "eager"),
    ("MoSELoRA, compiled", "moselora", "compiled"),
)

#: top-level aten ops that launch no kernel: views, aliases, allocations
NO_KERNEL = frozenset(
    "view reshape _reshape_alias _unsafe_view t transpose permute expand expand_as view_as "
    "slice select narrow unsqueeze squeeze flatten unflatten split chunk unbind as_strided "
    "detach alias lift_fresh empty empty_strided to contiguous".split()
)


def launches(fn) -> tuple[int, int]:
    """``(launches, compiled kernels among them)`` of one call of ``fn``, after a warm-up."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = fused = 0
    for event in prof.events():
        if "cpp_fused" in event.name or event.name.startswith("triton_"):
            fused += 1
            continue
        if not event.name.startswith("aten::") or event.name[6:] in NO_KERNEL:
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        ops += parent is None
    return ops + fused, fused


def run(args) -> list[dict]:
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, 49152, (args.batch, args.tokens), generator=gen)
    prompt = torch.randint(3, 1000, (1, 16), generator=gen)
    rows = []
    for label, adapter, kernel in VARIANTS:
        previous = radial.set_kernel(kernel)
        try:
            model, _ = build(adapter, args.layers, "cpu", torch.float32, args.seed)

            def step(model=model):
                model(input_ids=ids, labels=ids).loss.backward()
                model.zero_grad(set_to_none=True)

            train = launches(step)
            model.eval()
            short = launches(lambda model=model: decode(model, prompt, 2))
            long = launches(lambda model=model: decode(model, prompt, 2 + args.new_tokens))
        finally:
            radial.set_kernel(previous)
        per_token = [(b - a) / args.new_tokens for a, b in zip(short, long, strict=True)]
        rows.append(
            {"variant": label, "train": train[0], "train_compiled_kernels": train[1],
             "token": per_token[0], "token_compiled_kernels": per_token[1]}
        )  # fmt: skip
        print(f"{label}: {rows[-1]}", flush=True)
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    lora = rows[0]
    table = [
        [
            r["variant"],
            f"{r['train']:,}",
            f"{r['train_compiled_kernels']:,}",
            f"{r['train'] / lora['train']:.2f}",
            f"{r['token']:,.0f}",
            f"{r['token_compiled_kernels']:,.0f}",
            f"{r['token'] / lora['token']:.2f}",
        ]
        for r in rows
    ]
    head = ["variant", "launches, train fwd+bwd", "of them compiled", "/ LoRA",
            "launches per decoded token", "of them compiled", "/ LoRA"]  # fmt: skip
    return (
        "# Kernel launches of a whole model: MoSELoRA vs LoRA\n\n"
        f"`{meta['command']}` — {meta['layers']} layers of SmolLM2-135M's shape (random "
        f"weights, the feed-forward projections adapted), training batch {meta['batch']} × "
        f"{meta['tokens']}, decoding after a 16-token prompt; torch {meta['torch']}, "
        f"transformers {meta['transformers']}, peft {meta['peft']}; counted on "
        f"{meta['machine']}.\n\n"
        "A launch: a top-level aten op that is not a view, alias or allocation, or a kernel "
        "`torch.compile` generated (*of them compiled*; the CPU's C++ kernels, which Triton "
        "may split or fuse differently on a GPU). Where a GPU step is launch-bound its time "
        "is about proportional to these counts.\n\n" + markdown_table(head, table) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=SHAPES["smollm2"][2], help="depth")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="sequence length of the step")
    ap.add_argument("--new-tokens", type=int, default=4, help="decoded tokens counted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=type(RESULTS), default=RESULTS, help="where the results go")
    args = ap.parse_args()
    torch.set_num_threads(1)
    inductor_config.cpp.enable_kernel_profile = True  # compiled kernels visible to the profiler
    rows = run(args)
    meta = run_meta("bench_launches.py", ap, args, "cpu")
    write_results(args.out, "launches", {"meta": meta, "rows": rows}, to_markdown(rows, meta))


if __name__ == "__main__":
    main()
