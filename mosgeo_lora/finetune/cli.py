"""The ``mosgeo-lora`` command: ``finetune``, ``eval``, ``score`` and ``compare``.

Examples::

    mosgeo-lora finetune --steps 60 --output-dir runs/demo      # SmolLM2, MoSELoRA, math mix
    mosgeo-lora finetune --method lora --lr 2e-3 --seed 1
    mosgeo-lora finetune --output-dir runs/demo --resume        # continue an interrupted run
    mosgeo-lora eval runs/demo/adapter                          # score a saved adapter
    mosgeo-lora eval --base                                     # score the base model
    mosgeo-lora eval --base --task gsm8k=test.jsonl --output runs/eval/scores.json
    mosgeo-lora score --task gsm8k --predictions runs/eval/predictions-gsm8k.jsonl \\
        --references test.jsonl                                 # re-score saved generations
    mosgeo-lora compare --methods moselora,hydralora,lora --lrs 1e-3,2e-3 --seeds 0,1,2

Every default comes from :class:`~mosgeo_lora.finetune.config.FinetuneConfig` and
:class:`~mosgeo_lora.finetune.config.CompareConfig`. Every input is checked before the
model is loaded; a bad one ends the command with exit status 2 and one line that names
the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

from mosgeo_lora.constants import INPUT_MAPS, SQRT_D_IN

from .base_models import DEFAULT_MODEL, TINY_MODEL, ModelError
from .config import (
    OPTIMIZER_GROUPS,
    RECIPES,
    SELECT_ON,
    CompareConfig,
    ConfigError,
    FinetuneConfig,
    apply_recipe,
)
from .data import EVAL_SETS, DataError
from .methods import METHODS, MethodError
from .tasks import TASK_NAMES

__all__ = ["main", "build_parser"]

_RUN = {f.name: f.default for f in fields(FinetuneConfig)}
#: Where ``eval --task`` writes its scores (and, beside them, its generations) by default.
_EVAL_OUTPUT = "runs/eval/scores.json"
_GRID = {f.name: f.default for f in fields(CompareConfig) if f.name != "base"}


def _csv(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e

    return parse


class _Extend(argparse.Action):
    """A repeatable option whose values (each comma-separated) add up to one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, ())
        current = current if isinstance(current, tuple) else ()
        setattr(namespace, self.dest, current + values)


_TASK_HELP = (
    f"benchmark task to score, NAME or NAME=LOCAL_FILE (a file in the hub dataset's schema; "
    f"without one, the hub), repeatable or comma-separated; tasks: {', '.join(TASK_NAMES)}"
)


def _add_tasks(p: argparse.ArgumentParser, default: tuple, extra: str = "") -> None:
    p.add_argument(
        "--task",
        dest="tasks",
        action=_Extend,
        type=_csv(str),
        default=default,
        metavar="NAME[=PATH]",
        help=_TASK_HELP + extra,
    )


def _input_scale(text: str) -> float | str:
    """``--input-scale``: ``sqrt_d_in`` or a positive number."""
    if text == SQRT_D_IN:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: {SQRT_D_IN} or a positive number")
    return value


def _joined(values: tuple) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# (flag, FinetuneConfig field, type, help); the default is the field's. Flags that only
# `finetune` has (a single run's method, lr and seed) are marked True in the last column.
_RUN_OPTIONS: list[tuple[str, str, Callable, str, bool]] = [
    (
        "--model",
        "model",
        str,
        f"{DEFAULT_MODEL!r} (embedded SmolLM2-135M-Instruct), {TINY_MODEL!r}, a model folder, "
        "a .gguf file or a hub id",
        False,
    ),
    ("--data", "data", str, "'math' (generated training mix) or a question/answer JSONL", False),
    (
        "--method",
        "method",
        str,
        f"one of {', '.join(METHODS)}, or lora-rN / dora-rN / melora-rN, or lora-rmatch:METHOD;"
        " a MoSELoRA name may carry tags: @uni / @sep (optimizer groups), @scale / @scale=X "
        "(learnable input scale), @klr=X (κ learning rate), @flat (κ = 0, the hyperbolic "
        "experts' input clip kept)",
        True,
    ),
    ("--rank", "rank", int, "adapter rank r", False),
    ("--steps", "steps", int, "optimizer steps (not with --epochs)", False),
    (
        "--epochs",
        "epochs",
        float,
        "passes over the training set instead of --steps (0: use --steps)",
        False,
    ),
    ("--batch-size", "batch_size", int, "per-process batch size", False),
    ("--grad-accum", "grad_accum", int, "gradient accumulation steps", False),
    ("--lr", "lr", float, "learning rate", True),
    ("--seed", "seed", int, "random seed", True),
    ("--curvature-lr", "curvature_lr", float, "learning rate of the curvatures κ", False),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (not on κ)", False),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps", False),
    (
        "--warmup-ratio",
        "warmup_ratio",
        float,
        "linear warmup as a share of the steps (not with --warmup-steps)",
        False,
    ),
    (
        "--max-length",
        "max_length",
        int,
        "longest prompt+answer in tokens; longer is an error unless --truncate",
        False,
    ),
    ("--train-examples", "train_examples", int, "training problems (0: steps × batch)", False),
    ("--eval-limit", "eval_limit", int, "problems per test set (0: all)", False),
    ("--save-steps", "save_steps", int, "checkpoint every N steps (0: steps // 2)", False),
    ("--logging-steps", "logging_steps", int, "log every N steps", False),
]


