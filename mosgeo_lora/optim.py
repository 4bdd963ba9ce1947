"""Optimizer parameter groups: the curvatures (and the input scales that scale them) in their
own group (the paper's "SEP")."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["param_groups", "is_curvature", "is_input_scale"]


def is_curvature(name: str) -> bool:
    """Whether the parameter ``name`` is an expert curvature κ."""
    return ".moselora_k." in name or name.startswith("moselora_k.")


def is_input_scale(name: str) -> bool:
    """Whether the parameter ``name`` is a layer's ``ρ = log s`` (``MoSELoraConfig.input_scale``:
    its experts act at curvature ``κ/s²``)."""
    return ".moselora_log_scale." in name or name.startswith("moselora_log_scale.")


def _geometry(name: str) -> bool:
    return is_curvature(name) or is_input_scale(name)


def param_groups(
    model: nn.Module,
    lr: float,
    curvature_lr: float | None = None,
    weight_decay: float = 0.0,
    *,
    separate: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer groups for the trainable parameters of ``model``.

    ``separate=True`` ("SEP", paper §5.3): κ in its own group with ``curvature_lr`` (default
    ``lr``) and no weight decay (decay would pull every expert towards flat space), with the
    input scales' ``ρ = log s`` if any (they scale κ; decay would pull ``s`` to 1); the rest
    with ``lr`` and ``weight_decay``. ``separate=False`` ("UNI"): one group, κ included, as
    in the paper's ablation. Use as ``torch.optim.AdamW(param_groups(model, 3e-4, 1e-2))`` or
    ``Trainer(optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups}))``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    if not separate:
        return [{"params": [p for _, p in named], "lr": lr, "weight_decay": weight_decay}]
    curv = [p for n, p in named if _geometry(n)]
    rest = [p for n, p in named if not _geometry(n)]
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "adapter"}]
    if curv:
        groups.append(
            {
                "params": curv,
                "lr": lr if curvature_lr is None else curvature_lr,
                "weight_decay": 0.0,
                "name": "curvature",
            }
        )
    return groups
