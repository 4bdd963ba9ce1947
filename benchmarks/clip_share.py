"""How many tokens does the hyperbolic input map put on the ball's boundary? (docs/design.md §2.1)

For every MoSELoRA layer of SmolLM2-135M and every hyperbolic expert (κ < 0), the share of
tokens whose low-rank code ``z = A x`` (``z/s`` with a learnable input scale ``s``) lies
outside the ball of radius ``1/√|κ|`` (so that ``mosgeo.math.project`` moves it onto the
boundary), and the median of ``√|κ|·‖z‖``, over the
prompts of the frozen test sets. At initialisation (``mosgeo_lora.wrap`` with seed 0) and, if
given, for a trained adapter.

usage: python benchmarks/clip_share.py [ADAPTER_DIR] [--prompts-per-set N]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import mosgeo.math as pmath
from mosgeo_lora.finetune import data as mdata
from mosgeo_lora.finetune.base_models import load
from mosgeo_lora.finetune.dynamics import hyperbolic_code_norms


def measure(model, tokenizer, prompts: list[str]) -> dict[str, tuple[float, float]]:
    """``{layer: (share of (token, hyperbolic expert) pairs clipped, median √|κ|·‖z/s‖)}``,
    from :func:`mosgeo_lora.finetune.dynamics.hyperbolic_code_norms` (``s``: the layer's
    learnable input scale, 1 without one)."""
    ids = [mdata.prompt_ids(tokenizer, q) for q in prompts]
    out = {}
    for name, (n, k) in hyperbolic_code_norms(model, ids).items():
        clipped = pmath.project_factor(n, k) < 1  # (tokens, experts)
        out[name] = (clipped.float().mean().item(), (n * (-k).sqrt()).median().item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", nargs="?")
    parser.add_argument("--prompts-per-set", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sets = mdata.eval_sets()
    prompts = [ex.question for exs in sets.values() for ex in exs[: args.prompts_per_set]]
    loaded = load("smollm2")
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(loaded.model, args.adapter)
        label = args.adapter
    else:
        from transformers import set_seed

        import mosgeo_lora

        set_seed(0)
        model = mosgeo_lora.wrap(loaded.model)
        label = "initialisation (seed 0)"
    stats = measure(model.eval(), loaded.tokenizer, prompts)
    print(f"{label}: {len(prompts)} prompts; hyperbolic experts only")
    print("| layer | tokens clipped to the boundary | median √(−κ)·‖Ax‖ |")
    print("|---|---|---|")
    for name, (clip, radius) in stats.items():
        short = name.split("model.layers.")[-1]
        print(f"| {short} | {100 * clip:.1f}% | {radius:.2f} |")
    clips = [c for c, _ in stats.values()]
    print(
        f"\nall layers: mean {100 * statistics.fmean(clips):.1f}% clipped, "
        f"max {100 * max(clips):.1f}%"
    )


if __name__ == "__main__":
    main()
