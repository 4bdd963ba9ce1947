"""mosgeo_lora: MoSELoRA, the Mixture-of-Space LoRA adapter, as a PEFT tuner.

``import mosgeo_lora`` registers the method with PEFT (peft_type ``MOSELORA``); then
``mosgeo_lora.wrap(model)`` (or ``peft.get_peft_model(model, MoSELoraConfig())``) adapts the
feed-forward projections of a transformers model.
"""

from .callbacks import CurvatureCallback
from .config import PRESETS, MoSELoraConfig
from .layer import MoSELoraLayer, MoSELoraLinear
from .model import FFN_TARGET_MODULES, MoSELoraModel, wrap
from .optim import param_groups
from .peft import MOSELORA, register
from .plot import plot_curvature_dynamics, plot_expert_load
from .stats import curvatures, reset_routing_stats, routing_stats

register()

__version__ = "0.1.0"

__all__ = [
    "MoSELoraConfig",
    "MoSELoraModel",
    "MoSELoraLayer",
    "MoSELoraLinear",
    "MOSELORA",
    "PRESETS",
    "FFN_TARGET_MODULES",
    "wrap",
    "param_groups",
    "curvatures",
    "routing_stats",
    "reset_routing_stats",
    "CurvatureCallback",
    "plot_curvature_dynamics",
    "plot_expert_load",
]
