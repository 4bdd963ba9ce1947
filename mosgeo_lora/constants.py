"""The lookup tables of the tuner, each written once: names, presets, input maps, spaces and
the feed-forward projections adapted per architecture.

Everything that names a MoSELoRA choice reads it from here: the config validates against
these tuples, the application's ``--method`` and ``--input-map`` list them, the tuner picks
its default targets from :data:`FFN_TARGET_MODULES`.
"""

from __future__ import annotations

from mosgeo import radial as _radial

__all__ = [
    "NAME",
    "PREFIX",
    "PRESETS",
    "preset_mix",
    "ROUTER_INPUTS",
    "preset_router_input",
    "INPUT_MAPS",
    "SQRT_D_IN",
    "SPACES",
    "space_of",
    "FFN_TARGET_MODULES",
    "ffn_targets",
    "HEAD_TASK_TYPES",
    "task_type_of",
]

#: The method name PEFT registers (``register_peft_method(name=...)``); the ``PeftType``
#: member is its upper case, ``"MOSELORA"``.
NAME = "moselora"
#: The prefix of every adapter parameter and buffer name.
PREFIX = "moselora_"

#: The expert mixes of ``MoSELoraConfig(preset=...)``.
PRESETS = ("moselora", "moselora-h", "moselora-s", "moselora-e", "hydralora")


def preset_mix(preset: str, n: int) -> tuple[int, int, int]:
    """``(num_hyperbolic, num_spherical, top_k)`` of ``preset`` with ``n`` experts.

    ``moselora`` is the paper's mix (3 H, 3 S, the rest Euclidean, top-4); the single-space
    presets are Table 3's ablations; ``hydralora`` has Euclidean experts and dense routing.
    """
    return {
        "moselora": (min(3, n), min(3, max(n - 3, 0)), min(4, n)),
        "moselora-h": (n, 0, min(4, n)),
        "moselora-s": (0, n, min(4, n)),
        "moselora-e": (0, 0, min(4, n)),
        "hydralora": (0, 0, n),
    }[preset]


#: What the router of a layer reads (``MoSELoraConfig.router_input``): the low-rank code
#: ``z = A x`` (``W_g`` is ``N × r``, the paper's MoSELoRA) or the layer input ``x`` (``W_g``
#: is ``N × d_in``, HydraLoRA's own code).
ROUTER_INPUTS = ("code", "input")


def preset_router_input(preset: str) -> str:
    """The router input of ``preset`` when the config does not name one: ``"input"`` for
    ``hydralora`` (HydraLoRA's code routes on the layer input), ``"code"`` for the others."""
    return "input" if preset == "hydralora" else "code"


#: The input maps of an expert: paper eq. 5 with the ball projection, or ``z`` itself
#: (:data:`mosgeo.radial.INPUT_MAPS`, the geometry that evaluates them).
INPUT_MAPS = _radial.INPUT_MAPS

#: ``MoSELoraConfig(input_scale=SQRT_D_IN)``: each layer's learnable input scale starts at
#: ``√d_in`` (HypLoRA's initialisation of its input scale).
SQRT_D_IN = "sqrt_d_in"

#: The three spaces, in the order experts are laid out (hyperbolic first, Euclidean last).
SPACES = ("hyperbolic", "spherical", "euclidean")


def space_of(kappa: float) -> str:
    """The space a curvature belongs to: ``"hyperbolic"`` (κ < 0), ``"spherical"`` (κ > 0)
    or ``"euclidean"`` (κ = 0)."""
    return "hyperbolic" if kappa < 0 else "spherical" if kappa > 0 else "euclidean"


_GATED = ["gate_proj", "up_proj", "down_proj"]

#: The feed-forward projections adapted by default, per transformers ``model_type``: a list
#: of module names, or a regex where a name alone would also match attention layers.
FFN_TARGET_MODULES: dict[str, list[str] | str] = {
    **{
        t: _GATED
        for t in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
            "deepseek_v3",
            "stablelm",
            "exaone",
        )
    },
    "phi3": ["gate_up_proj", "down_proj"],
    "phi": ["fc1", "fc2"],
    "opt": ["fc1", "fc2"],
    "gpt2": r".*\.mlp\.(c_fc|c_proj)$",  # transformers Conv1D; attn.c_proj is not an FFN
    "gpt_bigcode": r".*\.mlp\.(c_fc|c_proj)$",
    "gptj": ["fc_in", "fc_out"],
    "gpt_neo": r".*\.mlp\.(c_fc|c_proj)$",
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["dense_h_to_4h", "dense_4h_to_h"],
    "bert": r".*\.layer\.\d+\.(intermediate|output)\.dense$",
    "roberta": r".*\.layer\.\d+\.(intermediate|output)\.dense$",
    "t5": r".*DenseReluDense\.(wi|wi_0|wi_1|wo)$",
}


def ffn_targets(model_type: str | None) -> list[str] | str:
    """The feed-forward projections of ``model_type`` (a copy of the table's entry).

    Raises:
        ValueError: the architecture is not in :data:`FFN_TARGET_MODULES`; the message says
            to pass ``target_modules`` and lists the known ones.
    """
    targets = FFN_TARGET_MODULES.get(model_type)
    if targets is None:
        raise ValueError(
            f"MoSELoRA does not know the feed-forward layers of model_type={model_type!r}; "
            f"pass target_modules=[...] (names or a regex of the linear layers to adapt). "
            f"Known architectures: {', '.join(sorted(FFN_TARGET_MODULES))}"
        )
    return targets if isinstance(targets, str) else list(targets)


#: The PEFT ``task_type`` of a transformers model, by the suffix of its class name (the head
#: it carries). PEFT's task classes train the head where it is new (``SEQ_CLS``,
#: ``TOKEN_CLS``, ``QUESTION_ANS``: the ``score``/``classifier``/``qa_outputs`` modules go
#: into ``modules_to_save``) and route ``generate`` (``CAUSAL_LM``, ``SEQ_2_SEQ_LM``);
#: ``None``: a pretrained head that stays frozen (a plain ``PeftModel``).
HEAD_TASK_TYPES: dict[str, str | None] = {
    "ForCausalLM": "CAUSAL_LM",
    "LMHeadModel": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "ForMaskedLM": None,
}


def task_type_of(class_name: str, is_encoder_decoder: bool = False) -> str | None:
    """The PEFT ``task_type`` for a transformers model class, ``None`` for a headless one.

    ``ForConditionalGeneration`` is ``SEQ_2_SEQ_LM`` for an encoder-decoder and
    ``CAUSAL_LM`` otherwise (a vision-language decoder).

    Raises:
        ValueError: a head (``...For...``) this table does not know; the message says to
            pass ``task_type``.
    """
    for suffix, task in HEAD_TASK_TYPES.items():
        if class_name.endswith(suffix):
            return task
    if class_name.endswith("ForConditionalGeneration"):
        return "SEQ_2_SEQ_LM" if is_encoder_decoder else "CAUSAL_LM"
    if "For" in class_name:
        raise ValueError(
            f"MoSELoRA cannot tell which PEFT task type {class_name} is, so it cannot tell "
            f"whether its head must be trained; pass task_type=... (peft.TaskType: "
            f"{', '.join(sorted({t for t in HEAD_TASK_TYPES.values() if t}))}, ...) to wrap() or "
            f"the config"
        )
    return None
