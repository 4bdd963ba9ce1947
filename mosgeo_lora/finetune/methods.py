"""Fine-tuning methods by name: MoSELoRA presets, PEFT's LoRA family and the paper's other
baselines, on the same FFN targets.

Every row of the paper's Table 1/3 is one name away:

* ``moselora``: 3 hyperbolic + 3 spherical + 2 Euclidean experts, top-4 (the paper's);
* ``moselora-h`` / ``moselora-s`` / ``moselora-e``: one space only;
* ``hydralora``: shared A, 8 Euclidean B heads, dense softmax router on the layer input
  ``x`` (``W_g`` is ``8 × d_in``), as HydraLoRA's code (the paper's 2.54 % activated
  parameters on Qwen2-1.5B); ``hydralora-code``: the same router on the low-rank code
  ``A x`` (``8 × r``, as the MoSELoRA presets; this library's ``hydralora`` before the
  option, 2.38 % on Qwen2-1.5B);
* ``lora``: PEFT LoRA; ``lora-r32`` etc. for another rank;
* ``dora``: PEFT DoRA (weight-decomposed LoRA); ``dora-r32`` etc.;
* ``adalora``: PEFT AdaLoRA, rank budget from ``init_r = 1.5 r`` down to ``r``;
* ``melora``: MELoRA, 8 mini LoRAs of rank ``r / 8`` on a block-diagonal ΔW (equivalent rank
  ``r``, the setting of MELoRA's own Llama-2 runs); ``melora-r32`` etc. (a multiple of 8);
* ``hmora``: HMoRA, 8 LoRA experts with a shared ``A``, hybrid token/task routing mixed by
  depth, the constrained GJS loss; the block's output projection (``down_proj``) gets a plain
  LoRA, as in HMoRA's training command;
* ``lora-rmatch:M``: LoRA whose rank makes its activated parameters per token nearest to
  method ``M``'s (at the run's ``--rank``) on the model being trained, e.g.
  ``lora-rmatch:moselora`` (rank 22 on SmolLM2-135M).

A MoSELoRA name may carry variant tags, ``NAME@TAG[@TAG]``, so that ``compare`` can pair
variants of one method in one grid (:data:`TAGS`); a tag overrides the run's flag:

* ``@uni`` / ``@sep``: the run's optimizer grouping (``--optimizer-groups``): ``moselora@uni``
  against ``moselora`` is the paper's Table 2 contrast, UNI vs SEP;
* ``@scale``: a learnable input scale starting at ``√d_in`` (``--input-scale sqrt_d_in``,
  :attr:`mosgeo_lora.MoSELoraConfig.input_scale`); ``@scale=X``: starting at ``X``;
* ``@klr=X``: the curvatures' learning rate ``X`` (``--curvature-lr``), e.g.
  ``moselora@klr=1e-2`` against ``moselora`` at ``--curvature-lr 5e-2``: issue 15's
  curvature-learning-rate A/B in one paired grid (not with ``@uni``, where κ trains with
  the adapter's learning rate);
* ``@flat``: the clipping control (:attr:`mosgeo_lora.MoSELoraConfig.flatten`): every κ
  fixed at 0, the hyperbolic experts' code still projected onto their initial ball, e.g.
  ``moselora@flat`` against ``moselora`` (curvature) and ``moselora-e`` (the clip); not with
  ``@scale`` or ``@klr``, and only for a preset with hyperbolic experts.

All methods adapt the feed-forward projections
(:data:`mosgeo_lora.constants.FFN_TARGET_MODULES`) and use ``alpha = 2 r``. MELoRA and HMoRA
are PEFT tuners of the application (:mod:`mosgeo_lora.finetune.baselines`, registered with
PEFT when this module is imported).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from mosgeo_lora.constants import PRESETS, SQRT_D_IN, preset_mix, task_type_of
from mosgeo_lora.constants import ffn_targets as _ffn_targets

from . import baselines

__all__ = [
    "METHODS",
    "TAGS",
    "HYDRALORA_CODE",
    "MELORA_MINI",
    "MethodError",
    "Method",
    "parse_method",
    "peft_config",
    "ffn_targets",
    "model_task_type",
    "activated_parameters",
    "matched_rank",
]

#: Every method name (plus ``lora-rN`` / ``dora-rN`` / ``melora-rN`` for another rank and
#: ``lora-rmatch:M`` for LoRA matched to method ``M``).
METHODS = (*PRESETS, "hydralora-code", "lora", "dora", "adalora", "melora", "hmora")
#: ``hydralora`` with its router on the code ``A x`` (``router_input="code"``).
HYDRALORA_CODE = "hydralora-code"
#: The number of mini LoRAs of ``melora`` (the rank must be a multiple of it).
MELORA_MINI = 8
_RANKED = re.compile(r"^(lora|dora|melora)-r(\d+)$")
_RMATCH = "lora-rmatch:"
#: The variant tags of a MoSELoRA name (``moselora@uni``, ``moselora@scale=2``,
#: ``moselora@klr=1e-2``): ``uni`` and ``sep`` set the optimizer grouping, ``scale`` /
#: ``scale=X`` the learnable input scale, ``klr=X`` the curvatures' learning rate, ``flat``
#: the clipping control (κ = 0, the hyperbolic experts' input projection kept).
TAGS = ("uni", "sep", "scale", "klr", "flat")


class MethodError(ValueError):
    """Unknown or inconsistent method name."""


@dataclass(frozen=True)
class Method:
    """A parsed method name: its family and rank."""

    #: As given, e.g. ``"lora-r32"``.
    name: str
    #: ``"moselora"`` (any preset), ``"lora"``, ``"dora"``, ``"adalora"``, ``"melora"`` or
    #: ``"hmora"``.
    family: str
    #: The adapter rank (for ``lora-rmatch:M``: the rank of ``M``; LoRA's is chosen to match).
    rank: int
    #: ``lora-rmatch:M``: the method ``M`` whose activated parameters LoRA's rank matches.
    match: str | None = None
    #: ``@uni`` / ``@sep``: the optimizer grouping of the run (``None``: the run's flag).
    optimizer_groups: str | None = None
    #: ``@scale`` (``"sqrt_d_in"``) / ``@scale=X`` (``X``): the learnable input scale's start
    #: (``None``: the run's flag).
    input_scale: float | str | None = None
    #: ``@klr=X``: the curvatures' learning rate (``None``: the run's ``--curvature-lr``).
    curvature_lr: float | None = None
    #: ``@flat``: the clipping control (``MoSELoraConfig(flatten=True)``).
    flatten: bool = False

    @property
    def is_moselora(self) -> bool:
        """Whether the method is one of the MoSELoRA presets."""
        return self.family == "moselora"


def parse_method(name: str, rank: int = 8) -> Method:
    """``"moselora"`` → Method(family="moselora", rank); ``"lora-r32"`` → rank 32;
    ``"lora-rmatch:moselora"`` → LoRA matched to MoSELoRA of rank ``rank``;
    ``"moselora@uni"`` → MoSELoRA trained with one optimizer group (:data:`TAGS`)."""
    if "@" in name:
        return _tagged(name, rank)
    if name in PRESETS or name == HYDRALORA_CODE:
        return Method(name, "moselora", rank)
    if name in ("lora", "dora", "adalora", "melora", "hmora"):
        return Method(name, name, rank)
    m = _RANKED.match(name)
    if m:
        return Method(name, m.group(1), int(m.group(2)))
    if name.startswith(_RMATCH):
        target = name.removeprefix(_RMATCH)
        if target.startswith(_RMATCH):
            raise MethodError(f"{name!r}: lora-rmatch matches a method, not another match")
        return Method(name, "lora", parse_method(target, rank).rank, match=target)
    raise MethodError(
        f"unknown method {name!r}; choose one of {', '.join(METHODS)} "
        "(or lora-rN / dora-rN / melora-rN for rank N, lora-rmatch:M for LoRA with the "
        "activated parameters of method M, NAME@uni / NAME@scale / NAME@klr=X / NAME@flat for a "
        "MoSELoRA variant)"
    )


def _tagged(name: str, rank: int) -> Method:
    """``NAME@TAG[@TAG…]``: the MoSELoRA method ``NAME`` with its variant tags applied."""
    base, *tags = name.split("@")
    method = parse_method(base, rank)
    if not method.is_moselora:
        raise MethodError(f"{name!r}: variant tags (@{', @'.join(TAGS)}) apply to MoSELoRA only")
    groups = scale = klr = None
    flat = False
    for tag in tags:
        key, eq, value = tag.partition("=")
        if key in ("uni", "sep") and not eq and groups is None:
            groups = key
        elif key == "scale" and scale is None:
            scale = SQRT_D_IN if not eq else _positive(value, name, key)
        elif key == "klr" and eq and klr is None:
            klr = _positive(value, name, key)
        elif key == "flat" and not eq and not flat:
            flat = True
        else:
            raise MethodError(
                f"{name!r}: unknown or repeated tag {tag!r}; tags: @uni or @sep (optimizer "
                "groups), @scale or @scale=X (learnable input scale from √d_in or X), "
                "@klr=X (the curvatures' learning rate), @flat (κ = 0, input clip kept)"
            )
    if klr is not None and groups == "uni":
        raise MethodError(f"{name!r}: with @uni κ trains with the adapter's learning rate: no @klr")
    if flat and (scale is not None or klr is not None):
        raise MethodError(f"{name!r}: @flat fixes every κ at 0 and keeps the clip: no @scale, @klr")
    if flat and not preset_mix(base if base in PRESETS else "hydralora", 8)[0]:
        raise MethodError(f"{name!r}: @flat keeps the hyperbolic experts' clip; {base} has none")
    return replace(
        method, name=name, optimizer_groups=groups, input_scale=scale, curvature_lr=klr,
        flatten=flat,
    )  # fmt: skip


def _positive(value: str, name: str, key: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise MethodError(f"{name!r}: @{key}=X needs a positive number, got {value!r}")
    return x


def ffn_targets(model: nn.Module) -> list[str] | str:
    """The feed-forward projections of ``model``'s architecture (raises :class:`MethodError`
    for an architecture the table does not know)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return _ffn_targets(model_type)
    except ValueError as e:
        raise MethodError(str(e)) from None