def _add_run_options(p: argparse.ArgumentParser, single_run: bool) -> None:
    for flag, name, kind, help_, only_single in _RUN_OPTIONS:
        if only_single and not single_run:
            continue
        p.add_argument(flag, type=kind, default=_RUN[name], help=f"{help_} (default: %(default)s)")
    p.add_argument(
        "--eval-sets",
        type=_csv(str),
        default=_RUN["eval_sets"],
        help=f"comma-separated, from {', '.join(EVAL_SETS)}; 'none' to skip (default: all)",
    )
    _add_tasks(p, _RUN["tasks"], "; with --task and no --eval-sets, only the tasks are scored")
    p.add_argument(
        "--input-map",
        choices=INPUT_MAPS,
        default=None,
        help="MoSELoRA input map (default: the config's)",
    )
    p.add_argument(
        "--aux-loss-coef",
        type=float,
        default=None,
        help="MoSELoRA load-balancing coefficient (default: the config's, 0.01)",
    )
    p.add_argument(
        "--input-scale",
        type=_input_scale,
        default=_RUN["input_scale"],
        metavar=f"{{{SQRT_D_IN},X}}",
        help="MoSELoRA: a learnable input scale s per layer, starting at √d_in or at X; the "
        "experts read A x / s (and their output is multiplied by s), so fewer tokens sit on "
        "the hyperbolic ball's rim (default: none; a method tag @scale / @scale=X overrides)",
    )
    p.add_argument(
        "--optimizer-groups",
        choices=OPTIMIZER_GROUPS,
        default=_RUN["optimizer_groups"],
        help="sep: κ in its own AdamW group with --curvature-lr, no weight decay; uni: one "
        "group for all (the paper's Table 2 ablation); a method tag (moselora@uni, "
        "moselora@sep) overrides it for that method (default: %(default)s)",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (CPU: autocast)")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut over-long examples to --max-length (a prompt from the left, the answer "
        "kept; a classified text from the right) instead of stopping",
    )
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=_RUN["recipe"],
        help="preset settings: the paper's Table 4 (Qwen/Qwen2-1.5B, 3 epochs, lr 3e-4, weight "
        "decay 0.01, warmup ratio 0.1); flags given with it override its values",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=_RUN["compile"],
        metavar="BACKEND",
        help="torch.compile the model: the whole wrapped model compiles as one graph "
        "(default backend: inductor)",
    )
    _add_threads(p)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``mosgeo-lora`` argument parser (also rendered on the documentation site)."""
    parser = argparse.ArgumentParser(
        prog="mosgeo-lora", description="Fine-tune LLMs with MoSELoRA and compare with LoRA."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune one adapter")
    _add_run_options(ft, single_run=True)
    ft.add_argument("--output-dir", default=_RUN["output_dir"], help="(default: %(default)s)")
    ft.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --output-dir"
    )
    ft.add_argument(
        "--eval-before", action="store_true", help="also score the model before training"
    )

    ev = sub.add_parser("eval", help="score a saved adapter, or the base model, on the test sets")
    ev.add_argument(
        "adapter",
        nargs="?",
        help="adapter folder (from finetune: <out>/adapter). Its method (one of "
        f"{', '.join(METHODS)}, lora-rN, …) is read from its adapter_config.json, with the "
        "base model it was trained on, so eval takes no --method",
    )
    ev.add_argument("--base", action="store_true", help="score the base model, no adapter")
    ev.add_argument(
        "--model", default=None, help="base model (default: the one the adapter was trained on)"
    )
    ev.add_argument("--eval-sets", type=_csv(str), default=_RUN["eval_sets"])
    _add_tasks(ev, (), "; with --task and no --eval-sets, only the tasks are scored")
    ev.add_argument("--eval-limit", type=int, default=_RUN["eval_limit"])
    ev.add_argument("--batch-size", type=int, default=_RUN["eval_batch_size"])
    ev.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="longest generation per task answer (default: each task's own)",
    )
    ev.add_argument(
        "--output",
        default=None,
        help="write the scores as JSON here; each task's generations go beside it as "
        f"predictions-<task>.jsonl (with --task, default: {_EVAL_OUTPUT})",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_threads(ev)

    sc = sub.add_parser(
        "score", help="score saved generations of a task offline; prints one JSON object"
    )
    sc.add_argument("--task", required=True, help=f"the task: one of {', '.join(TASK_NAMES)}")
    sc.add_argument(
        "--predictions",
        required=True,
        help='JSONL, one {"prediction": "<generated text>"} per reference row, in order',
    )
    sc.add_argument(
        "--references",
        default=None,
        help="the rows scored, in the hub dataset's schema (JSONL, JSON, Parquet or CSV); "
        "default: the task's evaluation split from the hub",
    )
    sc.add_argument(
        "--limit", type=int, default=0, help="score only the first N references (default: all)"
    )

    cp = sub.add_parser("compare", help="methods × learning rates × seeds → Markdown table")
    _add_run_options(cp, single_run=False)
    for flag, name, kind in (
        ("--methods", "methods", str),
        ("--lrs", "lrs", float),
        ("--seeds", "seeds", int),
    ):
        cp.add_argument(
            flag, type=_csv(kind), default=_GRID[name], help=f"(default: {_joined(_GRID[name])})"
        )
    cp.add_argument(
        "--tune-seeds",
        type=_csv(int),
        default=_GRID["tune_seeds"],
        help="sweep --lrs on these seeds only; every other seed runs at the learning rate "
        "each method chose on them (default: every seed at every learning rate)",
    )
    cp.add_argument(
        "--baselines",
        type=_csv(str),
        default=_GRID["baselines"],
        help="compare each method with each of these, problem by problem and seed by seed "
        "(paired differences with bootstrap confidence intervals) (default: every other method)",
    )
    cp.add_argument(
        "--bootstrap",
        type=int,
        default=_GRID["bootstrap"],
        help="bootstrap resamples of the paired differences; 0: no intervals "
        "(default: %(default)s)",
    )
    cp.add_argument(
        "--select-on",
        choices=SELECT_ON,
        default=_GRID["select_on"],
        help="the validation score each method's learning rate is chosen on: the answer NLL "
        "(lowest) or exact match (highest), compared on the seeds every swept learning rate "
        "ran (default: %(default)s)",
    )
    cp.add_argument(
        "--validation-per-module",
        type=int,
        default=_GRID["validation_per_module"],
        help="validation problems per training module (default: %(default)s)",
    )
    cp.add_argument("--output-dir", default=_GRID["output_dir"], help="(default: %(default)s)")
    cp.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write compare.json and compare.md into --output-dir from the "
        "finished runs under --runs-dir, listing the runs of the grid not finished; "
        "--methods (with --baselines), --lrs and --seeds not given are those of the runs "
        "found, and run options given must be the runs' own",
    )
    cp.add_argument(
        "--runs-dir",
        action=_Extend,
        type=_csv(str),
        default=(),
        help="with --report-only: a grid folder to read finished runs from, repeatable or "
        "comma-separated (several folders made with the same settings report as one grid, "
        "paired by seed; default: --output-dir)",
    )
    return parser


_UNSET = object()


def _explicit(argv: Sequence[str], command: str) -> set[str]:
    """The destinations of the flags given on the command line (not left at their default)."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for a in action.choices[command]._actions:
        a.default = _UNSET
    ns = parser.parse_args(argv)
    return {k for k, v in vars(ns).items() if v is not _UNSET and k != "command"}


