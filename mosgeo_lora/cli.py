"""The ``mosgeo-lora`` command: ``finetune``, ``eval`` and ``compare``.

Examples::

    mosgeo-lora finetune --steps 60 --output-dir runs/demo      # SmolLM2, MoSELoRA, math mix
    mosgeo-lora finetune --method lora --lr 2e-3 --seed 1
    mosgeo-lora finetune --output-dir runs/demo --resume        # continue an interrupted run
    mosgeo-lora eval runs/demo/adapter                          # score a saved adapter
    mosgeo-lora eval --base                                     # score the base model
    mosgeo-lora compare --methods moselora,hydralora,lora --lrs 1e-3,2e-3 --seeds 0,1,2

Every input is checked before the model is loaded; a bad one ends the command with exit
status 2 and one line that names the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from .data import EVAL_SETS, DataError
from .methods import METHODS, MethodError
from .models import DEFAULT_MODEL, TINY_MODEL, ModelError
from .train import ConfigError, FinetuneConfig

__all__ = ["main", "build_parser"]

_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig)}


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e

    return parse


def _add_run_options(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    d = _DEFAULTS
    p.add_argument(
        "--model",
        default=d["model"],
        help=f"{DEFAULT_MODEL!r} (embedded SmolLM2-135M-Instruct), {TINY_MODEL!r}, "
        "a model folder, a .gguf file or a hub id (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=d["data"],
        help="'math' (generated training mix) or a JSONL file with question/answer "
        "fields (default: %(default)s)",
    )
    if with_method:
        p.add_argument(
            "--method",
            default=d["method"],
            help=f"one of {', '.join(METHODS)}, or lora-rN / dora-rN (default: %(default)s)",
        )
    p.add_argument("--rank", type=int, default=d["rank"], help="adapter rank r (default: 8)")
    p.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps (default: 100)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d["batch_size"],
        help="per-process batch size (default: %(default)s)",
    )
    p.add_argument(
        "--grad-accum",
        type=int,
        default=d["grad_accum"],
        help="gradient accumulation steps (default: %(default)s)",
    )
    if with_method:
        p.add_argument("--lr", type=float, default=d["lr"], help="learning rate (default: 1e-3)")
        p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default: 0)")
    p.add_argument(
        "--curvature-lr",
        type=float,
        default=d["curvature_lr"],
        help="learning rate of the curvatures κ (MoSELoRA; default: %(default)s)",
    )
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--warmup-steps", type=int, default=d["warmup_steps"])
    p.add_argument(
        "--max-length",
        type=int,
        default=d["max_length"],
        help="longest prompt+answer in tokens; longer examples are an error",
    )
    p.add_argument(
        "--train-examples",
        type=int,
        default=d["train_examples"],
        help="training problems to generate (default: steps × batch, one epoch)",
    )
    p.add_argument(
        "--eval-sets",
        type=_csv(str),
        default=d["eval_sets"],
        help=f"comma-separated, from {', '.join(EVAL_SETS)}; 'none' to skip (default: all)",
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        default=d["eval_limit"],
        help="problems per eval set (default: all)",
    )
    p.add_argument(
        "--save-steps",
        type=int,
        default=d["save_steps"],
        help="checkpoint every N steps (default: steps // 2)",
    )
    p.add_argument("--logging-steps", type=int, default=d["logging_steps"])
    p.add_argument(
        "--input-map",
        choices=("stereographic", "lift"),
        default=None,
        help="MoSELoRA input map (default: the config's)",
    )
    p.add_argument(
        "--aux-loss-coef",
        type=float,
        default=None,
        help="MoSELoRA load-balancing coefficient (default: 0.01)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosgeo-lora", description="Fine-tune LLMs with MoSELoRA and compare with LoRA."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune one adapter")
    _add_run_options(ft)
    ft.add_argument("--output-dir", default=_DEFAULTS["output_dir"])
    ft.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --output-dir"
    )
    ft.add_argument(
        "--eval-before", action="store_true", help="also score the model before training"
    )

    ev = sub.add_parser("eval", help="score a saved adapter, or the base model, on the test sets")
    ev.add_argument("adapter", nargs="?", help="adapter folder (from finetune: <out>/adapter)")
    ev.add_argument("--base", action="store_true", help="score the base model, no adapter")
    ev.add_argument(
        "--model", default=None, help="base model (default: the one the adapter was trained on)"
    )
    ev.add_argument("--eval-sets", type=_csv(str), default=())
    ev.add_argument("--eval-limit", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--output", default=None, help="write the scores as JSON here")
    ev.add_argument("--threads", type=int, default=None)

    cp = sub.add_parser("compare", help="methods × learning rates × seeds → Markdown table")
    _add_run_options(cp, with_method=False)
    cp.add_argument(
        "--methods", type=_csv(str), default=("moselora", "hydralora", "lora", "lora-r22")
    )
    cp.add_argument("--lrs", type=_csv(float), default=(5e-4, 1e-3, 2e-3))
    cp.add_argument("--seeds", type=_csv(int), default=(0, 1, 2))
    cp.add_argument("--validation-per-module", type=int, default=20)
    cp.add_argument("--output-dir", default="runs/compare")
    return parser


def _run_config(ns: argparse.Namespace, **extra) -> FinetuneConfig:
    names = {f.name for f in fields(FinetuneConfig)}
    kwargs = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    kwargs["disable_tqdm"] = ns.no_progress
    kwargs.update(extra)
    return FinetuneConfig(**kwargs)


def _finetune(ns: argparse.Namespace) -> int:
    from .train import finetune

    cfg = _run_config(ns)
    metrics = finetune(cfg)
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
        print(f"{'exact match':24s} {'before':>8s} {'after':>8s}" if before else "exact match")
        for name, a in acc.items():
            b = f"{100 * before[name]:7.1f}%" if name in before else ""
            print(f"  {name:22s} {b:>8s} {100 * a:7.1f}%")
    for label, path in m.get("files", {}).items():
        print(f"{label:>20s}: {path}")


def _eval(ns: argparse.Namespace) -> int:
    from .train import evaluate_adapter

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
    )
    print(f"{res['adapter'] or 'base model'} ({res['model']}):")
    for name, a in res["accuracy"].items():
        print(f"  {name:22s} {100 * a:6.1f}%")
    if ns.output:
        with open(ns.output, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


def _compare(ns: argparse.Namespace) -> int:
    from .compare import CompareConfig, compare

    base = _run_config(ns)
    cfg = CompareConfig(
        methods=ns.methods,
        lrs=ns.lrs,
        seeds=ns.seeds,
        validation_per_module=ns.validation_per_module,
        base=base,
    )
    for m in cfg.methods:  # validate names and the base settings before any run
        FinetuneConfig(**{**vars(base), "method": m}).validate()
    compare(cfg, ns.output_dir)
    print((__import__("pathlib").Path(ns.output_dir) / "compare.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if getattr(ns, "threads", None):
        import torch

        torch.set_num_threads(ns.threads)
    try:
        return {"finetune": _finetune, "eval": _eval, "compare": _compare}[ns.command](ns)
    except (ConfigError, DataError, MethodError, ModelError) as e:
        print(f"mosgeo-lora {ns.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
