"""Curvature and routing statistics per adapted layer and expert."""

from __future__ import annotations

from torch import nn

from .layer import moselora_layers

__all__ = ["curvatures", "routing_stats", "reset_routing_stats"]


def curvatures(model: nn.Module, adapter_name: str = "default") -> dict[str, list[float]]:
    """κ of every expert, per adapted layer: ``{layer name: [κ_1, …, κ_N]}``."""
    return {
        name: layer.curvatures(adapter_name).detach().float().cpu().tolist()
        for name, layer in moselora_layers(model)
        if adapter_name in layer.moselora_A
    }


def routing_stats(model: nn.Module, adapter_name: str = "default") -> dict[str, dict]:
    """Expert load since the last reset: per layer, the number of (non-padding) tokens seen
    and the fraction of routing slots each expert received (sums to 1).

    The counts accumulate on the device during training; this read is where the host waits
    for them (once per layer), so call it when you log, not every step."""
    out = {}
    for name, layer in moselora_layers(model):
        counts = layer.route_counts.get(adapter_name)
        if counts is None:
            continue
        total = float(counts.sum())
        out[name] = {
            "tokens": int(layer.route_tokens.get(adapter_name, 0)),
            "load": [float(c) / total if total else 0.0 for c in counts.cpu()],
        }
    return out


def reset_routing_stats(model: nn.Module) -> None:
    """Forget the routing counts of every layer."""
    for _, layer in moselora_layers(model):
        layer.route_counts.clear()
        layer.route_tokens.clear()
