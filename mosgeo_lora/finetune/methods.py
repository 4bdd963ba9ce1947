"""Fine-tuning methods by name: MoSELoRA presets and PEFT's LoRA family, on the same FFN targets.

Every row of the paper's Table 1/3 that we can run is one name away:

* ``moselora``: 3 hyperbolic + 3 spherical + 2 Euclidean experts, top-4 (the paper's);
* ``moselora-h`` / ``moselora-s`` / ``moselora-e``: one space only;
* ``hydralora``: shared A, 8 Euclidean B heads, dense softmax router (HydraLoRA);
* ``lora``: PEFT LoRA; ``lora-r32`` etc. for another rank;
* ``dora``: PEFT DoRA (weight-decomposed LoRA); ``dora-r32`` etc.;
* ``adalora``: PEFT AdaLoRA, rank budget from ``init_r = 1.5 r`` down to ``r``.

All methods adapt the feed-forward projections
(:data:`mosgeo_lora.constants.FFN_TARGET_MODULES`) and use ``alpha = 2 r``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from mosgeo_lora.constants import PRESETS
from mosgeo_lora.constants import ffn_targets as _ffn_targets

__all__ = [
    "METHODS",
    "MethodError",
    "Method",
    "parse_method",
    "peft_config",
    "ffn_targets",
    "activated_parameters",
]

#: Every method name (plus ``lora-rN`` / ``dora-rN`` for another rank).
METHODS = (*PRESETS, "lora", "dora", "adalora")
_RANKED = re.compile(r"^(lora|dora)-r(\d+)$")


class MethodError(ValueError):
    """Unknown or inconsistent method name."""


@dataclass(frozen=True)
class Method:
    """A parsed method name: its family and rank."""

    #: As given, e.g. ``"lora-r32"``.
    name: str
    #: ``"moselora"`` (any preset), ``"lora"``, ``"dora"`` or ``"adalora"``.
    family: str
    #: The adapter rank.
    rank: int

    @property
    def is_moselora(self) -> bool:
        """Whether the method is one of the MoSELoRA presets."""
        return self.family == "moselora"


def parse_method(name: str, rank: int = 8) -> Method:
    """``"moselora"`` → Method(family="moselora", rank); ``"lora-r32"`` → rank 32."""
    if name in PRESETS:
        return Method(name, "moselora", rank)
    if name in ("lora", "dora", "adalora"):
        return Method(name, name, rank)
    m = _RANKED.match(name)
    if m:
        return Method(name, m.group(1), int(m.group(2)))
    raise MethodError(
        f"unknown method {name!r}; choose one of {', '.join(METHODS)} "
        "(or lora-rN / dora-rN for LoRA / DoRA with rank N)"
    )


def ffn_targets(model: nn.Module) -> list[str] | str:
    """The feed-forward projections of ``model``'s architecture (raises :class:`MethodError`
    for an architecture the table does not know)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return _ffn_targets(model_type)
    except ValueError as e:
        raise MethodError(str(e)) from None


def peft_config(method: Method, model: nn.Module, total_steps: int, **moselora_overrides):
    """The PEFT config of ``method`` for ``model`` (FFN targets, ``alpha = 2 r``)."""
    targets = ffn_targets(model)
    alpha = 2 * method.rank
    if method.is_moselora:
        from mosgeo_lora import MoSELoraConfig

        return MoSELoraConfig(
            preset=method.name,
            r=method.rank,
            alpha=alpha,
            target_modules=targets,
            task_type="CAUSAL_LM",
            **moselora_overrides,
        )
    if moselora_overrides:
        raise MethodError(
            f"options {sorted(moselora_overrides)} apply to MoSELoRA methods, not {method.name}"
        )
    from peft import AdaLoraConfig, LoraConfig

    if method.family in ("lora", "dora"):
        return LoraConfig(
            r=method.rank,
            lora_alpha=alpha,
            target_modules=targets,
            use_dora=method.family == "dora",
            task_type="CAUSAL_LM",
        )
    # AdaLoRA prunes from init_r to target_r between tinit and total_step - tfinal; it needs
    # update_and_allocate() after every optimizer step (callbacks.AdaLoraAllocator)
    tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
    if total_steps <= tinit + tfinal:
        raise MethodError(f"adalora needs more than {tinit + tfinal} steps, got {total_steps}")
    return AdaLoraConfig(
        init_r=max(method.rank + 1, (3 * method.rank) // 2),
        target_r=method.rank,
        lora_alpha=alpha,
        target_modules=targets,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, total_steps // 20),
        task_type="CAUSAL_LM",
    )


def activated_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, activated per token) adapter parameters.

    For MoSELoRA only ``top_k`` of the ``N`` up-projections act on a token, so activated =
    A + router + κ + (top_k / N)·B; for LoRA-family adapters every trainable weight acts.
    """
    from mosgeo_lora import MoSELoraLayer

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activated = trainable
    for module in model.modules():
        if isinstance(module, MoSELoraLayer):
            for name, b in module.moselora_B.items():
                n, k = module.settings[name]["num_experts"], module.settings[name]["top_k"]
                if b.weight.requires_grad:
                    activated -= round(b.weight.numel() * (1 - k / n))
    return trainable, activated
