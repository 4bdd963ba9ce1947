"""Fine-tune a causal LM (or, for CoLA and MRPC, a sequence classifier) with MoSELoRA or a PEFT
baseline, with the HF ``Trainer`` (no subclass).

``finetune(FinetuneConfig(...))`` does everything the ``mosgeo-lora finetune`` command does:
validate every input before the model is loaded, build the data, wrap the model, train
(resumable from the last checkpoint; DDP under ``torchrun``), save the adapter and write
``metrics.json``, ``train_log.jsonl``, ``routing_stats.json`` and the curvature plots.

``metrics.json`` holds, per scored set, exact match and the answer NLL, both per problem in
problem order (:func:`.evaluate.evaluate`), and for MoSELoRA the curvature dynamics of the run
(:mod:`.dynamics`: κ sign changes, mean ``|Δκ|``, the boundary share at start and end).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mosgeo_lora import CurvatureCallback, curvatures, param_groups

from . import data as mdata
from . import tasks as mtasks
from .base_models import LoadedModel, load
from .callbacks import AdaLoraAllocator, CheckpointCurvatures, JsonlLog, StepStats, peak_rss_mb
from .config import MATH_DATA, PAPER_MIX, PAPER_MIX_SIZE, ConfigError, FinetuneConfig
from .dynamics import (
    boundary_share,
    input_scale_summary,
    kappa_dynamics,
    learnable_curvatures,
)
from .evaluate import (
    accuracies,
    eval_examples,
    evaluate,
    evaluate_classifier,
    evaluate_tasks,
    nlls,
    predictions_path,
    task_data,
)
from .methods import activated_parameters, peft_config

__all__ = ["finetune", "last_checkpoint"]


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` (by N), or None."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = [
        (int(p.name.split("-")[1]), p)
        for p in out.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    ]
    return max(found)[1] if found else None


def _examples(cfg: FinetuneConfig, n: int) -> list[mdata.Example]:
    if cfg.data == MATH_DATA:
        return mdata.training_examples(n, seed=cfg.seed)
    examples = mdata.load_jsonl(cfg.data)
    if len(examples) < n:  # cycle a small user file to fill the requested steps
        examples = [examples[i % len(examples)] for i in range(n)]
    return examples


def _routing_summary(history: list[dict]) -> dict[str, dict[str, Any]]:
    """Token-weighted mean expert load per layer over the run, and the last window's."""
    out: dict[str, dict[str, Any]] = {}
    for entry in history:
        for layer, share in entry.get("load", {}).items():
            n = entry["tokens"][layer]
            acc = out.setdefault(layer, {"tokens": 0, "sum": [0.0] * len(share)})
            acc["tokens"] += n
            acc["sum"] = [a + n * x for a, x in zip(acc["sum"], share, strict=True)]
            acc["load_last"] = share
            acc["kappa_last"] = entry["kappa"].get(layer)
    for acc in out.values():
        acc["load_mean"] = [x / acc["tokens"] for x in acc.pop("sum")]
    return out


def _training_args(cfg: FinetuneConfig, out: Path, steps: int):
    """The Trainer's arguments for a run of ``steps`` optimizer steps."""
    from transformers import TrainingArguments

    save_steps = cfg.save_steps or max(1, steps // 2)
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.total_warmup(steps),
        lr_scheduler_type="linear",
        bf16=cfg.bf16,
        logging_steps=min(cfg.logging_steps, steps),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and _world()[1] > 1 else None,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=cfg.disable_tqdm,
        torch_compile_backend=cfg.compile or None,
    )


def _say(msg: str) -> None:
    if _world()[0] == 0:
        print(f"[mosgeo-lora] {msg}", flush=True)


