"""MoSELoRA vs PEFT LoRA r = 8 where the fixed cost per call decides: short-sequence training
steps, token-by-token decoding, kernel-level op counts and host synchronisations.

The model is a SmolLM2-135M-shaped Llama (hidden 576, intermediate 1536, 30 layers, 9 heads,
3 KV heads, vocabulary 49152) with random weights, so the run needs no download; both
variants adapt the same feed-forward projections (90 layers). Measured per variant, in the
same process, interleaved (``_report.interleaved``), medians over repetitions:

* ``train B×T``: one optimizer step (forward with labels, backward, AdamW) on a batch of
  B sequences of T tokens; tokens/s = B·T / time;
* ``decode``: greedy generation of ``--new-tokens`` tokens after a 16-token prompt, batch 1,
  with the KV cache: the per-token latency of inference; with ``--compile`` also with the
  transformers model's ``forward`` through ``torch.compile(dynamic=True)`` (what
  ``generate`` then calls);
* ``ops/layer``: aten ops in one adapted ``gate_proj`` forward+backward on 8 tokens, minus
  nothing (the base matmul is in both), counted two ways (``_report.aten_ops``): top-level
  (profiler events with no aten ancestor: what eager mode dispatches) and kernel-level
  (every op a ``TorchDispatchMode`` sees);
* ``syncs/step``: ``aten::_local_scalar_dense`` (``.item()``, ``int(tensor)``, …) in a
  profiled training step of the whole model, batch 2 with padding; on CUDA also the
  warnings of ``torch.cuda.set_sync_debug_mode("warn")``.

    python benchmarks/bench_step.py --layers 4 --reps 3                 # CPU, a quick look
    python benchmarks/bench_step.py --device cuda --dtype bfloat16      # the GPU table
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings

import peft
import torch
import transformers
from _report import (
    add_common_options,
    aten_ops,
    command_line,
    interleaved,
    machine,
    markdown_table,
    median_ms,
    sync,
)
from _report import write_results as _write
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import mosgeo_lora
from mosgeo import radial

#: ``moselora+kernel``: MoSELoRA with the compiled kernel (``mosgeo.radial.set_kernel``: each
#: adapted layer's forward, backward and inference call compiled whole; the GPU's default)
VARIANTS = ("lora", "moselora", "moselora+kernel")
TARGETS = ["gate_proj", "up_proj", "down_proj"]


def smollm2_config(layers: int) -> LlamaConfig:
    """SmolLM2-135M's shape (its config.json), ``layers`` deep."""
    return LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def qwen2_config(layers: int) -> Qwen2Config:
    """Qwen2-1.5B's shape (its config.json: the paper's base model), ``layers`` deep."""
    return Qwen2Config(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


_MODEL_NAMES = {"smollm2": "SmolLM2-135M", "qwen2-1.5b": "Qwen2-1.5B"}

#: ``--shape``: the model shapes, ``(config factory, model class, default depth)``
SHAPES = {
    "smollm2": (smollm2_config, LlamaForCausalLM, 30),
    "qwen2-1.5b": (qwen2_config, Qwen2ForCausalLM, 28),
}


def build(
    variant: str, layers: int, device: str, dtype: torch.dtype, seed: int, shape: str = "smollm2"
):
    config, model_class, _ = SHAPES[shape]
    torch.manual_seed(seed)
    base = model_class(config(layers))
    torch.manual_seed(seed + 1)
    if variant == "lora":
        cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM")
        model = peft.get_peft_model(base, cfg)
    else:
        model = mosgeo_lora.wrap(base)  # the paper's defaults: r 8, 8 experts, top-4
    for name, p in model.named_parameters():  # non-zero B: the adapter does work
        if p.requires_grad and (".lora_B." in name or ".moselora_B." in name):
            torch.nn.init.normal_(p, std=0.02)
    model.to(device=device, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    return model, opt


def train_step(model, opt, ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def decode(model, prompt: torch.Tensor, new_tokens: int) -> None:
    model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


def kernel_of(variant: str) -> str:
    """The kernel (``mosgeo.radial.set_kernel``) a variant runs with."""
    return "compiled" if variant.endswith("+kernel") else "eager"


def with_kernel(variant: str, fn):
    """``fn`` run with the variant's kernel selected (the selection is global)."""

    def call(*args, **kwargs):
        previous = radial.set_kernel(kernel_of(variant))
        try:
            return fn(*args, **kwargs)
        finally:
            radial.set_kernel(previous)

    return call


def _timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def ops_per_layer(model, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """Top-level and kernel-level aten ops of one adapted gate_proj, forward + backward,
    8 tokens (``_report.aten_ops``)."""
    layer = model.get_base_model().model.layers[0].mlp.gate_proj
    x = torch.randn(1, 8, layer.in_features, device=device, dtype=dtype, requires_grad=True)
    top, kernels = aten_ops(lambda: layer(x).sum().backward())
    # compiled code cannot run under the dispatch mode that counts kernels: that count would
    # be the eager kernel's
    return sum(top.values()), (kernels if radial.get_kernel() == "eager" else None)


def _forward_backward(model, ids, mask) -> None:
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def syncs_per_step(model, opt, device: str) -> dict[str, int]:
    """Host synchronisations of one forward+backward of the whole model, batch 2 with padding
    (the optimizer's own, one per parameter tensor for a non-capturable AdamW, left out)."""
    ids = torch.randint(3, 49152, (2, 24), device=device)
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    _forward_backward(model, ids, mask)
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        _forward_backward(model, ids, mask)
    names = [e.name for e in prof.events()]
    out = {"local_scalar_dense": names.count("aten::_local_scalar_dense")}
    if device.startswith("cuda"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _forward_backward(model, ids, mask)
                sync(device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out["cuda_sync_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def run(args) -> dict:
    dtype = getattr(torch, args.dtype)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.train_shapes.split(",")]
    models = {v: build(v, args.layers, args.device, dtype, args.seed, args.shape) for v in VARIANTS}
    rows = {v: {"variant": v} for v in VARIANTS}
    for v, (model, opt) in models.items():
        rows[v]["toplevel_ops_per_layer"], rows[v]["ops_per_layer"] = with_kernel(v, ops_per_layer)(
            model, args.device, dtype
        )
        rows[v].update(with_kernel(v, syncs_per_step)(model, opt, args.device))
        rows[v]["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = models["lora"][0].get_base_model().config.vocab_size
    for b, t in shapes:
        ids = torch.randint(3, vocab, (b, t), generator=gen).to(args.device)
        runs = {
            v: functools.partial(
                _timed, with_kernel(v, functools.partial(train_step, m, o, ids)), args.device
            )
            for v, (m, o) in models.items()
        }
        times = interleaved(runs, args.reps, args.warmup)
        for v in VARIANTS:
            ms = median_ms(times[v])
            rows[v][f"train_{b}x{t}_ms"] = ms
            rows[v][f"train_{b}x{t}_tok_s"] = b * t / (ms / 1e3)
        print(
            f"train {b}x{t}: "
            + "  ".join(f"{v} {rows[v][f'train_{b}x{t}_ms']:.1f} ms" for v in VARIANTS),
            flush=True,
        )
        if args.compile:  # the same step through torch.compile (the warm-up compiles)
            runs = {
                v: functools.partial(
                    _timed, functools.partial(train_step, torch.compile(m), o, ids), args.device
                )
                for v, (m, o) in models.items()
                if v != "moselora+kernel"  # under an outer compile the layer is traced
            }
            times = interleaved(runs, args.reps, max(args.warmup, 2))
            for v in runs:
                rows[v][f"train_{b}x{t}_compiled_ms"] = median_ms(times[v])
            print(
                f"train {b}x{t} compiled: "
                + "  ".join(f"{v} {rows[v][f'train_{b}x{t}_compiled_ms']:.1f} ms" for v in runs),
                flush=True,
            )
    prompt = torch.randint(3, vocab, (1, 16), generator=gen).to(args.device)
    for m, _ in models.values():
        m.eval()
    runs = {
        v: functools.partial(
            _timed,
            with_kernel(v, functools.partial(decode, m, prompt, args.new_tokens)),
            args.device,
        )
        for v, (m, _) in models.items()
    }
    times = interleaved(runs, args.reps, args.warmup)
    for v in VARIANTS:
        rows[v]["decode_ms"] = median_ms(times[v])
        rows[v]["decode_ms_per_token"] = rows[v]["decode_ms"] / args.new_tokens
    print(
        "decode: " + "  ".join(f"{v} {rows[v]['decode_ms']:.1f} ms" for v in VARIANTS), flush=True
    )
    if args.compile:  # the transformers model's forward through torch.compile, as generate uses it
        runs = {}
        for v, (m, _) in models.items():
            if v == "moselora+kernel":  # under an outer compile the layer is traced
                continue
            inner = m.get_base_model()
            inner.forward = torch.compile(inner.forward, dynamic=True)
            runs[v] = functools.partial(
                _timed, functools.partial(decode, m, prompt, args.new_tokens), args.device
            )
        times = interleaved(runs, args.reps, max(args.warmup, 2))
        for v in runs:
            rows[v]["decode_compiled_ms"] = median_ms(times[v])
        print(
            "decode, model compiled: "
            + "  ".join(f"{v} {rows[v]['decode_compiled_ms']:.1f} ms" for v in runs),
            flush=True,
        )
    return {"shapes": shapes, "rows": list(rows.values())}


def to_markdown(result: dict, meta: dict) -> str:
    rows = {r["variant"]: r for r in result["rows"]}
    lo = rows["lora"]
    moses = [rows[v] for v in VARIANTS[1:]]

    def line(label: str, key: str, fmt: str = "{:.1f}", ratio: bool = True) -> list:
        cells = [label, fmt.format(lo[key]) if key in lo else "–"]
        for mo in moses:
            value = mo.get(key)
            cells.append("–" if value is None else fmt.format(value))
            if ratio:
                ok = value is not None and lo.get(key)
                cells.append(f"{value / lo[key]:.2f}" if ok else "–")
            else:
                cells.append("–")
        return cells

    table = []
    for b, t in result["shapes"]:
        k, shape = f"train_{b}x{t}", f"{b} × {t}"
        table.append(line(f"train step {shape} (ms)", k + "_ms"))
        table.append(line(f"tokens/s {shape}", k + "_tok_s", "{:,.0f}"))
        if k + "_compiled_ms" in lo:
            table.append(line(f"train step {shape}, whole model compiled (ms)", k + "_compiled_ms"))
    table.append(line(f"decode {meta['new_tokens']} tokens (ms)", "decode_ms"))
    if "decode_compiled_ms" in lo:
        table.append(line(f"decode {meta['new_tokens']} tokens, model compiled (ms)",
                          "decode_compiled_ms"))  # fmt: skip
    table += [
        line("top-level aten ops, one gate_proj fwd+bwd", "toplevel_ops_per_layer", "{}"),
        line("kernel-level ops, one gate_proj fwd+bwd", "ops_per_layer", "{}"),
        line("`_local_scalar_dense` per forward+backward", "local_scalar_dense", "{}", False),
    ]
    if "cuda_sync_warnings" in lo:
        table.append(
            line("CUDA sync warnings per forward+backward", "cuda_sync_warnings", "{}", False)
        )
    table.append(line("trainable parameters", "trainable", "{:,}", False))
    head = ["measure", "LoRA r=8", "MoSELoRA", "/ LoRA", "MoSELoRA, compiled", "/ LoRA"]
    return (
        "# MoSELoRA vs LoRA: short steps, decoding, ops and syncs\n\n"
        f"`{meta['command']}` — device {meta['device']}, {meta['dtype']}, "
        f"{meta['layers']} layers of {_MODEL_NAMES[meta.get('shape', 'smollm2')]}'s shape "
        "(random weights), median of "
        f"{meta['reps']} interleaved repetitions after {meta['warmup']} warm-up; torch "
        f"{meta['torch']}, transformers {meta['transformers']}, peft {meta['peft']}; "
        f"{meta['machine']}.\n\n"
        '*compiled*: the same MoSELoRA with `mosgeo.radial.set_kernel("compiled")` (each '
        "adapted layer's forward, backward and inference call compiled whole: its matmuls and "
        'a few fused kernels), which the default `"auto"` selects for tensors on a GPU where '
        'Triton is installed; the MoSELoRA column sets `"eager"`, the default on a CPU. Its '
        "top-level count leaves out the fused kernels inductor generates (5 + 6 on the CPU) "
        "and its kernel-level count is not measured: compiled code cannot run under the "
        "counting dispatch mode. The whole-model compiled rows trace the layers whatever the "
        "kernel, so they have no compiled-kernel cell.\n\n" + markdown_table(head, table) + "\n"
    )


def run_meta(script: str, ap, args, device: str) -> dict:
    """A run's description: the command that repeats it, its options, the libraries'
    versions and the machine."""
    return {
        "command": command_line(script, ap, args),
        **{k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "machine": machine(device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--shape", default="smollm2", choices=tuple(SHAPES), help="model shape")
    ap.add_argument("--layers", type=int, default=None, help="depth (default: the shape's)")
    ap.add_argument("--train-shapes", default="8x64,8x512")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    add_common_options(ap, reps=10, warmup=2)
    args = ap.parse_args()
    if args.layers is None:
        args.layers = SHAPES[args.shape][2]
    torch.set_num_threads(args.threads)
    result = run(args)
    meta = run_meta("bench_step.py", ap, args, args.device)
    stem = "step_" + ("cuda" if args.device.startswith("cuda") else "cpu")
    if args.shape != "smollm2":
        stem += "_" + args.shape.replace("-", "_").replace(".", "_")
    _write(args.out, stem, {"meta": meta, **result}, to_markdown(result, meta))


if __name__ == "__main__":
    main()
