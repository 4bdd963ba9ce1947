r"""The MoSELoRA tuner layer: a frozen linear layer plus a mixture of space experts.

.. math::
    y = W x + \frac{α}{r} \sum_i g_i(z)\, o_i(z), \qquad z = A\,\mathrm{dropout}(x)

with the experts ``o_i`` of :mod:`mosgeo_lora.experts` and the gates of
:mod:`mosgeo_lora.router`. Parameters, per adapter name (PEFT convention):

* ``moselora_A``: ``Linear(d_in, r)`` (Kaiming uniform, as PEFT's LoRA ``A``),
* ``moselora_B``: ``Linear(N·r, d_out)`` holding ``B_cat = [B_1 … B_N]`` (zero at init),
* ``moselora_router``: ``Linear(r, N)`` (``W_g`` on the code ``z``), or ``Linear(d_in, N)``
  on the input ``x`` with ``router_input="input"`` (HydraLoRA's router),
* ``moselora_k``: the learnable curvatures (``(n_learn,)``, the first experts), and the
  persistent buffer ``moselora_k_fixed`` with the fixed ones (Euclidean experts at 0, or all
  when ``learn_curvature=False``); κ = ``cat(k, k_fixed)``,
* ``moselora_log_scale`` (only with ``input_scale``): ``ρ = log s`` (``(1,)``) of the learnable
  input scale ``s``; every expert then computes ``s·o_i(z/s)``, which is ``o_i`` with
  curvature ``κ_i / s²`` (the fused node computes it so, ``κ_i e^{-2ρ}``, the literal path
  divides and multiplies).

The adapter runs in a float32 island: under bf16/fp16 autocast its inputs are cast to the
adapter dtype and autocast is disabled inside, so the geometry never runs in half precision.

Per-call data (the token mask of the batch, its weight in the optimizer step) reaches a layer
as the keyword argument ``moselora_call`` (a :class:`~mosgeo_lora.balance.CallState`), which
a forward pre-hook adds (:mod:`mosgeo_lora.balance`); nothing per-call is written into a
layer. The load-balancing loss reaches the gradient through the router logits
(:class:`~mosgeo_lora.balance.BalanceGradient`), whatever loss the caller differentiates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from mosgeo.numerics import HALF_DTYPES

from ._compat import (
    BufferDict,
    adapter_dropout,
    adapter_tensors,
    in_out_features,
    tensor_versions,
)
from .balance import CALL_KWARG, BalanceGradient, CallState, balance_loss_and_grad
from .config import MoSELoraConfig
from .experts import experts_reference
from .fused import Constants as FusedConstants
from .fused import Spec
from .fused import adapter as fused_adapter
from .fused import constants as fused_constants
from .fused import infer as fused_infer
from .router import route

__all__ = ["MoSELoraLayer", "MoSELoraLinear", "moselora_layers"]

# entering torch.autocast(enabled=False) costs a few µs per call: only where autocast is on
_NO_CONTEXT = contextlib.nullcontext()

#: Why `merge` raises: the adapter is input-dependent and nonlinear.
MERGE_ERROR = (
    "MoSELoRA cannot be merged into the base weight: each expert maps its input through a "
    "curvature-dependent nonlinear chart (project → to_spacelike → clip → from_spacelike) and "
    "the router's gates depend on the input, so the adapter is not a fixed matrix ΔW. Use "
    "`unload()` to get the base model back, or keep the adapter attached for inference."
)


def moselora_layers(model: nn.Module) -> Iterator[tuple[str, MoSELoraLayer]]:
    """Every MoSELoRA layer of ``model`` with its qualified name, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MoSELoraLayer):
            yield name, module


