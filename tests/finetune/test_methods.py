"""Method names → PEFT configs on the FFN targets, and activated parameters per token."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import AdaLoraConfig, LoraConfig, get_peft_model  # noqa: E402
from tiny_models import tiny_gpt2, tiny_llama  # noqa: E402
from torch import nn  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.constants import PRESETS  # noqa: E402
from mosgeo_lora.finetune.methods import (  # noqa: E402
    METHODS,
    MethodError,
    activated_parameters,
    ffn_targets,
    parse_method,
    peft_config,
)


@pytest.mark.parametrize(
    ("name", "family", "rank"),
    [
        *[(p, "moselora", 8) for p in PRESETS],
        ("lora", "lora", 8),
        ("dora", "dora", 8),
        ("adalora", "adalora", 8),
        ("lora-r22", "lora", 22),
        ("dora-r32", "dora", 32),
    ],
)
def test_parse_method(name, family, rank):
    m = parse_method(name, 8)
    assert (m.name, m.family, m.rank) == (name, family, rank)
    assert m.is_moselora == (family == "moselora")


@pytest.mark.parametrize("name", ["moslora", "lora-r", "lora-rx", "adalora-r4", ""])
def test_unknown_method_names_every_choice(name):
    with pytest.raises(MethodError, match="choose one of " + ", ".join(METHODS)):
        parse_method(name)


def test_configs_share_the_ffn_targets_and_alpha():
    model = tiny_llama()
    targets = ffn_targets(model)
    assert targets == mosgeo_lora.FFN_TARGET_MODULES["llama"]
    mose = peft_config(parse_method("moselora-h", 4), model, 100, input_map="lift")
    assert isinstance(mose, mosgeo_lora.MoSELoraConfig)
    assert (mose.preset, mose.r, mose.alpha, mose.input_map) == ("moselora-h", 4, 8, "lift")
    assert set(mose.target_modules) == set(targets) and mose.task_type == "CAUSAL_LM"
    lora = peft_config(parse_method("dora-r16"), model, 100)
    assert isinstance(lora, LoraConfig) and lora.use_dora
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (16, 32, set(targets))
    ada = peft_config(parse_method("adalora"), model, 100)
    assert isinstance(ada, AdaLoraConfig) and (ada.init_r, ada.target_r) == (12, 8)
    with pytest.raises(MethodError, match="adalora needs more than"):
        peft_config(parse_method("adalora"), model, 2)
    with pytest.raises(MethodError, match="apply to MoSELoRA"):
        peft_config(parse_method("lora"), model, 100, input_map="lift")


def test_ffn_targets_of_an_unknown_architecture_is_a_method_error():
    assert ffn_targets(tiny_gpt2()) == mosgeo_lora.FFN_TARGET_MODULES["gpt2"]
    with pytest.raises(MethodError, match="pass target_modules"):
        ffn_targets(nn.Linear(2, 2))


def test_activated_parameters_count_top_k_of_n_up_projections():
    model = mosgeo_lora.wrap(tiny_llama(), r=4, num_experts=4, top_k=2)
    trainable, activated = activated_parameters(model)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    b = sum(p.numel() for n, p in model.named_parameters() if ".moselora_B." in n)
    assert activated == trainable - b // 2  # 2 of 4 up-projections act on a token
    lora = get_peft_model(tiny_llama(), peft_config(parse_method("lora"), tiny_llama(), 10))
    assert activated_parameters(lora)[0] == activated_parameters(lora)[1]
