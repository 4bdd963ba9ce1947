"""Tokenisation and batching of ``question``/``answer`` pairs (generated, or a user's JSONL):
the prompt is masked out of the labels, the answer and EOS are trained on, nothing is
truncated silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .examples import DataError, Example
from .prompts import build_prompt, target_text

__all__ = [
    "tokenize_example",
    "tokenize_pair",
    "tokenize_prompted",
    "tokenize_text",
    "prompt_ids",
    "text_prompt_ids",
    "check_fits",
    "CausalLMCollator",
    "ClassificationCollator",
]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_bos(tokenizer: Any) -> list[int]:
    """[bos] if the tokenizer itself starts sequences with BOS (Llama-style), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    adds_bos = tokenizer("0")["input_ids"][:1] == [bos] and _encode(tokenizer, "0")[:1] != [bos]
    return [bos] if adds_bos else []


def _describe(ex: Example) -> str:
    question = ex.question if len(ex.question) <= 60 else ex.question[:57] + "..."
    source = f" from {ex.module}" if ex.module else ""
    return f"example{source} {question!r} -> {ex.answer!r}"


def tokenize_example(
    tokenizer: Any, ex: Example, max_length: int, truncate: bool = False
) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for one example: prompt tokens (and BOS) are
    labelled -100, answer tokens and the appended EOS are trained on. Prompt and answer are
    tokenized separately so the label boundary is exact.

    An example over ``max_length`` tokens raises DataError; with ``truncate`` its prompt
    loses its first tokens instead (after the BOS, if any), so the end of the question and
    the whole answer are kept. An answer that does not fit on its own is an error either way.
    """
    bos = _leading_bos(tokenizer)
    prompt = _encode(tokenizer, build_prompt(ex.question))
    return tokenize_pair(tokenizer, bos, prompt, target_text(ex.answer), max_length, truncate, ex)


def tokenize_pair(
    tokenizer: Any,
    bos: list[int],
    prompt: list[int],
    target: str,
    max_length: int,
    truncate: bool = False,
    ex: Example | None = None,
) -> dict[str, list[int]]:
    """:func:`tokenize_example` for a tokenized ``prompt`` (after the leading ``bos`` ids,
    which truncation keeps) and a ``target`` text; ``ex`` names the example in errors."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    prompt = bos + prompt
    target = _encode(tokenizer, target) + [eos]
    length = len(prompt) + len(target)
    room = max_length - len(target) - len(bos)  # prompt tokens that fit after the BOS
    if length > max_length and truncate and room >= 1:
        prompt = bos + prompt[len(prompt) - room :]
        length = len(prompt) + len(target)
    if length > max_length:
        why = " (the answer alone does not fit)" if truncate else ""
        name = _describe(ex) if ex is not None else "example"
        raise DataError(
            f"{name} is {length} tokens (prompt {len(prompt)} + answer {len(target)}),"
            f" over max_length={max_length}{why}"
        )
    return {
        "input_ids": prompt + target,
        "attention_mask": [1] * length,
        "labels": [-100] * len(prompt) + target,
    }


def tokenize_prompted(
    tokenizer: Any,
    prompt: str,
    target: str,
    max_length: int,
    truncate: bool = False,
    chat_template: bool = False,
) -> dict[str, list[int]]:
    """:func:`tokenize_pair` of a task's ``prompt`` text, tokenized as evaluation prompts it
    (:func:`text_prompt_ids`, with the chat template when asked and the tokenizer has one),
    and its ``target`` completion."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        bos, ids = [], text_prompt_ids(tokenizer, prompt, chat_template=True)
    else:
        bos, ids = _leading_bos(tokenizer), _encode(tokenizer, prompt)
    return tokenize_pair(tokenizer, bos, ids, target, max_length, truncate)


def tokenize_text(
    tokenizer: Any, text: str, label: int | None, max_length: int, truncate: bool = False
) -> dict[str, Any]:
    """input_ids / attention_mask (/ labels: the class ``label``) of a text a sequence
    classifier reads: BOS where the tokenizer adds one, then the text (no EOS: the classifier
    pools the last token, and the EOS often doubles as the pad).

    A text over ``max_length`` tokens raises DataError; with ``truncate`` it loses its last
    tokens.
    """
    ids = _leading_bos(tokenizer) + _encode(tokenizer, text)
    if len(ids) > max_length:
        if not truncate:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise DataError(f"text {shown!r} is {len(ids)} tokens, over max_length={max_length}")
        ids = ids[:max_length]
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    if label is not None:
        out["labels"] = int(label)
    return out


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The token ids a model is prompted with at evaluation: exactly the prompt part of
    :func:`tokenize_example` (BOS where the tokenizer adds one, then :func:`build_prompt`)."""
    return text_prompt_ids(tokenizer, build_prompt(question))


def text_prompt_ids(tokenizer: Any, text: str, chat_template: bool = False) -> list[int]:
    """The token ids of a prompt ``text``: BOS where the tokenizer adds one, then the text;
    with ``chat_template`` and a tokenizer that has one, the text as the one user message of
    the chat template, followed by the assistant's turn (``add_generation_prompt``)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return _encode(tokenizer, rendered)  # the template writes its own BOS, if any
    return _leading_bos(tokenizer) + _encode(tokenizer, text)


def check_fits(
    tokenizer: Any, examples: Sequence[Example], max_length: int, truncate: bool = False
) -> None:
    """Raise DataError, before any training, if any example exceeds `max_length` tokens (with
    ``truncate``: if any answer alone does not fit, see :func:`tokenize_example`)."""
    if not examples:
        raise DataError("no examples to check")
    errors: list[str] = []
    for ex in examples:
        try:
            tokenize_example(tokenizer, ex, max_length, truncate)
        except DataError as e:
            errors.append(str(e))
    if errors:
        raise DataError(
            f"{len(errors)} of {len(examples)} examples do not fit in max_length={max_length};"
            f" first: {errors[0]}"
        )


class CausalLMCollator:
    """Right-pads tokenized examples into a batch of LongTensors: input_ids with the pad id
    (the tokenizer's pad, else its EOS), attention_mask with 0 and labels with -100."""

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        if pad is None:
            raise DataError("the tokenizer has neither pad_token_id nor eos_token_id")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise DataError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if m is None else -(-longest // m) * m

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise DataError("cannot collate an empty batch")
        width = self._width(max(len(f["input_ids"]) for f in features))
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            pad = width - len(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            labels = list(f.get("labels", ids))  # no labels given: plain language modelling
            batch["input_ids"].append(ids + [self.pad_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [-100] * pad)
        return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


class ClassificationCollator:
    """Right-pads tokenized texts (:func:`tokenize_text`) into a batch: input_ids with the pad
    id, attention_mask with 0, and ``labels`` as one class index per text (when given)."""

    def __init__(self, tokenizer: Any) -> None:
        self.pad_id = CausalLMCollator(tokenizer).pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise DataError("cannot collate an empty batch")
        width = max(len(f["input_ids"]) for f in features)
        ids = [
            list(f["input_ids"]) + [self.pad_id] * (width - len(f["input_ids"])) for f in features
        ]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch
