"""Run settings of the ``mosgeo-lora`` application, as dataclasses the command line reads.

:class:`FinetuneConfig` holds one fine-tuning run (the ``finetune`` flags),
:class:`CompareConfig` a grid of runs (the ``compare`` flags). The CLI takes every default
from these fields, so a default lives in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mosgeo_lora.config import check_input_scale
from mosgeo_lora.constants import INPUT_MAPS

from . import data as mdata
from . import tasks as mtasks
from .base_models import DEFAULT_MODEL
from .methods import Method, parse_method

__all__ = [
    "MATH_DATA",
    "PAPER_MIX",
    "PAPER_MIX_SIZE",
    "OPTIMIZER_GROUPS",
    "TABLE4",
    "RECIPES",
    "ConfigError",
    "FinetuneConfig",
    "CompareConfig",
    "apply_recipe",
]

#: ``--data math``: the generated training mix (:func:`.data.training_examples`).
MATH_DATA = "math"
#: ``--data paper-mix``: the paper's training mix of GSM8K, MAWPS, SVAMP and AQuA
#: (:func:`.tasks.training_mix`, read from the hub: the smaller sets whole, AQuA sampled for
#: the rest), each row as its task's prompt and target.
PAPER_MIX = "paper-mix"
#: The size of the paper's training mix, used when ``train_examples`` is 0.
PAPER_MIX_SIZE = 13262
#: ``--optimizer-groups``: ``"sep"`` (κ in its own group with ``--curvature-lr``, no weight
#: decay) or ``"uni"`` (one group, the paper's Table 2 ablation); see
#: :func:`mosgeo_lora.optim.param_groups`.
OPTIMIZER_GROUPS = ("sep", "uni")

#: The paper's Table 4 (hyperparameters of every run, both task families), as
#: :class:`FinetuneConfig` fields. The optimizer (AdamW) is the only one this application
#: uses, and the target modules (``gate_proj``, ``down_proj``, ``up_proj``) are the FFN
#: targets every method adapts on Qwen2 (:data:`mosgeo_lora.constants.FFN_TARGET_MODULES`).
TABLE4: dict[str, Any] = {
    "model": "Qwen/Qwen2-1.5B",
    "epochs": 3.0,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "lr": 3e-4,
}

#: ``--recipe NAME``: presets of :class:`FinetuneConfig` fields. Both hold :data:`TABLE4`;
#: ``paper-math`` also trains on the paper's mix (``data = "paper-mix"``) with room for worked
#: solutions (``max_length`` 1024, ``truncate``), ``paper-nlu`` lengthens ``max_length`` to
#: 256 tokens (GLUE sentence pairs); Table 4 gives none of these.
#: A flag given on the command line overrides a preset's value.
RECIPES: dict[str, dict[str, Any]] = {
    "paper-math": {**TABLE4, "data": PAPER_MIX, "max_length": 1024, "truncate": True},
    "paper-nlu": {**TABLE4, "max_length": 256},
}


class ConfigError(ValueError):
    """An invalid fine-tuning setting (reported before any model is loaded)."""


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the ``mosgeo-lora finetune`` flags)."""

    #: ``--model``: the base model (see :func:`~mosgeo_lora.finetune.base_models.load`).
    model: str = DEFAULT_MODEL
    #: ``--data``: ``"math"`` (the generated training mix), ``"paper-mix"`` (the paper's,
    #: :data:`PAPER_MIX`) or a question/answer JSONL file;
    #: with a classification task (``--task cola``), a file of training rows in the task's
    #: schema, ``"math"`` standing for the task's training split on the hub.
    data: str = MATH_DATA
    #: ``--method``: a MoSELoRA preset or a PEFT baseline
    #: (:data:`~mosgeo_lora.finetune.methods.METHODS`).
    method: str = "moselora"
    #: ``--rank``: adapter rank r (``lora-rN`` names override it).
    rank: int = 8
    #: ``--steps``: optimizer steps (unless ``epochs`` is set).
    steps: int = 100
    #: ``--epochs``: train for this many passes over the training set instead of ``steps``
    #: (0: use ``steps``); the steps are then counted as the Trainer counts epochs
    #: (:meth:`total_steps`). The command line refuses ``--steps`` with ``--epochs``.
    epochs: float = 0.0
    #: ``--batch-size``: sequences per process and micro-batch.
    batch_size: int = 8
    #: ``--grad-accum``: micro-batches per optimizer step.
    grad_accum: int = 1
    #: ``--lr``: learning rate of the adapter weights.
    lr: float = 1e-3
    #: ``--curvature-lr``: learning rate of the curvatures κ (their own group). A method tag
    #: (``moselora@klr=X``) overrides it for that method (:meth:`curvature_learning_rate`).
    curvature_lr: float = 1e-2
    #: ``--weight-decay``: AdamW weight decay (never on κ).
    weight_decay: float = 0.0
    #: ``--warmup-steps``: linear warm-up, then linear decay.
    warmup_steps: int = 0
    #: ``--warmup-ratio``: warm-up as a share of the run's steps, ⌈ratio × steps⌉ (0: use
    #: ``warmup_steps``; setting both is an error).
    warmup_ratio: float = 0.0
    #: ``--optimizer-groups``: ``"sep"`` or ``"uni"`` (:data:`OPTIMIZER_GROUPS`); with
    #: ``"uni"`` κ trains with ``lr`` and ``curvature_lr`` is not used. A method tag
    #: (``moselora@uni``, ``moselora@sep``) overrides it for that method
    #: (:meth:`optimizer_grouping`).
    optimizer_groups: str = "sep"
    #: ``--bf16``: bfloat16 mixed precision (the Trainer's ``bf16``; autocast on the CPU).
    bf16: bool = False
    #: ``--seed``: the data, the adapter's initialisation and the Trainer's seed.
    seed: int = 0
    #: ``--output-dir``: where the adapter, logs, metrics and checkpoints go.
    output_dir: str = "runs/finetune"
    #: ``--max-length``: longest prompt + answer in tokens; a longer example is an error
    #: unless ``truncate``.
    max_length: int = 128
    #: ``--truncate``: cut an over-long example to ``max_length`` instead of stopping: a
    #: prompt loses its first tokens (the BOS and the whole answer are kept; an answer that
    #: alone does not fit is still an error), a classified text its last tokens.
    truncate: bool = False
    #: ``--recipe``: the preset (:data:`RECIPES`) these settings started from, or ``""``.
    recipe: str = ""
    #: ``--train-examples``: problems to draw; 0 = steps × batch × accumulation ×
    #: processes (one epoch).
    train_examples: int = 0
    #: ``--eval-sets``: test sets to score; ``()`` every shipped set (none when ``tasks``
    #: are given), ``("none",)`` none.
    eval_sets: tuple[str, ...] = ()
    #: ``--task``: benchmark tasks scored after training: ``NAME`` (its evaluation split on
    #: the hub) or ``NAME=PATH`` (a local file in the hub dataset's schema); see
    #: :data:`~mosgeo_lora.finetune.tasks.TASKS`.
    tasks: tuple[str, ...] = ()
    #: ``--eval-limit``: problems per test set; 0 = all.
    eval_limit: int = 0
    #: ``--eval-before``: also score the model before training.
    eval_before: bool = False
    #: Prompts per generation batch when scoring.
    eval_batch_size: int = 32
    #: MoSELoRA: the boundary share (:func:`~mosgeo_lora.finetune.dynamics.boundary_share`)
    #: is measured at the start and end of the run on the first this many prompts of every
    #: frozen test set (0: not measured).
    boundary_prompts: int = 8
    #: ``--save-steps``: checkpoint interval; 0 = steps // 2 (one checkpoint to resume).
    save_steps: int = 0
    #: ``--logging-steps``: log (and record κ) every this many steps.
    logging_steps: int = 5
    #: ``--resume``: continue from the newest checkpoint in ``output_dir``.
    resume: bool = False
    #: ``--input-map`` (MoSELoRA only): ``"stereographic"`` or ``"lift"``; ``None``: the
    #: config's.
    input_map: str | None = None
    #: ``--aux-loss-coef`` (MoSELoRA only); ``None``: the config's.
    aux_loss_coef: float | None = None
    #: ``--input-scale`` (MoSELoRA only): a learnable input scale per layer starting at
    #: ``"sqrt_d_in"`` (``√d_in``) or at a positive number; ``None``: none (the config's
    #: default). A method tag (``moselora@scale``, ``moselora@scale=2``) overrides it.
    input_scale: float | str | None = None
    #: ``--no-progress``: no progress bar.
    disable_tqdm: bool = False
    #: ``--compile``: train a ``torch.compile`` version of the model (the Trainer's
    #: ``torch_compile``);
    #: a backend name (``"inductor"``, ``"aot_eager"``, …), or ``""`` for eager.
    compile: str = ""
    #: Free-form notes, copied into ``metrics.json``.
    extra: dict = field(default_factory=dict)

    def validate(self) -> Method:
        """Check every setting before anything is loaded; returns the parsed method.

        Raises:
            ConfigError: a setting is out of range or names something that does not exist.
            MethodError: the method name is unknown.
        """
        method = parse_method(self.method, self.rank)
        for name in ("rank", "steps", "batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "curvature_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if min(self.weight_decay, self.warmup_steps, self.eval_limit, self.boundary_prompts) < 0:
            raise ConfigError(
                "weight_decay, warmup_steps, eval_limit and boundary_prompts must be >= 0"
            )
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not (0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_ratio and self.warmup_steps:
            raise ConfigError(
                "give warmup_steps or warmup_ratio, not both "
                f"({self.warmup_steps} steps, ratio {self.warmup_ratio})"
            )
        if self.optimizer_groups not in OPTIMIZER_GROUPS:
            raise ConfigError(
                f"optimizer_groups must be one of {OPTIMIZER_GROUPS}, not {self.optimizer_groups!r}"
            )
        if method.curvature_lr is not None and self.optimizer_grouping() == "uni":
            raise ConfigError(
                f"{self.method}: with optimizer_groups 'uni' κ trains with lr; @klr does not apply"
            )
        if self.recipe and self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; recipes: {', '.join(RECIPES)}")
        if self.recipe == "paper-nlu" and self.classification_task() is None:
            raise ConfigError("--recipe paper-nlu trains a GLUE task: add --task cola or mrpc")
        generated = self.data == MATH_DATA and self.classification_task() is None
        if self.epochs and generated and not self.train_examples:
            raise ConfigError(
                "epochs of generated problems need a training-set size: give train_examples "
                "(--train-examples N), or steps instead of epochs"
            )
        moselora_only = (self.input_map, self.aux_loss_coef, self.input_scale)
        if not method.is_moselora and any(v is not None for v in moselora_only):
            raise ConfigError(
                f"input_map / aux_loss_coef / input_scale apply to MoSELoRA, not {self.method}"
            )
        try:
            check_input_scale(self.input_scale)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.input_map is not None and self.input_map not in INPUT_MAPS:
            raise ConfigError(f"input_map must be one of {INPUT_MAPS}, not {self.input_map!r}")
        unknown = [s for s in self.eval_sets if s not in (*mdata.EVAL_SETS, "none")]
        if unknown:
            shipped = ", ".join(mdata.EVAL_SETS)
            raise ConfigError(f"unknown eval set(s) {unknown}; shipped: {shipped}")
        for spec in self.tasks:
            try:
                mtasks.parse_task_spec(spec)
            except mtasks.TaskError as e:
                raise ConfigError(str(e)) from None
        if self.data not in (MATH_DATA, PAPER_MIX) and not Path(self.data).is_file():
            raise ConfigError(
                f"data file not found: {self.data} (or use --data {MATH_DATA} or {PAPER_MIX})"
            )
        if self.data == PAPER_MIX and self.classification_task() is not None:
            raise ConfigError(
                f"--data {PAPER_MIX} is math; a classification task trains on its own"
            )
        return method

    def classification_task(self) -> mtasks.Task | None:
        """The task of ``tasks`` trained as a sequence classifier (CoLA, MRPC), or ``None``:
        then the run trains a causal LM. Unknown task names are left to :meth:`validate`."""
        for spec in self.tasks:
            try:
                task = mtasks.get_task(spec.partition("=")[0])
            except mtasks.TaskError:
                continue
            if task.classifies:
                return task
        return None

    def check_classifier_run(self) -> mtasks.Task | None:
        """The task a fine-tuning run trains as a sequence classifier (:meth:`classification_task`),
        after checking that the run can be one: that task is its only task, and no generated
        math set is to be scored (``eval`` may still score such a task by generation).

        Raises:
            ConfigError: a classification task with another task, or with ``eval_sets``.
        """
        classified = self.classification_task()
        if classified is not None and len(self.tasks) > 1:
            raise ConfigError(
                f"{classified.name} trains a sequence classifier with its own head: give it "
                f"as the only --task of the run, not with {len(self.tasks) - 1} other(s)"
            )
        if classified is not None and self.eval_sets not in ((), ("none",)):
            raise ConfigError(
                f"a {classified.name} run is a sequence classifier: it scores its task, not "
                "the generated math sets (--eval-sets)"
            )
        return classified

    def moselora_overrides(self) -> dict[str, Any]:
        """The ``MoSELoraConfig`` fields this run sets (``--input-map``, ``--aux-loss-coef``,
        ``--input-scale``; a method tag such as ``@scale`` is applied over them by
        :func:`~mosgeo_lora.finetune.methods.peft_config`)."""
        out: dict[str, Any] = {}
        if self.input_map is not None:
            out["input_map"] = self.input_map
        if self.aux_loss_coef is not None:
            out["aux_loss_coef"] = self.aux_loss_coef
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale
        return out

    def optimizer_grouping(self) -> str:
        """The run's optimizer grouping, ``"sep"`` or ``"uni"``: the method's tag
        (``moselora@uni``) if it has one, else ``optimizer_groups``."""
        return parse_method(self.method, self.rank).optimizer_groups or self.optimizer_groups

    def curvature_learning_rate(self) -> float:
        """The run's κ learning rate: the method's tag (``moselora@klr=X``) if it has one,
        else ``curvature_lr``."""
        return parse_method(self.method, self.rank).curvature_lr or self.curvature_lr

    def total_steps(self, n_examples: int, world_size: int = 1) -> int:
        """The optimizer steps of the run: ``steps``, or with ``epochs`` the Trainer's count,
        ``ceil(epochs * max(1, b // grad_accum))`` with ``b = ceil(n_examples / (batch_size *
        world_size))`` batches per process and epoch (the last one may be short)."""
        if not self.epochs:
            return self.steps
        batches = math.ceil(n_examples / (self.batch_size * world_size))
        return math.ceil(self.epochs * max(1, batches // self.grad_accum))

    def total_warmup(self, total_steps: int) -> int:
        """The warm-up steps: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)``."""
        if self.warmup_ratio:
            return math.ceil(self.warmup_ratio * total_steps)
        return self.warmup_steps


def apply_recipe(cfg: FinetuneConfig, name: str, keep: Iterable[str] = ()) -> FinetuneConfig:
    """``cfg`` with the values of recipe ``name`` (:data:`RECIPES`), except the fields named
    in ``keep`` (those given explicitly: they override the preset), and ``recipe = name``.

    A preset's ``epochs`` gives way to an explicit ``steps``, and its ``warmup_ratio`` to an
    explicit ``warmup_steps``.

    Raises:
        ConfigError: no such recipe.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    keep = set(keep)
    values = {k: v for k, v in RECIPES[name].items() if k not in keep}
    if "steps" in keep:
        values.pop("epochs", None)
    if "warmup_steps" in keep:
        values.pop("warmup_ratio", None)
    return replace(cfg, **values, recipe=name)


#: The validation scores a grid's learning rate can be chosen on (``CompareConfig.select_on``).
SELECT_ON = ("nll", "accuracy")


@dataclass
class CompareConfig:
    """A grid of runs: methods × learning rates × seeds, each a :class:`FinetuneConfig`
    built from ``base`` (the ``mosgeo-lora compare`` flags)."""

    #: ``--methods``: the methods compared.
    methods: tuple[str, ...] = ("moselora", "hydralora", "lora", "lora-r22")
    #: ``--lrs``: learning rates swept per method (chosen on the validation set).
    lrs: tuple[float, ...] = (5e-4, 1e-3, 2e-3)
    #: ``--seeds``: seeds per cell; the table reports mean ± sd over them. Runs with the same
    #: seed see the same training problems in the same order, whatever the method, so seeds
    #: pair across methods.
    seeds: tuple[int, ...] = (0, 1, 2)
    #: ``--tune-seeds``: the seeds every learning rate runs with; each other seed runs only at
    #: the learning rate each method chose on the validation set of these (``()``: every seed
    #: at every learning rate). A subset of ``seeds``.
    tune_seeds: tuple[int, ...] = ()
    #: ``--baselines``: each method is compared, problem by problem and seed by seed, with
    #: each of these (a paired difference with a bootstrap confidence interval); ``()``:
    #: every other method.
    baselines: tuple[str, ...] = ()
    #: ``--bootstrap``: resamples of the paired bootstrap (0: no confidence intervals).
    bootstrap: int = 2000
    #: ``--select-on``: the validation score a method's learning rate is chosen on:
    #: ``"nll"`` (the answer NLL, lowest wins: a continuous score of every problem, far less
    #: noisy than exact match) or ``"accuracy"`` (exact match, highest wins). Runs that did
    #: not score the validation NLL are chosen on exact match.
    select_on: str = "nll"
    #: ``--validation-per-module``: validation problems per training module.
    validation_per_module: int = 20
    #: ``--output-dir``: one folder per run below it, and ``compare.{md,json}``.
    output_dir: str = "runs/compare"
    #: Every other setting of each run.
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
