"""Issue 15's results, *does the mixture of spaces help?*, from the finished runs of its grid.

Reads the runs of the grid folders (``mosgeo-lora compare``'s layout,
``<dir>/<method>/lr<lr>/seed<seed>/``: ``metrics.json`` and ``train_log.jsonl``), trains
nothing, and writes

* ``benchmarks/results/issue15.json``: every number ``docs/results.md`` quotes: the paired
  differences of MoSELoRA against each baseline (exact match and answer NLL, over all test
  problems, the seen and the unseen sets, each with its 95 % bootstrap interval over problems
  and seeds), the curvature dynamics of every MoSELoRA run (κ sign changes, |Δκ|, boundary
  share at the start and the end, per layer too) and its κ trajectory over the steps, the
  step counts, the seeds, the runs still missing and the commands;
* ``benchmarks/results/issue15.md`` (the tables) and ``issue15_verdict.md`` (one line per
  contrast), both written from the JSON alone, so a test can hold the page to the JSON;
* ``docs/_static/figures/issue15_curvature_dynamics.png`` (the paper's Figure 2 for this
  grid: mean κ of the hyperbolic and the spherical experts and the share of experts that
  changed space, against the step, one line per seed) and
  ``docs/_static/figures/issue15_boundary_share.png`` (the boundary share at the start and
  the end per seed, and per layer), and ``issue15_kappa_per_expert.png`` (κ of every expert of
  four layers over the steps, the first MoSELoRA run, from its ``curvatures.json``).

usage (the four grid folders of ``docs/results.md``):
    python benchmarks/issue15_results.py --runs runs/issue15 runs/issue15[bcd]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosgeo_lora.finetune.compare import (
    check_one_experiment,
    chosen_lr,
    finished_runs,
    missing_runs,
    paired_differences,
    run_state,
    summarize,
)
from mosgeo_lora.finetune.config import CompareConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "_static" / "figures"

#: The question of issue 15, and the method it asks about.
QUESTION = "Does the mixture of spaces help?"
METHOD = "moselora"
#: The contrasts, in the page's order: geometry removed (same experts, every κ fixed at 0),
#: Euclidean mixture of LoRA heads, LoRA with MoSELoRA's activated parameters per token.
BASELINES = ("moselora-e", "hydralora", "lora-rmatch:moselora")
#: The learning rates swept per method (with the tuning seeds), each method's chosen on its
#: validation answer NLL; the first grid ran every method at :data:`FIXED_LR` alone.
LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
FIXED_LR = 1e-3
SEEDS = (0, 1, 2)
#: The seeds every learning rate ran with; the others ran at each method's chosen rate.
TUNE_SEEDS = (0,)
_SETTINGS = (
    "--lrs 5e-4,1e-3,2e-3,4e-3,8e-3 --seeds 0,1,2 --tune-seeds 0 --steps 400 --batch-size 8 "
    "--curvature-lr 5e-2 --validation-per-module 20 --save-steps 50 --threads 1 --no-progress"
)
#: The two halves of the grid, run side by side (same settings, so paired by seed).
GRID_COMMANDS = (
    f"mosgeo-lora compare --methods moselora,moselora-e {_SETTINGS} --output-dir runs/issue15",
    f"mosgeo-lora compare --methods hydralora,lora-rmatch:moselora {_SETTINGS} "
    "--output-dir runs/issue15b",
)
#: The same grid's report from its finished runs, training nothing.
REPORT_COMMAND = (
    "mosgeo-lora compare --report-only --runs-dir runs/issue15 --runs-dir runs/issue15b "
    "--methods moselora,moselora-e,hydralora,lora-rmatch:moselora --lrs 5e-4,1e-3,2e-3,4e-3,8e-3 "
    "--seeds 0,1,2 --tune-seeds 0 --baselines moselora-e,hydralora,lora-rmatch:moselora "
    "--output-dir runs/issue15-report"
)
#: Item 4's design options and item 3's Tables 2 and 3, each a MoSELoRA variant paired with
#: MoSELoRA itself: the learnable input scale from √d_in (``@scale``, against the clipping),
#: one optimizer group (``@uni``: Table 2's UNI, κ at the adapter's rate; MoSELoRA's default
#: is SEP, κ at ``--curvature-lr``), hyperbolic experts only (``moselora-h``) and spherical
#: only (``moselora-s``, Table 3), the curvatures' learning rate four times MoSELoRA's
#: (``@klr=2e-1``: does κ moving more help?) and the clipping control (``@flat``: every κ
#: fixed at 0, the hyperbolic experts' code still clipped onto their initial ball).
VARIANTS = (
    "moselora@scale",
    "moselora@uni",
    "moselora-h",
    "moselora-s",
    "moselora@klr=2e-1",
    "moselora@flat",
)
#: The variants' sweep: the rates around MoSELoRA's chosen one (4e-3, inside its sweep), with
#: the tuning seeds; the other seeds at each variant's chosen rate. MoSELoRA itself pairs
#: from these rates.
VARIANT_LRS = (2e-3, 4e-3, 8e-3)
#: The rates a variant was swept on beyond :data:`VARIANT_LRS`: ``moselora-h`` chose the
#: sweep's edge (8e-3), ``@flat`` is a flat model like ``moselora-e`` (which chose 1e-3).
VARIANT_EXTRA_LRS = {"moselora-h": (1.6e-2,), "moselora@flat": (1e-3,)}
#: The clipping control's second contrast: the control against the flat model without the
#: clip, each at its own chosen rate (the clip's effect with no curvature anywhere).
CONTROL = ("moselora@flat", "moselora-e")


#: Seed 0 chooses every rate and scores in the contrasts too; the geometry contrasts are
#: also scored on the seeds that chose nothing: 1 and 2 of the grids, and :data:`EXTRA_SEEDS`
#: run for :data:`CLEAN_METHODS` at their chosen rates.
EXTRA_SEEDS = (3, 4)
#: MoSELoRA, its geometry removed, and the clipping control.
CLEAN_METHODS = (METHOD, *CONTROL[::-1])
#: The pairs scored on those seeds, ``(method, baseline)``.
CLEAN_PAIRS = ((METHOD, CONTROL[1]), (METHOD, CONTROL[0]), CONTROL)


def variant_lrs(method: str) -> tuple[float, ...]:
    """The rates ``method`` was swept on in the variants' grid (:data:`VARIANT_LRS` and its
    :data:`VARIANT_EXTRA_LRS`)."""
    return tuple(sorted((*VARIANT_LRS, *VARIANT_EXTRA_LRS.get(method, ()))))


def _lr_text(lr: float) -> str:
    """A rate as the commands write it (``2e-3``, ``1.6e-2``)."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _settings(lrs: Sequence[float]) -> str:
    """The grid's settings with the sweep ``lrs``."""
    return _SETTINGS.replace("5e-4,1e-3,2e-3,4e-3,8e-3", ",".join(map(_lr_text, lrs)))


