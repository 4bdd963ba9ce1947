"""``mosgeo-lora compare``: methods × learning rates × seeds, one Markdown table.

Every run is a full :func:`mosgeo_lora.finetune.train.finetune` in its own folder
``<out>/<method>/lr<lr>/seed<seed>``; a run whose ``metrics.json`` exists is reused, so an
interrupted grid continues where it stopped. The learning rate of each method is chosen on a
*validation* set (fresh problems from the training modules, generated with a seed the training
stream does not use), never on the test sets; the table then reports the test sets at that
learning rate as mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import data as mdata
from .base_models import load
from .config import CompareConfig, ConfigError
from .methods import parse_method
from .train import finetune

__all__ = ["compare", "summarize", "markdown_table"]

#: The name of the validation set in each run's scores.
VALIDATION = "validation"


def _run_dir(out: Path, method: str, lr: float, seed: int) -> Path:
    return out / method / f"lr{lr:g}" / f"seed{seed}"


def compare(cfg: CompareConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Run (or reuse) every cell of the grid; write ``compare.json`` and ``compare.md`` into
    ``output_dir`` (default ``cfg.output_dir``)."""
    output_dir = cfg.output_dir if output_dir is None else output_dir
    for m in cfg.methods:
        parse_method(m, cfg.base.rank)  # unknown names fail before anything runs
    if not cfg.lrs or not cfg.seeds or not cfg.methods:
        raise ValueError("compare needs at least one method, learning rate and seed")
    classified = cfg.base.classification_task()
    if classified is not None:
        raise ConfigError(
            f"compare picks learning rates on generated math problems, which a {classified.name} "
            "classifier does not answer; run finetune --task once per method and seed instead"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    validation = {VALIDATION: mdata.validation_examples(cfg.validation_per_module)}
    base_model = None
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:  # seed-major: a partial grid already has every method
        for method in cfg.methods:
            for lr in cfg.lrs:
                run_dir = _run_dir(out, method, lr, seed)
                done = run_dir / "metrics.json"
                if done.is_file():
                    runs.append(json.loads(done.read_text()))
                    continue
                if base_model is None:
                    base_model = load(cfg.base.model)
                fresh = copy.copy(base_model)
                fresh.model = copy.deepcopy(base_model.model)
                run = replace(
                    cfg.base,
                    method=method,
                    lr=lr,
                    seed=seed,
                    output_dir=str(run_dir),
                    resume=False,
                )
                print(f"[compare] {method} lr={lr:g} seed={seed} -> {run_dir}", flush=True)
                runs.append(finetune(run, loaded=fresh, extra_eval=validation))
                _write(out, cfg, runs)
    return _write(out, cfg, runs)


def _write(out: Path, cfg: CompareConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(runs, cfg.methods)
    result = {"config": asdict(cfg), "summary": summary, "runs": [_slim(r) for r in runs]}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.md").write_text(markdown_table(summary, cfg))
    return result


def _slim(run: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "method",
        "config",
        "accuracy",
        "train_loss",
        "final_loss",
        "step_time_s",
        "peak_rss_mb",
        "trainable_parameters",
        "activated_parameters",
        "curvatures",
    )
    return {k: run.get(k) for k in keep}


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: the learning rate with the best mean validation accuracy, and the test
    accuracies (mean, sd over seeds) at that learning rate."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method and r.get("accuracy")]
        if not mine:
            continue
        by_lr: dict[float, list[dict]] = {}
        for r in mine:
            by_lr.setdefault(r["config"]["lr"], []).append(r)
        val = {
            lr: statistics.fmean(r["accuracy"][VALIDATION] for r in rs) for lr, rs in by_lr.items()
        }
        best = max(val, key=lambda lr: (val[lr], -lr))
        rs = by_lr[best]
        sets = [s for s in rs[0]["accuracy"] if s != VALIDATION]
        acc = {s: _mean_sd([r["accuracy"][s] for r in rs]) for s in sets}
        seen = [s for s in sets if s in mdata.SEEN_EVAL_SETS]
        unseen = [s for s in sets if s in mdata.UNSEEN_EVAL_SETS]
        groups = (("seen (mean)", seen), ("unseen (mean)", unseen), ("all (mean)", sets))
        for label, group in groups:
            if group:
                acc[label] = _mean_sd(
                    [statistics.fmean(r["accuracy"][s] for s in group) for r in rs]
                )
        out[method] = {
            "best_lr": best,
            "validation_by_lr": val,
            "seeds": [r["config"]["seed"] for r in rs],
            "accuracy": acc,
            "step_time_s": statistics.median(r["step_time_s"] for r in mine if r["step_time_s"]),
            "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in mine),
            "trainable_parameters": rs[0]["trainable_parameters"],
            "activated_parameters": rs[0]["activated_parameters"],
            "final_loss": _mean_sd([r["final_loss"] for r in rs if r["final_loss"] is not None]),
        }
    return out


def markdown_table(summary: dict[str, Any], cfg: CompareConfig) -> str:
    """The comparison as Markdown: accuracy table, then cost table, then LR sweep."""
    if not summary:
        return "No finished runs yet.\n"
    methods = list(summary)
    cols = list(next(iter(summary.values()))["accuracy"])
    lines = [
        f"Exact match (%) on the test sets, mean ± sd over seeds {list(cfg.seeds)}, each method "
        f"at its best learning rate on the validation set (swept: {list(cfg.lrs)}).",
        "",
        "| method | best lr | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for m in methods:
        s = summary[m]
        cells = [f"{100 * mu:.1f} ± {100 * sd:.1f}" for mu, sd in (s["accuracy"][c] for c in cols)]
        lines.append(f"| {m} | {s['best_lr']:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | trainable params | activated params / token | final train loss | "
        "step time (s, median) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = summary[m]
        mu, sd = s["final_loss"]
        lines.append(
            f"| {m} | {s['trainable_parameters']:,} | {s['activated_parameters']:,} | "
            f"{mu:.3f} ± {sd:.3f} | {s['step_time_s']:.2f} | {s['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Validation accuracy (%) by learning rate (mean over seeds):",
        "",
        "| method | " + " | ".join(f"{lr:g}" for lr in cfg.lrs) + " |",
        "|---|" + "---|" * len(cfg.lrs),
    ]
    for m in methods:
        v = summary[m]["validation_by_lr"]
        cells = [f"{100 * v[lr]:.1f}" if lr in v else "–" for lr in cfg.lrs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