def _run_config(ns: argparse.Namespace, explicit: set[str] | None = None) -> FinetuneConfig:
    """The run settings of ``ns``; with ``--recipe``, the preset's values except where a flag
    (in ``explicit``, the destinations given on the command line) overrides them."""
    explicit = set() if explicit is None else explicit
    if {"steps", "epochs"} <= explicit:
        raise ConfigError("give --steps or --epochs, not both")
    if {"warmup_steps", "warmup_ratio"} <= explicit:
        raise ConfigError("give --warmup-steps or --warmup-ratio, not both")
    names = {f.name for f in fields(FinetuneConfig)}
    kwargs = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    kwargs["disable_tqdm"] = ns.no_progress
    cfg = FinetuneConfig(**kwargs)
    if ns.recipe:
        cfg = apply_recipe(cfg, ns.recipe, keep=explicit)
    return cfg


def _finetune(ns: argparse.Namespace) -> int:
    from .train import finetune

    metrics = finetune(_run_config(ns, ns.explicit))
    if int(os.environ.get("RANK", 0)) == 0:
        _report(metrics)
    return 0


def _report(m: dict) -> None:
    print()
    step = f"{m['step_time_s']:.2f} s/step" if m.get("step_time_s") else "no steps run"
    print(
        f"method {m['method']} on {m['model']}: {m['steps']} steps, final training loss "
        f"{m['final_loss']:.3f}, {step}, peak memory {m['peak_rss_mb'] or 0:.0f} MB"
    )
    acc, before = m.get("accuracy", {}), m.get("accuracy_before", {})
    if acc:
        print(f"{'accuracy':24s} {'before':>8s} {'after':>8s}" if before else "accuracy")
        for name, a in acc.items():
            b = f"{100 * before[name]:7.1f}%" if name in before else ""
            print(f"  {name:22s} {b:>8s} {100 * a:7.1f}%")
    for name, scores in m.get("tasks", {}).items():  # a task's own metrics (CoLA, MRPC)
        old = m.get("eval_before", {}).get(name, {})
        for key in ("matthews_correlation", "f1"):
            if key in scores:
                b = f"{old[key]:8.3f}" if key in old else ""
                print(f"  {name + ' ' + key:22s} {b:>8s} {scores[key]:8.3f}")
    for label, path in m.get("files", {}).items():
        print(f"{label:>20s}: {path}")


