"""``mosgeo-lora compare``: methods × learning rates × seeds, one Markdown table.

Every run is a full :func:`mosgeo_lora.finetune.train.finetune` in its own folder
``<out>/<method>/lr<lr>/seed<seed>``; a run whose ``metrics.json`` exists is reused, and a run
folder with a ``checkpoint-N`` but no ``metrics.json`` (a run that was interrupted) resumes
from its newest checkpoint, so an interrupted grid continues where it stopped (``--save-steps``
sets how often a run checkpoints). A finished or interrupted run made with other settings than
the grid's (another ``--steps``, say) is an error, not silently mixed in. The learning rate of
each method is chosen on a *validation* set (fresh problems from the training modules,
generated with a seed the training stream does not use), never on the test sets; the table
then reports the test sets at that learning rate as mean ± sample standard deviation over
seeds.

The design is paired: runs with the same seed see the same training problems in the same
order whatever the method, and every run is scored on the same test problems, each problem
by exact match and by the NLL of its answer (:func:`~.evaluate.evaluate`). So each method is
compared with each baseline problem by problem and seed by seed: the mean paired difference
with a 95 % bootstrap confidence interval over problems and seeds (:func:`paired_bootstrap`).

:func:`report` writes the same files from the finished runs found under one or more grid
folders, training nothing (``mosgeo-lora compare --report-only``): a partial grid is
reportable, and the runs it lacks are listed in both files (``"missing"``), never silently
dropped; several folders made with the same settings (two halves of one grid, run side by
side) report as one grid, their methods paired by seed.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import data as mdata
from .base_models import load
from .config import SELECT_ON, CompareConfig, ConfigError, FinetuneConfig
from .methods import parse_method
from .train import finetune, last_checkpoint

__all__ = [
    "compare",
    "report",
    "finished_runs",
    "missing_runs",
    "run_state",
    "check_one_experiment",
    "check_tune_seeds",
    "chosen_lr",
    "summarize",
    "choose_lr",
    "paired_bootstrap",
    "paired_differences",
    "per_problem",
    "markdown_table",
]

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
    check_tune_seeds(cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    validation = {VALIDATION: mdata.validation_examples(cfg.validation_per_module)}
    base_model = None
    runs: list[dict[str, Any]] = []
    for seed, method, lrs in _cells(cfg, runs):
        for lr in lrs:
            run_dir = _run_dir(out, method, lr, seed)
            done = run_dir / "metrics.json"
            resume = last_checkpoint(run_dir) is not None  # interrupted: continue it
            run = replace(
                cfg.base,
                method=method,
                lr=lr,
                seed=seed,
                output_dir=str(run_dir),
                resume=resume,
            )
            if done.is_file():
                finished = json.loads(done.read_text())
                _check_same_settings(run_dir, finished.get("config", {}), run)
                runs.append(finished)
                continue
            if resume and (run_dir / "run_config.json").is_file():
                saved = json.loads((run_dir / "run_config.json").read_text())
                _check_same_settings(run_dir, saved, run)
            if base_model is None:
                base_model = load(cfg.base.model)
            fresh = copy.copy(base_model)
            fresh.model = copy.deepcopy(base_model.model)
            how = f"resuming {last_checkpoint(run_dir).name}" if resume else "->"
            print(f"[compare] {method} lr={lr:g} seed={seed} {how} {run_dir}", flush=True)
            runs.append(finetune(run, loaded=fresh, extra_eval=validation))
            _write(out, cfg, runs, [out])
    return _write(out, cfg, runs, [out])


def check_tune_seeds(cfg: CompareConfig) -> None:
    """Raise :class:`ConfigError` unless ``cfg.tune_seeds`` is a subset of ``cfg.seeds``."""
    stray = [s for s in cfg.tune_seeds if s not in cfg.seeds]
    if stray:
        raise ConfigError(
            f"--tune-seeds {', '.join(map(str, stray))}: not among --seeds "
            f"{', '.join(map(str, cfg.seeds))}"
        )


def _cells(cfg: CompareConfig, runs: list[dict[str, Any]]):
    """The grid's runs in order, ``(seed, method, learning rates)``, seed-major (a partial
    grid already has every method): every learning rate for the tuning seeds
    (``cfg.tune_seeds``; every seed without them), then each other seed at the learning
    rate its method chose on the tuning seeds' runs, read from ``runs`` as they finish
    (a generator: the choice is made once the sweep has run)."""
    tune = cfg.tune_seeds or cfg.seeds
    for seed in tune:
        for method in cfg.methods:
            yield seed, method, cfg.lrs
    for seed in (s for s in cfg.seeds if s not in tune):
        for method in cfg.methods:
            best = chosen_lr(cfg, runs, method)
            if best is None:  # a sweep run failed or was skipped: nothing to choose from
                raise ConfigError(f"{method}: no finished run of the sweep to choose an lr from")
            yield seed, method, (best,)


def chosen_lr(cfg: CompareConfig, runs: Sequence[dict[str, Any]], method: str) -> float | None:
    """The learning rate ``method`` chose (:func:`choose_lr`) on the runs of its learning-rate
    sweep in ``runs`` (every learning rate of ``cfg`` on the tuning seeds), or ``None``
    while one of them has not finished."""
    tune = set(cfg.tune_seeds or cfg.seeds)
    by_lr: dict[float, list[dict[str, Any]]] = {float(lr): [] for lr in cfg.lrs}
    for r in runs:
        lr, seed = float(r["config"]["lr"]), int(r["config"]["seed"])
        if r["method"] == method and lr in by_lr and seed in tune and r.get("accuracy"):
            by_lr[lr].append(r)
    if any(len(rs) < len(tune) for rs in by_lr.values()):
        return None
    return float(choose_lr(by_lr, cfg.select_on)["best_lr"])


def finished_runs(runs_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The finished runs (their ``metrics.json``) under each grid folder of ``runs_dirs``,
    in ``<dir>/<method>/lr<lr>/seed<seed>/`` (the layout :func:`compare` writes), ordered by
    seed, method and learning rate.

    Raises:
        ConfigError: a folder does not exist, or two folders hold the same run (method,
            learning rate and seed): which one to report would be a guess.
    """
    found: dict[tuple[str, float, int], tuple[Path, dict[str, Any]]] = {}
    for root in map(Path, runs_dirs):
        if not root.is_dir():
            raise ConfigError(f"{root}: no such grid folder")
        for path in sorted(root.glob("*/lr*/seed*/metrics.json")):
            run = json.loads(path.read_text())
            key = (run["method"], float(run["config"]["lr"]), int(run["config"]["seed"]))
            if key in found:
                raise ConfigError(
                    f"{found[key][0].parent} and {path.parent} hold the same run ({key[0]}, lr "
                    f"{key[1]:g}, seed {key[2]}); report each grid folder once"
                )
            found[key] = (path, run)
    return [found[k][1] for k in sorted(found, key=lambda k: (k[2], k[0], k[1]))]


