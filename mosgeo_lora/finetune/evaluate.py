"""Scoring by greedy decoding and exact match: a model in memory (:func:`evaluate`) or a saved
adapter folder (:func:`evaluate_adapter`, the ``mosgeo-lora eval`` command)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as mdata
from .base_models import DEFAULT_MODEL, load
from .config import ConfigError, FinetuneConfig

__all__ = ["evaluate", "evaluate_adapter", "eval_examples", "accuracies"]


def eval_examples(cfg: FinetuneConfig) -> dict[str, list[mdata.Example]]:
    """The test sets a run scores (``cfg.eval_sets``, ``cfg.eval_limit`` problems each)."""
    if cfg.eval_sets == ("none",):
        return {}
    sets = mdata.eval_sets(list(cfg.eval_sets) or None)
    if cfg.eval_limit:
        sets = {k: v[: cfg.eval_limit] for k, v in sets.items()}
    return sets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer,
    sets: dict[str, list[mdata.Example]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    samples: int = 3,
) -> dict[str, dict[str, Any]]:
    """Greedy-decode every question and score exact match: ``{set: {"accuracy", "n", …}}``."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    results: dict[str, dict[str, Any]] = {}
    for name, examples in sets.items():
        correct, shown = 0, []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prompts = [mdata.prompt_ids(tokenizer, ex.question) for ex in chunk]
            width = max(map(len, prompts))
            # left padding: every prompt ends at the same position, where generation starts
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for ex, row in zip(chunk, out[:, width:].tolist(), strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True)
                pred = mdata.extract_answer(text)
                ok = mdata.exact_match(pred, ex.answer)
                correct += ok
                if len(shown) < samples:
                    shown.append({"question": ex.question, "answer": ex.answer, "output": pred})
        results[name] = {
            "accuracy": correct / max(1, len(examples)),
            "correct": correct,
            "n": len(examples),
            "samples": shown,
        }
    model.train(was_training)
    return results


def accuracies(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{set: accuracy}`` of :func:`evaluate`'s results."""
    return {k: v["accuracy"] for k, v in results.items()}


def evaluate_adapter(
    adapter: str | None,
    model: str | None = None,
    eval_sets: Sequence[str] = (),
    eval_limit: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score a saved adapter folder (or, with ``adapter=None``, the base model)."""
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not a saved adapter (no adapter_config.json)")
    if model is None:
        model = _run_model(adapter) if adapter else DEFAULT_MODEL
    cfg = FinetuneConfig(model=model, eval_sets=tuple(eval_sets), eval_limit=eval_limit)
    cfg.validate()
    sets = eval_examples(cfg)
    loaded = load(model)
    net = loaded.model
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    results = evaluate(net, loaded.tokenizer, sets, batch_size=batch_size)
    return {"model": model, "adapter": adapter, "eval": results, "accuracy": accuracies(results)}


def _run_model(adapter: str) -> str:
    """The ``--model`` a run used, from ``run_config.json`` beside its adapter folder."""
    for folder in (Path(adapter), Path(adapter).parent):
        f = folder / "run_config.json"
        if f.is_file():
            return json.loads(f.read_text())["model"]
    return DEFAULT_MODEL
