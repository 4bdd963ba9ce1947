"""Tutorial: fine-tuning with MoSELoRA (the code of docs/tutorial-finetune.md).

The documentation page includes this file section by section (the ``[doc:…]`` markers), and
``tests/test_docs.py`` runs it. It uses a tiny random Llama built from a config, so it runs
offline in well under a minute on a CPU; a real model is used the same way (the page says
how). It prints what the page quotes and writes two figures:

* ``curvature_dynamics.png``: κ of every expert of every adapted layer over the steps;
* ``expert_load.png``: the share of routing slots each expert received over the steps.

Run: ``python examples/tutorial_finetune.py [--out docs/_static/figures] [--steps 40]``.
"""

# ruff: noqa: E402  (each tutorial section imports what it uses, where the page shows it)
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "figures")
parser.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary folder")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="moselora-tutorial-"))
torch.set_num_threads(1)

# [doc:wrap]
import mosgeo_lora  # registers the MOSELORA adapter type with PEFT
from mosgeo_lora.finetune.base_models import tiny_llama

# A two-layer random Llama built from a config (offline, instant). With a real model:
# AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
torch.manual_seed(0)
model = mosgeo_lora.wrap(tiny_llama())  # adapts gate_proj, up_proj, down_proj of each layer
model.print_trainable_parameters()
config = model.peft_config["default"]
print(
    f"wrap: {config.num_experts} experts, top-{config.top_k}, r = {config.r}, "
    f"initial κ = {config.initial_curvatures()}"
)
print("wrap: adapted", [n for n in mosgeo_lora.curvatures(model)][:3], "…")
# [/doc:wrap]

# [doc:forward]
ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(1))
out = model(input_ids=ids, labels=ids)
with model.disable_adapter():  # the base model alone: its loss is the plain LM loss
    lm_loss = model(input_ids=ids, labels=ids).loss
out.loss.backward()  # B = 0 at init: the router's task gradient is 0, the balance term is not
router = [p.grad.abs().sum() for n, p in model.named_parameters() if ".moselora_router." in n]
print(
    f"forward: loss {out.loss.item():.4f} = LM loss {lm_loss.item():.4f}; "
    f"aux_loss {out.aux_loss.item():.4f}; router gradient {sum(router).item():.2e}"
)
model.zero_grad(set_to_none=True)
# [/doc:forward]

# [doc:train]
from transformers import Trainer, TrainingArguments

# a learnable toy task: each sequence repeats a random 4-token motif four times
motifs = torch.randint(3, 64, (256, 4), generator=torch.Generator().manual_seed(0))
data = [{"input_ids": m.repeat(4), "labels": m.repeat(4)} for m in motifs]

groups = mosgeo_lora.param_groups(model, lr=3e-3, curvature_lr=5e-2)  # κ: its own group
callback = mosgeo_lora.CurvatureCallback(every_n_steps=2, plot=False)
trainer = Trainer(
    model=model,
    args=TrainingArguments(
        output_dir=str(run_dir),
        max_steps=args.steps,
        per_device_train_batch_size=8,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        # with activation checkpointing, keep it non-reentrant (the aux loss needs a graph):
        # gradient_checkpointing=True,
        # gradient_checkpointing_kwargs={"use_reentrant": False},
    ),
    train_dataset=data,
    optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups}),
    callbacks=[callback],
)
trainer.train()
logged = [e for e in trainer.state.log_history if "loss" in e]
print(
    f"train: loss {logged[0]['loss']:.3f} at step {logged[0]['step']} → "
    f"{logged[-1]['loss']:.3f} at step {logged[-1]['step']}"
)
print(
    f"train: mean κ of the hyperbolic experts {logged[-1]['kappa_hyperbolic']:+.3f}, "
    f"of the spherical experts {logged[-1]['kappa_spherical']:+.3f}"
)
# [/doc:train]

# [doc:stats]
kappa = mosgeo_lora.curvatures(model)  # {layer name: [κ_1, …, κ_N]}
layer = "base_model.model.model.layers.1.mlp.down_proj"
print("stats: κ", [round(k, 3) for k in kappa[layer]])

mosgeo_lora.reset_routing_stats(model)  # count the tokens of the next forward passes only
model.eval()
with torch.no_grad():
    model(input_ids=torch.stack([d["input_ids"] for d in data[:16]]))
load = mosgeo_lora.routing_stats(model)[layer]
print(f"stats: {load['tokens']} tokens, load per expert", [round(x, 3) for x in load["load"]])
# [/doc:stats]

# [doc:plot]
from mosgeo_lora import plot_curvature_dynamics, plot_expert_load

plot_curvature_dynamics(callback.history, args.out / "curvature_dynamics.png")
plot_expert_load(callback.history, args.out / "expert_load.png")
# [/doc:plot]

# [doc:save]
from peft import PeftModel

adapter_dir = run_dir / "adapter"
model.save_pretrained(adapter_dir)
print("save:", sorted(p.name for p in adapter_dir.iterdir()))

# in a new process: `import mosgeo_lora` first, or PEFT does not know the type MOSELORA
torch.manual_seed(0)  # the same random base model
loaded = PeftModel.from_pretrained(tiny_llama(), adapter_dir).eval()
with torch.no_grad():
    gap = (loaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
print(f"save: max |logits(loaded) - logits(trained)| = {gap:.1e}")
# [/doc:save]

# [doc:merge]
try:
    model.merge_and_unload()
except NotImplementedError as err:
    print("merge:", str(err).split(":")[0])

# why: the adapter is not a linear map of its input, so no matrix ΔW reproduces it
adapted = model.base_model.model.model.layers[1].mlp.down_proj
x = torch.randn(5, adapted.in_features)
with torch.no_grad():
    d1, d2 = adapted.adapter_delta(x, "default"), adapted.adapter_delta(2 * x, "default")
print(f"merge: ‖Δ(2x) − 2Δ(x)‖ / ‖2Δ(x)‖ = {((d2 - 2 * d1).norm() / (2 * d1).norm()).item():.2f}")

base = model.unload()  # the base model with the adapter layers removed
print("merge: unload() gives", type(base).__name__)
# [/doc:merge]

for name in ("curvature_dynamics.png", "expert_load.png"):
    print("wrote", args.out / name)