def missing_runs(
    cfg: CompareConfig, runs: Sequence[dict[str, Any]], runs_dirs: Sequence[str | Path]
) -> list[dict[str, Any]]:
    """The cells of ``cfg``'s grid (methods × learning rates × seeds) that no run of
    ``runs`` finished, each ``{"method", "lr", "seed", "state"}``: ``state`` is
    ``"interrupted or running at checkpoint-N"`` when a folder of ``runs_dirs`` holds a
    checkpoint of it, ``"started"`` when one holds only its ``run_config.json``, else
    ``"not started"``."""
    done = {(r["method"], float(r["config"]["lr"]), int(r["config"]["seed"])) for r in runs}
    tune = cfg.tune_seeds or cfg.seeds
    out = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            lrs: Sequence[float | None] = cfg.lrs
            if seed not in tune:  # runs at the chosen learning rate only
                lrs = (chosen_lr(cfg, runs, method),)
            for lr in lrs:
                if lr is None:
                    state = "waits for the learning-rate sweep on the tuning seeds"
                    out.append({"method": method, "lr": None, "seed": seed, "state": state})
                elif (method, float(lr), int(seed)) not in done:
                    state = run_state(runs_dirs, method, lr, seed)
                    out.append({"method": method, "lr": lr, "seed": seed, "state": state})
    return out


