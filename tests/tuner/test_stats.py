"""Curvature and routing statistics per layer and expert (``mosgeo_lora.stats``)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from wrapped_models import EXPECTED_TARGETS, N, logits_of, tokens, wrapped  # noqa: E402

import mosgeo_lora  # noqa: E402


def test_curvature_and_routing_statistics():
    ids = tokens()
    model = wrapped().eval()
    kappas = mosgeo_lora.curvatures(model)
    assert set(kappas) == {"base_model.model." + n for n in EXPECTED_TARGETS["llama"]}
    assert all(k == [-1.0, 1.0, 1.0, 0.0] for k in kappas.values())

    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # 13 real tokens
    mosgeo_lora.reset_routing_stats(model)
    logits_of(model, ids, attention_mask=mask)
    logits_of(model, ids, attention_mask=mask)
    stats = mosgeo_lora.routing_stats(model)
    assert set(stats) == set(kappas)
    for s in stats.values():
        assert s["tokens"] == 26
        assert len(s["load"]) == N
        assert sum(s["load"]) == pytest.approx(1.0)
        assert all(0.0 <= x <= 1.0 for x in s["load"])
    mosgeo_lora.reset_routing_stats(model)
    assert mosgeo_lora.routing_stats(model) == {}


def test_statistics_of_another_adapter_name_are_empty():
    model = wrapped().eval()
    logits_of(model, tokens())
    assert mosgeo_lora.curvatures(model, "other") == {}
    assert mosgeo_lora.routing_stats(model, "other") == {}