def finetune(
    cfg: FinetuneConfig,
    callbacks: Sequence[Any] = (),
    loaded: LoadedModel | None = None,
    extra_eval: dict[str, list[mdata.Example]] | None = None,
) -> dict[str, Any]:
    """Run one fine-tuning job; returns the metrics also written to ``metrics.json``.

    ``loaded``: an already loaded base model (``models.load(cfg.model)``) to use instead of
    loading it again; it is modified (wrapped) in place. ``extra_eval``: more sets to score
    after training (``mosgeo-lora compare`` passes its validation set).
    """
    from transformers import Trainer, set_seed

    method = cfg.validate()
    rank, world = _world()
    out = Path(cfg.output_dir)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in {out} to resume from")
    if cfg.epochs:  # the training set's size sets the steps (a file: all its rows)
        n_train = cfg.train_examples
    else:
        n_train = cfg.train_examples or cfg.steps * cfg.batch_size * cfg.grad_accum * world
    classified = cfg.check_classifier_run()
    tasks = task_data(cfg)  # TaskError on a bad task file or row, before loading the model
    if cfg.data == PAPER_MIX:  # TaskError offline, before loading the model
        mix = mtasks.training_mix(n_train or PAPER_MIX_SIZE, seed=cfg.seed)
        n_examples = len(mix)
    elif classified is None:
        examples = _examples(cfg, n_train)  # DataError on a bad JSONL, before loading the model
        n_examples = len(examples)
    else:
        rows = _classification_rows(cfg, classified, n_train)
        n_examples = len(rows)
    steps = cfg.total_steps(n_examples, world)
    eval_sets = eval_examples(cfg)
    if classified is not None and extra_eval:
        raise ConfigError(f"{classified.name} is scored as a classifier; extra_eval sets are not")
    after_sets = {**eval_sets, **(extra_eval or {})}

    if loaded is None:
        labels = None if classified is None else len(classified.answer.names)
        set_seed(cfg.seed)  # a classifier's new score head is drawn when the model loads
        loaded = load(cfg.model, num_labels=labels)
    tok = loaded.tokenizer
    if cfg.data == PAPER_MIX:  # each row as its task prompts it at evaluation
        train_set = [
            mdata.tokenize_prompted(
                tok,
                ex.prompt,
                ex.target,
                cfg.max_length,
                cfg.truncate,
                mtasks.get_task(ex.task).generation.chat_template,
            )
            for ex in mix
        ]
        collator: Any = mdata.CausalLMCollator(tok)
    elif classified is None:
        # DataError names the too-long example (with --truncate: an answer alone too long)
        mdata.check_fits(tok, examples, cfg.max_length, cfg.truncate)
        train_set = [
            mdata.tokenize_example(tok, ex, cfg.max_length, cfg.truncate) for ex in examples
        ]
        collator = mdata.CausalLMCollator(tok)
    else:
        train_set = [
            mdata.tokenize_text(
                tok,
                classified.classifier_text(row),
                classified.answer.gold(classified.reference(row)),
                cfg.max_length,
                cfg.truncate,
            )
            for row in rows
        ]
        for item in tasks:  # every scored text fits too, before training
            for row in item.rows:
                text = classified.classifier_text(row)
                mdata.tokenize_text(tok, text, None, cfg.max_length, cfg.truncate)
        collator = mdata.ClassificationCollator(tok)

    if rank == 0:
        if not cfg.resume and out.is_dir():  # a fresh run does not resume stale checkpoints
            for old in out.glob("checkpoint-*"):
                shutil.rmtree(old)
            for stale in ("train_log.jsonl", "metrics.json"):
                (out / stale).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    set_seed(cfg.seed)  # adapter initialisation
    from peft import get_peft_model

    config = peft_config(method, loaded.model, steps, **cfg.moselora_overrides())
    model = get_peft_model(loaded.model, config)
    trainable, activated = activated_parameters(model)
    _say(
        f"{cfg.method} on {loaded.name} ({loaded.source}): {trainable:,} trainable, "
        f"{activated:,} activated per token; {len(train_set)} training examples, "
        f"{steps} steps"
    )

    before = None
    progress = not cfg.disable_tqdm
    if cfg.eval_before and (eval_sets or tasks) and rank == 0:
        before = evaluate(model, tok, eval_sets, cfg.eval_batch_size, progress=progress)
        before.update(_score_tasks(cfg, model, tok, tasks, classified is not None, None))
        _say(f"before: {_fmt(before)}")

    kappa_start = learnable_curvatures(model)  # before training (or resuming: initial κ)
    scale_start = input_scale_summary(model)
    boundary_prompts = _boundary_prompts(cfg, tok) if method.is_moselora and rank == 0 else []
    boundary_start = boundary_share(model, boundary_prompts) if boundary_prompts else None

    groups = param_groups(
        model,
        cfg.lr,
        cfg.curvature_learning_rate(),
        cfg.weight_decay,
        separate=cfg.optimizer_grouping() == "sep",
    )
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    stats = StepStats()
    cbs: list[Any] = [stats, JsonlLog(out / "train_log.jsonl"), *callbacks]
    curv = None
    if method.is_moselora:
        curv = CurvatureCallback(plot=True)
        if resume_from is not None and (resume_from / "curvatures.json").is_file():
            saved = json.loads((resume_from / "curvatures.json").read_text())
            curv.history, curv.spaces = saved["history"], saved["spaces"]
        cbs += [curv, CheckpointCurvatures(curv)]
    if method.family == "adalora":
        cbs.append(AdaLoraAllocator())

    trainer = Trainer(
        model=model,
        args=_training_args(cfg, out, steps),
        train_dataset=train_set,
        data_collator=collator,
        optimizers=(optimizer, None),
        callbacks=cbs,
    )
    if curv is not None:
        curv.attach(trainer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*use_reentrant.*")
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    metrics: dict[str, Any] = {
        "method": cfg.method,
        "model": loaded.name,
        "optimizer_groups": cfg.optimizer_grouping(),
        "curvature_lr": cfg.curvature_learning_rate(),
        "config": asdict(cfg),
        "world_size": world,
        "trainable_parameters": trainable,
        "activated_parameters": activated,
        "train_loss": result.training_loss,
        "final_loss": _last_loss(trainer.state.log_history, result.training_loss),
        "steps": trainer.state.global_step,
        "resumed_from": str(resume_from) if resume_from else None,
        "step_time_s": statistics.median(stats.times[1:] or stats.times) if stats.times else None,
        "peak_rss_mb": peak_rss_mb(),
    }
    if rank != 0:
        return metrics
    trainer.save_model(str(out / "adapter"))
    (out / "adapter" / "run_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    files = {"adapter": str(out / "adapter"), "log": str(out / "train_log.jsonl")}
    if curv is not None:
        metrics["curvatures"] = curvatures(model)
        routing = _routing_summary(curv.history)
        (out / "routing_stats.json").write_text(json.dumps(routing, indent=1))
        files["routing_stats"] = str(out / "routing_stats.json")
        files.update({p.stem: str(p) for p in curv.files})
        dynamics = kappa_dynamics(kappa_start, learnable_curvatures(model))
        if boundary_prompts:
            dynamics["boundary_share_start"] = boundary_start
            dynamics["boundary_share_end"] = boundary_share(model, boundary_prompts)
        if scale_start is not None:
            dynamics["input_scale_start"] = scale_start
            dynamics["input_scale_end"] = input_scale_summary(model)
        metrics["curvature_dynamics"] = dynamics
    if after_sets or tasks:
        after = evaluate(model, tok, after_sets, cfg.eval_batch_size, progress=progress)
        scored = _score_tasks(cfg, model, tok, tasks, classified is not None, out)
        metrics["eval"] = after
        metrics["tasks"] = scored
        metrics["accuracy"] = {**accuracies(after), **accuracies(scored)}
        metrics["nll"] = nlls(after)
        files.update({f"predictions {t}": str(predictions_path(out, t)) for t in scored})
        _say(f"after:  {_fmt({**after, **scored})}")
        if before is not None:
            metrics["eval_before"] = before
            metrics["accuracy_before"] = accuracies(before)
            metrics["nll_before"] = nlls(before)
    metrics["files"] = files
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _boundary_prompts(cfg: FinetuneConfig, tok: Any) -> list[list[int]]:
    """The prompts the boundary share is measured on: the first ``cfg.boundary_prompts``
    questions of every frozen test set (0: none)."""
    if not cfg.boundary_prompts:
        return []
    sets = mdata.eval_sets()
    return [
        mdata.prompt_ids(tok, ex.question)
        for exs in sets.values()
        for ex in exs[: cfg.boundary_prompts]
    ]


def _score_tasks(
    cfg: FinetuneConfig,
    model: Any,
    tok: Any,
    tasks: list[mtasks.TaskData],
    classifier: bool,
    predictions_dir: Path | None,
) -> dict[str, dict[str, Any]]:
    """The tasks' scores: by generation, or by the classifier's labels."""
    progress = not cfg.disable_tqdm
    if classifier:
        return evaluate_classifier(
            model,
            tok,
            tasks,
            cfg.max_length,
            cfg.truncate,
            cfg.eval_batch_size,
            progress=progress,
            predictions_dir=predictions_dir,
        )
    return evaluate_tasks(
        model, tok, tasks, cfg.eval_batch_size, progress=progress, predictions_dir=predictions_dir
    )


def _classification_rows(cfg: FinetuneConfig, task: mtasks.Task, n: int) -> list[dict]:
    """The training rows of a classification run: ``cfg.data`` (a file in the task's schema)
    or the task's training split on the hub; ``n`` of them (0: all), sampled by ``cfg.seed``,
    a small set cycled to fill ``n``."""
    path = None if cfg.data == MATH_DATA else cfg.data
    try:
        rows = mtasks.load_rows(task, path, split=task.train_split).rows
    except mtasks.TaskError as e:
        if path is not None:
            raise
        raise mtasks.TaskError(
            f"training rows of {task.name}: {e}; offline, give --data TRAIN_FILE (rows in the "
            f"schema of {task.hub}: {', '.join(task.fields)})"
        ) from None
    if not n or n == len(rows):
        return rows
    if n < len(rows):
        return random.Random(cfg.seed).sample(rows, n)
    return [rows[i % len(rows)] for i in range(n)]


def _fmt(results: dict[str, dict[str, Any]]) -> str:
    return "  ".join(f"{k} {100 * v['accuracy']:.0f}%" for k, v in results.items())


def _last_loss(history: list[dict], default: float) -> float:
    """The last logged training loss (the run's mean loss if none was logged)."""
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else default