def run_state(runs_dirs: Sequence[str | Path], method: str, lr: float, seed: int) -> str:
    """How far an unfinished run got, over the grid folders that could hold it."""
    for root in map(Path, runs_dirs):
        run_dir = _run_dir(root, method, lr, seed)
        checkpoint = last_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is not None:
            return f"interrupted or running at {checkpoint.name}"
        if (run_dir / "run_config.json").is_file():
            return "started"
    return "not started"


#: Run settings that may differ between the runs of one report: what the grid varies.
_GRID_AXES = frozenset({"method", "lr", "seed"})


def report(
    cfg: CompareConfig, runs_dirs: Sequence[str | Path], output_dir: str | None = None
) -> dict[str, Any]:
    """Summarise the finished runs of ``cfg``'s grid found under ``runs_dirs`` and write
    ``compare.json`` and ``compare.md`` into ``output_dir`` (default ``cfg.output_dir``),
    training nothing. Runs of other methods, learning rates or seeds than ``cfg``'s are
    left out; the grid's cells no run finished are listed (:func:`missing_runs`).

    Raises:
        ConfigError: the runs were not all made with the same settings (apart from method,
            learning rate, seed and bookkeeping such as ``save_steps``), so they are not one
            experiment; or as :func:`finished_runs`.
    """
    wanted = {(m, float(lr), int(s)) for m in cfg.methods for lr in cfg.lrs for s in cfg.seeds}
    runs = [
        r
        for r in finished_runs(runs_dirs)
        if (r["method"], float(r["config"]["lr"]), int(r["config"]["seed"])) in wanted
    ]
    check_one_experiment(runs)
    out = Path(cfg.output_dir if output_dir is None else output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _write(out, cfg, runs, runs_dirs)


def check_one_experiment(runs: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`ConfigError` unless every run of ``runs`` was made with the first one's
    settings, apart from the grid's axes (method, learning rate, seed) and bookkeeping."""
    if not runs:
        return
    first = runs[0]["config"]
    for run in runs[1:]:
        c = run["config"]
        diffs = [
            f"{k}: {first[k]!r} vs {c[k]!r}"
            for k in sorted(set(first) & set(c) - BOOKKEEPING - _GRID_AXES)
            if first[k] != c[k]
        ]
        if diffs:
            raise ConfigError(
                f"{c.get('output_dir')} was made with other settings than "
                f"{first.get('output_dir')} ({'; '.join(diffs)}): not one experiment"
            )


#: Settings that do not change what a run learns or scores: a finished or interrupted run
#: that differs from the grid only in these is reused or resumed.
BOOKKEEPING = frozenset(
    {
        "output_dir",
        "resume",
        "disable_tqdm",
        "extra",
        "save_steps",
        "logging_steps",
        "eval_batch_size",
        "boundary_prompts",
    }
)


def _check_same_settings(run_dir: Path, saved: dict[str, Any], run: FinetuneConfig) -> None:
    """Raise :class:`ConfigError` if the run in ``run_dir`` was made with other settings than
    ``run`` (fields both know, bookkeeping left out): reusing or resuming it would mix two
    experiments in one table."""
    wanted = json.loads(json.dumps(asdict(run)))  # tuples as JSON lists, like the saved ones
    diffs = [
        f"{k}: {saved[k]!r} there, {wanted[k]!r} now"
        for k in sorted(set(saved) & set(wanted) - BOOKKEEPING)
        if saved[k] != wanted[k]
    ]
    if diffs:
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); give another "
            "--output-dir, or remove that folder to rerun it"
        )