class MoSELoraLayer(BaseTunerLayer):
    """State and forward of the mixture-of-space adapter on one base layer."""

    #: The per-adapter trainable modules and parameters (PEFT's ``BaseTunerLayer`` contract).
    adapter_layer_names = (
        "moselora_A",
        "moselora_B",
        "moselora_router",
        "moselora_k",
        "moselora_log_scale",
    )
    #: The other per-adapter state PEFT moves, copies and deletes with an adapter.
    other_param_names = ("r", "scaling", "moselora_dropout", "moselora_k_fixed", "settings")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        #: Rank of each adapter.
        self.r: dict[str, int] = {}
        #: Output scale ``alpha / r`` of each adapter.
        self.scaling: dict[str, float] = {}
        #: What the forward pass of each adapter needs of its config (top-k, input map, …).
        self.settings: dict[str, dict[str, Any]] = {}
        self.moselora_A = nn.ModuleDict({})
        self.moselora_B = nn.ModuleDict({})
        self.moselora_router = nn.ModuleDict({})
        self.moselora_k = nn.ParameterDict({})
        self.moselora_k_fixed = BufferDict({}, persistent=True)
        self.moselora_log_scale = nn.ParameterDict({})
        self.moselora_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        # the routing slots each expert received since the last reset (``route_counts``)
        self._route_counts: dict[str, torch.Tensor] = {}
        # per adapter, the chosen experts of calls without a backward not counted yet
        # (decoding: counted once per _PENDING_ROUTES calls, or when read)
        self._pending_routes: dict[str, list[torch.Tensor]] = {}
        #: Real (non-padding) tokens routed since the last reset (a tensor on the layer's
        #: device: counting never waits for the device; :func:`~mosgeo_lora.stats.routing_stats`
        #: reads it).
        self.route_tokens: dict[str, torch.Tensor | int] = {}
        #: Per adapter, the weight-only terms of a call without a backward
        #: (:func:`mosgeo_lora.fused.constants`) and the weights' versions they were computed
        #: from: reused while those are unchanged (a generation), recomputed after any
        #: in-place update (an optimizer step, loading) or move.
        self._inference_constants: dict[str, tuple[tuple, FusedConstants]] = {}
        in_features, out_features = in_out_features(self.get_base_layer())
        if in_features is None:
            raise TypeError(f"MoSELoRA cannot adapt {type(self.get_base_layer()).__name__}")
        self.in_features, self.out_features = in_features, out_features

    @property
    def route_counts(self) -> dict[str, torch.Tensor]:
        """Routing slots each expert received since the last reset, per adapter
        (:mod:`mosgeo_lora.stats`); the calls not counted yet are counted first."""
        for name in list(self._pending_routes):
            self._flush_routes(name)
        return self._route_counts

    # ------------------------------------------------------------------ parameters
    def update_layer(self, adapter_name: str, config: MoSELoraConfig, **kwargs: Any) -> None:
        """Create (or re-create) the adapter ``adapter_name`` from ``config``."""
        r, n = config.r, config.num_experts
        self._inference_constants.pop(adapter_name, None)
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.scaling
        self.settings[adapter_name] = {
            "top_k": config.top_k,
            "input_map": config.input_map,
            "fused": config.fused,
            "curvature_bounds": config.curvature_bounds,
            "aux_loss_coef": config.aux_loss_coef,
            "num_experts": n,
            "router_input": config.router_input,
            "ball": config.input_balls(),
        }
        self.moselora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.moselora_B[adapter_name] = nn.Linear(n * r, self.out_features, bias=False)
        d_router = self.in_features if config.router_input == "input" else r
        self.moselora_router[adapter_name] = nn.Linear(d_router, n, bias=False)
        self.moselora_dropout[adapter_name] = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        k0 = torch.tensor(config.initial_curvatures(), dtype=torch.float32)
        n_learn = int(sum(config.curved_mask()))
        if n_learn:
            self.moselora_k[adapter_name] = nn.Parameter(k0[:n_learn].clone())
        self.moselora_k_fixed[adapter_name] = k0[n_learn:].clone()
        s0 = config.initial_input_scale(self.in_features)
        if s0 is not None:
            rho = torch.tensor([math.log(s0)], dtype=torch.float32)
            self.moselora_log_scale[adapter_name] = nn.Parameter(rho)
        elif adapter_name in self.moselora_log_scale:  # re-created without the scale
            del self.moselora_log_scale[adapter_name]
        self.reset_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Kaiming-uniform ``A`` and router; zero ``B`` (the identity at init), or random ``B``
        with ``init_weights=False``."""
        if adapter_name not in self.moselora_A:
            return
        nn.init.kaiming_uniform_(self.moselora_A[adapter_name].weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.moselora_router[adapter_name].weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.moselora_B[adapter_name].weight)
        else:
            nn.init.normal_(self.moselora_B[adapter_name].weight, std=0.5)

    def input_scale(self, adapter_name: str) -> torch.Tensor | None:
        """The learnable input scale ``s = exp(ρ)`` of ``adapter_name`` (``(1,)``), or
        ``None`` when the adapter has none (``MoSELoraConfig.input_scale``)."""
        if adapter_name not in self.moselora_log_scale:
            return None
        return self.moselora_log_scale[adapter_name].exp()

    def curvatures(self, adapter_name: str) -> torch.Tensor:
        """κ of the experts of ``adapter_name``, shape ``(N,)`` (bounds applied). With an input
        scale ``s`` these are the parameters; the experts act as curvature ``κ / s²``."""
        fixed = self.moselora_k_fixed[adapter_name]
        if adapter_name in self.moselora_k:
            k = self.moselora_k[adapter_name]
            bounds = self.settings[adapter_name]["curvature_bounds"]
            if bounds is not None:
                k = k.clamp(*bounds)
            return torch.cat([k, fixed.to(k.dtype)])
        return fixed

    # ------------------------------------------------------------------ merging
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Raises: a MoSELoRA adapter is not a matrix (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Raises: nothing is ever merged (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Raises: there is no ΔW (:data:`MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    # ------------------------------------------------------------------ forward
    def adapter_delta(
        self,
        x: torch.Tensor,
        adapter_name: str,
        call: CallState | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(α/r) Σ_i g_i o_i`` for input ``x`` (the adapter's additive output), plus ``base``
        when one is given (the fused path adds it inside its up-projection).

        ``call`` is the state of the wrapped model's forward pass (its token mask and weight);
        without one (a layer called on its own) every token counts and the balance term
        weighs ``aux_loss_coef``."""
        if base is not None and not self.training and not torch.is_grad_enabled():
            out = self._evaluation_call(x, base, adapter_name, call)
            if out is not None:
                return out
        cfg = self.settings[adapter_name]
        a_lin = self.moselora_A[adapter_name]
        dtype = a_lin.weight.dtype
        token_mask = call.token_mask if call is not None else None
        if token_mask is not None and tuple(token_mask.shape) != tuple(x.shape[:-1]):
            token_mask = None  # e.g. cached generation: one new token, the mask covers all
        recording = call is not None and not call.closed  # not a recomputation in backward
        autocast = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(device_type=x.device.type, enabled=False) if autocast else _NO_CONTEXT:
            drop = self.moselora_dropout[adapter_name]
            if drop.training:  # in evaluation mode dropout is the identity: no call
                x = drop(x)
            if x.dtype != dtype:
                x = x.to(dtype)
            # the fused path adds base in its up-projection's addmm; not in half precision,
            # where the delta is rounded to the storage dtype first, as the literal path's is
            # (one addmm would round once, differently)
            inner = cfg["fused"] and base is not None and base.dtype == dtype
            inner = inner and dtype not in HALF_DTYPES
            if cfg["fused"]:
                out = self._fused_delta(
                    x, base if inner else None, adapter_name, call, token_mask, recording
                )
            else:
                out = self._reference_delta(x, adapter_name, call, token_mask, recording)
        if base is None or inner:
            return out
        return base + out.to(base.dtype)

    def _evaluation_call(
        self,
        x: torch.Tensor,
        base: torch.Tensor,
        adapter_name: str,
        call: CallState | None,
    ) -> torch.Tensor | None:
        """The whole of :meth:`adapter_delta` for a call in evaluation mode without a
        gradient (evaluation, decoding) in the common case — the fused path, dropout off, no
        autocast, the input, the base layer's output and the adapter in one float32 or
        float64 dtype — with the fewest Python steps: :func:`mosgeo_lora.fused.infer` with
        the cached constants, then the routing counted. ``None`` in any other case (the
        general path then runs: the same result)."""
        if (
            not self.settings[adapter_name]["fused"]
            or not _cacheable(x)
            or torch.is_autocast_enabled(x.device.type)
            or adapter_dropout(self, adapter_name).training
        ):
            return None
        consts = self._constants(adapter_name)
        dtype = consts.weights[0].dtype
        if x.dtype != dtype or base.dtype != dtype or dtype in HALF_DTYPES:
            return None
        out, chosen = fused_infer(x, base, consts)
        if call is None or not call.closed:  # not a recomputation: count the routing
            w = None
            mask = None if call is None else call.token_mask
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
                w = mask.reshape(-1, 1).to(_wide(dtype))
            self._count_chosen(adapter_name, chosen, w, x)
        return out

    def _fused_delta(
        self,
        x: torch.Tensor,
        base: torch.Tensor | None,
        adapter_name: str,
        call: CallState | None,
        token_mask: torch.Tensor | None,
        recording: bool,
    ) -> torch.Tensor:
        cfg = self.settings[adapter_name]
        counting = recording or call is None
        if not (torch.is_grad_enabled() or (recording and self.training)) and _cacheable(
            x
        ):  # evaluation, decoding: no gradient, no balance term
            return self._inferred_delta(x, base, adapter_name, token_mask, counting)
        weights = self._weights(adapter_name)
        coef = cfg["aux_loss_coef"]
        grad_on = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weights[0], weights[1])
        )  # the router's logits need a gradient
        spec = Spec(
            top_k=cfg["top_k"],
            input_map=cfg["input_map"],
            scaling=self.scaling[adapter_name],
            balance=coef > 0 and grad_on,
            counts=counting,
            aux=coef > 0 and recording and (grad_on or self.training),
            router_on_input=cfg["router_input"] == "input",
            ball=cfg.get("ball"),
        )
        w = None
        if token_mask is not None and (spec.balance or spec.counts or spec.aux):
            w = token_mask.reshape(-1, 1).to(_wide(x.dtype))
        scale = (call.scale(coef) if call is not None else coef) if spec.balance else 1.0
        rho = self.moselora_log_scale.get(adapter_name)  # None: no input scale
        out, counts, value, aux = fused_adapter(x, base, weights, spec, w, scale, rho)
        if recording and aux is not None:
            call.record(aux)
        if counting:
            self._count_fused(adapter_name, counts, value, w, x)
        return out

    def _inferred_delta(
        self,
        x: torch.Tensor,
        base: torch.Tensor | None,
        adapter_name: str,
        token_mask: torch.Tensor | None,
        counting: bool,
    ) -> torch.Tensor:
        """:meth:`_fused_delta` of a call under ``no_grad``, outside training (no balance
        term to record): :func:`mosgeo_lora.fused.infer` with the cached constants."""
        out, chosen = fused_infer(x, base, self._constants(adapter_name))
        if counting:
            w = None if token_mask is None else token_mask.reshape(-1, 1).to(_wide(x.dtype))
            self._count_chosen(adapter_name, chosen, w, x)
        return out

    def _weights(self, adapter_name: str) -> tuple:
        """``(A, W_g, B_cat, κ_learnable (bounds applied) or None, κ_fixed)``."""
        k = self.moselora_k[adapter_name] if adapter_name in self.moselora_k else None
        bounds = self.settings[adapter_name]["curvature_bounds"]
        if k is not None and bounds is not None:
            k = k.clamp(*bounds)
        return (
            self.moselora_A[adapter_name].weight,
            self.moselora_router[adapter_name].weight,
            self.moselora_B[adapter_name].weight,
            k,
            self.moselora_k_fixed[adapter_name],
        )

    def _constants(self, adapter_name: str) -> FusedConstants:
        """The adapter's :func:`mosgeo_lora.fused.constants`, from the cache while ``A``,
        ``W_g``, ``B``, κ, ρ and the output scale are those it was built from (the weights'
        storage and in-place versions: :func:`mosgeo_lora._compat.tensor_versions`).
        Decoding calls this once per token and layer: the weights are read from the
        modules' own dictionaries (:func:`mosgeo_lora._compat.adapter_tensors`)."""
        tensors = adapter_tensors(self, adapter_name)
        key = (tensor_versions(*tensors), self.scaling[adapter_name])
        hit = self._inference_constants.get(adapter_name)
        if hit is not None and hit[0] == key:
            return hit[1]
        a_w, g_w, b_w, k, fixed, rho = tensors
        cfg = self.settings[adapter_name]
        if k is not None and cfg["curvature_bounds"] is not None:
            k = k.clamp(*cfg["curvature_bounds"])
        spec = Spec(
            top_k=cfg["top_k"],
            input_map=cfg["input_map"],
            scaling=self.scaling[adapter_name],
            balance=False,
            counts=True,
            aux=False,
            router_on_input=cfg["router_input"] == "input",
            ball=cfg.get("ball"),
        )
        consts = fused_constants((a_w, g_w, b_w, k, fixed), spec, rho)
        self._inference_constants[adapter_name] = (key, consts)
        return consts

    def _count_chosen(
        self, adapter_name: str, chosen: torch.Tensor | None, w: torch.Tensor | None, x
    ) -> None:
        """:meth:`_count_fused` from the indices of the chosen experts (a call without a
        backward, :func:`mosgeo_lora.fused.infer`): one ``index_add`` into the counts."""
        if chosen is None:  # dense
            self._count_fused(adapter_name, None, 1.0, w, x)
            return
        if w is None:  # every token counts: kept, counted in one op per _PENDING_ROUTES
            if adapter_name not in self._route_counts:
                self._route_counts[adapter_name] = self._counts_of(
                    adapter_name, _wide(x.dtype), x.device
                )
            pending = self._pending_routes.setdefault(adapter_name, [])
            pending.append(chosen)
            self.route_tokens[adapter_name] = (
                self.route_tokens.get(adapter_name, 0) + chosen.shape[0]
            )
            if len(pending) >= _PENDING_ROUTES:
                self._flush_routes(adapter_name)
            return
        with torch.no_grad():
            flat = chosen.reshape(-1)
            prev = self._counts_of(adapter_name, w.dtype, x.device)
            counts = prev.index_add(0, flat, w.expand(chosen.shape).reshape(-1))
            self._route_counts[adapter_name] = counts
            self.route_tokens[adapter_name] = self.route_tokens.get(adapter_name, 0) + w.sum()

    def _counts_of(self, adapter_name: str, dtype: torch.dtype, device) -> torch.Tensor:
        """The adapter's routing counts so far (zeros if none)."""
        prev = self._route_counts.get(adapter_name)
        if prev is None:
            n = self.settings[adapter_name]["num_experts"]
            prev = torch.zeros(n, dtype=dtype, device=device)
        return prev

    def _flush_routes(self, adapter_name: str) -> None:
        """Count the pending chosen experts of ``adapter_name`` in one ``index_add``."""
        pending = self._pending_routes.pop(adapter_name)
        with torch.no_grad():
            flat = torch.cat([c.reshape(-1) for c in pending])
            prev = self._route_counts[adapter_name]  # made by the first pending call
            self._route_counts[adapter_name] = prev.index_add(
                0, flat, _one(prev).expand(flat.shape)
            )

    def _count_fused(
        self,
        adapter_name: str,
        counts: torch.Tensor | None,
        value: float,
        w: torch.Tensor | None,
        x: torch.Tensor,
    ) -> None:
        """Add the call's routing slots (``counts / value``) and real tokens, on the device."""
        with torch.no_grad():
            tokens = x.numel() // x.shape[-1] if w is None else w.sum()  # no host sync
            if w is None and torch.compiler.is_compiling():
                # a Python int kept on the module is a guard of the compiled graph: a new
                # total every call would recompile every call (unpadded batches, decoding)
                tokens = torch.tensor(tokens, device=x.device)
            if counts is None:  # dense routing: every token to every expert
                n = self.settings[adapter_name]["num_experts"]
                counts, value = torch.ones(n, device=x.device) * tokens, 1.0
            prev = self.route_counts.get(adapter_name)
            self.route_counts[adapter_name] = (
                counts * (1.0 / value) if prev is None else prev.add(counts, alpha=1.0 / value)
            )
            self.route_tokens[adapter_name] = self.route_tokens.get(adapter_name, 0) + tokens

    def _reference_delta(
        self,
        x: torch.Tensor,
        adapter_name: str,
        call: CallState | None,
        token_mask: torch.Tensor | None,
        recording: bool,
    ) -> torch.Tensor:
        """The literal path (``fused=False``): autograd through :func:`experts_reference`,
        the balance term added to the logits' gradient by :class:`BalanceGradient`."""
        cfg = self.settings[adapter_name]
        z = self.moselora_A[adapter_name](x)
        logits = self.moselora_router[adapter_name](x if cfg["router_input"] == "input" else z)
        logits = self._balance(logits, cfg, call, token_mask, recording)
        gates, probs, mask = route(logits, cfg["top_k"])
        gates = gates.to(z.dtype)
        k = self.curvatures(adapter_name).to(z.dtype)
        b_cat = self.moselora_B[adapter_name].weight
        s = self.input_scale(adapter_name)
        if s is None:
            ball = cfg.get("ball")
            if ball is not None:
                ball = torch.tensor(ball, dtype=z.dtype, device=z.device)
            per_expert = experts_reference(z, b_cat, k, input_map=cfg["input_map"], ball=ball)
        else:  # literally: every expert reads z / s, its output is multiplied by s
            s = s.to(z.dtype)
            per_expert = experts_reference(z / s, b_cat, k, input_map=cfg["input_map"]) * s
        out = (per_expert * gates.unsqueeze(-1)).sum(-2)
        if recording or call is None:
            self._count_routing(adapter_name, mask, token_mask)
        return out * self.scaling[adapter_name]

    def _balance(
        self,
        logits: torch.Tensor,
        cfg: dict[str, Any],
        call: CallState | None,
        token_mask: torch.Tensor | None,
        recording: bool,
    ) -> torch.Tensor:
        """The logits, carrying the balance gradient when a backward pass may follow; the
        loss value is recorded in the call's state (reentrant checkpointing runs the forward
        pass under ``no_grad`` and the recomputation with gradients)."""
        coef = cfg["aux_loss_coef"]
        grad_on = torch.is_grad_enabled() and logits.requires_grad
        if coef <= 0 or not (grad_on or (recording and self.training)):
            return logits
        aux, grad = balance_loss_and_grad(logits, cfg["top_k"], token_mask)
        if recording:
            call.record(aux)
        if not grad_on:
            return logits
        scale = call.scale(coef) if call is not None else coef
        return BalanceGradient.apply(logits, grad, scale)

    def _count_routing(
        self, adapter_name: str, mask: torch.Tensor, token_mask: torch.Tensor | None
    ) -> None:
        with torch.no_grad():
            m = mask.reshape(-1, mask.shape[-1])
            if token_mask is not None:
                m = m * token_mask.reshape(-1, 1).to(m.dtype)
            counts = m.sum(0)
            prev = self.route_counts.get(adapter_name)
            self.route_counts[adapter_name] = counts if prev is None else prev + counts
            tokens = m.shape[0] if token_mask is None else token_mask.sum()  # no host sync
            self.route_tokens[adapter_name] = self.route_tokens.get(adapter_name, 0) + tokens