def model_task_type(model: nn.Module) -> str | None:
    """The PEFT ``task_type`` of ``model``'s class (``"CAUSAL_LM"``, ``"SEQ_CLS"``, …; see
    :func:`mosgeo_lora.constants.task_type_of`); :class:`MethodError` for an unknown head."""
    config = getattr(model, "config", None)
    try:
        return task_type_of(type(model).__name__, bool(getattr(config, "is_encoder_decoder", 0)))
    except ValueError as e:
        raise MethodError(str(e)) from None


def peft_config(method: Method, model: nn.Module, total_steps: int, **moselora_overrides):
    """The PEFT config of ``method`` for ``model`` (FFN targets, ``alpha = 2 r``, the task type
    of ``model``'s class: a sequence classifier's ``score`` head is then trained too).

    ``lora-rmatch:M`` builds ``M`` on a weightless copy of ``model`` to count its activated
    parameters (:func:`matched_rank`); ``model`` itself is not touched.
    """
    targets = ffn_targets(model)
    task_type = model_task_type(model)
    alpha = 2 * method.rank
    if method.is_moselora:
        from mosgeo_lora import MoSELoraConfig

        preset, routing = method.name.partition("@")[0], {}
        if preset == HYDRALORA_CODE:
            preset, routing = "hydralora", {"router_input": "code"}
        if method.input_scale is not None:  # the tag overrides the run's flag
            moselora_overrides = {**moselora_overrides, "input_scale": method.input_scale}
        if method.flatten:
            moselora_overrides = {**moselora_overrides, "flatten": True}
        return MoSELoraConfig(
            preset=preset,
            r=method.rank,
            alpha=alpha,
            target_modules=targets,
            task_type=task_type,
            **{**routing, **moselora_overrides},
        )
    if moselora_overrides:
        raise MethodError(
            f"options {sorted(moselora_overrides)} apply to MoSELoRA methods, not {method.name}"
        )
    from peft import AdaLoraConfig, LoraConfig

    if method.match is not None:
        rank = matched_rank(parse_method(method.match, method.rank), model)[0]
        return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type=task_type)
    if method.family in ("lora", "dora"):
        return LoraConfig(
            r=method.rank,
            lora_alpha=alpha,
            target_modules=targets,
            use_dora=method.family == "dora",
            task_type=task_type,
        )
    if method.family == "melora":
        if method.rank % MELORA_MINI:
            raise MethodError(
                f"{method.name} needs a rank divisible by {MELORA_MINI} (its {MELORA_MINI} mini "
                f"LoRAs have rank r / {MELORA_MINI}), got {method.rank}"
            )
        return baselines.MELoraConfig(
            r=method.rank,
            num_mini=MELORA_MINI,
            alpha=alpha,
            target_modules=targets,
            task_type=task_type,
        )
    if method.family == "hmora":
        # HMoRA's training command gives the block's output projection a plain LoRA; it is
        # the last name of every FFN_TARGET_MODULES list (a regex entry: experts everywhere)
        plain = [targets[-1]] if isinstance(targets, list) and len(targets) > 1 else None
        return baselines.HMoRAConfig(
            r=method.rank,
            alpha=alpha,
            target_modules=targets,
            lora_modules=plain,
            task_type=task_type,
        )
    # AdaLoRA prunes from init_r to target_r between tinit and total_step - tfinal; it needs
    # update_and_allocate() after every optimizer step (callbacks.AdaLoraAllocator)
    tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
    if total_steps <= tinit + tfinal:
        raise MethodError(f"adalora needs more than {tinit + tfinal} steps, got {total_steps}")
    return AdaLoraConfig(
        init_r=max(method.rank + 1, (3 * method.rank) // 2),
        target_r=method.rank,
        lora_alpha=alpha,
        target_modules=targets,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, total_steps // 20),
        task_type=task_type,
    )


def activated_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, activated per token) adapter parameters.

    For MoSELoRA only ``top_k`` of the ``N`` up-projections act on a token, so activated =
    A + router + κ + (top_k / N)·B; the router is ``N × r`` on the code or ``N × d_in`` on
    the input (``hydralora``: every B acts, and its router on ``x`` gives the paper's 2.54 %
    of Qwen2-1.5B). For HMoRA every expert acts (soft routing) but its task
    encoder runs once per sequence and is not counted, the paper's count
    (:func:`~mosgeo_lora.finetune.baselines.hmora.inactive_per_token`). For LoRA-family
    adapters and MELoRA every trainable weight acts.
    """
    from mosgeo_lora import MoSELoraLayer

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activated = trainable - baselines.hmora.inactive_per_token(model)
    for module in model.modules():
        if isinstance(module, MoSELoraLayer):
            for name, b in module.moselora_B.items():
                n, k = module.settings[name]["num_experts"], module.settings[name]["top_k"]
                if b.weight.requires_grad:
                    activated -= round(b.weight.numel() * (1 - k / n))
    return trainable, activated


def _weightless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s architecture on the meta device (no memory, no weights)."""
    try:
        with torch.device("meta"):
            return type(model)(copy.deepcopy(model.config))
    except Exception as e:  # an architecture that cannot be rebuilt from its config
        raise MethodError(
            f"lora-rmatch cannot rebuild {type(model).__name__} from its config to count a "
            f"method's parameters ({type(e).__name__}: {e})"
        ) from None


def matched_rank(target: Method, model: nn.Module) -> tuple[int, int, int]:
    """``(rank, lora_activated, target_activated)``: the LoRA rank (≥ 1) whose activated
    parameters per token on ``model``'s FFN targets are nearest to ``target``'s (the smaller
    rank on a tie); counted on weightless copies of ``model``, which is not touched."""
    from peft import get_peft_model

    if target.match is not None:
        raise MethodError("lora-rmatch matches a method, not another match")

    def activated(method: Method) -> int:
        copy_ = _weightless_copy(model)
        with torch.device("meta"):
            wrapped = get_peft_model(copy_, peft_config(method, copy_, total_steps=1000))
        return activated_parameters(wrapped)[1]

    goal = activated(target)
    per_rank = activated(Method("lora", "lora", 1))  # LoRA's count is linear in the rank
    low = max(1, goal // per_rank)
    rank = min((low, low + 1), key=lambda r: (abs(r * per_rank - goal), r))
    return rank, rank * per_rank, goal
