"""``MoSELoraConfig``: the presets' expert mixes and every validation error."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from wrapped_models import adapted_layers, sequential  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora import MoSELoraConfig  # noqa: E402
from mosgeo_lora.constants import PRESETS, preset_mix  # noqa: E402


@pytest.mark.parametrize(
    ("preset", "signs", "top_k"),
    [
        ("moselora", [-1] * 3 + [1] * 3 + [0] * 2, 4),
        ("moselora-h", [-1] * 8, 4),
        ("moselora-s", [1] * 8, 4),
        ("moselora-e", [0] * 8, 4),
        ("hydralora", [0] * 8, 8),
    ],
)
def test_presets(preset, signs, top_k):
    cfg = MoSELoraConfig(preset=preset, target_modules=["0", "2"])
    assert cfg.top_k == top_k and cfg.num_experts == 8
    # HydraLoRA's code routes on the layer input; the MoSELoRA presets on the code A x
    assert cfg.router_input == ("input" if preset == "hydralora" else "code")
    model = mosgeo_lora.wrap(sequential(), cfg)
    for layer in adapted_layers(model).values():
        d_router = layer.in_features if preset == "hydralora" else 8
        assert layer.moselora_router["default"].in_features == d_router
        k = layer.curvatures("default")
        assert torch.sign(k).tolist() == signs
        assert layer.settings["default"]["top_k"] == top_k
        assert ("default" in layer.moselora_k) == any(signs)  # flat presets learn no κ
    with torch.no_grad():
        model(torch.randn(5, 8))
    for stats in mosgeo_lora.routing_stats(model).values():
        if preset == "hydralora":  # dense routing: every expert gets every token
            assert stats["load"] == [1 / 8] * 8
        else:
            assert sum(x > 0 for x in stats["load"]) >= top_k


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "moselora-x"}, "preset must be one of"),
        ({"num_experts": 4, "top_k": 5}, r"top_k must be in \[1, num_experts=4\]"),
        ({"top_k": 0}, "top_k must be in"),
        ({"num_experts": 4, "num_hyperbolic": 3, "num_spherical": 2}, "must be between 0 and"),
        ({"num_hyperbolic": -1}, "must be between 0 and"),
        ({"input_map": "exp"}, "input_map must be one of"),
        ({"preset": "hydralora", "num_spherical": 1}, "Euclidean experts only"),
        ({"r": 0}, "r must be a positive int"),
        ({"curvature_bounds": (1.0, -1.0)}, "low < high"),
        ({"router_input": "x"}, r"router_input must be one of \('code', 'input'\)"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoSELoraConfig(**kwargs)


@pytest.mark.parametrize("preset", PRESETS)
def test_router_input_can_be_set_on_every_preset(preset):
    for router_input in ("code", "input"):
        assert MoSELoraConfig(preset=preset, router_input=router_input).router_input == (
            router_input
        )


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_every_preset_mix_is_a_valid_config(preset, n):
    n_h, n_s, top_k = preset_mix(preset, n)
    cfg = MoSELoraConfig(preset=preset, num_experts=n)
    assert (cfg.num_hyperbolic, cfg.num_spherical, cfg.top_k) == (n_h, n_s, top_k)
    assert 0 <= n_h + n_s <= n and 1 <= top_k <= n
    kappas = cfg.initial_curvatures()
    assert sum(k < 0 for k in kappas) == n_h and sum(k > 0 for k in kappas) == n_s