def _seed_command(method: str, lr: float) -> str:
    """The command of :data:`EXTRA_SEEDS` for ``method`` at its chosen rate ``lr``."""
    seeds = ",".join(map(str, EXTRA_SEEDS))
    settings = _SETTINGS.replace("5e-4,1e-3,2e-3,4e-3,8e-3", _lr_text(lr)).replace(
        "--seeds 0,1,2 --tune-seeds 0", f"--seeds {seeds}"
    )
    return f"mosgeo-lora compare --methods {method} {settings} --output-dir {EXTRA_DIR}"


#: Where the extra seeds' runs go.
EXTRA_DIR = "runs/issue15g"
VARIANT_COMMANDS = (
    f"mosgeo-lora compare --methods moselora@scale,moselora@uni {_settings(VARIANT_LRS)} "
    "--output-dir runs/issue15c",
    f"mosgeo-lora compare --methods moselora-h,moselora-s {_settings(VARIANT_LRS)} "
    "--output-dir runs/issue15d",
    f"mosgeo-lora compare --methods moselora-h {_settings(variant_lrs('moselora-h'))} "
    "--output-dir runs/issue15d",
    f"mosgeo-lora compare --methods moselora@klr=2e-1 {_settings(VARIANT_LRS)} "
    "--output-dir runs/issue15e",
    f"mosgeo-lora compare --methods moselora@flat {_settings(variant_lrs('moselora@flat'))} "
    "--output-dir runs/issue15f",
)
#: The level of the intervals (``paired_bootstrap``'s default).
LEVEL = 0.95
#: The scores each contrast is reported on: all test problems, the seen sets, the unseen.
SCOPES = ("all", "seen", "unseen")
#: The figures (in ``docs/_static/figures``): κ against the step, the boundary share, and
#: κ of every expert of 4 layers.
FIGURE_NAMES = (
    "issue15_curvature_dynamics.png",
    "issue15_boundary_share.png",
    "issue15_kappa_per_expert.png",
)
#: The scalars of ``train_log.jsonl`` the κ figure draws.
TRAJECTORY_KEYS = ("kappa_hyperbolic", "kappa_spherical", "kappa_flipped")


# ----------------------------------------------------------------------------- the numbers
def run_folder(runs_dirs: Sequence[Path], method: str, lr: float, seed: int) -> Path:
    """The folder of the finished run (``method``, ``lr``, ``seed``) among ``runs_dirs``."""
    for root in runs_dirs:
        folder = root / method / f"lr{lr:g}" / f"seed{seed}"
        if (folder / "metrics.json").is_file():
            return folder
    raise FileNotFoundError(f"no finished {method} lr {lr:g} seed {seed} under {runs_dirs}")


def read_trajectory(log: Path) -> dict[str, list[float]]:
    """The logged κ scalars of a run against the step, from its ``train_log.jsonl``: one
    value per logged step (a step logged twice, by a resumed run, keeps its last entry),
    ``{"step": […], "kappa_hyperbolic": […], …}``; empty lists without κ."""
    by_step: dict[int, dict[str, Any]] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if all(k in row for k in TRAJECTORY_KEYS):
                by_step[int(row["step"])] = row
    steps = sorted(by_step)
    out: dict[str, list[float]] = {"step": [float(s) for s in steps]}
    out.update({k: [float(by_step[s][k]) for s in steps] for k in TRAJECTORY_KEYS})
    return out


def _lr_seed(run: dict[str, Any]) -> tuple[float, int]:
    return float(run["config"]["lr"]), int(run["config"]["seed"])


