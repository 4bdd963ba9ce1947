"""What the hyperbolic experts' input map reads (``hyperbolic_code_norms``), the one source
of the run metrics' boundary share and of ``benchmarks/clip_share.py``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import mosgeo_lora  # noqa: E402
from mosgeo import math as pmath  # noqa: E402
from mosgeo_lora.finetune.dynamics import boundary_share, hyperbolic_code_norms  # noqa: E402
from mosgeo_lora.layer import moselora_layers  # noqa: E402

torch.set_num_threads(1)


def _model(**config):
    from tiny_models import tiny_llama

    torch.manual_seed(0)
    return mosgeo_lora.wrap(tiny_llama(), mosgeo_lora.MoSELoraConfig(**config))


def test_the_code_norms_are_those_of_a_x_over_s_with_the_hyperbolic_kappa():
    prompts = [[5, 6, 7], [8, 9]]
    plain = hyperbolic_code_norms(_model(), prompts)
    scaled = hyperbolic_code_norms(_model(input_scale=2.0), prompts)
    layers = dict(moselora_layers(_model()))
    assert set(plain) == set(scaled) == set(layers)
    for name, (n, k) in plain.items():
        assert n.shape == (5, 1) and k.shape == (1, 3)  # 5 tokens; the paper's 3 hyperbolic
        assert bool((k < 0).all())
        n2, k2 = scaled[name]
        torch.testing.assert_close(n2, n / 2)  # the expert reads z / s, s = 2
        torch.testing.assert_close(k2, k)
    share = boundary_share(_model(), prompts)
    clipped = sum(int((pmath.project_factor(n, k) < 1).sum()) for n, k in plain.values())
    assert share["pairs"] == 5 * 3 * len(plain)
    assert share["share"] == pytest.approx(clipped / share["pairs"])


def test_lift_and_euclidean_layers_are_left_out():
    assert hyperbolic_code_norms(_model(input_map="lift"), [[5, 6]]) == {}
    assert hyperbolic_code_norms(_model(preset="moselora-e"), [[5, 6]]) == {}
    assert boundary_share(_model(preset="moselora-e"), [[5, 6]])["share"] is None
