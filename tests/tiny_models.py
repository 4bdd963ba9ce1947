"""Tiny random transformers models built from configs (no hub access), shared by the tests.

The Llama is the application's own test model (:func:`mosgeo_lora.finetune.base_models.tiny_llama`,
vocabulary 64 here); Qwen2 and GPT-2 have the same sizes.
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from mosgeo_lora.finetune import base_models

VOCAB = 64
SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    **SPECIAL,
)


def tiny_llama() -> nn.Module:
    """A random 2-layer Llama, weights from the global generator."""
    return base_models.tiny_llama(VOCAB)


def tiny_qwen2() -> nn.Module:
    """A random 2-layer Qwen2, weights from the global generator."""
    return Qwen2ForCausalLM(Qwen2Config(**_DECODER))


def tiny_gpt2() -> nn.Module:
    """A random 2-layer GPT-2 (transformers ``Conv1D`` layers)."""
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, **SPECIAL)
    return GPT2LMHeadModel(cfg)