def _write(
    out: Path,
    cfg: CompareConfig,
    runs: list[dict[str, Any]],
    runs_dirs: Sequence[str | Path],
) -> dict[str, Any]:
    summary = summarize(runs, cfg.methods, cfg.select_on)
    paired = paired_differences(runs, summary, cfg.baselines, cfg.bootstrap)
    missing = missing_runs(cfg, runs, runs_dirs)
    result = {
        "config": asdict(cfg),
        "runs_dirs": [str(d) for d in runs_dirs],
        "summary": summary,
        "paired": paired,
        "missing": missing,
        "runs": [_slim(r) for r in runs],
    }
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.md").write_text(markdown_table(summary, cfg, paired, missing))
    return result


def _slim(run: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "method",
        "config",
        "optimizer_groups",
        "accuracy",
        "nll",
        "train_loss",
        "final_loss",
        "step_time_s",
        "peak_rss_mb",
        "trainable_parameters",
        "activated_parameters",
        "curvatures",
        "curvature_dynamics",
    )
    return {k: run.get(k) for k in keep}


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def choose_lr(by_lr: dict[float, list[dict[str, Any]]], select_on: str = "nll") -> dict[str, Any]:
    """The learning rate of one method chosen on the validation set.

    The choice compares the learning rates on the **tuning seeds**, the seeds every swept
    learning rate ran, so that a learning rate tried with one seed competes with another's
    run of that same seed, not with a mean over more seeds (with no seed in common, each
    learning rate's mean over its own seeds). ``select_on="nll"`` picks the lowest mean
    validation answer NLL, ``"accuracy"`` the highest mean validation exact match; a tie goes
    to the smaller learning rate. If a run did not score the validation NLL, the choice is
    on exact match.

    Returns:
        ``{"best_lr", "selected_on", "tuning_seeds", "validation_by_lr" (exact match),
        "validation_nll_by_lr"}`` (the means on the tuning seeds; the NLL ``{}`` without it).

    Raises:
        ValueError: ``select_on`` is not one of :data:`SELECT_ON`, or ``by_lr`` is empty.
    """
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    if not by_lr:
        raise ValueError("no runs to choose a learning rate from")
    seed_sets = [{r["config"]["seed"] for r in rs} for rs in by_lr.values()]
    common = set.intersection(*seed_sets)
    tuning = {
        lr: [r for r in rs if not common or r["config"]["seed"] in common]
        for lr, rs in by_lr.items()
    }
    acc = {lr: statistics.fmean(r["accuracy"][VALIDATION] for r in rs) for lr, rs in tuning.items()}
    has_nll = all(VALIDATION in (r.get("nll") or {}) for rs in tuning.values() for r in rs)
    nll = (
        {lr: statistics.fmean(r["nll"][VALIDATION] for r in rs) for lr, rs in tuning.items()}
        if has_nll
        else {}
    )
    used = select_on if nll else "accuracy"
    if used == "nll":
        best = min(nll, key=lambda lr: (nll[lr], lr))
    else:
        best = max(acc, key=lambda lr: (acc[lr], -lr))
    return {
        "best_lr": best,
        "selected_on": used,
        "tuning_seeds": sorted(common) if common else None,
        "validation_by_lr": acc,
        "validation_nll_by_lr": nll,
    }


