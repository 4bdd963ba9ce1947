"""Run settings of the ``mosgeo-lora`` application, as dataclasses the command line reads.

:class:`FinetuneConfig` holds one fine-tuning run (the ``finetune`` flags),
:class:`CompareConfig` a grid of runs (the ``compare`` flags). The CLI takes every default
from these fields, so a default lives in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosgeo_lora.constants import INPUT_MAPS

from . import data as mdata
from .base_models import DEFAULT_MODEL
from .methods import Method, parse_method

__all__ = ["MATH_DATA", "ConfigError", "FinetuneConfig", "CompareConfig"]

#: ``--data math``: the generated training mix (:func:`.data.training_examples`).
MATH_DATA = "math"


class ConfigError(ValueError):
    """An invalid fine-tuning setting (reported before any model is loaded)."""


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the ``mosgeo-lora finetune`` flags)."""

    model: str = DEFAULT_MODEL
    data: str = MATH_DATA  # "math": the generated training mix; else a JSONL file
    method: str = "moselora"
    rank: int = 8
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    curvature_lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    output_dir: str = "runs/finetune"
    max_length: int = 128
    train_examples: int = 0  # 0: steps × batch × accumulation × processes (one epoch)
    eval_sets: tuple[str, ...] = ()  # () = every shipped set; ("none",) = no evaluation
    eval_limit: int = 0  # problems per set (0 = all)
    eval_before: bool = False
    eval_batch_size: int = 32
    save_steps: int = 0  # 0: steps // 2 (at least one checkpoint to resume from)
    logging_steps: int = 5
    resume: bool = False
    input_map: str | None = None  # MoSELoRA only: "stereographic" | "lift"
    aux_loss_coef: float | None = None  # MoSELoRA only
    disable_tqdm: bool = False
    extra: dict = field(default_factory=dict)  # free-form, copied to metrics.json

    def validate(self) -> Method:
        """Check every setting before anything is loaded; returns the parsed method.

        Raises:
            ConfigError: a setting is out of range or names something that does not exist.
            MethodError: the method name is unknown.
        """
        method = parse_method(self.method, self.rank)
        for name in ("rank", "steps", "batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "curvature_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.eval_limit < 0:
            raise ConfigError("weight_decay, warmup_steps and eval_limit must be >= 0")
        if not method.is_moselora and (self.input_map or self.aux_loss_coef is not None):
            raise ConfigError(f"input_map / aux_loss_coef apply to MoSELoRA, not {self.method}")
        if self.input_map is not None and self.input_map not in INPUT_MAPS:
            raise ConfigError(f"input_map must be one of {INPUT_MAPS}, not {self.input_map!r}")
        unknown = [s for s in self.eval_sets if s not in (*mdata.EVAL_SETS, "none")]
        if unknown:
            shipped = ", ".join(mdata.EVAL_SETS)
            raise ConfigError(f"unknown eval set(s) {unknown}; shipped: {shipped}")
        if self.data != MATH_DATA and not Path(self.data).is_file():
            raise ConfigError(f"data file not found: {self.data} (or use --data {MATH_DATA})")
        return method

    def moselora_overrides(self) -> dict[str, Any]:
        """The ``MoSELoraConfig`` fields this run sets (``--input-map``, ``--aux-loss-coef``)."""
        out: dict[str, Any] = {}
        if self.input_map is not None:
            out["input_map"] = self.input_map
        if self.aux_loss_coef is not None:
            out["aux_loss_coef"] = self.aux_loss_coef
        return out


@dataclass
class CompareConfig:
    """A grid of runs: methods × learning rates × seeds, each a :class:`FinetuneConfig`
    built from ``base`` (the ``mosgeo-lora compare`` flags)."""

    methods: tuple[str, ...] = ("moselora", "hydralora", "lora", "lora-r22")
    lrs: tuple[float, ...] = (5e-4, 1e-3, 2e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    validation_per_module: int = 20
    output_dir: str = "runs/compare"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
