"""Method names → PEFT configs on the FFN targets, and activated parameters per token."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

import torch  # noqa: E402
from peft import AdaLoraConfig, LoraConfig, get_peft_model  # noqa: E402
from tiny_models import tiny_gpt2, tiny_llama  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.constants import PRESETS  # noqa: E402
from mosgeo_lora.finetune import base_models  # noqa: E402
from mosgeo_lora.finetune.baselines import HMoRAConfig, MELoraConfig  # noqa: E402
from mosgeo_lora.finetune.methods import (  # noqa: E402
    METHODS,
    MethodError,
    activated_parameters,
    ffn_targets,
    matched_rank,
    parse_method,
    peft_config,
)

#: Σ (d_in + d_out) of the tiny Llama's FFN (gate/up 32 → 64, down 64 → 32; 2 layers): the
#: activated parameters of LoRA per unit of rank
FFN_SUM = 2 * (96 + 96 + 96)


@pytest.mark.parametrize(
    ("name", "family", "rank"),
    [
        *[(p, "moselora", 8) for p in PRESETS],
        ("hydralora-code", "moselora", 8),
        ("lora", "lora", 8),
        ("dora", "dora", 8),
        ("adalora", "adalora", 8),
        ("lora-r22", "lora", 22),
        ("dora-r32", "dora", 32),
        ("melora", "melora", 8),
        ("melora-r16", "melora", 16),
        ("hmora", "hmora", 8),
        ("lora-rmatch:moselora", "lora", 8),
    ],
)
def test_parse_method(name, family, rank):
    m = parse_method(name, 8)
    assert (m.name, m.family, m.rank) == (name, family, rank)
    assert m.is_moselora == (family == "moselora")


@pytest.mark.parametrize(
    "name",
    ["moslora", "lora-r", "lora-rx", "adalora-r4", "", "melora-rx", "lora-rmatch:nope", "hmora-r4"],
)
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
    hydra = peft_config(parse_method("hydralora"), model, 100)
    assert (hydra.preset, hydra.router_input, hydra.top_k) == ("hydralora", "input", 8)
    code = peft_config(parse_method("hydralora-code"), model, 100)
    assert (code.preset, code.router_input, code.top_k) == ("hydralora", "code", 8)
    assert peft_config(parse_method("moselora"), model, 100).router_input == "code"


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


def test_baseline_configs():
    model = tiny_llama()
    melora = peft_config(parse_method("melora-r16"), model, 100)
    assert isinstance(melora, MELoraConfig)
    assert (melora.r, melora.num_mini, melora.alpha, melora.scaling) == (16, 8, 32, 16)
    with pytest.raises(MethodError, match="divisible by 8"):
        peft_config(parse_method("melora-r12"), model, 100)
    hm = peft_config(parse_method("hmora"), model, 100)
    assert isinstance(hm, HMoRAConfig) and (hm.r, hm.alpha, hm.num_experts) == (8, 16, 8)
    assert hm.lora_modules == ["down_proj"]  # the block's output projection: a plain LoRA
    assert peft_config(parse_method("hmora"), tiny_gpt2(), 100).lora_modules is None  # regex
    m = parse_method("lora-rmatch:moselora-h", 4)
    assert (m.family, m.match, m.rank) == ("lora", "moselora-h", 4)
    with pytest.raises(MethodError, match="not another match"):
        parse_method("lora-rmatch:lora-rmatch:moselora")


def test_activated_parameters_of_the_baselines():
    model = get_peft_model(tiny_llama(), peft_config(parse_method("melora"), tiny_llama(), 10))
    assert activated_parameters(model) == (FFN_SUM, FFN_SUM)  # 8 mini LoRAs of rank 1
    model = get_peft_model(tiny_llama(), peft_config(parse_method("hmora"), tiny_llama(), 10))
    trainable, activated = activated_parameters(model)
    encoder = sum(p.numel() for p in model.base_model.hmora_task_encoder.parameters())
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert activated == trainable - encoder > 0


#: Qwen2-1.5B's shape (the paper's Table 1 model), built weightless on the meta device
QWEN2_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
)


def _qwen2_share(name: str) -> tuple[int, float]:
    """(activated parameters, their % of base + activated) of method ``name`` on a weightless
    Qwen2-1.5B, the paper's count."""
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_1_5B))
        base = sum(p.numel() for p in model.parameters())
        wrapped = get_peft_model(model, peft_config(parse_method(name), model, 100))
    activated = activated_parameters(wrapped)[1]
    return activated, round(100 * activated / (base + activated), 2)


def test_hmora_activated_parameters_on_qwen2_1_5b_are_the_papers_2_26_percent():
    """The paper (§5.2) counts HMoRA at 2.26 % (and LoRA r = 8 / 64 at 0.45 % / 3.53 %) of
    Qwen2-1.5B: experts and routers per token, the task encoder not, over base + adapter."""
    share = {}
    for name in ("hmora", "lora", "lora-r64"):
        activated, share[name] = _qwen2_share(name)
        if name == "hmora":
            assert activated == 35_717_506
    assert share == {"hmora": 2.26, "lora": 0.45, "lora-r64": 3.53}


def test_hydralora_activated_parameters_on_qwen2_1_5b_are_the_papers_2_54_percent():
    """HydraLoRA's router reads the layer input (``W_g``: 8 × d_in), as its code does: A,
    the 8 B heads (dense routing: all act) and the router, 2.54 % of Qwen2-1.5B as the paper
    counts it. ``hydralora-code`` (router 8 × r on ``A x``) is 2.38 %: the difference is
    28 layers × 8 × (1536 + 1536 + 8960 − 3 · 8) router weights."""
    activated, share = _qwen2_share("hydralora")
    assert share == 2.54 and activated == 40_255_488
    code, code_share = _qwen2_share("hydralora-code")
    assert code_share == 2.38 and activated - code == 28 * 8 * (1536 + 1536 + 8960 - 3 * 8)


def test_lora_rmatch_picks_the_rank_nearest_to_the_target():
    model = tiny_llama()
    for target in ("moselora", "hydralora", "hydralora-code", "hmora", "melora-r16"):
        rank, lora, goal = matched_rank(parse_method(target), model)
        assert lora == rank * FFN_SUM
        assert all(abs(lora - goal) <= abs(r * FFN_SUM - goal) for r in range(1, 200)), target
        with torch.device("meta"):
            copy = base_models.tiny_llama(64)
            wrapped = get_peft_model(copy, peft_config(parse_method(target), copy, 100))
        assert goal == activated_parameters(wrapped)[1]
    assert not hasattr(model, "peft_config")  # the model itself is untouched
    cfg = peft_config(parse_method("lora-rmatch:moselora"), model, 100)
    assert isinstance(cfg, LoraConfig) and (cfg.r, cfg.lora_alpha) == (22, 44)


def test_lora_rmatch_reproduces_lora_r22_on_smollm2():
    smollm2 = LlamaConfig(  # SmolLM2-135M's shape (benchmarks/bench_step.py)
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(smollm2)
    rank, lora, goal = matched_rank(parse_method("moselora"), model)
    assert (rank, lora, goal) == (22, 4_181_760, 4_153_500)  # the README's lora-r22