def run_dynamics(run: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The curvature dynamics of a MoSELoRA run with curved experts (``None`` otherwise):
    its ``metrics.json`` measures (boundary shares as shares, per layer too) and its κ
    trajectory."""
    d = run.get("curvature_dynamics") or {}
    clipped = (d.get("boundary_share_end") or {}).get("share") is not None
    if not d.get("curved_experts") and not clipped:  # the clipping control has only a share
        return None
    keep = ("curved_experts", "sign_changed", "sign_changed_share", "mean_abs_delta")
    out: dict[str, Any] = {
        "method": run["method"],
        "seed": run["config"]["seed"],
        "lr": run["config"]["lr"],
        "steps": run["steps"],
        **{k: d[k] for k in (*keep, "max_abs_delta")},
    }
    for when in ("start", "end"):
        share = d.get(f"boundary_share_{when}") or {}
        out[f"boundary_share_{when}"] = share.get("share")
        out[f"boundary_by_layer_{when}"] = share.get("by_layer", {})
    scales = [d.get(f"input_scale_{when}") for when in ("start", "end")]
    if all(scales):  # a learnable input scale: its mean over the layers
        out["input_scale"] = [sc["mean"] for sc in scales]
    out["trajectory"] = read_trajectory(folder / "train_log.jsonl")
    return out


def contrast(pair: dict[str, Any]) -> dict[str, Any]:
    """A paired difference of :func:`~mosgeo_lora.finetune.compare.paired_differences` by
    scope: ``{"method", "baseline", "all": {"accuracy", "nll"}, "seen": …, "unseen": …}``."""
    out: dict[str, Any] = {"method": pair["method"], "baseline": pair["baseline"]}
    out["all"] = {k: pair[k] for k in ("accuracy", "nll") if k in pair}
    for scope in SCOPES[1:]:
        if scope in pair.get("groups", {}):
            out[scope] = pair["groups"][scope]
    return out


def collect(runs_dirs: Sequence[Path], bootstrap: int, command: str) -> dict[str, Any]:
    """Everything the page quotes, from the finished runs under ``runs_dirs``."""
    every = finished_runs(runs_dirs)
    cfg, runs = _experiment(BASELINES, LRS, every)
    summary = summarize(runs, cfg.methods)
    paired = paired_differences(runs, summary, BASELINES, bootstrap, methods=(METHOD,))
    fixed = [r for r in runs if _lr_seed(r)[0] == FIXED_LR]
    fixed_paired = paired_differences(
        fixed, summarize(fixed, cfg.methods), BASELINES, bootstrap, methods=(METHOD,)
    )
    same_lr = []  # the tuning seeds at each rate: the contrasts with the rate held equal
    for lr in LRS:
        sel = [r for r in runs if _lr_seed(r)[0] == lr and _lr_seed(r)[1] in TUNE_SEEDS]
        pairs = paired_differences(
            sel, summarize(sel, cfg.methods), BASELINES, bootstrap, methods=(METHOD,)
        )
        same_lr.append({"lr": lr, "contrasts": [contrast(p) for p in pairs]})
    chosen = summary.get(METHOD, {}).get("best_lr")
    folders = {id(r): run_folder(runs_dirs, r["method"], *_lr_seed(r)) for r in runs}
    dynamics = [  # the runs of the contrasts: the method at its chosen learning rate
        d for r in runs if _lr_seed(r)[0] == chosen and (d := run_dynamics(r, folders[id(r)]))
    ]
    sweep = [  # the tuning seeds' runs at every learning rate
        d for r in runs if _lr_seed(r)[1] in TUNE_SEEDS and (d := run_dynamics(r, folders[id(r)]))
    ]
    settings = runs[0]["config"] if runs else {}
    grid, missing = _grid(cfg, runs, runs_dirs)
    variants = collect_variants(every, runs_dirs, bootstrap)
    # each at the rate its finished sweep chose (None while it runs)
    rates = {m: chosen_lr(cfg, runs, m) for m in CLEAN_METHODS if m in cfg.methods}
    rates[CONTROL[0]] = variants["chosen"].get(CONTROL[0])
    return {
        "question": QUESTION,
        "commands": {
            "grid": list(GRID_COMMANDS),
            "variants": list(VARIANT_COMMANDS),
            "report": REPORT_COMMAND,
            "results": command,
        },
        "grid": {
            **grid,
            "bootstrap": bootstrap,
            "level": LEVEL,
            **{
                k: settings.get(k)
                for k in (
                    "model",
                    "steps",
                    "batch_size",
                    "curvature_lr",
                    "rank",
                    "boundary_prompts",
                )
            },
        },
        "missing": missing,
        "runs": [
            {"method": r["method"], "seed": r["config"]["seed"], "steps": r["steps"]} for r in runs
        ],
        "contrasts": [contrast(p) for p in paired],
        "contrasts_fixed_lr": [contrast(p) for p in fixed_paired],
        "contrasts_same_lr": same_lr,
        "lr_choice": {m: _choice(s) for m, s in summary.items()},
        "means": {m: _means(s) for m, s in summary.items()},
        "dynamics": dynamics,
        "dynamics_mean": _dynamics_mean(dynamics),
        "dynamics_by_lr": [{k: d[k] for k in _SWEEP_KEYS} for d in sweep],
        "variants": variants,
        "clean": collect_clean(every, runs_dirs, rates, bootstrap),
    }


def collect_variants(
    every: Sequence[dict[str, Any]], runs_dirs: Sequence[Path], bootstrap: int
) -> dict[str, Any]:
    """The variants' grid (:data:`VARIANTS`, with :data:`METHOD`, each method on its
    :func:`variant_lrs`): the learning-rate choice of each, the paired differences
    ``METHOD − variant`` at the chosen rates, the clipping control's contrast with
    ``moselora-e`` (:data:`CONTROL`, ``moselora-e`` from the main grid), the curvature
    dynamics of every run at its method's chosen rate (each once its sweep has finished),
    the runs missing."""
    cfgs = {m: _method_cfg(m, variant_lrs(m)) for m in (METHOD, *VARIANTS)}
    lrs = sorted({lr for c in cfgs.values() for lr in c.lrs})
    cfg, runs = _experiment(VARIANTS, lrs, every)
    runs = [r for r in runs if _lr_seed(r)[0] in cfgs[r["method"]].lrs]
    summary = summarize(runs, cfg.methods)
    # a variant pairs once its sweep has finished: a rate chosen among some of them may change
    chosen = {m: chosen_lr(c, runs, m) for m, c in cfgs.items()}
    ready = [v for v in VARIANTS if chosen[v] is not None]
    # (no baseline at all would mean "every other method" to paired_differences)
    paired = paired_differences(runs, summary, ready, bootstrap, methods=(METHOD,)) if ready else []
    dynamics = [
        d
        for r in runs
        if _lr_seed(r)[0] == chosen.get(r["method"])
        and (d := run_dynamics(r, run_folder(runs_dirs, r["method"], *_lr_seed(r))))
    ]
    missing = [m for c in cfgs.values() for m in missing_runs(c, runs, runs_dirs)]
    total = sum(_runs_of(c) for c in cfgs.values())
    grid = {
        "methods": list(cfg.methods),
        "lrs": lrs,
        "lrs_by_method": {m: list(c.lrs) for m, c in cfgs.items()},
        "seeds": list(SEEDS),
        "tune_seeds": list(TUNE_SEEDS),
        "runs": total,
        "finished": total - len(missing),
    }
    return {
        "grid": grid,
        "missing": missing,
        "contrasts": [contrast(p) for p in paired],
        "controls": _control(every, runs, chosen, bootstrap),
        "chosen": {m: chosen[m] for m in VARIANTS},
        "lr_choice": {m: _choice(s) for m, s in summary.items()},
        "dynamics": [{k: v for k, v in d.items() if k != "trajectory"} for d in dynamics],
    }


def collect_clean(
    every: Sequence[dict[str, Any]],
    runs_dirs: Sequence[Path],
    rates: dict[str, float | None],
    bootstrap: int,
) -> dict[str, Any]:
    """:data:`CLEAN_PAIRS` on the seeds that chose no rate (every seed but
    :data:`TUNE_SEEDS`, :data:`EXTRA_SEEDS` included), each method at its chosen rate
    (``rates``; a method whose sweep has not finished is left out): the paired differences,
    the commands of the extra seeds and their runs missing."""
    seeds = tuple(s for s in (*SEEDS, *EXTRA_SEEDS) if s not in TUNE_SEEDS)
    ready = {m: lr for m, lr in rates.items() if lr is not None}
    sel = [r for r in every if ready.get(r["method"]) == _lr_seed(r)[0] and _lr_seed(r)[1] in seeds]
    check_one_experiment(sel)
    summary = summarize(sel, tuple(ready))
    contrasts = []
    for method, base in CLEAN_PAIRS:
        if method in summary and base in summary:
            pairs = paired_differences(sel, summary, (base,), bootstrap, methods=(method,))
            contrasts += [contrast(p) for p in pairs]
    missing = [
        {"method": m, "lr": lr, "seed": s, "state": run_state(runs_dirs, m, lr, s)}
        for m, lr in ready.items()
        for s in EXTRA_SEEDS
        if not any(r["method"] == m and _lr_seed(r) == (lr, s) for r in sel)
    ]
    return {
        "seeds": list(seeds),
        "rates": rates,
        "commands": [_seed_command(m, lr) for m, lr in ready.items()],
        "contrasts": contrasts,
        "missing": missing,
    }


def _control(
    every: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    chosen: dict[str, float | None],
    bootstrap: int,
) -> list[dict[str, Any]]:
    """:data:`CONTROL`'s paired difference, once the control's sweep has finished: the
    control at its chosen rate against ``moselora-e`` at the rate it chose in the main grid."""
    method, base = CONTROL
    main_cfg, main_runs = _experiment(BASELINES, LRS, every)
    base_lr = chosen_lr(main_cfg, main_runs, base)
    if chosen.get(method) is None or base_lr is None:
        return []
    sel = [r for r in runs if r["method"] == method and _lr_seed(r)[0] == chosen[method]]
    sel += [r for r in main_runs if r["method"] == base and _lr_seed(r)[0] == base_lr]
    pairs = paired_differences(sel, summarize(sel, CONTROL), (base,), bootstrap, methods=(method,))
    return [contrast(p) for p in pairs]


def _method_cfg(method: str, lrs: Sequence[float]) -> CompareConfig:
    """One method's sweep on ``lrs`` (:data:`SEEDS`, tuned on :data:`TUNE_SEEDS`)."""
    return CompareConfig(methods=(method,), lrs=tuple(lrs), seeds=SEEDS, tune_seeds=TUNE_SEEDS)