def _eval(ns: argparse.Namespace) -> int:
    from .evaluate import evaluate_adapter

    if ns.adapter is None and not ns.base:
        raise ConfigError("give an adapter folder, or --base to score the base model")
    if ns.adapter is not None and ns.base:
        raise ConfigError("give either an adapter folder or --base, not both")
    res = evaluate_adapter(
        None if ns.base else ns.adapter,
        model=ns.model,
        eval_sets=ns.eval_sets,
        eval_limit=ns.eval_limit,
        batch_size=ns.batch_size,
        tasks=ns.tasks,
        output=ns.output or (_EVAL_OUTPUT if ns.tasks else None),
        max_new_tokens=ns.max_new_tokens,
        progress=not ns.no_progress,
    )
    print(f"{res['adapter'] or 'base model'} ({res['model']}):")
    for name, a in res["accuracy"].items():
        nll = res.get("nll", {}).get(name)
        extra = "" if nll is None else f", answer NLL {nll:.3f}"
        extra += "".join(
            f", {k} {v:.3f}"
            for k, v in res["tasks"].get(name, {}).items()
            if k in ("matthews_correlation", "f1")
        )
        print(f"  {name:22s} {100 * a:6.1f}%{extra}")
    for name, path in res.get("predictions", {}).items():
        print(f"{'predictions ' + name:>24s}: {path}")
    return 0


def _score(ns: argparse.Namespace) -> int:
    from .tasks import get_task, load_rows, read_predictions, score

    task = get_task(ns.task)
    predictions = read_predictions(ns.predictions)
    references = load_rows(task, ns.references, limit=ns.limit)
    print(json.dumps(score(task, predictions, references.rows)))
    return 0


