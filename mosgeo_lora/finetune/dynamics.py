"""How far the curvatures of a MoSELoRA run moved, and how many hyperbolic inputs sit on the
ball's boundary: the measures a run writes into ``metrics.json`` as ``"curvature_dynamics"``.

* :func:`kappa_dynamics`: over the curved (learnable) experts, the share whose κ changed
  sign between the start and the end of the run (an expert that changed space), and the mean
  and largest ``|κ_end − κ_start|`` (of the parameters κ: with an input scale ``s`` the
  experts act at ``κ/s²``, whose sign is κ's).
* :func:`boundary_share`: the share of (token, hyperbolic expert) pairs whose low-rank code
  ``z = A x`` the stereographic input map clips onto the ball of radius ``1/√|κ|``
  (:func:`mosgeo.math.project_factor` below 1), over prompts run one at a time (no padding
  tokens), from :func:`hyperbolic_code_norms`, which ``benchmarks/clip_share.py`` reads
  too. With a learnable input scale ``s`` (``MoSELoraConfig.input_scale``) the expert reads
  ``z / s``, so the ball is ``s`` times larger in ``z``.
* :func:`input_scale_summary`: the mean, smallest and largest input scale ``s`` over the
  layers (none without the option).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mosgeo import math as pmath

__all__ = [
    "learnable_curvatures",
    "kappa_dynamics",
    "hyperbolic_code_norms",
    "boundary_share",
    "input_scale_summary",
]


def _layers(model: nn.Module):
    from mosgeo_lora import MoSELoraLayer

    for name, module in model.named_modules():
        if isinstance(module, MoSELoraLayer):
            yield name, module


def learnable_curvatures(model: nn.Module) -> dict[str, list[float]]:
    """The learnable κ of every MoSELoRA layer (the curved experts; fixed ones left out):
    ``{layer: [κ, …]}``, empty for a model without learnable κ (``moselora-e``,
    ``hydralora``, another method)."""
    out: dict[str, list[float]] = {}
    for name, layer in _layers(model):
        for k in layer.moselora_k.values():
            out[name] = k.detach().float().cpu().tolist()
    return out


def kappa_dynamics(
    start: Mapping[str, Sequence[float]], end: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """How the learnable κ moved from ``start`` to ``end`` (``{layer: [κ, …]}`` each, the
    same layers and experts).

    Returns ``{"curved_experts", "sign_changed", "sign_changed_share", "mean_abs_delta",
    "max_abs_delta"}``: a κ that reaches exactly 0 counts as a change of sign (it left its
    space). With no curved experts the shares are ``None``.

    Raises:
        ValueError: ``start`` and ``end`` do not hold the same layers and experts.
    """
    if set(start) != set(end) or any(len(start[k]) != len(end[k]) for k in start):
        raise ValueError("start and end must hold the same layers and experts")
    pairs = [(a, b) for name in start for a, b in zip(start[name], end[name], strict=True)]
    if not pairs:
        return {
            "curved_experts": 0,
            "sign_changed": 0,
            "sign_changed_share": None,
            "mean_abs_delta": None,
            "max_abs_delta": None,
        }
    changed = sum((a < 0) != (b < 0) or (a > 0) != (b > 0) for a, b in pairs)
    deltas = [abs(b - a) for a, b in pairs]
    return {
        "curved_experts": len(pairs),
        "sign_changed": changed,
        "sign_changed_share": changed / len(pairs),
        "mean_abs_delta": sum(deltas) / len(deltas),
        "max_abs_delta": max(deltas),
    }


@torch.no_grad()
def hyperbolic_code_norms(
    model: nn.Module, prompts: Sequence[Sequence[int]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What the hyperbolic experts' input map reads, per MoSELoRA layer with a stereographic
    input map and at least one hyperbolic expert (κ < 0; with ``MoSELoraConfig.flatten``,
    the flat experts whose code is projected onto a ball, at that ball's curvature
    ``−ball``, their only projection): ``{layer: (n, k)}``, ``n`` the norms
    ``‖z/s‖`` of the codes ``z = A x`` of every token of the tokenized ``prompts`` (each run
    alone, so no padding token counts; ``s`` the layer's input scale, 1 without one), shape
    ``(tokens, 1)``, and ``k`` the hyperbolic κ, shape ``(1, experts)`` (float32, on the CPU).

    ``mosgeo.math.project_factor(n, k) < 1`` is then "clipped onto the ball's boundary" and
    ``n·√|κ|`` the code's radius in units of the ball's."""
    found: dict[str, list[torch.Tensor]] = {}
    kappas: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in _layers(model):

        def hook(module, args, name=name):
            adapter = module.active_adapters[0]
            if adapter not in module.moselora_A:
                return
            if module.settings[adapter].get("input_map", "stereographic") != "stereographic":
                return
            k = module.curvatures(adapter).detach().float()
            ball = module.settings[adapter].get("ball")
            if ball is not None:  # flatten: a flat expert clipped as at curvature -ball
                k = torch.minimum(k, -torch.tensor(ball, dtype=k.dtype, device=k.device))
            k = k[k < 0]
            if not k.numel():
                return
            a = module.moselora_A[adapter]
            z = a(args[0].to(a.weight.dtype)).reshape(-1, module.r[adapter])
            n = z.norm(dim=-1, keepdim=True).float()  # (tokens, 1)
            s = module.input_scale(adapter)
            if s is not None:  # the expert reads z / s
                n = n / s.detach().float()
            found.setdefault(name, []).append(n.cpu())
            kappas[name] = k.reshape(1, -1).cpu()

        hooks.append(layer.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for row in prompts:
            model(input_ids=torch.tensor([list(row)], device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: (torch.cat(ns), kappas[name]) for name, ns in found.items()}


def boundary_share(model: nn.Module, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The share of (token, hyperbolic expert) pairs whose ``z = A x`` is clipped onto the
    ball's boundary, over the tokenized ``prompts`` (each run alone, so no padding token
    counts), overall and per layer: ``{"share", "pairs", "by_layer": {layer: share}}``
    (from :func:`hyperbolic_code_norms`).

    ``"share"`` is ``None`` when no expert is hyperbolic (κ < 0) at this point. Only
    meaningful for the stereographic input map (the ``lift`` map clips nothing; its layers
    are left out).
    """
    counts = {}
    for name, (n, k) in hyperbolic_code_norms(model, prompts).items():
        clipped = pmath.project_factor(n, k) < 1  # (tokens, experts)
        counts[name] = (float(clipped.sum()), float(clipped.numel()))
    clipped = sum(c for c, _ in counts.values())
    pairs = sum(n for _, n in counts.values())
    return {
        "share": clipped / pairs if pairs else None,
        "pairs": int(pairs),
        "by_layer": {name: c / n for name, (c, n) in counts.items() if n},
    }


def input_scale_summary(model: nn.Module) -> dict[str, Any] | None:
    """``{"mean", "min", "max", "layers"}`` of the learnable input scales ``s`` of ``model``'s
    MoSELoRA layers (active adapter), or ``None`` when no layer has one."""
    scales = []
    for _, layer in _layers(model):
        s = layer.input_scale(layer.active_adapters[0])
        if s is not None:
            scales.append(float(s.detach().float()))
    if not scales:
        return None
    return {
        "mean": sum(scales) / len(scales),
        "min": min(scales),
        "max": max(scales),
        "layers": len(scales),
    }