def _runs_of(cfg: CompareConfig) -> int:
    """The runs of ``cfg``'s grid: every rate on the tuning seeds, the chosen one on the
    others."""
    tune, seeds = cfg.tune_seeds, cfg.seeds
    return len(cfg.methods) * (len(cfg.lrs) * len(tune) + len(seeds) - len(tune))


def _experiment(
    baselines: Sequence[str], lrs: Sequence[float], every: Sequence[dict[str, Any]]
) -> tuple[CompareConfig, list[dict[str, Any]]]:
    """The grid of :data:`METHOD` and ``baselines`` on ``lrs`` (:data:`SEEDS`, tuned on
    :data:`TUNE_SEEDS`), and its runs among ``every`` finished one, checked to be one
    experiment (the same model, data and steps)."""
    cfg = CompareConfig(
        methods=(METHOD, *baselines),
        lrs=tuple(lrs),
        seeds=SEEDS,
        tune_seeds=TUNE_SEEDS,
        baselines=tuple(baselines),
    )
    wanted = {(m, lr, s) for m in cfg.methods for lr in lrs for s in SEEDS}
    runs = [r for r in every if (r["method"], *_lr_seed(r)) in wanted]
    check_one_experiment(runs)
    return cfg, runs


def _grid(
    cfg: CompareConfig, runs: Sequence[dict[str, Any]], runs_dirs: Sequence[Path]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(grid, missing)``: the grid's methods, rates, seeds, its number of runs (every rate
    on the tuning seeds, the chosen rate on the others) and how many finished; the runs it
    lacks (:func:`~mosgeo_lora.finetune.compare.missing_runs`)."""
    total = _runs_of(cfg)
    missing = missing_runs(cfg, runs, runs_dirs)
    grid = {
        "methods": list(cfg.methods),
        "lrs": list(cfg.lrs),
        "seeds": list(cfg.seeds),
        "tune_seeds": list(cfg.tune_seeds),
        "runs": total,
        "finished": total - len(missing),
    }
    return grid, missing


#: What the learning-rate sweep's table shows of each tuning run's curvature dynamics.
_SWEEP_KEYS = ("seed", "lr", "sign_changed_share", "mean_abs_delta", "boundary_share_end")


def _choice(s: dict[str, Any]) -> dict[str, Any]:
    """A method's learning-rate choice: the chosen rate, the score it was chosen on, the
    tuning seeds and the validation answer NLL and exact match by learning rate."""
    return {
        "best_lr": s["best_lr"],
        "selected_on": s.get("selected_on", "accuracy"),
        "tuning_seeds": s.get("tuning_seeds"),
        "validation_nll": {
            f"{float(lr):g}": v for lr, v in s.get("validation_nll_by_lr", {}).items()
        },
        "validation_accuracy": {f"{float(lr):g}": v for lr, v in s["validation_by_lr"].items()},
    }


def _means(s: dict[str, Any]) -> dict[str, Any]:
    """A method's scores over seeds, ``[mean, sd]`` each: exact match and answer NLL over
    all test sets, the seen and the unseen ones, and its seeds."""
    labels = {"all": "all (mean)", "seen": "seen (mean)", "unseen": "unseen (mean)"}
    out: dict[str, Any] = {"seeds": s["seeds"]}
    for scope, label in labels.items():
        out[f"accuracy_{scope}"] = list(s["accuracy"][label])
        if "nll" in s:
            out[f"nll_{scope}"] = list(s["nll"][label])
    return out


def _dynamics_mean(dynamics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over the MoSELoRA runs (seeds) of each curvature measure (``{}`` without runs)."""
    keys = ("sign_changed_share", "mean_abs_delta", "max_abs_delta")
    keys += ("boundary_share_start", "boundary_share_end")
    out: dict[str, Any] = {}
    for k in keys:
        values = [d[k] for d in dynamics if d.get(k) is not None]
        if values:
            out[k] = statistics.fmean(values)
    return out


