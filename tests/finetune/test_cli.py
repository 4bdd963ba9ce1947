"""The ``mosgeo-lora`` command line is a stable interface: its flags, and defaults that are the
run-settings dataclasses' own."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

pytest.importorskip("transformers")

from mosgeo_lora.finetune.cli import build_parser  # noqa: E402
from mosgeo_lora.finetune.config import CompareConfig, FinetuneConfig  # noqa: E402

SHARED = {
    "--model", "--data", "--rank", "--steps", "--batch-size", "--grad-accum", "--curvature-lr",
    "--weight-decay", "--warmup-steps", "--max-length", "--train-examples", "--eval-sets",
    "--eval-limit", "--save-steps", "--logging-steps", "--input-map", "--aux-loss-coef",
    "--no-progress", "--threads", "--output-dir", "-h", "--help", "--compile", "--task",
    "--epochs", "--warmup-ratio", "--bf16", "--optimizer-groups", "--truncate", "--recipe",
    "--input-scale",
}  # fmt: skip
#: the flags of each command (0.1.0's, unchanged by the package layout change; since then
#: added: --task on finetune, eval and compare, eval's --max-new-tokens and --no-progress, the
#: score command, and the recipe flags of finetune and compare: --epochs, --warmup-ratio,
#: --bf16, --optimizer-groups, --truncate, --recipe; compare's --baselines and --bootstrap,
#: the paired differences of issue 15; --input-scale on finetune and compare, the learnable
#: input scale of issue 15 item 4; compare's --report-only and --runs-dir, the report of
#: finished runs of issue 15's grid)
FLAGS = {
    "finetune": SHARED | {"--method", "--lr", "--seed", "--resume", "--eval-before"},
    "eval": {"--base", "--model", "--eval-sets", "--eval-limit", "--batch-size", "--output",
             "--threads", "-h", "--help", "--task", "--max-new-tokens", "--no-progress"},
    "score": {"--task", "--predictions", "--references", "--limit", "-h", "--help"},
    "compare": SHARED | {"--methods", "--lrs", "--seeds", "--validation-per-module",
                         "--baselines", "--bootstrap", "--report-only", "--runs-dir",
                         "--select-on", "--tune-seeds"},
}  # fmt: skip


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_command_has_exactly_its_flags():
    commands = _subcommands()
    assert set(commands) == set(FLAGS)
    for name, sub in commands.items():
        assert {s for a in sub._actions for s in a.option_strings} == FLAGS[name], name


def test_defaults_are_the_dataclasses():
    ns = build_parser().parse_args(["finetune"])
    for f in fields(FinetuneConfig):
        if hasattr(ns, f.name) and f.name not in ("input_map", "aux_loss_coef"):
            assert getattr(ns, f.name) == f.default, f.name
    ns = build_parser().parse_args(["compare"])
    for f in fields(CompareConfig):
        if f.name != "base":
            assert getattr(ns, f.name) == f.default, f.name
    ns = build_parser().parse_args(["eval", "x"])
    assert ns.batch_size == FinetuneConfig.eval_batch_size


def test_python_dash_m_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "mosgeo_lora.finetune", "finetune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: mosgeo-lora finetune" in out.stdout and "--curvature-lr" in out.stdout