def summarize(
    runs: list[dict[str, Any]], methods: Sequence[str], select_on: str = "nll"
) -> dict[str, Any]:
    """Per method: the learning rate chosen on the validation set (:func:`choose_lr`), and
    the test scores (mean, sd over seeds) at that learning rate, with every seed it ran."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method and r.get("accuracy")]
        if not mine:
            continue
        by_lr: dict[float, list[dict]] = {}
        for r in mine:
            by_lr.setdefault(r["config"]["lr"], []).append(r)
        choice = choose_lr(by_lr, select_on)
        best = choice["best_lr"]
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
            **choice,
            "seeds": [r["config"]["seed"] for r in rs],
            "accuracy": acc,
            "step_time_s": statistics.median(r["step_time_s"] for r in mine if r["step_time_s"]),
            "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in mine),
            "trainable_parameters": rs[0]["trainable_parameters"],
            "activated_parameters": rs[0]["activated_parameters"],
            "final_loss": _mean_sd([r["final_loss"] for r in rs if r["final_loss"] is not None]),
        }
        if all(set(sets) <= set(r.get("nll") or {}) for r in rs):
            nll = {s: _mean_sd([r["nll"][s] for r in rs]) for s in sets}
            for label, group in groups:
                if group:
                    means = [statistics.fmean(r["nll"][s] for s in group) for r in rs]
                    nll[label] = _mean_sd(means)
            out[method]["nll"] = nll
        dyn = [r.get("curvature_dynamics") for r in rs]
        if all(d and d.get("curved_experts") for d in dyn):
            out[method]["curvature_dynamics"] = {
                key: _mean_sd([d[key] for d in dyn])
                for key in ("sign_changed_share", "mean_abs_delta")
            }
            for when in ("start", "end"):
                shares = [(d.get(f"boundary_share_{when}") or {}).get("share") for d in dyn]
                if all(e is not None for e in shares):
                    out[method]["curvature_dynamics"][f"boundary_share_{when}"] = _mean_sd(shares)
                scales = [(d.get(f"input_scale_{when}") or {}).get("mean") for d in dyn]
                if all(e is not None for e in scales):
                    out[method]["curvature_dynamics"][f"input_scale_{when}"] = _mean_sd(scales)
    return out


def per_problem(run: dict[str, Any], metric: str) -> tuple[list[str], list[float]] | None:
    """A run's per-problem values of ``metric`` (``"correct"`` or ``"nll"``) on its test
    sets (the validation set left out), concatenated in set order: ``(set names, values)``,
    or ``None`` if the run did not keep them."""
    scored = {k: v for k, v in (run.get("eval") or {}).items() if k != VALIDATION}
    if not scored or any(metric not in v.get("per_problem", {}) for v in scored.values()):
        return None
    names = [f"{k}:{v['n']}" for k, v in scored.items()]
    return names, [float(x) for v in scored.values() for x in v["per_problem"][metric]]


def paired_bootstrap(
    a: Any, b: Any, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The mean paired difference ``a − b`` with a percentile bootstrap confidence interval.

    ``a`` and ``b`` are ``(seeds, problems)`` arrays of per-problem values of two methods,
    paired on both axes (row s of both trained with seed s, column p the same problem). Each
    resample draws seeds and problems with replacement, independently (a two-way bootstrap:
    both the training seed and the choice of test problems are sources of variation), and
    takes the mean difference over the drawn cells. Deterministic for a given ``seed``.

    Returns:
        ``{"diff", "low", "high", "level", "seeds", "problems", "resamples"}``; with
        ``resamples`` 0, ``low`` and ``high`` are ``None``.

    Raises:
        ValueError: ``a`` and ``b`` are not 2-D arrays of the same shape with at least one
            seed and one problem, or ``level`` is not in (0, 1).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or 0 in a.shape:
        raise ValueError(
            f"a and b must be (seeds, problems) arrays of one shape, got {a.shape} and {b.shape}"
        )
    d = a - b
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_seeds, n_problems = d.shape
    out: dict[str, Any] = {
        "diff": float(d.mean()),
        "low": None,
        "high": None,
        "level": level,
        "seeds": n_seeds,
        "problems": n_problems,
        "resamples": resamples,
    }
    if resamples <= 0:
        return out
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks bound the (chunk, problems) weights
        m = min(256, resamples - start)
        ws = _draw_weights(rng, m, n_seeds)
        wp = _draw_weights(rng, m, n_problems)
        stats[start : start + m] = np.einsum("bs,sp,bp->b", ws, d, wp)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    out["low"], out["high"] = float(low), float(high)
    return out


def _draw_weights(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """``m`` bootstrap draws of ``n`` indices out of ``n``, as weights (counts / n)."""
    idx = rng.integers(0, n, size=(m, n))
    counts = np.zeros((m, n))
    np.add.at(counts, (np.repeat(np.arange(m), n), idx.ravel()), 1.0)
    return counts / n


def paired_differences(
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    baselines: Sequence[str] = (),
    resamples: int = 2000,
    seed: int = 0,
    methods: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Each of ``methods`` (``()``: every method of ``summary``) against each of ``baselines``
    (``()``: every other method), each at its chosen learning rate, on the seeds both have:
    the paired difference of exact match (``"accuracy"``, a share) and of answer NLL
    (``"nll"``, nats per token) over all test problems (:func:`paired_bootstrap`), and the
    same over the seen and the unseen test sets alone (``"groups"``: ``{"seen": {"accuracy",
    "nll"}, "unseen": …}``, the groups the runs were scored on). A pair whose runs did not
    keep per-problem values, or were scored on different problems, is left out."""
    out: list[dict[str, Any]] = []
    for method in methods or tuple(summary):
        if method not in summary:
            continue
        for base in baselines or tuple(summary):
            if base == method or base not in summary:
                continue
            row: dict[str, Any] = {"method": method, "baseline": base}
            groups: dict[str, dict[str, Any]] = {}
            for metric, key in (("accuracy", "correct"), ("nll", "nll")):
                cells = _paired_cells(runs, summary, method, base, key)
                if cells is None:
                    continue
                a, b, sets = cells
                row[metric] = paired_bootstrap(a, b, resamples=resamples, seed=seed)
                for group, members in (
                    ("seen", mdata.SEEN_EVAL_SETS),
                    ("unseen", mdata.UNSEEN_EVAL_SETS),
                ):
                    cols = [i for i, name in enumerate(sets) if name in members]
                    if cols:
                        groups.setdefault(group, {})[metric] = paired_bootstrap(
                            np.asarray(a)[:, cols],
                            np.asarray(b)[:, cols],
                            resamples=resamples,
                            seed=seed,
                        )
            if len(row) > 2:
                row["groups"] = groups
                out.append(row)
    return out