# ---------------------------------------------------------------------------- the tables
def _ci(res: dict[str, Any] | None, scale: float, digits: int) -> str:
    """``+d [low, high]`` at ``digits`` decimals of ``scale`` × the values (``–`` if none)."""
    if not res:
        return "–"
    text = f"{scale * res['diff']:+.{digits}f}"
    if res.get("low") is not None:
        text += f" [{scale * res['low']:+.{digits}f}, {scale * res['high']:+.{digits}f}]"
    return text


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def missing_note(result: dict[str, Any]) -> list[str]:
    """The partial grid's note (``[]`` once every run finished)."""
    g, missing = result["grid"], result["missing"]
    if not missing:
        return []
    lines = [
        f"**Partial grid: {g['finished']} of {g['runs']} runs finished.** Not in any number here:",
        "",
    ]
    lines += [
        f"- {m['method']}, lr {'(its chosen)' if m['lr'] is None else format(m['lr'], 'g')}, "
        f"seed {m['seed']}: {m['state']}"
        for m in missing
    ]
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    """``issue15.md``: the paired differences at the chosen learning rates, the learning-rate
    choice, the paired differences of the first grid (every method at :data:`FIXED_LR`), then
    the curvature dynamics per run and by learning rate."""
    lines = missing_note(result)
    level = result["grid"]["level"]
    lines += [
        f"Paired differences, {METHOD} − baseline, each method at the learning rate it chose "
        f"on the validation set, on the seeds both ran; in brackets the {100 * level:g} % "
        "bootstrap interval (problems and seeds resampled). Exact match in points (higher is "
        "better), answer NLL in nats per token (lower is better).",
        "",
        *_contrast_table(result["contrasts"]),
        *_choice_table(result),
        "",
        f"The first grid: every method at learning rate {FIXED_LR:g}, the same seeds and "
        "intervals.",
        "",
        *_contrast_table(result.get("contrasts_fixed_lr", [])),
    ]
    lines += _same_lr_table(result)
    lines += _dynamics_table(result["dynamics"])
    lines += _sweep_table(result.get("dynamics_by_lr", []))
    lines += _variant_lines(result.get("variants"))
    lines += _clean_lines(result.get("clean"))
    return "\n".join(lines) + "\n"


def _clean_lines(clean: dict[str, Any] | None) -> list[str]:
    """The section of the contrasts on the seeds that chose no rate."""
    if not clean:
        return []
    seeds = ", ".join(map(str, clean["seeds"]))
    lines = ["", "### On the seeds that chose no rate", ""]
    if clean["missing"]:
        lines += [
            "**Partial: runs of the extra seeds missing.** Not in any number here:",
            "",
            *(
                f"- {m['method']}, lr {m['lr']:g}, seed {m['seed']}: {m['state']}"
                for m in clean["missing"]
            ),  # fmt: skip
            "",
        ]
    lines += [
        f"The geometry contrasts on seeds {seeds} alone (seed 0 chose every rate): each method "
        "at its chosen rate, the intervals as above.",
        "",
        *_contrast_table(clean["contrasts"], label="contrast", pairs=True),
    ]
    return lines