#: Calls without a backward whose chosen experts a layer keeps before counting them (one
#: ``index_add`` per this many decoding calls instead of one per call; a read counts them).
_PENDING_ROUTES = 64


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The routing statistics' dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


#: A 0-dim 1 per (dtype, device), for :meth:`MoSELoraLayer._count_chosen`'s ``index_add``.
_ONES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _one(like: torch.Tensor) -> torch.Tensor:
    key = (like.dtype, like.device)
    one = _ONES.get(key)
    if one is None:
        with torch.inference_mode(False):
            one = _ONES[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return one


def _cacheable(x: torch.Tensor) -> bool:
    """Whether a call may use the inference cache: a plain tensor (not a fake, meta or
    other subclass tensor, which has no data to cache from), and not while
    :func:`torch.compile` traces (the traced graph must read the weights)."""
    return type(x) is torch.Tensor and not x.is_meta and not torch.compiler.is_compiling()


class MoSELoraLinear(nn.Module, MoSELoraLayer):
    """MoSELoRA on ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2): the adapter reads the
    input and adds to the output, so the weight layout of the base layer does not matter."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: MoSELoraConfig, **kwargs: Any
    ) -> None:
        super().__init__()
        MoSELoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's output plus every active adapter's :meth:`adapter_delta`."""
        call = kwargs.pop(CALL_KWARG, None)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name in self.moselora_A.keys():
                result = self.adapter_delta(x, name, call, base=result)
        return result

    def __repr__(self) -> str:
        return "moselora." + super().__repr__()