def _paired_cells(runs, summary, method: str, base: str, key: str):
    """The ``(seeds, problems)`` arrays of ``method`` and ``base`` at their chosen learning
    rates, on their common seeds, or ``None``."""
    by_seed: list[dict[int, tuple[list[str], list[float]]]] = []
    for m in (method, base):
        lr = summary[m]["best_lr"]
        found: dict[int, tuple[list[str], list[float]]] = {}
        for r in runs:
            if r["method"] == m and r["config"]["lr"] == lr:
                values = per_problem(r, key)
                if values is not None:
                    found[r["config"]["seed"]] = values
        by_seed.append(found)
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    rows = [(by_seed[0][s], by_seed[1][s]) for s in seeds]
    if not rows or any(x[0] != rows[0][0][0] or y[0] != rows[0][0][0] for x, y in rows):
        return None
    sets = [
        name.rsplit(":", 1)[0] for name in rows[0][0][0] for _ in range(int(name.rsplit(":")[1]))
    ]
    return [x[1] for x, _ in rows], [y[1] for _, y in rows], sets


def markdown_table(
    summary: dict[str, Any],
    cfg: CompareConfig,
    paired: Sequence[dict[str, Any]] = (),
    missing: Sequence[dict[str, Any]] = (),
) -> str:
    """The comparison as Markdown: the runs of the grid not finished (``missing``, from
    :func:`missing_runs`), accuracy table, the paired differences (``paired``, from
    :func:`paired_differences`), answer NLL, curvature dynamics, then cost table, then LR
    sweep."""
    head = _missing_lines(missing, cfg)
    if not summary:
        return "\n".join([*head, "No finished runs yet."]) + "\n"
    methods = list(summary)
    cols = list(next(iter(summary.values()))["accuracy"])
    lines = [
        *head,
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
    lines += _paired_lines(paired)
    lines += _nll_lines(summary)
    lines += _dynamics_lines(summary)
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
    lines += _lr_lines(summary, cfg)
    return "\n".join(lines) + "\n"


def _lr_lines(summary: dict[str, Any], cfg: CompareConfig) -> list[str]:
    """The learning-rate choice: validation exact match and answer NLL by learning rate, the
    score each method was chosen on and the seeds the choice compared."""
    lrs = "| " + " | ".join(f"{lr:g}" for lr in cfg.lrs) + " |"
    lines = [
        "",
        "The learning-rate choice on the validation set (means over the tuning seeds, the "
        "seeds every swept learning rate ran; the chosen one in bold):",
        "",
        "| method | chosen on | tuning seeds | score " + lrs,
        "|---|---|---|---|" + "---|" * len(cfg.lrs),
    ]
    for m, s in summary.items():
        used = s.get("selected_on", "accuracy")
        seeds = s.get("tuning_seeds")
        for name, key, scale, digits in (
            ("exact match (%)", "validation_by_lr", 100, 1),
            ("answer NLL", "validation_nll_by_lr", 1, 3),
        ):
            v = {float(lr): x for lr, x in (s.get(key) or {}).items()}  # JSON keys: str
            if not v:
                continue
            cells = []
            for lr in cfg.lrs:
                text = f"{scale * v[lr]:.{digits}f}" if lr in v else "–"
                cells.append(f"**{text}**" if lr == float(s["best_lr"]) and lr in v else text)
            if "tuning_seeds" not in s:  # a summary written before the choice said
                tuned = "–"
            else:
                tuned = ", ".join(map(str, seeds)) if seeds else "none in common: each lr's own"
            lines.append(f"| {m} | {used} | {tuned} | {name} | " + " | ".join(cells) + " |")
    return lines


def _missing_lines(missing: Sequence[dict[str, Any]], cfg: CompareConfig) -> list[str]:
    """A partial grid's note (``[]`` for a complete one): how many runs finished, and each
    run missing from every number below it."""
    if not missing:
        return []
    tune = cfg.tune_seeds or cfg.seeds
    per_method = len(cfg.lrs) * len(tune) + len(cfg.seeds) - len(tune)
    total = len(cfg.methods) * per_method
    lines = [
        f"**Partial grid: {total - len(missing)} of {total} runs finished.** Left out of "
        "every number below:",
        "",
    ]
    lines += [
        f"- {m['method']}, lr {'(chosen)' if m['lr'] is None else format(m['lr'], 'g')}, "
        f"seed {m['seed']}: {m['state']}"
        for m in missing
    ]
    return [*lines, ""]


def _ci(res: dict[str, Any] | None, scale: float, digits: int) -> str:
    if res is None:
        return "–"
    text = f"{scale * res['diff']:+.{digits}f}"
    if res["low"] is not None:
        text += f" [{scale * res['low']:+.{digits}f}, {scale * res['high']:+.{digits}f}]"
    return text


def _paired_lines(paired: Sequence[dict[str, Any]]) -> list[str]:
    if not paired:
        return []
    first = next(iter(p.get("accuracy") or p.get("nll") for p in paired))
    level = f"{100 * first['level']:g} %"
    lines = [
        "",
        f"Paired differences, method − baseline, each at its chosen learning rate, over all "
        f"test problems and the seeds both ran, with {level} bootstrap confidence intervals "
        f"(problems and seeds resampled, {first['resamples']} resamples). Exact match in "
        "points (higher is better), answer NLL in nats per token (lower is better):",
        "",
        "| method | baseline | Δ exact match (points) | Δ answer NLL | seeds | problems |",
        "|---|---|---|---|---|---|",
    ]
    for p in paired:
        acc, nll = p.get("accuracy"), p.get("nll")
        some = acc or nll
        lines.append(
            f"| {p['method']} | {p['baseline']} | {_ci(acc, 100, 1)} | {_ci(nll, 1, 3)} | "
            f"{some['seeds']} | {some['problems']} |"
        )
    names = [g for g in ("seen", "unseen") if any(g in p.get("groups", {}) for p in paired)]
    if names:
        lines += [
            "",
            "The same, on the seen and the unseen test sets alone:",
            "",
            "| method | baseline | "
            + " | ".join(f"Δ exact match, {g} | Δ answer NLL, {g}" for g in names)
            + " |",
            "|---|---|" + "---|---|" * len(names),
        ]
        for p in paired:
            cells = []
            for g in names:
                group = p.get("groups", {}).get(g, {})
                cells += [_ci(group.get("accuracy"), 100, 1), _ci(group.get("nll"), 1, 3)]
            lines.append(f"| {p['method']} | {p['baseline']} | " + " | ".join(cells) + " |")
    return lines


def _nll_lines(summary: dict[str, Any]) -> list[str]:
    scored = [m for m in summary if "nll" in summary[m]]
    if not scored:
        return []
    cols = [c for c in summary[scored[0]]["nll"] if c.endswith("(mean)")]
    lines = [
        "",
        "Answer NLL (nats per token, teacher-forced, mean over problems), mean ± sd over seeds:",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in scored:
        cells = [f"{mu:.3f} ± {sd:.3f}" for mu, sd in (summary[m]["nll"][c] for c in cols)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _dynamics_lines(summary: dict[str, Any]) -> list[str]:
    moved = [m for m in summary if "curvature_dynamics" in summary[m]]
    if not moved:
        return []
    dyn = [summary[m]["curvature_dynamics"] for m in moved]
    # columns a summary written before them lacks are left out (the pilot's table stays)
    start = any("boundary_share_start" in d for d in dyn)
    scale = any("input_scale_end" in d for d in dyn)
    lines = [
        "",
        "Curvature dynamics at the end of the runs (mean ± sd over seeds): the share of curved "
        "experts whose κ changed sign, the mean |κ_end − κ_start|, and the share of (token, "
        "hyperbolic expert) pairs clipped onto the ball's boundary"
        + (" (at the start and at the end)" if start else "")
        + (", and the mean input scale s over the layers at the start and the end" if scale else "")
        + ":",
        "",
        "| method | κ sign changed (%) | mean \\|Δκ\\| | "
        + ("boundary share, start (%) | " if start else "")
        + "boundary share (%) |"
        + (" input scale s, start → end |" if scale else ""),
        "|---|---|---|---|" + "---|" * (start + scale),
    ]
    for m, d in zip(moved, dyn, strict=True):
        cells = [
            f"{100 * d['sign_changed_share'][0]:.1f} ± {100 * d['sign_changed_share'][1]:.1f}",
            f"{d['mean_abs_delta'][0]:.3f} ± {d['mean_abs_delta'][1]:.3f}",
        ]
        keys = (["boundary_share_start"] if start else []) + ["boundary_share_end"]
        for key in keys:
            share = d.get(key)
            cells.append(f"{100 * share[0]:.1f} ± {100 * share[1]:.1f}" if share else "–")
        if scale:
            a, b = d.get("input_scale_start"), d.get("input_scale_end")
            cells.append(f"{a[0]:.2f} → {b[0]:.2f}" if a and b else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
