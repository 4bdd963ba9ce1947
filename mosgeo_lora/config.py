"""``MoSELoraConfig``: the PEFT config of the Mixture-of-Space LoRA adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from peft.config import PeftConfig

from .constants import (
    INPUT_MAPS,
    PRESETS,
    ROUTER_INPUTS,
    SQRT_D_IN,
    preset_mix,
    preset_router_input,
)
from .registry import MOSELORA

__all__ = ["MoSELoraConfig", "check_input_scale"]


def check_input_scale(value: object) -> float | str | None:
    """``input_scale`` checked: ``None``, ``"sqrt_d_in"`` or a positive finite number (as a
    float); anything else raises ``ValueError``."""
    if value is None or value == SQRT_D_IN:
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(
            f"input_scale must be None, {SQRT_D_IN!r} or a positive number, got {value!r}"
        )
    return float(value)


@dataclass
class MoSELoraConfig(PeftConfig):
    """Configuration of a MoSELoRA adapter (paper §4, ``docs/design.md`` §2).

    Each adapted linear layer gets a shared down-projection ``A`` (``r × d_in``),
    ``num_experts`` up-projections ``B_i`` (``d_out × r``), one curvature ``κ_i`` per expert
    and a router ``W_g``: ``num_experts × r`` on the low-rank code ``z = A x`` (the MoSELoRA
    presets), or ``num_experts × d_in`` on the layer input ``x`` (``hydralora``, as
    HydraLoRA's code; :attr:`router_input`).

    Every field is documented below; the ``help`` texts are PEFT's short forms of them.
    """

    #: The expert mix: ``"moselora"`` (the paper's: 3 hyperbolic, 3 spherical, the rest
    #: Euclidean), ``"moselora-h"`` / ``"moselora-s"`` / ``"moselora-e"`` (all experts of one
    #: space, Table 3), ``"hydralora"`` (Euclidean with κ fixed at 0, dense softmax routing).
    preset: str = field(default="moselora", metadata={"help": f"expert mix, one of {PRESETS}"})
    #: Rank of the shared down-projection ``A``.
    r: int = field(default=8, metadata={"help": "rank of the shared down-projection A"})
    #: ``N``, the number of experts.
    num_experts: int = field(default=8, metadata={"help": "number of experts N"})
    #: Experts per token (``None``: 4 for the MoSELoRA presets, ``N`` for hydralora). With
    #: ``top_k = 1`` the gate is the raw softmax probability.
    top_k: int | None = field(default=None, metadata={"help": "experts per token"})
    #: Experts initialised at ``hyperbolic_init`` (< 0); ``None``: the preset's.
    num_hyperbolic: int | None = field(default=None, metadata={"help": "experts with κ < 0"})
    #: Experts initialised at ``spherical_init`` (> 0); ``None``: the preset's. The
    #: remaining experts are Euclidean with κ fixed at 0.
    num_spherical: int | None = field(default=None, metadata={"help": "experts with κ > 0"})
    #: Initial κ of the hyperbolic experts (< 0).
    hyperbolic_init: float = field(default=-1.0, metadata={"help": "initial κ, hyperbolic"})
    #: Initial κ of the spherical experts (> 0).
    spherical_init: float = field(default=1.0, metadata={"help": "initial κ, spherical"})
    #: κ of the curved experts is an ``nn.Parameter``, free to cross 0.
    learn_curvature: bool = field(default=True, metadata={"help": "train κ of curved experts"})
    #: Optional ``(low, high)`` clamp of κ in the forward pass.
    curvature_bounds: tuple[float, float] | None = field(
        default=None, metadata={"help": "(low, high) clamp of κ in the forward pass"}
    )
    #: The adapter output is scaled by ``alpha / r``.
    alpha: float = field(default=16.0, metadata={"help": "output scaling is alpha / r"})
    #: Dropout on the layer input of the adapter branch.
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    #: ``"stereographic"`` (paper eq. 5, with the boundary projection) or ``"lift"``
    #: (``z`` itself as the space-like coordinate; an ablation).
    input_map: str = field(default="stereographic", metadata={"help": f"one of {INPUT_MAPS}"})
    #: A learnable input scale ``s`` per adapted layer (``docs/design.md`` §2.1, "The
    #: hyperbolic input map"): each expert reads ``z / s`` and its output is multiplied by
    #: ``s``, ``o_i(z) = s·õ_i(z / s)``. The curved experts' ball then has radius
    #: ``s/√|κ_i|`` in ``z`` (fewer tokens clipped onto its rim); the Euclidean experts and
    #: the router are unchanged, and so is every expert's output near the origin. Exactly
    #: the expert with curvature ``κ_i / s²`` (the κ-stereographic maps are homogeneous),
    #: which is how the fused path computes it. ``s = exp(ρ)`` with ``ρ`` trained
    #: (``moselora_log_scale``, in the curvatures' optimizer group). ``None`` (default): no
    #: scale, today's adapter; ``"sqrt_d_in"``: ``s`` starts at ``√d_in`` of each layer
    #: (HypLoRA's initialisation of its input scale); a positive number: ``s`` starts there.
    input_scale: Union[float, str, None] = field(
        default=None,
        metadata={"help": f"learnable input scale: None (off), {SQRT_D_IN!r} or its start"},
    )
    #: Issue 15's clipping control: the preset's mix with its geometry removed but the
    #: hyperbolic experts' input clipping kept. Every κ is fixed at 0 (as in
    #: ``moselora-e``), and the code of each of the ``num_hyperbolic`` experts is projected
    #: onto the ball it had at init, of radius ``(1 − ε)/√|hyperbolic_init|``, before the
    #: flat map (:meth:`input_balls`): such an expert sees only the direction of a long
    #: ``A x``, as a saturated hyperbolic expert does, with no curvature anywhere. Needs
    #: the stereographic input map and no input scale. ``False`` (default): off.
    flatten: bool = field(
        default=False,
        metadata={"help": "κ = 0, hyperbolic experts keep their input clip"},
    )
    #: What the router reads: ``"code"`` (the low-rank code ``z = A x``, ``W_g`` is
    #: ``N × r``: the paper's MoSELoRA) or ``"input"`` (the adapter's input ``x``, after
    #: ``dropout``; ``W_g`` is ``N × d_in``: HydraLoRA's own code, whose router reads ``x``).
    #: ``None``: the preset's, ``"input"`` for ``hydralora`` and ``"code"`` for the others.
    #: A config saved before this option existed (mosgeo-lora 0.1.x: its
    #: ``adapter_config.json`` has no ``router_input``) loads as ``"code"``, what it ran
    #: then, whatever its preset.
    router_input: str | None = field(
        default=None, metadata={"help": f"one of {ROUTER_INPUTS}; None: the preset's"}
    )
    #: Coefficient of the Switch load-balancing loss (0 disables it).
    aux_loss_coef: float = field(default=0.01, metadata={"help": "load-balancing coefficient"})
    #: The fused radial path (default) or the literal per-expert reference path.
    fused: bool = field(default=True, metadata={"help": "fused radial path (else reference)"})
    #: ``True``: Kaiming-uniform ``A`` and router, zero ``B`` (the identity at init).
    #: ``False``: random ``B`` too (a non-identity adapter, for tests).
    init_weights: bool = field(default=True, metadata={"help": "zero B: identity at init"})
    #: Module names or a regex, as in every PEFT tuner; ``None``: the feed-forward
    #: projections of the architecture (:data:`mosgeo_lora.constants.FFN_TARGET_MODULES`).
    target_modules: Union[list[str], str] | None = field(
        default=None, metadata={"help": "module names or regex; None: the FFN projections"}
    )
    #: Module names or a regex to leave alone (PEFT's meaning).
    exclude_modules: Union[list[str], str] | None = field(
        default=None, metadata={"help": "module names or regex to exclude"}
    )
    #: Layer indices to adapt (PEFT's meaning).
    layers_to_transform: Union[list[int], int] | None = field(
        default=None, metadata={"help": "layer indices to adapt"}
    )
    #: Name of the layer ``ModuleList`` (e.g. ``"layers"``, ``"h"``), with
    #: ``layers_to_transform``.
    layers_pattern: Union[list[str], str] | None = field(
        default=None, metadata={"help": "name of the layer ModuleList, e.g. 'layers' or 'h'"}
    )
    #: Extra modules trained and saved with the adapter (PEFT's meaning).
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "extra modules trained and saved with the adapter"}
    )
    #: Accepted for PEFT compatibility and ignored: the adapter reads the layer's
    #: input and adds to its output, so transformers' ``Conv1D`` needs no transpose.
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "weights stored (in, out), as transformers' Conv1D"}
    )

    def __post_init__(self) -> None:
        # a peft_version before PEFT's own __post_init__ fills it: read from a saved
        # adapter_config.json (whatever the loading path: PeftModel, PeftConfig, transformers)
        saved = self.peft_version is not None
        super().__post_init__()
        self.peft_type = MOSELORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.input_map not in INPUT_MAPS:
            raise ValueError(f"input_map must be one of {INPUT_MAPS}, got {self.input_map!r}")
        if self.router_input is None:
            # a saved config without the field predates it: it routed on the code
            self.router_input = "code" if saved else preset_router_input(self.preset)
        if self.router_input not in ROUTER_INPUTS:
            raise ValueError(
                f"router_input must be one of {ROUTER_INPUTS}, got {self.router_input!r}"
            )
        for name in ("r", "num_experts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        n = self.num_experts
        defaults = preset_mix(self.preset, n)
        if self.num_hyperbolic is None:
            self.num_hyperbolic = defaults[0]
        if self.num_spherical is None:
            self.num_spherical = defaults[1]
        if self.top_k is None:
            self.top_k = defaults[2]
        if self.preset == "hydralora" and (self.num_hyperbolic or self.num_spherical):
            raise ValueError("the hydralora preset has Euclidean experts only")
        if min(self.num_hyperbolic, self.num_spherical) < 0 or (
            self.num_hyperbolic + self.num_spherical > n
        ):
            raise ValueError(
                f"num_hyperbolic ({self.num_hyperbolic}) + num_spherical ({self.num_spherical}) "
                f"must be between 0 and num_experts ({n})"
            )
        if not 1 <= self.top_k <= n:
            raise ValueError(f"top_k must be in [1, num_experts={n}], got {self.top_k}")
        if not self.hyperbolic_init < 0 < self.spherical_init:
            raise ValueError("hyperbolic_init must be < 0 and spherical_init > 0")
        if self.curvature_bounds is not None:
            lo, hi = self.curvature_bounds
            if not lo < hi:
                raise ValueError(
                    f"curvature_bounds must be (low, high) with low < high, got {(lo, hi)}"
                )
            self.curvature_bounds = (float(lo), float(hi))
        self.input_scale = check_input_scale(self.input_scale)
        if self.flatten and (self.input_map != "stereographic" or self.input_scale is not None):
            raise ValueError(
                "flatten keeps the hyperbolic experts' input projection: it needs "
                "input_map='stereographic' and no input_scale"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("`layers_pattern` needs `layers_to_transform`.")

    @classmethod
    def check_kwargs(cls, **kwargs):
        """PEFT's hook on the fields read from a saved ``adapter_config.json``: one without
        ``router_input`` was saved before the option existed and routed on the code (also
        where the file has no ``peft_version``, which :meth:`__post_init__` relies on)."""
        kwargs = super().check_kwargs(**kwargs)
        if kwargs.get("router_input") is None:
            kwargs["router_input"] = "code"
        return kwargs

    @property
    def scaling(self) -> float:
        """The output scale ``alpha / r``."""
        return self.alpha / self.r

    def initial_input_scale(self, in_features: int) -> float | None:
        """The start of the learnable input scale ``s`` of a layer with ``in_features``
        inputs (:attr:`input_scale`), or ``None`` when there is none."""
        if self.input_scale is None:
            return None
        if self.input_scale == SQRT_D_IN:
            return math.sqrt(in_features)
        return float(self.input_scale)

    def initial_curvatures(self) -> list[float]:
        """κ of the experts at init: hyperbolic first, then spherical, then Euclidean (0);
        all 0 with :attr:`flatten`."""
        if self.flatten:
            return [0.0] * self.num_experts
        n_h, n_s = self.num_hyperbolic, self.num_spherical
        n_e = self.num_experts - n_h - n_s
        return [self.hyperbolic_init] * n_h + [self.spherical_init] * n_s + [0.0] * n_e

    def curved_mask(self) -> list[float]:
        """1 for experts whose κ is learnable (curved and ``learn_curvature``), else 0."""
        n_c = self.num_hyperbolic + self.num_spherical
        on = 1.0 if self.learn_curvature and self.preset != "hydralora" else 0.0
        if self.flatten:
            on = 0.0
        return [on] * n_c + [0.0] * (self.num_experts - n_c)

    def input_balls(self) -> tuple[float, ...] | None:
        """Per expert, ``|κ|`` of the ball its code is projected onto besides its own
        (:func:`mosgeo.radial.inverse_radius2`; 0: none), or ``None`` where no expert has
        one: with :attr:`flatten`, ``|hyperbolic_init|`` for the hyperbolic experts."""
        if not self.flatten or not self.num_hyperbolic:
            return None
        n_h = self.num_hyperbolic
        return (abs(self.hyperbolic_init),) * n_h + (0.0,) * (self.num_experts - n_h)
