"""Tiny random transformers models built from configs (no hub access), shared by the tests."""

from __future__ import annotations

from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

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
    return LlamaForCausalLM(LlamaConfig(**_DECODER))


def tiny_qwen2() -> nn.Module:
    return Qwen2ForCausalLM(Qwen2Config(**_DECODER))


def tiny_gpt2() -> nn.Module:
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, **SPECIAL)
    return GPT2LMHeadModel(cfg)