def _compare(ns: argparse.Namespace) -> int:
    from .compare import check_tune_seeds, compare

    if ns.runs_dir and not ns.report_only:
        raise ConfigError("--runs-dir is for --report-only (a grid trains into --output-dir)")
    if ns.report_only:
        return _compare_report(ns)
    base = _run_config(ns, ns.explicit)
    lrs = ns.lrs
    if ns.recipe and "lrs" not in ns.explicit:
        lrs = (base.lr,)  # the recipe's one learning rate, not a sweep
    cfg = CompareConfig(
        methods=ns.methods,
        lrs=lrs,
        seeds=ns.seeds,
        baselines=ns.baselines,
        bootstrap=ns.bootstrap,
        select_on=ns.select_on,
        tune_seeds=ns.tune_seeds,
        validation_per_module=ns.validation_per_module,
        output_dir=ns.output_dir,
        base=base,
    )
    for m in cfg.methods:  # validate names and the base settings before any run
        replace(base, method=m).validate()
    unknown = [b for b in cfg.baselines if b not in cfg.methods]
    if unknown:
        raise ConfigError(f"--baselines {', '.join(unknown)}: not among --methods")
    if cfg.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {cfg.bootstrap}")
    check_tune_seeds(cfg)
    if base.classification_task() is not None:
        raise ConfigError(
            "compare does not take a classification task (cola, mrpc) yet: it picks learning "
            "rates on generated math problems; run finetune --task once per method and seed"
        )
    compare(cfg)
    print((Path(cfg.output_dir) / "compare.md").read_text())
    return 0


def _compare_report(ns: argparse.Namespace) -> int:
    """``compare --report-only``: the report of the finished runs under ``--runs-dir``."""
    from .compare import check_one_experiment, check_tune_seeds, finished_runs, report

    dirs = ns.runs_dir or [ns.output_dir]
    runs = finished_runs(dirs)
    if not runs:
        raise ConfigError(f"no finished run under {', '.join(map(str, dirs))}")
    check_one_experiment(runs)
    found = {
        "methods": tuple(dict.fromkeys(r["method"] for r in runs)),
        "lrs": tuple(sorted({float(r["config"]["lr"]) for r in runs})),
        "seeds": tuple(sorted({int(r["config"]["seed"]) for r in runs})),
    }
    if "methods" not in ns.explicit:  # a baseline with no finished run yet: all missing
        found["methods"] += tuple(b for b in ns.baselines if b not in found["methods"])
    axes = {k: getattr(ns, k) if k in ns.explicit else v for k, v in found.items()}
    unknown = [b for b in ns.baselines if b not in axes["methods"]]
    if unknown:
        raise ConfigError(f"--baselines {', '.join(unknown)}: not among --methods")
    if ns.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {ns.bootstrap}")
    base = _base_of(runs, ns)
    cfg = CompareConfig(
        **axes,
        baselines=ns.baselines,
        bootstrap=ns.bootstrap,
        select_on=ns.select_on,
        tune_seeds=ns.tune_seeds,
        validation_per_module=ns.validation_per_module,
        output_dir=ns.output_dir,
        base=base,
    )
    check_tune_seeds(cfg)
    report(cfg, dirs)
    print((Path(cfg.output_dir) / "compare.md").read_text())
    return 0


#: Run options that a report does not check against its runs (besides the bookkeeping
#: that does not change what a run learns): what the grid varies, and ``--recipe`` (only
#: the options given one by one are checked, not a recipe's values).
_NOT_CHECKED = frozenset({"method", "lr", "seed", "recipe"})


def _base_of(runs: Sequence[dict], ns: argparse.Namespace) -> FinetuneConfig:
    """The run settings a report states: the first run's; every run option given on the
    command line must be the runs' own (a report of other runs than the command names would
    mislead), else :class:`ConfigError`."""
    from .compare import BOOKKEEPING

    names = {f.name for f in fields(FinetuneConfig)}
    saved = {k: v for k, v in runs[0]["config"].items() if k in names}
    given = _run_config(ns, ns.explicit)
    diffs = [
        f"--{k.replace('_', '-')} {_plain(getattr(given, k))} given, the runs have {saved[k]!r}"
        for k in sorted(ns.explicit & names & set(saved) - _NOT_CHECKED - BOOKKEEPING)
        if _plain(getattr(given, k)) != saved[k]
    ]
    if diffs:
        raise ConfigError(f"the runs under --runs-dir differ from the command: {'; '.join(diffs)}")
    for k in ("eval_sets", "tasks"):  # JSON lists back to the config's tuples
        if isinstance(saved.get(k), list):
            saved[k] = tuple(saved[k])
    return FinetuneConfig(**saved)


def _plain(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(value))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mosgeo-lora`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = parser.parse_args(argv)
    ns.explicit = _explicit(argv, ns.command)
    if getattr(ns, "threads", None):
        import torch

        torch.set_num_threads(ns.threads)
    try:
        commands = {"finetune": _finetune, "eval": _eval, "score": _score, "compare": _compare}
        return commands[ns.command](ns)
    except (ConfigError, DataError, MethodError, ModelError) as e:
        print(f"mosgeo-lora {ns.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
