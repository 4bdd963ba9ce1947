"""Invented finished runs of ``mosgeo-lora compare``'s grid, in its folder layout
(``<out>/<method>/lr<lr>/seed<seed>/``) and its ``metrics.json`` and ``train_log.jsonl``
schemas, so that every number of a report written from them is known."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mosgeo_lora.finetune.compare import VALIDATION
from mosgeo_lora.finetune.config import FinetuneConfig

SEEN, UNSEEN = "numbers__place_value", "comparison__closest"
#: The one MoSELoRA layer whose boundary share the invented runs measured.
LAYER = "base_model.model.model.layers.3.mlp.down_proj"


def write_run(
    root: Path,
    method: str,
    seed: int,
    correct: dict[str, list[int]],
    nll: dict[str, list[float]],
    lr: float = 1e-3,
    log: list[dict] | None = None,
    validation: tuple[float, float] = (0.5, 0.1),
    **settings,
) -> Path:
    """A finished run of ``compare``'s grid under ``root``: its folder with a ``metrics.json``
    of the schema ``finetune`` writes (per-problem exact match and answer NLL per test set,
    a validation set, and curvature dynamics for ``moselora`` and its curved variants), and
    the rows of ``log`` as its ``train_log.jsonl``. ``validation``: the validation set's
    exact match and answer NLL."""
    run_dir = root / method / f"lr{lr:g}" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    cfg = FinetuneConfig(
        model="tiny-llama",
        method=method,
        lr=lr,
        seed=seed,
        steps=4,
        output_dir=str(run_dir),
        **settings,
    )
    ev = {
        name: {
            "n": len(correct[name]),
            "accuracy": float(np.mean(correct[name])),
            "nll": float(np.mean(nll[name])),
            "per_problem": {"correct": correct[name], "nll": nll[name]},
        }
        for name in correct
    }
    acc, vnll = validation
    ev[VALIDATION] = {
        "n": 1,
        "accuracy": acc,
        "nll": vnll,
        "per_problem": {"correct": [int(acc >= 0.5)], "nll": [vnll]},
    }
    curved = method.partition("@")[0] in ("moselora", "moselora-h", "moselora-s")
    flat = "@flat" in method  # the clipping control: κ fixed, a boundary share all the same
    curved = curved and not flat
    metrics = {
        "method": method,
        "model": "tiny-llama",
        "optimizer_groups": "sep",
        "config": json.loads(json.dumps(asdict(cfg))),
        "trainable_parameters": 10,
        "activated_parameters": 8,
        "train_loss": 1.0,
        "final_loss": 0.9,
        "steps": 4,
        "step_time_s": 1.0,
        "peak_rss_mb": 100.0,
        "curvature_dynamics": {
            "curved_experts": 4,
            "sign_changed": 1,
            "sign_changed_share": 0.25,
            "mean_abs_delta": 0.1,
            "max_abs_delta": 0.3,
            "boundary_share_start": {"share": 0.05, "pairs": 40, "by_layer": {LAYER: 0.05}},
            "boundary_share_end": {"share": 0.15, "pairs": 40, "by_layer": {LAYER: 0.15}},
        }
        if curved
        else {
            "curved_experts": 0,
            "sign_changed": 0,
            "sign_changed_share": None,
            "mean_abs_delta": None,
            "max_abs_delta": None,
            "boundary_share_start": {"share": 0.05, "pairs": 40, "by_layer": {LAYER: 0.05}},
            "boundary_share_end": {"share": 0.15, "pairs": 40, "by_layer": {LAYER: 0.15}},
        }
        if flat
        else None,
        "eval": ev,
        "accuracy": {k: v["accuracy"] for k, v in ev.items()},
        "nll": {k: v["nll"] for k, v in ev.items()},
    }
    if "@scale" in method:  # a learnable input scale, from √d_in = 24 down to 20
        for when, mean in (("start", 24.0), ("end", 20.0)):
            scale = {"mean": mean, "min": mean, "max": mean, "layers": 1}
            metrics["curvature_dynamics"][f"input_scale_{when}"] = scale
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run_dir


def scores(good: bool) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Per-problem scores of a run on two test sets, 3 problems each: a ``good`` run answers
    two more problems and has an answer NLL 0.2 lower on the unseen set."""
    correct = {SEEN: [1, 1, 0], UNSEEN: [1, 0, 1] if good else [0, 0, 0]}
    nll = {SEEN: [0.5, 0.5, 0.5], UNSEEN: [0.8, 0.8, 0.8] if good else [1.0, 1.0, 1.0]}
    return correct, nll