def _variant_lines(variants: dict[str, Any] | None) -> list[str]:
    """The variants' section of ``issue15.md``: its runs missing, the paired differences
    ``METHOD − variant``, the learning-rate choice and the curvature dynamics."""
    if not variants:
        return []
    level = variants["grid"].get("level", LEVEL)
    lines = ["", "### The design options and Tables 2 and 3", "", *missing_note(variants)]
    own = variants["grid"].get("lrs_by_method", {})
    extra = [
        f"{m} also {', '.join(f'{lr:g}' for lr in lrs if lr not in VARIANT_LRS)}"
        for m, lrs in own.items()
        if set(lrs) - set(VARIANT_LRS)
    ]
    among = ", ".join(f"{lr:g}" for lr in VARIANT_LRS) + (f" ({'; '.join(extra)})" if extra else "")
    lines += [
        f"Paired differences, {METHOD} − variant, each at the learning rate it chose on the "
        f"validation set among {among}; "
        f"{100 * level:g} % intervals as above (a negative answer NLL: {METHOD} better than "
        "the variant).",
        "",
        *_contrast_table(variants["contrasts"], label="variant"),
    ]
    if variants.get("controls"):
        method, base = CONTROL
        lines += [
            "",
            f"The clipping control against the flat model without the clip: {method} − {base}, "
            f"each at its chosen rate ({base}'s from the main grid); a negative answer NLL: "
            "the clip helps a model with no curvature.",
            "",
            *_contrast_table(variants["controls"]),
        ]
    lines += [*_choice_table(variants), *_dynamics_table(variants["dynamics"])]
    return lines


