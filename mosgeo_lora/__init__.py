"""mosgeo_lora: MoSELoRA, the Mixture-of-Space LoRA adapter, as a PEFT tuner.

``import mosgeo_lora`` registers the method with PEFT (peft_type ``MOSELORA``); then
``mosgeo_lora.wrap(model)`` (or ``peft.get_peft_model(model, MoSELoraConfig())``) adapts the
feed-forward projections of a transformers model.

The tuner imports torch, PEFT and :mod:`mosgeo` only. The Trainer helpers
(:class:`CurvatureCallback`, the plots) load on first use, and the fine-tuning application
:mod:`mosgeo_lora.finetune` (the ``mosgeo-lora`` command) only when imported itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from .balance import balance_loss
from .config import MoSELoraConfig
from .constants import FFN_TARGET_MODULES, PRESETS
from .layer import MoSELoraLayer, MoSELoraLinear
from .model import MoSELoraModel, wrap
from .optim import param_groups
from .registry import MOSELORA, register
from .stats import curvatures, reset_routing_stats, routing_stats

register(MoSELoraConfig, MoSELoraModel)

__version__ = "0.1.0"

# Trainer helpers: transformers' Trainer machinery and matplotlib load only when asked for
_LAZY = {
    "CurvatureCallback": ".callbacks",
    "plot_curvature_dynamics": ".plot",
    "plot_expert_load": ".plot",
}

__all__ = [
    "MoSELoraConfig",
    "MoSELoraModel",
    "MoSELoraLayer",
    "MoSELoraLinear",
    "MOSELORA",
    "PRESETS",
    "FFN_TARGET_MODULES",
    "wrap",
    "balance_loss",
    "param_groups",
    "curvatures",
    "routing_stats",
    "reset_routing_stats",
    "CurvatureCallback",
    "plot_curvature_dynamics",
    "plot_expert_load",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
