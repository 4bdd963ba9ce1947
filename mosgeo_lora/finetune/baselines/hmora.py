r"""HMoRA (Liao et al., ICLR 2025): LoRA experts with hierarchical hybrid routing, as a PEFT tuner.

Each adapted layer holds ``N`` LoRA experts that share their down-projection ``A`` (the
HydraLoRA form the paper's code runs with, ``--use_hydra_lora``). A token's gates mix a
*token-level* router on the layer input and a *task-level* router on one representation of
the whole prompt, with a weight that grows with depth:

.. math::
    g = (1 - a_l)\,\mathrm{softmax}(W_t x + b_t) + a_l\,\mathrm{softmax}(W_s e + b_s),\qquad
    a_l = \sigma(\theta_l),\quad \theta_l^{(0)} = -\varepsilon + 2\varepsilon\,\frac{l}{L-1}
    + \text{shift}

    y = W x + \frac{\alpha}{\sqrt r} \sum_i g_i\, B_i A x

with ``e`` the task representation: a one-layer transformer encoder (16 heads, feed-forward
``2 d``, sinusoidal positions) reads the input embeddings of the prompt plus a learned task
token and returns the task token's output. Lower layers route by token, higher layers by
task. ``θ_l`` is learnable, initialised from the schedule; a layer whose initial ``a_l`` is
below ``token_only_below`` keeps only the token router, one above ``task_only_above`` only
the task router.

The auxiliary loss is the paper's constrained generalized Jensen–Shannon divergence, per
token router over the real tokens and per task router over the batch's sequences:

.. math::
    \mathcal{L} = \frac{1}{\log N}\,\mathrm{relu}\Bigl((\gamma_b - \gamma_c)\log N
    - \bigl(\min(H(\bar p), \gamma_b \log N) - \overline{\max(H(p), \gamma_c \log N)}\bigr)\Bigr)

(``H`` the entropy, ``\bar p`` the mean distribution): balanced on average, certain per
input. It is summed over the routers and weighted by ``aux_loss_coef``, and it reaches the
gradient in backward, through the router logits, with :mod:`mosgeo_lora.balance`'s mechanism
(``BalanceGradient``, the per-call state and its micro-batch share): whatever trainer or loss
is used, never through ``outputs.loss``.

Checked against the paper's code (``LiaoMengqi/HMoRA``, ``hmora/model.py`` and the README's
training command, which sets every default here): schedule ``-ε + 2ε·l/max_layer`` with ε = 2,
bounds 0.2 / 0.8, α learnable; shared ``A``; scaling ``lora_alpha / √r`` for the experts and
``lora_alpha / r`` for the plain-LoRA modules (``--target_modules_lora o_proj down_proj``);
one router shared by the projections of one block (``--share_router_for_w_i``); routers
``Linear`` with bias; soft routing unless ``top_k`` (then a softmax over the top-k mixed
weights, as the code does); GJS with γ_certain = 0.5, γ_balance = 0.98, λ = 0.005; dropout
0.1. Where this differs: the code adds the positional encoding along the batch axis (it
transposes first), here along the tokens; the code reads the task token's initial embedding
from the tokenizer's ``'?'``, here ``task_token_id`` (default: the mean input embedding); the
code feeds the encoder the prompt text tokenized separately, here the prompt tokens of the
call (the tokens whose label is ``-100``; all real tokens when there are no labels, as in
generation, whose later steps keep the prompt's representation).

The adapter is input-dependent (routers), so it does not merge: ``merge`` raises, ``unload()``
works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from mosgeo_lora.balance import CALL_KWARG, BalanceGradient, CallState, install
from mosgeo_lora.constants import FFN_TARGET_MODULES, ffn_targets
from mosgeo_lora.registry import peft_type

__all__ = [
    "NAME",
    "PREFIX",
    "HMORA",
    "MERGE_ERROR",
    "HMoRAConfig",
    "mixing_logit",
    "mixing_schedule",
    "gjs_loss",
    "TaskEncoder",
    "HMoRALayer",
    "HMoRALinear",
    "HMoRAModel",
    "inactive_per_token",
]

#: The method name registered with PEFT.
NAME = "hmora"
#: The prefix of every adapter parameter name.
PREFIX = "hmora_"
#: The ``PeftType`` member of HMoRA (added to PEFT's enum at import).
HMORA = peft_type(NAME)

#: Why ``merge`` raises.
MERGE_ERROR = (
    "HMoRA cannot be merged into the base weight: its gates depend on the token and on the "
    "task representation of the prompt, so the adapter is not a fixed matrix ΔW. Use "
    "`unload()` to get the base model back, or keep the adapter attached."
)


@dataclass
class HMoRAConfig(PeftConfig):
    """Configuration of an HMoRA adapter; the defaults are the paper's training command's."""

    #: Rank of the shared down-projection ``A`` and of each expert.
    r: int = field(default=8, metadata={"help": "rank of A and of each expert"})
    #: ``N``, the number of LoRA experts per layer.
    num_experts: int = field(default=8, metadata={"help": "number of experts N"})
    #: Scaling: ``alpha / √r`` for the experts, ``alpha / r`` for the plain-LoRA modules.
    alpha: float = field(default=16.0, metadata={"help": "alpha/√r (experts), alpha/r (LoRA)"})
    #: ``None``: soft routing (every expert, the paper's Table 1 setting); ``k``: the top-k
    #: mixed weights, re-normalised by a softmax.
    top_k: int | None = field(default=None, metadata={"help": "experts per token (None: all)"})
    #: ``ε`` of the depth schedule ``θ_l = -ε + 2ε l / (L-1) + shift``.
    epsilon: float = field(default=2.0, metadata={"help": "epsilon of the depth schedule"})
    #: ``shift`` of the depth schedule.
    shift: float = field(default=0.0, metadata={"help": "shift of the depth schedule"})
    #: A layer whose initial ``σ(θ_l)`` is below this routes by token only.
    token_only_below: float = field(default=0.2, metadata={"help": "token router only below"})
    #: A layer whose initial ``σ(θ_l)`` is above this routes by task only.
    task_only_above: float = field(default=0.8, metadata={"help": "task router only above"})
    #: ``λ`` of the GJS auxiliary loss (summed over routers); 0 disables it.
    aux_loss_coef: float = field(default=0.005, metadata={"help": "GJS loss coefficient"})
    #: ``γ_certain`` of the token routers' GJS loss.
    certainty_token: float = field(default=0.5, metadata={"help": "gamma_certain, token"})
    #: ``γ_balance`` of the token routers' GJS loss.
    balance_token: float = field(default=0.98, metadata={"help": "gamma_balance, token"})
    #: ``γ_certain`` of the task routers' GJS loss.
    certainty_task: float = field(default=0.5, metadata={"help": "gamma_certain, task"})
    #: ``γ_balance`` of the task routers' GJS loss.
    balance_task: float = field(default=0.98, metadata={"help": "gamma_balance, task"})
    #: Dropout on the inputs of experts, routers and task encoder.
    dropout: float = field(default=0.1, metadata={"help": "dropout"})
    #: Targets (names) that get a plain LoRA of rank ``r`` instead of the experts (the paper's
    #: ``o_proj``/``down_proj``); ``None``: none.
    lora_modules: list[str] | None = field(
        default=None, metadata={"help": "targets with a plain LoRA instead of experts"}
    )
    #: The expert targets of one block (e.g. ``gate_proj`` and ``up_proj`` of one MLP, same
    #: input) share one router.
    share_router: bool = field(default=True, metadata={"help": "share a router within a block"})
    #: Transformer layers of the task encoder.
    task_encoder_layers: int = field(default=1, metadata={"help": "task encoder layers"})
    #: Attention heads of the task encoder (must divide the embedding size).
    task_encoder_heads: int = field(default=16, metadata={"help": "task encoder heads"})
    #: Token whose input embedding initialises the task token; ``None``: the mean embedding.
    task_token_id: int | None = field(default=None, metadata={"help": "task token init id"})
    #: ``L``, the decoder layers of the model (``None``: read from the model's config).
    num_layers: int | None = field(default=None, metadata={"help": "decoder layers L"})
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
        self.peft_type = HMORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        for name in ("r", "num_experts", "task_encoder_layers", "task_encoder_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be None or in [1, {self.num_experts}], got {self.top_k}")
        if not 0.0 <= self.token_only_below <= self.task_only_above <= 1.0:
            raise ValueError("need 0 <= token_only_below <= task_only_above <= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def mixing_logit(self, layer: int) -> float:
        """The initial mixing logit ``θ_l`` of decoder layer ``layer``."""
        return mixing_logit(layer, self.num_layers or 1, self.epsilon, self.shift)

    def mixing(self, layer: int) -> float:
        """The initial task weight ``a_l = σ(θ_l)`` of decoder layer ``layer``."""
        return mixing_schedule(layer, self.num_layers or 1, self.epsilon, self.shift)

    def routing_mode(self, layer: int) -> str:
        """``"token"``, ``"task"`` or ``"hybrid"``: the routers of decoder layer ``layer``."""
        a = self.mixing(layer)
        if a < self.token_only_below:
            return "token"
        return "task" if a > self.task_only_above else "hybrid"


def mixing_logit(layer: int, num_layers: int, epsilon: float = 2.0, shift: float = 0.0) -> float:
    """``θ_l = -ε + 2ε l / (L-1) + shift``, the initial mixing logit of layer ``l`` of ``L``
    (the paper's code divides by the largest layer index, ``L - 1``)."""
    depth = layer / (num_layers - 1) if num_layers > 1 else 0.0
    return -epsilon + 2.0 * epsilon * depth + shift


def mixing_schedule(layer: int, num_layers: int, epsilon: float = 2.0, shift: float = 0.0) -> float:
    """``a_l = σ(θ_l)``: the task-level weight of layer ``l`` of ``L`` at init."""
    return 1.0 / (1.0 + math.exp(-mixing_logit(layer, num_layers, epsilon, shift)))


def gjs_loss(
    probs: torch.Tensor, certainty: float, balance: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The constrained GJS divergence of routing distributions ``probs`` (…, N) (module
    docstring), over the rows whose ``weights`` (broadcastable to ``probs[..., 0]``) are 1."""
    n = probs.shape[-1]
    p = probs.reshape(-1, n)
    w = torch.ones_like(p[:, :1]) if weights is None else weights.reshape(-1, 1).to(p.dtype)
    count = w.sum().clamp_min(1.0)
    h_max = math.log(n)
    mean = (p * w).sum(0) / count
    h_mean = (-(mean * torch.log(mean + 1e-9)).sum()).clamp(max=balance * h_max)
    h_each = (-(p * torch.log(p + 1e-9)).sum(-1, keepdim=True)).clamp(min=certainty * h_max)
    h_each = (h_each * w).sum() / count
    return torch.relu((balance - certainty) * h_max - (h_mean - h_each)) / h_max


def _gjs_and_grad(
    logits: torch.Tensor, certainty: float, balance: float, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The GJS loss of ``softmax(logits)`` (:func:`gjs_loss`) and its gradient with respect to
    the logits, closed forms with no autograd graph (the gradient is added in backward by
    ``BalanceGradient``). Not ``torch.autograd.grad``: inside a layer under non-reentrant
    checkpointing it unpacks tensors the checkpoint packed and recomputes the layer in the
    forward pass (which recorded its losses twice), and it breaks a compiled graph.

    With ``H(q) = -Σ q log(q + 1e-9)``, ``H' = -(log(q + 1e-9) + q / (q + 1e-9))``, the
    mean ``p̄ = Σ_t w_t p_t / W`` and ``s = [loss > 0] / log N``::

        ∂loss/∂p_t = s (w_t / W) ([H(p_t) ≥ γ_c log N] H'(p_t) − [H(p̄) ≤ γ_b log N] H'(p̄))

    then the softmax's backward (clamp and relu pass the gradient as torch's do)."""
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        n = logits.shape[-1]
        p = torch.softmax(logits.detach().to(wide), dim=-1).reshape(-1, n)
        w = torch.ones_like(p[:, :1]) if weights is None else weights.reshape(-1, 1).to(wide)
        count = w.sum().clamp_min(1.0)
        h_max = math.log(n)
        mean = (p * w).sum(0) / count
        log_mean, log_p = torch.log(mean + 1e-9), torch.log(p + 1e-9)
        h_mean = -(mean * log_mean).sum()
        h_each = -(p * log_p).sum(-1, keepdim=True)
        spread = h_mean.clamp(max=balance * h_max) - (
            (h_each.clamp(min=certainty * h_max) * w).sum() / count
        )
        excess = (balance - certainty) * h_max - spread
        loss = torch.relu(excess) / h_max
        on = (excess > 0).to(wide) / h_max
        d_mean = (h_mean <= balance * h_max).to(wide) * (log_mean + mean / (mean + 1e-9))
        d_each = (h_each >= certainty * h_max).to(wide) * (log_p + p / (p + 1e-9))
        v = (on * w / count) * (d_mean - d_each)  # ∂loss/∂p_t, the signs of H' folded in
        grad = p * (v - (p * v).sum(-1, keepdim=True))
    return loss, grad.reshape(logits.shape).to(logits.dtype)


def _sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encodings (…, dim) of integer ``positions`` (…)."""
    freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
        * (-math.log(10000.0) / dim)
    )
    angle = positions.to(torch.float32).unsqueeze(-1) * freq
    out = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)
    return out[..., :dim]


class TaskEncoder(nn.Module):
    """The task representation of a batch: a small transformer encoder over the input
    embeddings of the prompt tokens plus a learned task token, read at the task token."""

    def __init__(
        self, dim: int, heads: int, layers: int, dropout: float, task_token: torch.Tensor
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"task_encoder_heads={heads} must divide the embedding size {dim}")
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.task_token = nn.Parameter(task_token.detach().clone().to(torch.float32))

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` from ``embeds`` (B, T, dim) and the boolean ``mask`` (B, T) of the
        tokens to read; positions count the read tokens only, so padding on either side and
        interleaved answer tokens change nothing."""
        dtype = self.task_token.dtype
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        x = embeds.to(dtype) + _sinusoid(positions, embeds.shape[-1]).to(dtype)
        token = self.task_token + _sinusoid(mask.long().sum(-1), embeds.shape[-1]).to(dtype)
        x = torch.cat([x, token.unsqueeze(1)], dim=1)
        padding = torch.cat([~mask, torch.zeros_like(mask[:, :1])], dim=1)
        return self.encoder(x, src_key_padding_mask=padding)[:, -1]


class _Mix(nn.Module):
    """The learnable mixing logit ``θ_l`` of one router (a module, so that PEFT's device and
    dtype moves keep it shared between the layers of a block)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(value, dtype=torch.float32))


class _SharedGraph(torch.autograd.Function):
    """The identity on the task representation, for a layer recomputed inside backward by
    reentrant checkpointing: the checkpoint runs a backward of its own through the layer,
    which would go on into the task encoder's graph and free it (the next layer's then
    fails: "backward through the graph a second time"). This node stops there and sends its
    gradient into the encoder with ``retain_graph=True``, once per layer; the graph goes
    with the representation at the next call. Its tensor input is a detached leaf and the
    representation comes in a list, so the node has no edge into the encoder's graph (an
    edge would run, and free, the encoder's nodes even with no gradient to send)."""

    @staticmethod
    def forward(ctx: Any, leaf: torch.Tensor, rep: list[torch.Tensor]) -> torch.Tensor:
        ctx.rep = rep[0]  # the tensor with the encoder's graph (not saved: nothing to recompute)
        return leaf.view_as(leaf)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        torch.autograd.backward(ctx.rep, grad, retain_graph=True)
        return None, None


class _Context:
    """What the wrapped model's call hands to every HMoRA layer: the task representation per
    adapter (set by :class:`HMoRAModel`'s forward pre-hook)."""

    def __init__(self) -> None:
        self.representation: dict[str, torch.Tensor] = {}


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is an optional extra
        return False
    return isinstance(module, Conv1D)


def _in_out(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if _is_conv1d(base):
        return base.weight.shape[0], base.weight.shape[1]
    raise TypeError(
        f"HMoRA adapts torch.nn.Linear and transformers Conv1D layers, not "
        f"{type(base).__name__}; choose other target_modules"
    )


class HMoRALayer(BaseTunerLayer):
    """State and forward of HMoRA on one base layer: experts (or a plain LoRA) and routers."""

    #: The per-adapter trainable modules (PEFT's ``BaseTunerLayer`` contract).
    adapter_layer_names = ("hmora_A", "hmora_B", "hmora_router", "hmora_task_router", "hmora_mix")
    #: The other per-adapter state PEFT moves, copies and deletes with an adapter.
    other_param_names = ("r", "scaling", "hmora_dropout", "settings")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        #: Rank of each adapter.
        self.r: dict[str, int] = {}
        #: Output scale of each adapter (``alpha/√r`` experts, ``alpha/r`` plain LoRA).
        self.scaling: dict[str, float] = {}
        #: What the forward pass of each adapter needs of its config (kind, routing mode, …).
        self.settings: dict[str, dict[str, Any]] = {}
        self.hmora_A = nn.ModuleDict({})
        self.hmora_B = nn.ModuleDict({})
        self.hmora_router = nn.ModuleDict({})
        self.hmora_task_router = nn.ModuleDict({})
        self.hmora_mix = nn.ModuleDict({})
        self.hmora_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.in_features, self.out_features = _in_out(self.get_base_layer())

    def update_layer(
        self,
        adapter_name: str,
        config: HMoRAConfig,
        *,
        layer: int = 0,
        plain_lora: bool = False,
        task_dim: int | None = None,
        shared: dict[str, nn.Module | None] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the adapter ``adapter_name``: a plain LoRA (``plain_lora``), or ``N``
        experts with the routers of decoder layer ``layer`` (the modules in ``shared`` when
        another layer of the block already made them)."""
        r, n = config.r, config.num_experts
        mode = "lora" if plain_lora else config.routing_mode(layer)
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.alpha / (r if plain_lora else math.sqrt(r))
        self.settings[adapter_name] = {
            "mode": mode,
            "layer": layer,
            "num_experts": n,
            "top_k": config.top_k,
            "aux_loss_coef": config.aux_loss_coef,
            "token_gamma": (config.certainty_token, config.balance_token),
            "task_gamma": (config.certainty_task, config.balance_task),
            "owner": shared is None,  # the first layer of a block computes the aux loss
        }
        self.hmora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        width = r if plain_lora else n * r
        self.hmora_B[adapter_name] = nn.Linear(width, self.out_features, bias=False)
        self.hmora_dropout[adapter_name] = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        if mode != "lora":
            if shared is None:
                shared = {
                    "router": None if mode == "task" else nn.Linear(self.in_features, n),
                    "task_router": None if mode == "token" else nn.Linear(task_dim, n),
                    "mix": _Mix(config.mixing_logit(layer)) if mode == "hybrid" else None,
                }
            for attr, key in (
                ("hmora_router", "router"),
                ("hmora_task_router", "task_router"),
                ("hmora_mix", "mix"),
            ):
                if shared[key] is not None:
                    getattr(self, attr)[adapter_name] = shared[key]
        self.reset_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def routers(self, adapter_name: str) -> dict[str, nn.Module | None]:
        """The router modules of ``adapter_name`` (``router``, ``task_router``, ``mix``), to be
        shared with the next layer of the same block."""
        pick = {"router": self.hmora_router, "task_router": self.hmora_task_router}
        pick["mix"] = self.hmora_mix
        return {key: d[adapter_name] if adapter_name in d else None for key, d in pick.items()}

    def reset_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Kaiming-uniform ``A``, zero ``B`` (random with ``init_weights=False``); routers keep
        ``nn.Linear``'s own initialisation, as in the paper's code."""
        if adapter_name not in self.hmora_A:
            return
        nn.init.kaiming_uniform_(self.hmora_A[adapter_name].weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.hmora_B[adapter_name].weight)
        else:
            nn.init.normal_(self.hmora_B[adapter_name].weight, std=0.5)

    # ------------------------------------------------------------------ merging
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Raises: an HMoRA adapter is not a matrix (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Raises: nothing is ever merged (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Raises: there is no ΔW (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    # ------------------------------------------------------------------ routing
    def task_mixing(self, adapter_name: str) -> float | None:
        """The current task weight ``a_l = σ(θ_l)`` of a hybrid layer (``None`` otherwise)."""
        if adapter_name not in self.hmora_mix:
            return None
        return float(torch.sigmoid(self.hmora_mix[adapter_name].logit.detach()))

    def gates(
        self, x: torch.Tensor, adapter_name: str, call: CallState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(gates, token_probs, task_probs)`` for input ``x`` (…, d_in): the gates (…, N)
        sum to 1 per token; ``token_probs`` (…, N) and ``task_probs`` (B, N) are the two
        routers' distributions (``None`` where the layer has no such router)."""
        cfg = self.settings[adapter_name]
        drop = self.hmora_dropout[adapter_name]
        shape = x.shape[:-1] + (cfg["num_experts"],)
        token_probs = task_probs = None
        recording = call is not None and not call.closed
        if cfg["mode"] in ("token", "hybrid"):
            router = self.hmora_router[adapter_name]
            logits = router(drop(x.to(router.weight.dtype)))
            mask = call.token_mask if call is not None else None
            if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]):
                mask = None  # e.g. cached generation: one new token, the mask covers all
            logits = self._aux(logits, cfg, "token_gamma", call, mask, recording)
            token_probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        if cfg["mode"] in ("task", "hybrid"):
            router = self.hmora_task_router[adapter_name]
            rep = self._representation(adapter_name, x, call)
            logits = router(drop(rep.to(router.weight.dtype)))
            logits = self._aux(logits, cfg, "task_gamma", call, None, recording)
            task_probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        if cfg["mode"] == "hybrid":
            a = torch.sigmoid(self.hmora_mix[adapter_name].logit).to(torch.float32)
            gates = (1 - a) * token_probs + a * self._per_token(task_probs, x)
        elif token_probs is not None:
            gates = token_probs
        else:
            gates = self._per_token(task_probs, x).expand(shape)
        k = cfg["top_k"]
        if k is not None and k < cfg["num_experts"]:
            values, idx = gates.topk(k, dim=-1)
            kept = torch.full_like(gates, float("-inf")).scatter(-1, idx, values)
            gates = torch.softmax(kept, dim=-1)
        return gates, token_probs, task_probs

    def _representation(
        self, adapter_name: str, x: torch.Tensor, call: CallState | None = None
    ) -> torch.Tensor:
        context = getattr(self, "_hmora_context", None)
        rep = None if context is None else context.representation.get(adapter_name)
        if rep is None:
            raise RuntimeError(
                "HMoRA's task-level routing needs the task representation of the call, which "
                "the HMoRA model computes when it is called: call the wrapped model, not one "
                "layer on its own"
            )
        if call is not None and call.closed and torch.is_grad_enabled() and rep.requires_grad:
            # a recomputation inside backward (reentrant checkpointing): the layer's own
            # backward must not free the task encoder's graph, which every layer reaches
            rep = _SharedGraph.apply(rep.detach().requires_grad_(), [rep])
        return rep

    @staticmethod
    def _per_token(task_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` → broadcastable to ``x``'s tokens (…, N)."""
        if x.dim() == 2:  # (T, d): a single sequence
            if task_probs.shape[0] != 1:
                raise RuntimeError("HMoRA got 2-d input for a batch of several sequences")
            return task_probs
        if task_probs.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"HMoRA's task representation has batch {task_probs.shape[0]}, the layer input "
                f"{x.shape[0]}"
            )
        return task_probs.view(task_probs.shape[0], *([1] * (x.dim() - 2)), task_probs.shape[-1])

    def _aux(
        self,
        logits: torch.Tensor,
        cfg: dict[str, Any],
        gamma: str,
        call: CallState | None,
        mask: torch.Tensor | None,
        recording: bool,
    ) -> torch.Tensor:
        """The logits, carrying the GJS loss's gradient when a backward pass may follow (the
        owner of a shared router only); its value is recorded in the call's state."""
        coef = cfg["aux_loss_coef"]
        grad_on = torch.is_grad_enabled() and logits.requires_grad
        if coef <= 0 or not cfg["owner"] or not (grad_on or (recording and self.training)):
            return logits
        loss, grad = _gjs_and_grad(logits, *cfg[gamma], mask)
        if recording:
            call.record(loss)
        if not grad_on:
            return logits
        share = call.share if call is not None else 1.0
        return BalanceGradient.apply(logits, grad, share * coef)

    # ------------------------------------------------------------------ forward
    def adapter_delta(
        self, x: torch.Tensor, adapter_name: str, call: CallState | None = None
    ) -> torch.Tensor:
        """The adapter's additive output for input ``x``: ``s Σ_i g_i B_i A x`` (experts) or
        ``s B A x`` (plain LoRA)."""
        a_lin, b_lin = self.hmora_A[adapter_name], self.hmora_B[adapter_name]
        z = a_lin(self.hmora_dropout[adapter_name](x.to(a_lin.weight.dtype)))
        if self.settings[adapter_name]["mode"] != "lora":
            gates = self.gates(x, adapter_name, call)[0].to(z.dtype)
            z = (z.unsqueeze(-2) * gates.unsqueeze(-1)).flatten(-2)  # (…, N·r)
        return b_lin(z) * self.scaling[adapter_name]


class HMoRALinear(nn.Module, HMoRALayer):
    """HMoRA on ``nn.Linear`` or transformers' ``Conv1D``."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: HMoRAConfig, **kwargs: Any
    ) -> None:
        super().__init__()
        HMoRALayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's output plus every active adapter's :meth:`adapter_delta`."""
        call = kwargs.pop(CALL_KWARG, None)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.hmora_A:
                result = result + self.adapter_delta(x, name, call).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "hmora." + super().__repr__()


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _matches(key: str, names: list[str] | None) -> bool:
    return bool(names) and any(key == n or key.endswith("." + n) for n in names)


class HMoRAModel(BaseTuner):
    """PEFT tuner that replaces the target linear layers by :class:`HMoRALinear` and keeps the
    task encoder of each adapter (``hmora_task_encoder``)."""

    #: The prefix of every adapter parameter name (PEFT's tuner contract).
    prefix: str = PREFIX
    #: The tuner layer class (PEFT's tuner contract).
    tuner_layer_cls = HMoRALayer
    target_module_mapping = FFN_TARGET_MODULES

    def _prepare_adapter_config(self, peft_config: HMoRAConfig, model_config: dict):
        if peft_config.target_modules is None:
            targets = ffn_targets(model_config.get("model_type"))
            peft_config.target_modules = targets if isinstance(targets, str) else set(targets)
        if peft_config.num_layers is None:
            text = model_config.get("text_config") or {}
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                value = model_config.get(key, text.get(key) if isinstance(text, dict) else None)
                if isinstance(value, int):
                    peft_config.num_layers = value
                    break
            else:
                peft_config.num_layers = 1
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: HMoRAConfig, adapter_name: str):
        if not hasattr(self, "hmora_task_encoder"):
            self.hmora_task_encoder = nn.ModuleDict({})
            self._hmora_context = _Context()
            self._hmora_groups: dict[tuple[str, str], dict[str, nn.Module | None]] = {}
            self._hmora_hook = model.register_forward_pre_hook(self._begin_call, with_kwargs=True)
        embedding = model.get_input_embeddings()
        weight = embedding.weight
        init = weight[config.task_token_id] if config.task_token_id is not None else weight.mean(0)
        encoder = TaskEncoder(
            weight.shape[-1],
            config.task_encoder_heads,
            config.task_encoder_layers,
            config.dropout,
            init,
        )
        self.hmora_task_encoder[adapter_name] = encoder.to(weight.device)

    def _create_and_replace(
        self,
        config: HMoRAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        found = _LAYER_INDEX.search(f".{current_key}.")
        layer = int(found.group(1)) if found else 0
        plain = _matches(current_key, config.lora_modules)
        group = (adapter_name, current_key.rpartition(".")[0])
        shared = self._hmora_groups.get(group) if config.share_router and not plain else None
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if shared is not None and shared["in_features"] != _in_out(base)[0]:
            shared = None  # a block's projections with different inputs keep their own router
        kwargs = {
            "layer": layer,
            "plain_lora": plain,
            "task_dim": self.hmora_task_encoder[adapter_name].task_token.shape[-1],
            "shared": None if shared is None else shared["modules"],
        }
        if isinstance(target, HMoRALayer):
            target.update_layer(adapter_name, config, **kwargs)
            new_module = target
        else:
            new_module = HMoRALinear(base, adapter_name, config, **kwargs)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)
            install(self.model, new_module)
            object.__setattr__(new_module, "_hmora_context", self._hmora_context)
        if not plain and shared is None and config.share_router:
            self._hmora_groups[group] = {
                "in_features": _in_out(base)[0],
                "modules": new_module.routers(adapter_name),
            }

    def _post_injection_hook(self, model: nn.Module, config: HMoRAConfig, adapter_name: str):
        uses_task = any(
            isinstance(m, HMoRALayer) and adapter_name in m.hmora_task_router
            for m in model.modules()
        )
        if not uses_task:  # every layer routes by token: no task encoder to train or save
            del self.hmora_task_encoder[adapter_name]
            return
        trainable = not config.inference_mode and adapter_name in self.active_adapters
        self.hmora_task_encoder[adapter_name].requires_grad_(trainable)

    # ------------------------------------------------------------------ the call
    def _begin_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the wrapped model: the task representation of the call's
        prompt, for every active adapter with a task encoder."""
        context = self._hmora_context
        active = [n for n in self.active_adapters if n in self.hmora_task_encoder]
        if not active:
            return
        past = kwargs.get("past_key_values")
        seen = getattr(past, "get_seq_length", None)
        if seen is not None and seen() > 0 and all(n in context.representation for n in active):
            return  # a generation step after the prompt: keep the prompt's representation
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = module.get_input_embeddings()(ids)
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        mask = mask.bool()
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.shape == mask.shape:
            prompt = mask & (labels == -100)
            mask = torch.where(prompt.any(-1, keepdim=True), prompt, mask)
        for name in active:
            context.representation[name] = self.hmora_task_encoder[name](embeds, mask)

    def forward(self, *args: Any, **kwargs: Any):
        """The wrapped model's forward, called as a module so that its hooks run."""
        return self.model(*args, **kwargs)

    # ------------------------------------------------------------------ adapters
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """PEFT's ``set_adapter``; the task encoders of the active adapters train with them."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name, encoder in self.hmora_task_encoder.items():
            encoder.requires_grad_(name in active and not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """PEFT's ``delete_adapter``, and the adapter's task encoder."""
        super().delete_adapter(adapter_name)
        if adapter_name in self.hmora_task_encoder:
            del self.hmora_task_encoder[adapter_name]
        self._hmora_context.representation.pop(adapter_name, None)

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Raises: an HMoRA adapter cannot be merged (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    def unload(self) -> nn.Module:
        """The base model without the adapter layers and without HMoRA's forward pre-hook."""
        self._hmora_hook.remove()
        self._hmora_context.representation.clear()
        return super().unload()


def inactive_per_token(model: nn.Module) -> int:
    """Trainable HMoRA parameters that do not act on each token: the task encoders (run once
    per sequence, on the prompt) and, with ``top_k < N``, the ``1 - k/N`` share of the experts'
    ``B`` a token does not use. ``activated = trainable − inactive_per_token`` reproduces the
    paper's count (2.26 % for HMoRA on Qwen2-1.5B, ``docs/design.md`` §4.2)."""
    inactive = 0
    for module in model.modules():
        if isinstance(module, HMoRAModel):
            inactive += sum(
                p.numel() for p in module.hmora_task_encoder.parameters() if p.requires_grad
            )
        if isinstance(module, HMoRALayer):
            for name, b in module.hmora_B.items():
                cfg = module.settings[name]
                k, n = cfg["top_k"], cfg["num_experts"]
                if cfg["mode"] != "lora" and k is not None and b.weight.requires_grad:
                    inactive += round(b.weight.numel() * (1 - k / n))
    return inactive
