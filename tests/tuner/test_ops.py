"""The fixed cost of one adapted layer per call, in aten ops (issue 13: on a GPU every op is a
kernel launch, and a short-sequence step is launch-bound).

One ``gate_proj`` of a tiny Llama, called directly on 8 tokens, forward + ``.sum().backward()``,
counted after a warm-up call with ``benchmarks/_report.aten_ops`` (the measure
``benchmarks/bench_step.py`` reports for SmolLM2's width: the count does not depend on the
widths). The adapter is the paper's default (r = 8, 8 experts, top-4, stereographic input
map, learnable κ, balance loss on, fused), with B non-zero.

Counts (torch 2.13, CPU): PEFT LoRA r = 8: 34 top-level / 42 kernel-level; MoSELoRA before
the fused layer (``mosgeo_lora.fused``): 436 / 492; eager (the CPU's default) 131 / 233. With
the compiled kernel (``mosgeo.radial.set_kernel("compiled")``, what the default ``"auto"``
runs on a GPU) the adapter's forward, backward and inference call each run as one compiled
function: 31 top-level aten ops on 8 tokens (27 on one; the matmuls, ``topk``, the autograd
engine's own) plus the fused kernels inductor generated, 5 in the forward and 6 in the
backward on the CPU (``torch._inductor.config.cpp.enable_kernel_profile`` shows them to the
profiler): ~42 launches, LoRA's 42, and within the issue's goal of 85 top-level ops
(``docs/design.md`` §2.2). When only γ was compiled: 74. The kernel-level count runs under a
``TorchDispatchMode``, where compiled code cannot run: it is measured for the eager kernel.

The learnable input scale (``MoSELoraConfig(input_scale=...)``, off by default) adds 8 ops
(139 / 241): ``κ e^{-2ρ}`` and its two gradients, on ``(N,)``-sized tensors inside the fused
node; the default's count does not change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _report import aten_ops  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo import radial  # noqa: E402

#: MoSELoRA's bounds: the counts above, with a few ops of slack for other torch versions
MAX_TOPLEVEL = 135
MAX_KERNEL = 244
#: what the learnable input scale may add (8 measured)
MAX_INPUT_SCALE_EXTRA = 10
#: with the compiled adapter (31 measured on 8 tokens, 37 while two of the numerics table's
#: floats were rebuilt as tensors on every call; the issue's goal was 85)
MAX_TOPLEVEL_COMPILED = 34
#: a decoding call with the compiled adapter (8 measured: the base layer's linear, the two
#: small linears, topk, the Gram matmul, the up-projection, the call's own; PEFT LoRA 6)
MAX_DECODING_COMPILED = 10
TARGETS = ["gate_proj", "up_proj", "down_proj"]


def _gate_proj(variant: str):
    torch.manual_seed(0)
    base = tiny_llama()
    torch.manual_seed(1)
    if variant == "lora":
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    elif variant == "moselora+scale":
        model = mosgeo_lora.wrap(base, mosgeo_lora.MoSELoraConfig(input_scale="sqrt_d_in"))
    else:
        model = mosgeo_lora.wrap(base)  # the paper's defaults
    for name, p in model.named_parameters():  # non-zero B: the adapter does work
        if p.requires_grad and (".lora_B." in name or ".moselora_B." in name):
            torch.nn.init.normal_(p, std=0.02)
    layer = model.get_base_model().model.layers[0].mlp.gate_proj
    return layer, layer.base_layer.in_features


def _counts(variant: str) -> tuple[int, int, dict]:
    layer, d_in = _gate_proj(variant)
    x = torch.randn(1, 8, d_in, requires_grad=True)
    top, kernels = aten_ops(lambda: layer(x).sum().backward())
    return sum(top.values()), kernels, dict(top)


def test_one_adapted_layer_runs_a_bounded_number_of_ops():
    lora_top, lora_kernels, _ = _counts("lora")
    top, kernels, by_name = _counts("moselora")
    print(f"\ntop-level / kernel-level aten ops: LoRA {lora_top} / {lora_kernels}, "
          f"MoSELoRA {top} / {kernels}")  # fmt: skip
    assert top <= MAX_TOPLEVEL, sorted(by_name.items(), key=lambda kv: -kv[1])
    assert kernels <= MAX_KERNEL
    assert lora_top <= 40  # the yardstick is the measure of the issue


def test_the_input_scale_adds_a_few_ops_and_the_default_none():
    top, kernels, _ = _counts("moselora")
    s_top, s_kernels, by_name = _counts("moselora+scale")
    print(f"\ntop-level / kernel-level aten ops: MoSELoRA {top} / {kernels}, with the input "
          f"scale {s_top} / {s_kernels}")  # fmt: skip
    assert s_top - top <= MAX_INPUT_SCALE_EXTRA, sorted(by_name.items(), key=lambda kv: -kv[1])
    assert s_kernels - kernels <= MAX_INPUT_SCALE_EXTRA


@pytest.fixture
def compiled_kernel():
    previous = radial.set_kernel("compiled")
    yield
    radial.set_kernel(previous)


@pytest.mark.parametrize("tokens", [8, 1], ids=["tokens", "decoding"])
def test_with_the_compiled_kernel_one_adapted_layer_runs_at_most_34_ops(tokens, compiled_kernel):
    layer, d_in = _gate_proj("moselora")
    x = torch.randn(1, tokens, d_in, requires_grad=True)
    top, _ = aten_ops(lambda: layer(x).sum().backward())
    print(f"\ntop-level aten ops, compiled adapter, {tokens} token(s): {sum(top.values())}")
    assert sum(top.values()) <= MAX_TOPLEVEL_COMPILED, sorted(top.items(), key=lambda kv: -kv[1])
    layer.eval()
    with torch.no_grad():
        top, _ = aten_ops(lambda: layer(x.detach()[:, :1]))
    print(f"top-level aten ops, compiled adapter, decoding one token: {sum(top.values())}")
    assert sum(top.values()) <= MAX_DECODING_COMPILED, sorted(top.items(), key=lambda kv: -kv[1])


def test_the_compiled_kernel_gives_the_eager_model(compiled_kernel):
    """A wrapped model, forward and every adapter gradient, and a no-grad single-token call
    (decoding): the same with both kernels."""
    _same_model_with_both_kernels("cpu", "compiled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_default_kernel_gives_the_eager_model():
    """On a GPU the default kernel (``"auto"``) is the compiled one (Triton): a wrapped
    model's forward, gradients and decoding call equal the eager kernel's, with no
    fallback warning."""
    import warnings

    previous = radial.set_kernel("auto")
    try:
        assert radial.kernel_for(torch.device("cuda")) == "compiled"
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            _same_model_with_both_kernels("cuda", "auto")
    finally:
        radial.set_kernel(previous)


def _same_model_with_both_kernels(device: str, kernel: str) -> None:
    torch.manual_seed(0)
    model = mosgeo_lora.wrap(tiny_llama()).to(device)
    for name, p in model.named_parameters():
        if p.requires_grad and ".moselora_B." in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 64, (2, 7), device=device)
    results = {}
    for name in (kernel, "eager"):
        radial.set_kernel(name)
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            step = model(input_ids=ids[:, :1]).logits
        results[name] = (out.logits.detach(), grads, step)
    (logits, grads, step), (ref_logits, ref_grads, ref_step) = results[kernel], results["eager"]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step, ref_step, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any(".moselora_k." in n for n in grads)
    for name in grads:
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * scale)


#: one adapted layer called under ``no_grad`` on one token (decoding): the inference path
#: (``mosgeo_lora.fused.infer`` with the layer's cached constants) measured 42 top-level ops
#: (47 kernel-level) with the base layer's ``linear``, its routing counted once per 64 calls;
#: 44 (49) before the cache held ``B_catᵀ`` and ``z̃.unsqueeze(1)`` served both of its uses;
#: 48 (53) counting every call; the no-gradient path before it, 59 (65); PEFT LoRA, 6 (14)
MAX_DECODING_TOPLEVEL = 44


def test_a_decoding_call_runs_a_bounded_number_of_ops():
    """Decoding is launch-bound: one token through an adapted layer without a gradient costs
    a bounded number of ops, the weight-only terms (κ's terms, the Gram matrices) coming from
    the layer's cache."""
    counts = {}
    for variant in ("lora", "moselora"):
        layer, d_in = _gate_proj(variant)
        layer.eval()  # as generate's model: MoSELoRA's evaluation call
        x = torch.randn(1, 1, d_in)
        with torch.no_grad():
            top, kernels = aten_ops(lambda layer=layer, x=x: layer(x))
        counts[variant] = (sum(top.values()), kernels, top)
    print(
        "\ndecoding, one token, top-level / kernel-level aten ops: "
        + ", ".join(f"{v} {c[0]} / {c[1]}" for v, c in counts.items())
    )
    top, _, by_name = counts["moselora"]
    assert top <= MAX_DECODING_TOPLEVEL, sorted(by_name.items(), key=lambda kv: -kv[1])
    assert "aten::einsum" not in by_name  # the Gram matrices are not recomputed per call
    assert "aten::index_add" not in by_name  # the routing is counted once per 64 calls
