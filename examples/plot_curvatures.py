"""Curvature dynamics of a MoSELoRA adapter (the paper's Figure 2) on a tiny random Llama.

Trains the adapter for a few dozen steps on random tokens with a large curvature learning
rate, so that κ visibly moves within a minute on a CPU, and writes into the output folder:

* ``curvatures.json``: κ of every expert of every adapted layer, and the expert load, per
  recorded step (``mosgeo_lora.CurvatureCallback.history``);
* ``curvature_dynamics.png``: one panel per adapted layer, κ of each expert over the steps;
* ``expert_load.png``: the share of routing slots per expert over the steps.

Run: ``python examples/plot_curvatures.py [--out ./out] [--steps 30]``.
"""

from __future__ import annotations

import argparse

import torch
from transformers import Trainer, TrainingArguments

import mosgeo_lora
from mosgeo_lora.finetune.base_models import tiny_llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./out", help="output folder (default ./out)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--curvature-lr", type=float, default=0.05)
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = 64
    base = tiny_llama(vocab)  # a random 2-layer Llama from the global generator
    model = mosgeo_lora.wrap(base, r=4, num_experts=4, num_hyperbolic=1, num_spherical=2, top_k=2)

    # a learnable pattern (each sequence repeats a random 4-token motif) rather than pure noise
    g = torch.Generator().manual_seed(0)
    motifs = torch.randint(3, vocab, (256, 4), generator=g)
    data = [{"input_ids": m.repeat(4), "labels": m.repeat(4)} for m in motifs]

    callback = mosgeo_lora.CurvatureCallback(every_n_steps=2, output_dir=args.out, plot=True)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.out,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            logging_steps=5,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=data,
        optimizer_cls_and_kwargs=(
            torch.optim.AdamW,
            {"params": mosgeo_lora.param_groups(model, 3e-3, curvature_lr=args.curvature_lr)},
        ),
        callbacks=[callback],
    )
    trainer.train()

    first, last = callback.history[0], callback.history[-1]
    name = next(iter(last["kappa"]))
    print(name)
    for entry in (first, last):
        print(f"  κ at step {entry['step']:>3}: {[round(k, 3) for k in entry['kappa'][name]]}")
    for path in callback.files:
        print("wrote", path)


if __name__ == "__main__":
    main()
