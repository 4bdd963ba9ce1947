"""The fixed cost of one adapted layer per call, in aten ops (issue 13: on a GPU every op is a
kernel launch, and a short-sequence step is launch-bound).

One ``gate_proj`` of a tiny Llama, called directly on 8 tokens, forward + ``.sum().backward()``,
counted after a warm-up call with ``benchmarks/_report.aten_ops`` (the measure
``benchmarks/bench_step.py`` reports for SmolLM2's width: the count does not depend on the
widths). The adapter is the paper's default (r = 8, 8 experts, top-4, stereographic input
map, learnable κ, balance loss on, fused), with B non-zero.

Counts (torch 2.13, CPU): PEFT LoRA r = 8: 34 top-level / 42 kernel-level; MoSELoRA before
the fused layer (``mosgeo_lora.fused``): 436 / 492; now 132 / 234. The issue's goal, 85
top-level, is not met: what is left is listed in ``docs/design.md`` §2.2.
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

#: MoSELoRA's bounds: the counts above, with a few ops of slack for other torch versions
MAX_TOPLEVEL = 136
MAX_KERNEL = 245
TARGETS = ["gate_proj", "up_proj", "down_proj"]


def _gate_proj(variant: str):
    torch.manual_seed(0)
    base = tiny_llama()
    torch.manual_seed(1)
    if variant == "lora":
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
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