def _choice_table(result: dict[str, Any]) -> list[str]:
    """Validation answer NLL (exact match in brackets) by learning rate, per method, on the
    tuning seeds; the chosen rate in bold once the method's sweep has finished."""
    choice = result.get("lr_choice", {})
    if not choice:
        return []
    lrs = result["grid"]["lrs"]
    seeds = ", ".join(map(str, result["grid"]["tune_seeds"]))
    lines = [
        "",
        f"The learning-rate choice: validation answer NLL (exact match in %) by learning rate, "
        f"seed {seeds}; each method's lowest NLL (bold) is its chosen rate, once its sweep has "
        "finished.",
        "",
        "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|" + "---|" * len(lrs),
    ]
    own = result["grid"].get("lrs_by_method", {})
    for method, c in choice.items():
        cells = []
        done = all(f"{lr:g}" in c["validation_nll"] for lr in own.get(method, lrs))
        for lr in lrs:
            key = f"{lr:g}"
            if key not in c["validation_nll"]:
                cells.append("–")
                continue
            text = f"{c['validation_nll'][key]:.4f} ({100 * c['validation_accuracy'][key]:.0f})"
            cells.append(f"**{text}**" if done and float(c["best_lr"]) == lr else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _contrast_table(
    contrasts: Sequence[dict[str, Any]], label: str = "baseline", pairs: bool = False
) -> list[str]:
    """Exact match and answer NLL differences with their intervals, per contrast and scope;
    the first column is the baseline, or ``method − baseline`` with ``pairs``."""
    lines = [
        f"| {label} | test sets | seeds | problems | Δ exact match (points) | Δ answer NLL |",
        "|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        for scope in SCOPES:
            cell = c.get(scope)
            if not cell:
                continue
            some = cell.get("nll") or cell.get("accuracy")
            name = f"{c['method']} − {c['baseline']}" if pairs else c["baseline"]
            lines.append(
                f"| {name} | {scope} | {some['seeds']} | {some['problems']} | "
                f"{_ci(cell.get('accuracy'), 100, 1)} | {_ci(cell.get('nll'), 1, 3)} |"
            )
    if not contrasts:
        lines.append("| – | – | – | – | no paired runs yet | – |")
    return lines


def _same_lr_table(result: dict[str, Any]) -> list[str]:
    """The paired answer-NLL differences at each swept rate, every method at that same rate
    (the tuning seeds): whether a contrast holds with the learning rate held equal."""
    rows = [e for e in result.get("contrasts_same_lr", []) if e["contrasts"]]
    if not rows:
        return []
    seeds = ", ".join(map(str, result["grid"]["tune_seeds"]))
    lines = [
        "",
        f"The same contrasts with the learning rate held equal: Δ answer NLL, {METHOD} − "
        f"baseline, both at the rate of the row (seed {seeds}: the intervals cover the "
        "problems, not the seeds); all test sets / the unseen sets.",
        "",
        "| lr | baseline | Δ answer NLL, all | Δ answer NLL, unseen |",
        "|---|---|---|---|",
    ]
    for e in rows:
        for c in e["contrasts"]:
            lines.append(
                f"| {e['lr']:g} | {c['baseline']} | {_ci(c['all'].get('nll'), 1, 3)} | "
                f"{_ci(c.get('unseen', {}).get('nll'), 1, 3)} |"
            )
    return lines


def _sweep_table(sweep: Sequence[dict[str, Any]]) -> list[str]:
    if not sweep:
        return []
    lines = [
        "",
        f"The curvature dynamics of the {METHOD} runs of the learning-rate sweep (the tuning "
        "seeds).",
        "",
        "| lr | seed | κ changed sign | mean \\|Δκ\\| | boundary share at the end |",
        "|---|---|---|---|---|",
    ]
    for d in sorted(sweep, key=lambda d: (d["lr"], d["seed"])):
        lines.append(
            f"| {d['lr']:g} | {d['seed']} | {_pct(d['sign_changed_share'])} | "
            f"{d['mean_abs_delta']:.3f} | {_pct(d['boundary_share_end'])} |"
        )
    return lines


def _dynamics_table(dynamics: Sequence[dict[str, Any]]) -> list[str]:
    if not dynamics:
        return []
    scaled = any("input_scale" in d for d in dynamics)
    lines = [
        "",
        "Curvature dynamics of each MoSELoRA run: the curved experts whose κ changed sign "
        "(changed space) between the start and the end, the mean and the largest |Δκ|, and "
        "the boundary share (the (token, hyperbolic expert) pairs whose code the input map "
        "clips onto the ball) at the start and the end"
        + (", and the learnable input scale (mean over the layers)." if scaled else "."),
        "",
        "| method | seed | steps | κ changed sign | mean \\|Δκ\\| | max \\|Δκ\\| | "
        "boundary share, start → end |" + (" input scale, start → end |" if scaled else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if scaled else ""),
    ]
    for d in dynamics:
        moved = "– | – | – |"  # no curved expert (the clipping control)
        if d["curved_experts"]:
            moved = (
                f"{d['sign_changed']} of {d['curved_experts']} ({_pct(d['sign_changed_share'])})"
                f" | {d['mean_abs_delta']:.3f} | {d['max_abs_delta']:.3f} |"
            )
        row = (
            f"| {d['method']} | {d['seed']} | {d['steps']} | {moved} "
            f"{_pct(d['boundary_share_start'])} → {_pct(d['boundary_share_end'])} |"
        )
        if scaled:
            sc = d.get("input_scale")
            row += f" {sc[0]:.1f} → {sc[1]:.1f} |" if sc else " – |"
        lines.append(row)
    return lines


def _word(res: dict[str, Any] | None, lower_is_better: bool) -> str:
    """What an interval says: better, worse, or no difference detected."""
    if not res or res.get("low") is None:
        return "no interval"
    if res["low"] <= 0 <= res["high"]:
        return "no difference detected"
    better = (res["high"] < 0) == lower_is_better
    return "better" if better else "worse"


def verdict_markdown(result: dict[str, Any]) -> str:
    """``issue15_verdict.md``: per contrast, what the intervals say, in words."""
    lines = _contrast_words(result["contrasts"])
    if not lines:
        lines.append("- No contrast has a finished pair of runs yet.")
    variants = result.get("variants", {})
    lines += _contrast_words([*variants.get("contrasts", []), *variants.get("controls", [])])
    clean = result.get("clean") or {}
    if clean.get("contrasts"):
        lines.append(f"- On seeds {', '.join(map(str, clean['seeds']))} alone (no rate chosen):")
        lines += ["  " + line for line in _contrast_words(clean["contrasts"])]
    choice = result.get("lr_choice", {})
    if choice:
        seeds = ", ".join(map(str, result["grid"]["tune_seeds"]))
        chosen = "; ".join(f"{m} {float(c['best_lr']):g}" for m, c in choice.items())
        lines.append(
            f"- **Learning rates**, each method's lowest validation answer NLL (seed {seeds}): "
            f"{chosen}."
        )
    lines += _dynamics_verdict(result)
    return "\n".join(lines) + "\n"


def _contrast_words(contrasts: Sequence[dict[str, Any]]) -> list[str]:
    """One verdict line per contrast: each score's interval, and what it says."""
    lines = []
    for c in contrasts:
        every, unseen = c["all"], c.get("unseen", {})
        some = every.get("nll") or every.get("accuracy")
        lines.append(
            f"- **{c['method']} vs {c['baseline']}** ({some['problems']} problems, "
            f"{_seeds(some['seeds'])}): answer NLL {_ci(every.get('nll'), 1, 3)} nats per token, "
            f"{_word(every.get('nll'), True)}; exact match {_ci(every.get('accuracy'), 100, 1)} "
            f"points, {_word(every.get('accuracy'), False)}; on the unseen sets alone, answer "
            f"NLL {_ci(unseen.get('nll'), 1, 3)}, {_word(unseen.get('nll'), True)}."
        )
    return lines


def _seeds(n: int) -> str:
    """``n`` seeds, saying that one seed's interval covers the problems only."""
    if n == 1:
        return "1 seed: the interval covers the problems, not the seeds"
    return f"{n} seeds"


def _dynamics_verdict(result: dict[str, Any]) -> list[str]:
    """The verdict's line on the curvatures: do experts change space, and how many inputs
    sit on the ball's boundary (mean over the finished MoSELoRA runs)."""
    m, n = result["dynamics_mean"], len(result["dynamics"])
    if not n:
        return []
    share = "–"
    if "boundary_share_end" in m:
        share = f"{_pct(m.get('boundary_share_start'))} → {_pct(m['boundary_share_end'])}"
    return [
        f"- **Curvatures** ({n} {METHOD} run{'s' if n > 1 else ''}, mean): "
        f"{_pct(m['sign_changed_share'])} of the curved experts changed space, mean "
        f"|Δκ| {m['mean_abs_delta']:.3f}; boundary share {share}."
    ]


# --------------------------------------------------------------------------- the figures
def _canvas(ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def plot_kappa(result: dict[str, Any], path: Path) -> Path:
    """The curvature dynamics of the MoSELoRA runs: mean κ of the experts that started
    hyperbolic, of those that started spherical, and the share of curved experts that
    changed space, against the step, one line per seed."""
    fig, axes = _canvas(3, 11.0, 3.4)
    titles = (
        "mean κ, hyperbolic experts (κ₀ = −1)",
        "mean κ, spherical experts (κ₀ = +1)",
        "experts that changed space (%)",
    )
    for d in result["dynamics"]:
        t = d["trajectory"]
        flipped = [100 * f / d["curved_experts"] for f in t["kappa_flipped"]]
        series = (t["kappa_hyperbolic"], t["kappa_spherical"], flipped)
        for ax, ys in zip(axes, series, strict=True):
            ax.plot(t["step"], ys, label=f"seed {d['seed']}")
    for ax in axes[:2]:
        ax.axhline(0.0, color="black", linewidth=0.6)  # crossing it: changing space
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if result["dynamics"]:
        axes[0].legend(fontsize=8)
    g = result["grid"]
    if g["finished"]:
        fig.suptitle(
            f"{METHOD} on {g['model']}: lr {_chosen(result):g}, κ lr {g['curvature_lr']:g}, "
            f"{g['steps']} steps × batch {g['batch_size']}",
            fontsize=11,
        )
    return _save(fig, path)


def _chosen(result: dict[str, Any]) -> float:
    """The learning rate the method chose (:data:`FIXED_LR` before it has)."""
    return float(result.get("lr_choice", {}).get(METHOD, {}).get("best_lr", FIXED_LR))


_LAYER = re.compile(r"layers\.(\d+)\..*?(\w+)$")


def _by_layer(dynamics: Sequence[dict[str, Any]], when: str) -> dict[str, dict[int, float]]:
    """``{projection: {layer index: share}}``, the mean over runs of the per-layer shares."""
    acc: dict[tuple[str, int], list[float]] = {}
    for d in dynamics:
        for name, share in d[f"boundary_by_layer_{when}"].items():
            m = _LAYER.search(name)
            if m:
                acc.setdefault((m.group(2), int(m.group(1))), []).append(share)
    out: dict[str, dict[int, float]] = {}
    for (proj, layer), values in sorted(acc.items(), key=lambda kv: kv[0][1]):
        out.setdefault(proj, {})[layer] = statistics.fmean(values)
    return out


def plot_boundary(result: dict[str, Any], path: Path) -> Path:
    """The boundary share of each MoSELoRA run at the start and the end (left), and per
    layer and projection, mean over seeds (right: dashed at the start, solid at the end)."""
    fig, (left, right) = _canvas(2, 11.0, 3.6)
    runs = [d for d in result["dynamics"] if d["boundary_share_end"] is not None]
    for d in runs:
        ys = [100 * (d["boundary_share_start"] or 0), 100 * d["boundary_share_end"]]
        left.plot([0, 1], ys, marker="o", label=f"{d['method']}, seed {d['seed']}")
    left.set_xticks([0, 1], ["start", f"end (step {result['grid']['steps']})"])
    left.set_xlim(-0.3, 1.3)
    left.set_ylabel("pairs clipped onto the boundary (%)")
    left.set_title("boundary share, all layers", fontsize=10)
    colors = {}
    for when, style in (("start", "--"), ("end", "-")):
        for proj, shares in _by_layer(runs, when).items():
            kw = {"color": colors[proj]} if proj in colors else {}
            (line,) = right.plot(
                list(shares),
                [100 * v for v in shares.values()],
                style,
                marker=".",
                label=f"{proj}, {when}",
                **kw,
            )
            colors.setdefault(proj, line.get_color())
    right.set_xlabel("layer")
    right.set_title("per layer, mean over seeds", fontsize=10)
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_per_expert(runs_dirs: Sequence[Path], result: dict[str, Any], path: Path) -> Path | None:
    """κ of every expert of 4 evenly spaced layers over the steps, for the first MoSELoRA run
    of the JSON (:func:`mosgeo_lora.plot.plot_curvature_dynamics` on its ``curvatures.json``,
    the paper's Figure 2 itself); ``None`` when no such run or file exists."""
    from mosgeo_lora.plot import plot_curvature_dynamics

    for d in result["dynamics"]:
        folder = run_folder(runs_dirs, d["method"], d["lr"], d["seed"])
        history = folder / "curvatures.json"
        if history.is_file():
            title = f"{d['method']}, seed {d['seed']}: κ of every expert (4 of the layers)"
            return plot_curvature_dynamics(
                history, path, max_layers=4, group_by="block", dpi=90, title=title
            )
    return None


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path


# ------------------------------------------------------------------------------- the command
def main(argv: Sequence[str] | None = None) -> int:
    """Write the JSON, the two Markdown files and the two figures; print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="the grid folders")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and tables go")
    ap.add_argument("--figures", type=Path, default=FIGURES, help="where the figures go")
    args = ap.parse_args(argv)
    command = "python benchmarks/issue15_results.py --runs " + " ".join(map(str, args.runs))
    if args.bootstrap != 2000:
        command += f" --bootstrap {args.bootstrap}"
    result = collect(args.runs, args.bootstrap, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "issue15.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "issue15.md").write_text(markdown(result))
    (args.out / "issue15_verdict.md").write_text(verdict_markdown(result))
    kappa, boundary, per_expert = (args.figures / name for name in FIGURE_NAMES)
    plot_kappa(result, kappa)
    plot_boundary(result, boundary)
    plot_per_expert(args.runs, result, per_expert)
    print(markdown(result) + "\n" + verdict_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
