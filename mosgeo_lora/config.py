"""``MoSELoraConfig``: the PEFT config of the Mixture-of-Space LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from peft.config import PeftConfig

from .constants import INPUT_MAPS, PRESETS, preset_mix
from .registry import MOSELORA

__all__ = ["MoSELoraConfig"]


@dataclass
class MoSELoraConfig(PeftConfig):
    """Configuration of a MoSELoRA adapter (paper §4, ``docs/design.md`` §2).

    Each adapted linear layer gets a shared down-projection ``A`` (``r × d_in``),
    ``num_experts`` up-projections ``B_i`` (``d_out × r``), one curvature ``κ_i`` per expert
    and a router ``W_g`` (``num_experts × r``) on the low-rank code ``z = A x``.

    Args:
        preset: the expert mix. ``"moselora"`` (paper default: ``num_hyperbolic`` = 3,
            ``num_spherical`` = 3, the rest Euclidean), ``"moselora-h"`` / ``"moselora-s"`` /
            ``"moselora-e"`` (all experts of one space, Table 3), ``"hydralora"`` (all
            Euclidean with κ fixed at 0, dense softmax routing, no top-k).
        r: rank of the shared down-projection.
        num_experts: ``N``.
        top_k: experts per token (``None``: 4 for the MoSELoRA presets, ``N`` for hydralora).
            With ``top_k = 1`` the gate is the raw softmax probability.
        num_hyperbolic, num_spherical: experts initialised at ``hyperbolic_init`` (< 0) and
            ``spherical_init`` (> 0); the remaining experts are Euclidean with κ fixed at 0.
            ``None``: taken from the preset.
        learn_curvature: κ of the curved experts is an ``nn.Parameter`` (free to cross 0).
        curvature_bounds: optional ``(low, high)`` clamp applied to κ in the forward pass.
        alpha: the adapter output is scaled by ``alpha / r``.
        dropout: dropout on the layer input of the adapter branch.
        input_map: ``"stereographic"`` (paper eq. 5, with the boundary projection) or
            ``"lift"`` (use ``z`` itself as the space-like coordinate; ablation).
        aux_loss_coef: coefficient of the Switch load-balancing loss (0 disables it).
        fused: use the fused radial path (default) or the literal per-expert reference path.
        init_weights: ``True``: Kaiming-uniform ``A``, zero ``B`` (the adapter is the
            identity at init), Kaiming-uniform router. ``False``: random ``B`` too
            (non-identity; tests).
        fan_in_fan_out: accepted for PEFT compatibility and ignored: the adapter reads the
            layer's input and adds to its output, never touching the base weight, so
            transformers' ``Conv1D`` (GPT-2) needs no transpose.
        target_modules: as in every PEFT tuner, and so are ``exclude_modules``,
            ``layers_to_transform``, ``layers_pattern`` and ``modules_to_save``.
            ``target_modules=None`` picks the FFN projections of the model's
            architecture (:data:`mosgeo_lora.constants.FFN_TARGET_MODULES`).
    """

    preset: str = field(default="moselora", metadata={"help": f"expert mix, one of {PRESETS}"})
    r: int = field(default=8, metadata={"help": "rank of the shared down-projection A"})
    num_experts: int = field(default=8, metadata={"help": "number of experts N"})
    top_k: int | None = field(default=None, metadata={"help": "experts per token"})
    num_hyperbolic: int | None = field(default=None, metadata={"help": "experts with κ < 0"})
    num_spherical: int | None = field(default=None, metadata={"help": "experts with κ > 0"})
    hyperbolic_init: float = field(default=-1.0, metadata={"help": "initial κ, hyperbolic"})
    spherical_init: float = field(default=1.0, metadata={"help": "initial κ, spherical"})
    learn_curvature: bool = field(default=True, metadata={"help": "train κ of curved experts"})
    curvature_bounds: tuple[float, float] | None = field(
        default=None, metadata={"help": "(low, high) clamp of κ in the forward pass"}
    )
    alpha: float = field(default=16.0, metadata={"help": "output scaling is alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    input_map: str = field(default="stereographic", metadata={"help": f"one of {INPUT_MAPS}"})
    aux_loss_coef: float = field(default=0.01, metadata={"help": "load-balancing coefficient"})
    fused: bool = field(default=True, metadata={"help": "fused radial path (else reference)"})
    init_weights: bool = field(default=True, metadata={"help": "zero B: identity at init"})
    target_modules: Union[list[str], str] | None = field(
        default=None, metadata={"help": "module names or regex; None: the FFN projections"}
    )
    exclude_modules: Union[list[str], str] | None = field(
        default=None, metadata={"help": "module names or regex to exclude"}
    )
    layers_to_transform: Union[list[int], int] | None = field(
        default=None, metadata={"help": "layer indices to adapt"}
    )
    layers_pattern: Union[list[str], str] | None = field(
        default=None, metadata={"help": "name of the layer ModuleList, e.g. 'layers' or 'h'"}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "extra modules trained and saved with the adapter"}
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "weights stored (in, out), as transformers' Conv1D"}
    )

    def __post_init__(self) -> None:
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
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("`layers_pattern` needs `layers_to_transform`.")

    @property
    def scaling(self) -> float:
        """The output scale ``alpha / r``."""
        return self.alpha / self.r

    def initial_curvatures(self) -> list[float]:
        """κ of the experts at init: hyperbolic first, then spherical, then Euclidean (0)."""
        n_h, n_s = self.num_hyperbolic, self.num_spherical
        n_e = self.num_experts - n_h - n_s
        return [self.hyperbolic_init] * n_h + [self.spherical_init] * n_s + [0.0] * n_e

    def curved_mask(self) -> list[float]:
        """1 for experts whose κ is learnable (curved and ``learn_curvature``), else 0."""
        n_c = self.num_hyperbolic + self.num_spherical
        on = 1.0 if self.learn_curvature and self.preset != "hydralora" else 0.0
        return [on] * n_c + [0.0] * (self.num_experts - n_c)
