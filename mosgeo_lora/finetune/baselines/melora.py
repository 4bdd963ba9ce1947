r"""MELoRA (Ren et al., ACL 2024, arXiv 2402.17263): a mini-ensemble of LoRAs, as a PEFT tuner.

The input and output features of a frozen linear layer are cut into ``n`` equal slices; mini
LoRA ``i`` maps input slice ``i`` to output slice ``i`` with rank ``r / n``. Stacked, the
update is block diagonal:

.. math::
    y = W x + s\,\mathrm{diag}(B_1 A_1, \dots, B_n A_n)\, x, \qquad
    A_i \in \mathbb{R}^{(r/n) \times (d_\mathrm{in}/n)},\;
    B_i \in \mathbb{R}^{(d_\mathrm{out}/n) \times (r/n)},\; s = \frac{\alpha}{r/n}

so ΔW has rank up to ``r`` (the *equivalent rank*) with ``r (d_in + d_out) / n``
parameters, ``n`` times fewer than a LoRA of rank ``r``.

Checked against the paper and its code (``ChasonShi/MELoRA``, ``peft-0.5.0/.../melora.py``):

* ``r`` here is the equivalent rank, the paper's ``n × r``; the code's ``--lora_r`` is the
  mini rank and ``--lora_n`` the count (its Llama-2 script: rank 1, 8 mini LoRAs, α = 16,
  i.e. ``MELoraConfig(r=8, num_mini=8, alpha=16)``).
* Each mini LoRA is scaled by its own ``α / r_i`` (the code's ``lora_alpha[i] / rank``),
  hence ``s = α / (r/n)``.
* Init as LoRA's, per mini LoRA: ``A_i`` Kaiming-uniform (a = √5) on its slice, ``B_i`` zero.
* The code slices ``in_features // n`` and silently leaves any remainder of the features
  unadapted; here both dimensions must be divisible by ``n`` (a clear error otherwise).
* ΔW is a matrix, so the adapter merges into ``W`` (and unmerges) like LoRA.

Dropout on the input (the code's per-slice dropouts are the same thing: one elementwise
dropout over disjoint slices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from torch import nn

from mosgeo_lora.constants import FFN_TARGET_MODULES, ffn_targets
from mosgeo_lora.registry import peft_type

__all__ = ["NAME", "PREFIX", "MELORA", "MELoraConfig", "MELoraLayer", "MELoraLinear", "MELoraModel"]

#: The method name registered with PEFT.
NAME = "melora"
#: The prefix of every adapter parameter name.
PREFIX = "melora_"
#: The ``PeftType`` member of MELoRA (added to PEFT's enum at import).
MELORA = peft_type(NAME)


@dataclass
class MELoraConfig(PeftConfig):
    """Configuration of a MELoRA adapter: ``num_mini`` mini LoRAs of rank ``r / num_mini``
    on disjoint slices of each target layer's input and output features."""

    #: The equivalent rank (the rank of ΔW at most): the sum of the mini LoRAs' ranks.
    r: int = field(default=8, metadata={"help": "equivalent rank, the sum of the mini ranks"})
    #: ``n``, the number of mini LoRAs (blocks of ΔW); must divide ``r`` and both dimensions.
    num_mini: int = field(default=8, metadata={"help": "number of mini LoRAs n"})
    #: Each mini LoRA's output is scaled by ``alpha / (r / num_mini)``.
    alpha: float = field(default=16.0, metadata={"help": "scaling is alpha / (r / num_mini)"})
    #: Dropout on the adapter's input.
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    #: ``True``: zero ``B`` (the identity at init); ``False``: random ``B`` (for tests).
    init_weights: bool = field(default=True, metadata={"help": "zero B: identity at init"})
    #: Module names or a regex; ``None``: the feed-forward projections of the architecture.
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
    #: Name of the layer ``ModuleList``, with ``layers_to_transform``.
    layers_pattern: Union[list[str], str] | None = field(
        default=None, metadata={"help": "name of the layer ModuleList"}
    )
    #: Extra modules trained and saved with the adapter (PEFT's meaning).
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "extra modules trained and saved with the adapter"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MELORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        for name in ("r", "num_mini"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.r % self.num_mini:
            raise ValueError(
                f"r ({self.r}) must be a multiple of num_mini ({self.num_mini}): each of the "
                f"{self.num_mini} mini LoRAs has rank r / num_mini"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def mini_rank(self) -> int:
        """The rank of each mini LoRA, ``r / num_mini``."""
        return self.r // self.num_mini

    @property
    def scaling(self) -> float:
        """The output scale of each mini LoRA, ``alpha / (r / num_mini)``."""
        return self.alpha / self.mini_rank


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is an optional extra
        return False
    return isinstance(module, Conv1D)


def _in_out(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if _is_conv1d(base):  # weight (in, out)
        return base.weight.shape[0], base.weight.shape[1]
    raise TypeError(
        f"MELoRA adapts torch.nn.Linear and transformers Conv1D layers, not "
        f"{type(base).__name__}; choose other target_modules"
    )


class MELoraLayer(BaseTunerLayer):
    """State, forward and merging of the mini-ensemble on one base layer."""

    #: The per-adapter trainable parameters (PEFT's ``BaseTunerLayer`` contract):
    #: ``melora_A[name]`` of shape ``(n, r/n, d_in/n)``, ``melora_B[name]`` ``(n, d_out/n, r/n)``.
    adapter_layer_names = ("melora_A", "melora_B")
    #: The other per-adapter state PEFT moves, copies and deletes with an adapter.
    other_param_names = ("r", "num_mini", "scaling", "melora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        #: Equivalent rank of each adapter.
        self.r: dict[str, int] = {}
        #: Number of mini LoRAs of each adapter.
        self.num_mini: dict[str, int] = {}
        #: Output scale ``alpha / (r / n)`` of each adapter.
        self.scaling: dict[str, float] = {}
        self.melora_A = nn.ParameterDict({})
        self.melora_B = nn.ParameterDict({})
        self.melora_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.in_features, self.out_features = _in_out(self.get_base_layer())

    def update_layer(self, adapter_name: str, config: MELoraConfig, **kwargs: Any) -> None:
        """Create (or re-create) the adapter ``adapter_name`` from ``config``.

        Raises:
            ValueError: ``num_mini`` does not divide the layer's input or output features.
        """
        n, rank = config.num_mini, config.mini_rank
        if self.in_features % n or self.out_features % n:
            raise ValueError(
                f"MELoRA with num_mini={n} needs in_features ({self.in_features}) and "
                f"out_features ({self.out_features}) divisible by {n}; choose another num_mini"
            )
        self.r[adapter_name] = config.r
        self.num_mini[adapter_name] = n
        self.scaling[adapter_name] = config.scaling
        d_in, d_out = self.in_features // n, self.out_features // n
        self.melora_A[adapter_name] = nn.Parameter(torch.empty(n, rank, d_in))
        self.melora_B[adapter_name] = nn.Parameter(torch.empty(n, d_out, rank))
        self.melora_dropout[adapter_name] = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        self.reset_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Each ``A_i`` Kaiming-uniform on its own slice (as ``nn.Linear(d_in/n, r/n)``), each
        ``B_i`` zero (or random with ``init_weights=False``)."""
        if adapter_name not in self.melora_A:
            return
        with torch.no_grad():
            for a in self.melora_A[adapter_name]:  # one (r/n, d_in/n) matrix per mini LoRA
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            if init_weights:
                nn.init.zeros_(self.melora_B[adapter_name])
            else:
                nn.init.normal_(self.melora_B[adapter_name], std=0.5)

    # ------------------------------------------------------------------ the update
    def adapter_delta(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """``s · diag(B_i A_i) x`` for input ``x`` (…, d_in), computed slice by slice."""
        a, b = self.melora_A[adapter_name], self.melora_B[adapter_name]
        x = self.melora_dropout[adapter_name](x).to(a.dtype)
        slices = x.unflatten(-1, (a.shape[0], a.shape[2]))  # (…, n, d_in/n)
        z = torch.einsum("...ni,nri->...nr", slices, a)
        y = torch.einsum("...nr,nor->...no", z, b)
        return y.flatten(-2) * self.scaling[adapter_name]

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = ``s · blockdiag(B_1 A_1, …, B_n A_n)`` in the base layer's weight layout
        (``(d_out, d_in)``; transposed for ``Conv1D``)."""
        a, b = self.melora_A[adapter_name], self.melora_B[adapter_name]
        delta = torch.block_diag(*torch.bmm(b, a)) * self.scaling[adapter_name]
        return delta.T if _is_conv1d(self.get_base_layer()) else delta

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ΔW of the active (or the named) adapters to the base weight.

        Raises:
            ValueError: ``safe_merge`` and the merged weight is not finite.
        """
        base = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.melora_A:
                continue
            delta = self.get_delta_weight(name).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights of adapter {name}")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract ΔW of every merged adapter from the base weight (last merged first)."""
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.melora_A:
                base.weight.data -= self.get_delta_weight(name).to(base.weight.dtype)


class MELoraLinear(nn.Module, MELoraLayer):
    """MELoRA on ``nn.Linear`` or transformers' ``Conv1D``."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: MELoraConfig, **kwargs: Any
    ) -> None:
        super().__init__()
        MELoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's output plus every active, unmerged adapter's update."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self.melora_A:
                result = result + self.adapter_delta(x, name).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "melora." + super().__repr__()


class MELoraModel(BaseTuner):
    """PEFT tuner that replaces the target linear layers by :class:`MELoraLinear`."""

    #: The prefix of every adapter parameter name (PEFT's tuner contract).
    prefix: str = PREFIX
    #: The tuner layer class (PEFT's tuner contract).
    tuner_layer_cls = MELoraLayer
    target_module_mapping = FFN_TARGET_MODULES

    def _prepare_adapter_config(self, peft_config: MELoraConfig, model_config: dict):
        if peft_config.target_modules is None:
            targets = ffn_targets(model_config.get("model_type"))
            peft_config.target_modules = targets if isinstance(targets, str) else set(targets)
        return peft_config

    def _create_and_replace(
        self,
        config: MELoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, MELoraLayer):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        new_module = MELoraLinear(base, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
