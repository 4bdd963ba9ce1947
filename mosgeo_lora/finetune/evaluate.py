"""Scoring by greedy decoding: the frozen math test sets by exact match (:func:`evaluate`),
the benchmark tasks by their own answer rules and metrics (:func:`evaluate_tasks`), a model
in memory or a saved adapter folder (:func:`evaluate_adapter`, the ``mosgeo-lora eval``
command). Both generate through :func:`generate_texts`: batches, left padding, a progress bar.
A sequence classifier (CoLA, MRPC) is scored by the argmax of its logits instead
(:func:`evaluate_classifier`), with the same rules and metrics.

Beside exact match, :func:`evaluate` scores each problem by a continuous measure,
:func:`answer_nll`: the mean negative log-likelihood of its gold answer tokens (the tokens a
training example is trained on: the answer and EOS) given the prompt, teacher-forced, one
forward pass per batch. Both are kept per problem, in problem order, so that two runs scored
on the same problems can be compared problem by problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as mdata
from . import tasks as mtasks
from .base_models import DEFAULT_MODEL, load
from .config import ConfigError, FinetuneConfig

__all__ = [
    "evaluate",
    "answer_nll",
    "evaluate_tasks",
    "evaluate_classifier",
    "classify",
    "evaluate_adapter",
    "eval_examples",
    "task_data",
    "accuracies",
    "nlls",
    "generate_texts",
    "predictions_path",
]


def eval_examples(cfg: FinetuneConfig) -> dict[str, list[mdata.Example]]:
    """The test sets a run scores (``cfg.eval_sets``, ``cfg.eval_limit`` problems each); none
    when ``cfg.eval_sets`` is ``("none",)``, or empty while tasks are given."""
    if cfg.eval_sets == ("none",) or (cfg.tasks and not cfg.eval_sets):
        return {}
    sets = mdata.eval_sets(list(cfg.eval_sets) or None)
    if cfg.eval_limit:
        sets = {k: v[: cfg.eval_limit] for k, v in sets.items()}
    return sets


def task_data(cfg: FinetuneConfig) -> list[mtasks.TaskData]:
    """The rows of every task of ``cfg.tasks`` (``NAME`` from the hub, ``NAME=PATH`` from a
    local file), ``cfg.eval_limit`` each; raises :class:`~.tasks.TaskError` on bad input."""
    out = []
    for spec in cfg.tasks:
        task, path = mtasks.parse_task_spec(spec)
        out.append(mtasks.load_rows(task, path, limit=cfg.eval_limit))
    return out


def predictions_path(folder: str | os.PathLike, task: str) -> Path:
    """Where a task's generations are written: ``<folder>/predictions-<task>.jsonl``."""
    return Path(folder) / f"predictions-{task}.jsonl"


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    stop: Sequence[str] = (),
    progress: bool = False,
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of tokenized ``prompts``, decoded, in order.

    Batches of ``batch_size`` are left-padded (every prompt ends where generation starts) and
    moved to the model's device; generation stops at EOS or at a ``stop`` string, and the text
    is cut before the first stop string. ``progress``: a tqdm bar over the batches.
    """
    from tqdm.auto import tqdm

    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    extra: dict[str, Any] = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        for row in out[:, width:].tolist():
            text = tokenizer.decode(row, skip_special_tokens=True)
            for s in stop:
                text = text.split(s, 1)[0]
            texts.append(text)
    return texts


@torch.no_grad()
def answer_nll(
    model: nn.Module,
    tokenizer,
    examples: Sequence[mdata.Example],
    batch_size: int = 32,
    padding_side: str = "left",
) -> list[float]:
    """The mean negative log-likelihood (nats per token) of each example's gold answer tokens
    given its prompt, teacher-forced, in order: one forward pass per batch of ``batch_size``.

    The scored tokens are exactly those a training example is trained on
    (:func:`~.data.tokenize_example`'s labels: the answer and EOS); the prompt is masked out.
    Each example is padded to its batch's longest on ``padding_side`` (``"left"`` or
    ``"right"``), with position ids counted from its first real token, so neither the padding
    side nor the batch size changes a value beyond float rounding. Left padding puts every
    answer at the end of its row, so a model that takes ``logits_to_keep`` (transformers'
    causal LMs) computes the vocabulary logits of the batch's last answer positions only,
    not of every prompt token. The whole example is scored: no truncation.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    tail_only = padding_side == "left" and _takes_logits_to_keep(model)
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        feats = [
            mdata.tokenize_example(tokenizer, ex, max_length=10**9)
            for ex in examples[start : start + batch_size]
        ]
        width = max(len(f["input_ids"]) for f in feats)
        ids, mask, labels = [], [], []
        for f in feats:
            n = width - len(f["input_ids"])
            if padding_side == "right":
                ids.append(f["input_ids"] + [pad] * n)
                mask.append([1] * len(f["input_ids"]) + [0] * n)
                labels.append(f["labels"] + [-100] * n)
            else:
                ids.append([pad] * n + f["input_ids"])
                mask.append([0] * n + [1] * len(f["input_ids"]))
                labels.append([-100] * n + f["labels"])
        ids_t = torch.tensor(ids, device=device)
        mask_t = torch.tensor(mask, device=device)
        labels_t = torch.tensor(labels, device=device)
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
        extra: dict[str, Any] = {}
        if tail_only:  # the answers are the rows' last tokens: logits of the tail only
            keep = 1 + max(sum(x != -100 for x in f["labels"]) for f in feats)
            extra["logits_to_keep"] = keep
            labels_t = labels_t[:, -keep:]
        logits = model(
            input_ids=ids_t, attention_mask=mask_t, position_ids=positions, **extra
        ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = labels_t[:, 1:]
        scored = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = -(picked * scored).sum(-1) / scored.sum(-1).clamp(min=1)
        out += nll.tolist()
    model.train(was_training)
    return out


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def evaluate(
    model: nn.Module,
    tokenizer,
    sets: dict[str, list[mdata.Example]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    samples: int = 3,
    progress: bool = False,
    nll: bool = True,
) -> dict[str, dict[str, Any]]:
    """Greedy-decode every question and score exact match; with ``nll``, also the answer's
    negative log-likelihood (:func:`answer_nll`).

    Returns ``{set: {"accuracy", "correct", "n", "samples", "nll", "per_problem"}}``:
    ``"nll"`` the mean over problems, ``"per_problem"`` ``{"correct": [0/1, …], "nll":
    [...]}`` in the set's order (no ``"nll"`` entries without ``nll``).
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for name, examples in sets.items():
        prompts = [mdata.prompt_ids(tokenizer, ex.question) for ex in examples]
        texts = generate_texts(
            model, tokenizer, prompts, batch_size, max_new_tokens, progress=progress, desc=name
        )
        hits, shown = [], []
        for ex, text in zip(examples, texts, strict=True):
            pred = mdata.extract_answer(text)
            hits.append(int(mdata.exact_match(pred, ex.answer)))
            if len(shown) < samples:
                shown.append({"question": ex.question, "answer": ex.answer, "output": pred})
        results[name] = {
            "accuracy": sum(hits) / max(1, len(examples)),
            "correct": sum(hits),
            "n": len(examples),
            "samples": shown,
            "per_problem": {"correct": hits},
        }
        if nll:
            values = answer_nll(model, tokenizer, examples, batch_size)
            results[name]["nll"] = sum(values) / max(1, len(values))
            results[name]["per_problem"]["nll"] = values
    model.train(was_training)
    return results


def evaluate_tasks(
    model: nn.Module,
    tokenizer,
    data: Sequence[mtasks.TaskData],
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: bool = False,
    predictions_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate every task's answers with its own settings and score them:
    ``{task: scores}``, the dict ``mosgeo-lora score`` prints for the same generations.

    ``max_new_tokens`` overrides the tasks' own. With ``predictions_dir``, each task's
    generations are written to :func:`predictions_path` there.
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for item in data:
        task, gen = item.task, item.task.generation
        prompts = [
            mdata.text_prompt_ids(tokenizer, task.prompt(row), gen.chat_template)
            for row in item.rows
        ]
        texts = generate_texts(
            model,
            tokenizer,
            prompts,
            batch_size,
            max_new_tokens or gen.max_new_tokens,
            stop=gen.stop,
            progress=progress,
            desc=task.name,
        )
        results[task.name] = _score(task, texts, item.rows, predictions_dir)
    model.train(was_training)
    return results


def _score(task, outputs: list, rows: list, predictions_dir) -> dict:
    """Judge a task's outputs (generated texts or class labels) against its rows, summarize,
    and write the predictions file when ``predictions_dir`` is given."""
    judged = mtasks.judge(task, outputs, rows)
    if predictions_dir is not None:
        mtasks.write_predictions(
            predictions_path(predictions_dir, task.name), task, outputs, judged
        )
    return mtasks.summarize(task, judged)


@torch.no_grad()
def classify(
    model: nn.Module,
    tokenizer,
    features: Sequence[dict[str, Any]],
    batch_size: int = 32,
    progress: bool = False,
    desc: str | None = None,
) -> list[int]:
    """The label a sequence classifier gives each tokenized text (:func:`.data.tokenize_text`):
    the argmax of its logits, in order, in right-padded batches of ``batch_size``."""
    from tqdm.auto import tqdm

    collate = mdata.ClassificationCollator(tokenizer)
    device = next(model.parameters()).device
    out: list[int] = []
    starts = range(0, len(features), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = [
            {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]}
            for f in features[start : start + batch_size]
        ]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        out += model(**batch).logits.argmax(-1).tolist()
    return out


def evaluate_classifier(
    model: nn.Module,
    tokenizer,
    data: Sequence[mtasks.TaskData],
    max_length: int,
    truncate: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    predictions_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Score a sequence classifier on classification tasks (``task.classifies``): each row's
    text (:meth:`~.tasks.Task.classifier_text`) labelled by :func:`classify`, the labels
    judged and summarised by the task's own rule and metrics: ``{task: scores}``, what
    ``mosgeo-lora score`` prints for the predictions file written to ``predictions_dir``
    (one ``{"prediction": <label>}`` per row).

    Raises:
        DataError: a text is over ``max_length`` tokens (and ``truncate`` is off).
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for item in data:
        task = item.task
        features = [
            mdata.tokenize_text(tokenizer, task.classifier_text(row), None, max_length, truncate)
            for row in item.rows
        ]
        labels = classify(model, tokenizer, features, batch_size, progress, desc=task.name)
        results[task.name] = _score(task, labels, item.rows, predictions_dir)
    model.train(was_training)
    return results


def accuracies(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{set: accuracy}`` of :func:`evaluate`'s or :func:`evaluate_tasks`' results."""
    return {k: v["accuracy"] for k, v in results.items()}


def nlls(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{set: mean answer NLL}`` of :func:`evaluate`'s results (sets scored with it)."""
    return {k: v["nll"] for k, v in results.items() if "nll" in v}


def evaluate_adapter(
    adapter: str | None,
    model: str | None = None,
    eval_sets: Sequence[str] = (),
    eval_limit: int = 0,
    batch_size: int = 32,
    tasks: Sequence[str] = (),
    output: str | os.PathLike | None = None,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a saved adapter folder (or, with ``adapter=None``, the base model) on the test
    sets and the benchmark ``tasks`` (``NAME`` or ``NAME=PATH``).

    With ``output``, the result is written there as JSON and each task's generations beside
    it (:func:`predictions_path`).
    """
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not a saved adapter (no adapter_config.json)")
    run = _run_settings(adapter) if adapter else {}
    if model is None:
        model = run.get("model", DEFAULT_MODEL)
    cfg = FinetuneConfig(
        model=model, eval_sets=tuple(eval_sets), eval_limit=eval_limit, tasks=tuple(tasks)
    )
    cfg.validate()
    classifier = adapter is not None and _is_classifier(adapter)
    classified = cfg.check_classifier_run() if classifier else None
    if classifier and classified is None:
        raise ConfigError(
            f"{adapter} is a sequence classifier: score it with --task NAME of a "
            "classification task (cola, mrpc)"
        )
    sets = eval_examples(cfg)
    data = task_data(cfg)  # every row read and checked before the model is loaded
    loaded = load(model, num_labels=len(classified.answer.names) if classified else None)
    net = loaded.model
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    results = evaluate(net, loaded.tokenizer, sets, batch_size=batch_size, progress=progress)
    folder = None if output is None else Path(output).parent
    if classified is not None:  # the trained run's max_length and truncation
        task_results = evaluate_classifier(
            net,
            loaded.tokenizer,
            data,
            run.get("max_length", cfg.max_length),
            run.get("truncate", False),
            batch_size=batch_size,
            progress=progress,
            predictions_dir=folder,
        )
    else:
        task_results = evaluate_tasks(
            net,
            loaded.tokenizer,
            data,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
            predictions_dir=folder,
        )
    res: dict[str, Any] = {
        "model": model,
        "adapter": adapter,
        "eval": results,
        "accuracy": {**accuracies(results), **accuracies(task_results)},
        "nll": nlls(results),
        "tasks": task_results,
    }
    if folder is not None:
        res["predictions"] = {t: str(predictions_path(folder, t)) for t in task_results}
        folder.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(res, indent=1), encoding="utf-8")
    return res


def _run_settings(adapter: str) -> dict[str, Any]:
    """The settings of the run that saved ``adapter``, from ``run_config.json`` in or beside
    its folder (``{}`` if there is none)."""
    for folder in (Path(adapter), Path(adapter).parent):
        f = folder / "run_config.json"
        if f.is_file():
            return json.loads(f.read_text())
    return {}


def _is_classifier(adapter: str) -> bool:
    """Whether the adapter was trained on a sequence classifier (PEFT task type SEQ_CLS)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return config.get("task_type") == "SEQ_CLS"
