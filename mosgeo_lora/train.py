"""Fine-tune a causal LM with MoSELoRA or a PEFT baseline, with the HF ``Trainer`` (no subclass).

``finetune(FinetuneConfig(...))`` does everything the ``mosgeo-lora finetune`` command does:
validate every input before the model is loaded, build the data, wrap the model, train
(resumable from the last checkpoint; DDP under ``torchrun``), save the adapter and write
``metrics.json``, ``train_log.jsonl``, ``routing_stats.json`` and the curvature plots.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as mdata
from .methods import Method, parse_method, peft_config
from .models import DEFAULT_MODEL, LoadedModel, load

__all__ = [
    "FinetuneConfig",
    "ConfigError",
    "finetune",
    "evaluate",
    "evaluate_adapter",
    "activated_parameters",
    "last_checkpoint",
]

MATH_DATA = "math"


class ConfigError(ValueError):
    """An invalid fine-tuning setting (reported before any model is loaded)."""


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the ``mosgeo-lora finetune`` flags)."""

    model: str = DEFAULT_MODEL
    data: str = MATH_DATA  # "math": the generated training mix; else a JSONL file
    method: str = "moselora"
    rank: int = 8
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    curvature_lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    output_dir: str = "runs/finetune"
    max_length: int = 128
    train_examples: int = 0  # 0: steps × batch × accumulation × processes (one epoch)
    eval_sets: tuple[str, ...] = ()  # () = every shipped set; ("none",) = no evaluation
    eval_limit: int = 0  # problems per set (0 = all)
    eval_before: bool = False
    eval_batch_size: int = 32
    save_steps: int = 0  # 0: steps // 2 (at least one checkpoint to resume from)
    logging_steps: int = 5
    resume: bool = False
    input_map: str | None = None  # MoSELoRA only: "stereographic" | "lift"
    aux_loss_coef: float | None = None  # MoSELoRA only
    disable_tqdm: bool = False
    extra: dict = field(default_factory=dict)  # free-form, copied to metrics.json

    def validate(self) -> Method:
        method = parse_method(self.method, self.rank)
        for name in ("rank", "steps", "batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "curvature_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.eval_limit < 0:
            raise ConfigError("weight_decay, warmup_steps and eval_limit must be >= 0")
        if not method.is_moselora and (self.input_map or self.aux_loss_coef is not None):
            raise ConfigError(f"input_map / aux_loss_coef apply to MoSELoRA, not {self.method}")
        if self.input_map not in (None, "stereographic", "lift"):
            raise ConfigError(
                f"input_map must be 'stereographic' or 'lift', not {self.input_map!r}"
            )
        unknown = [s for s in self.eval_sets if s not in (*mdata.EVAL_SETS, "none")]
        if unknown:
            shipped = ", ".join(mdata.EVAL_SETS)
            raise ConfigError(f"unknown eval set(s) {unknown}; shipped: {shipped}")
        if self.data != MATH_DATA and not Path(self.data).is_file():
            raise ConfigError(f"data file not found: {self.data} (or use --data {MATH_DATA})")
        return method

    def moselora_overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.input_map is not None:
            out["input_map"] = self.input_map
        if self.aux_loss_coef is not None:
            out["aux_loss_coef"] = self.aux_loss_coef
        return out


# --------------------------------------------------------------------------- distributed
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


# --------------------------------------------------------------------------- data
def _examples(cfg: FinetuneConfig, n: int) -> list[mdata.Example]:
    if cfg.data == MATH_DATA:
        return mdata.training_examples(n, seed=cfg.seed)
    examples = mdata.load_jsonl(cfg.data)
    if len(examples) < n:  # cycle a small user file to fill the requested steps
        examples = [examples[i % len(examples)] for i in range(n)]
    return examples


def _eval_examples(cfg: FinetuneConfig) -> dict[str, list[mdata.Example]]:
    if cfg.eval_sets == ("none",):
        return {}
    sets = mdata.eval_sets(list(cfg.eval_sets) or None)
    if cfg.eval_limit:
        sets = {k: v[: cfg.eval_limit] for k, v in sets.items()}
    return sets


# --------------------------------------------------------------------------- evaluation
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


def _accuracies(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {k: v["accuracy"] for k, v in results.items()}


def evaluate_adapter(
    adapter: str | None,
    model: str | None = None,
    eval_sets: Sequence[str] = (),
    eval_limit: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score a saved adapter folder (or, with ``adapter=None``, the base model)."""
    import mosgeo_lora  # noqa: F401 - registers MOSELORA with PEFT before loading

    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not a saved adapter (no adapter_config.json)")
    if model is None:
        model = _run_model(adapter) if adapter else DEFAULT_MODEL
    cfg = FinetuneConfig(model=model, eval_sets=tuple(eval_sets), eval_limit=eval_limit)
    cfg.validate()
    sets = _eval_examples(cfg)
    loaded = load(model)
    net = loaded.model
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    results = evaluate(net, loaded.tokenizer, sets, batch_size=batch_size)
    return {"model": model, "adapter": adapter, "eval": results, "accuracy": _accuracies(results)}


def _run_model(adapter: str) -> str:
    """The ``--model`` a run used, from ``run_config.json`` beside its adapter folder."""
    for folder in (Path(adapter), Path(adapter).parent):
        f = folder / "run_config.json"
        if f.is_file():
            return json.loads(f.read_text())["model"]
    return DEFAULT_MODEL


# --------------------------------------------------------------------------- parameters
def activated_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, activated per token) adapter parameters.

    For MoSELoRA only ``top_k`` of the ``N`` up-projections act on a token, so activated =
    A + router + κ + (top_k / N)·B; for LoRA-family adapters every trainable weight acts.
    """
    from .layer import MoSELoraLayer

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activated = trainable
    for module in model.modules():
        if isinstance(module, MoSELoraLayer):
            for name, b in module.moselora_B.items():
                n, k = module.settings[name]["num_experts"], module.settings[name]["top_k"]
                if b.weight.requires_grad:
                    activated -= round(b.weight.numel() * (1 - k / n))
    return trainable, activated


# --------------------------------------------------------------------------- callbacks
def _callbacks_module():
    from transformers import TrainerCallback

    class StepStats(TrainerCallback):
        """Wall time per optimizer step and peak resident memory during training."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            _reset_peak_rss()

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)

    class JsonlLog(TrainerCallback):
        """Append every Trainer log entry to ``train_log.jsonl`` as it happens."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and state.is_world_process_zero:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    class AdaLoraAllocator(TrainerCallback):
        """AdaLoRA's rank allocation, after each optimizer step (gradients still present)."""

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            base = model.base_model if hasattr(model, "base_model") else model
            base.update_and_allocate(state.global_step)

    class CheckpointCurvatures(TrainerCallback):
        """Keep the κ/load history in each checkpoint, so a resumed run plots all of it."""

        def __init__(self, curvature_cb) -> None:
            self.cb = curvature_cb

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or not self.cb.history:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            plot, self.cb.plot = self.cb.plot, False
            try:
                self.cb.save(ckpt)
            finally:
                self.cb.plot = plot

    return StepStats, JsonlLog, AdaLoraAllocator, CheckpointCurvatures


def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets VmHWM, so the peak excludes model loading
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


# --------------------------------------------------------------------------- the run
def _training_args(cfg: FinetuneConfig, out: Path):
    from transformers import TrainingArguments

    save_steps = cfg.save_steps or max(1, cfg.steps // 2)
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        logging_steps=min(cfg.logging_steps, cfg.steps),
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

    from .callbacks import CurvatureCallback
    from .optim import param_groups

    method = cfg.validate()
    rank, world = _world()
    out = Path(cfg.output_dir)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in {out} to resume from")
    n_train = cfg.train_examples or cfg.steps * cfg.batch_size * cfg.grad_accum * world
    examples = _examples(cfg, n_train)  # DataError on a bad JSONL, before loading the model
    eval_sets = _eval_examples(cfg)
    after_sets = {**eval_sets, **(extra_eval or {})}

    if loaded is None:
        loaded = load(cfg.model)
    tok = loaded.tokenizer
    mdata.check_fits(tok, examples, cfg.max_length)  # DataError names the too-long example
    train_set = [mdata.tokenize_example(tok, ex, cfg.max_length) for ex in examples]

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

    if method.is_moselora:
        import mosgeo_lora  # noqa: F401 - PEFT learns MOSELORA on import
    config = peft_config(method, loaded.model, cfg.steps, **cfg.moselora_overrides())
    model = get_peft_model(loaded.model, config)
    trainable, activated = activated_parameters(model)
    _say(
        f"{cfg.method} on {loaded.name} ({loaded.source}): {trainable:,} trainable, "
        f"{activated:,} activated per token; {len(train_set)} training examples"
    )

    before = None
    if cfg.eval_before and eval_sets and rank == 0:
        before = evaluate(model, tok, eval_sets, batch_size=cfg.eval_batch_size)
        _say(f"before: {_fmt(before)}")

    groups = param_groups(model, cfg.lr, cfg.curvature_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    StepStats, JsonlLog, AdaLoraAllocator, CheckpointCurvatures = _callbacks_module()
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
        args=_training_args(cfg, out),
        train_dataset=train_set,
        data_collator=mdata.CausalLMCollator(tok),
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
        "config": asdict(cfg),
        "world_size": world,
        "trainable_parameters": trainable,
        "activated_parameters": activated,
        "train_loss": result.training_loss,
        "final_loss": _last_loss(trainer.state.log_history, result.training_loss),
        "steps": trainer.state.global_step,
        "resumed_from": str(resume_from) if resume_from else None,
        "step_time_s": statistics.median(stats.times[1:] or stats.times) if stats.times else None,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if rank != 0:
        return metrics
    trainer.save_model(str(out / "adapter"))
    (out / "adapter" / "run_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    files = {"adapter": str(out / "adapter"), "log": str(out / "train_log.jsonl")}
    if curv is not None:
        from .stats import curvatures

        metrics["curvatures"] = curvatures(model)
        routing = _routing_summary(curv.history)
        (out / "routing_stats.json").write_text(json.dumps(routing, indent=1))
        files["routing_stats"] = str(out / "routing_stats.json")
        files.update({p.stem: str(p) for p in curv.files})
    if after_sets:
        after = evaluate(model, tok, after_sets, batch_size=cfg.eval_batch_size)
        metrics["eval"] = after
        metrics["accuracy"] = _accuracies(after)
        _say(f"after:  {_fmt(after)}")
        if before is not None:
            metrics["eval_before"] = before
            metrics["accuracy_before"] = _accuracies(before)
    metrics["files"] = files
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _fmt(results: dict[str, dict[str, Any]]) -> str:
    return "  ".join(f"{k} {100 * v['accuracy']:.0f}%" for k, v in results.items())


def _last_loss(history: list[dict], default: float) -> float:
    """The last logged training loss (the run's mean loss if none was logged)."""
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else default
