"""Tiny wrapped models the tuner tests share: a random Llama, Qwen2 or GPT-2 (hidden 32,
2 layers, vocab 64) with a small MoSELoRA adapter (r = 4, N = 4 experts: 1 hyperbolic,
2 spherical, 1 Euclidean, top-2), so one expert of every space is always present."""

from __future__ import annotations

import torch
from tiny_models import tiny_gpt2, tiny_llama, tiny_qwen2
from torch import nn

import mosgeo_lora
from mosgeo_lora import MoSELoraConfig, MoSELoraLayer

VOCAB = 64
N, R = 4, 4
BUILDERS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}
ARCHS = list(BUILDERS)

#: the adapted module names (relative to the transformers model) per architecture
EXPECTED_TARGETS = {
    "llama": {
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    },
    "qwen2": {
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    },
    "gpt2": {f"transformer.h.{i}.mlp.{p}" for i in range(2) for p in ("c_fc", "c_proj")},
}


def base_model(arch: str = "llama", seed: int = 0) -> nn.Module:
    """A fresh tiny random model; the same ``seed`` gives bitwise the same weights."""
    torch.manual_seed(seed)
    return BUILDERS[arch]().eval()


def small_config(**overrides) -> MoSELoraConfig:
    """The small adapter of these tests, with ``overrides``."""
    kwargs = dict(r=R, num_experts=N, top_k=2, num_hyperbolic=1, num_spherical=2)
    kwargs.update(overrides)
    return MoSELoraConfig(**kwargs)


def wrapped(arch: str = "llama", seed: int = 0, adapter_seed: int = 1, **overrides):
    """``base_model(arch, seed)`` wrapped with ``small_config(**overrides)``."""
    model = base_model(arch, seed)
    torch.manual_seed(adapter_seed)
    return mosgeo_lora.wrap(model, small_config(**overrides))


def tokens(batch: int = 2, length: int = 8, seed: int = 123) -> torch.Tensor:
    """Random token ids (no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def adapted_layers(model: nn.Module) -> dict[str, MoSELoraLayer]:
    """The MoSELoRA layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoSELoraLayer)}


def logits_of(model: nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits of ``model`` on ``ids`` without gradients."""
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def strip_prefix(name: str) -> str:
    """A layer name relative to the transformers model."""
    return name.removeprefix("base_model.model.")


def sequential() -> nn.Module:
    """A plain ``nn.Sequential`` (no transformers config): ``target_modules`` must be given."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
