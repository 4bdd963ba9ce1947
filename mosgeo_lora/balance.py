r"""The load-balancing loss, delivered through the backward pass of whatever loss is trained.

A trainer that computes its own loss (TRL), a wrapper that skips our model forward
(``get_peft_model`` without ``task_type``) or a framework that rebuilds the output object
(DDP) would all lose a balance term added to ``outputs["loss"]``. So the term never goes
through the loss: each adapted layer passes its router logits through
:class:`BalanceGradient`, which is the identity forward and, in backward, adds
``scale · ∂aux/∂logits`` to the incoming gradient (the technique of Megatron-LM's MoE
layers). The Switch loss of one layer and its gradient are closed forms of the router's
softmax ``p``, the top-k mask ``m`` and the token weights ``w`` (1 for a real token):

.. math::
    \mathrm{aux} = N \sum_i f_i P_i,\quad f_i = \frac{\sum_t w_t m_{ti}}{k \sum_t w_t},\quad
    P_i = \frac{\sum_t w_t p_{ti}}{\sum_t w_t},\qquad
    \frac{\partial\,\mathrm{aux}}{\partial z_t} = p_t \odot (c_t - \langle c_t, p_t\rangle),
    \quad c_{ti} = \frac{N f_i w_t}{\sum_s w_s}

(``f`` carries no gradient, as in Switch). The gradient is computed in the forward pass and
kept on the autograd node, not saved for backward: activation checkpointing recomputes saved
tensors, and the recomputation must not change it.

The scale makes the term invariant to how a step is split into micro-batches and processes.
The objective is ``aux_loss_coef`` times the mean of the adapted layers' losses, weighted by each
micro-batch's share of the step's label tokens when the HF ``Trainer`` passes
``num_items_in_batch`` (it then normalises the task loss by that count instead of dividing
by the accumulation steps; under DDP it counts the tokens of every rank and multiplies the
loss by the number of processes, which the scale mirrors, as transformers' default
``average_tokens_across_devices=True`` does). Without ``num_items_in_batch`` every call
weighs 1.

A forward pre-hook on the model the tuner wraps opens one :class:`CallState` per call (the
attention mask, the share); a forward pre-hook on each layer hands the open state to it as
the keyword argument ``moselora_call``; the root's forward hook closes it and exposes the
mean balance loss as ``outputs.aux_loss`` (``None`` when no layer computed one; on a MoE base
model whose outputs carry its own router's ``aux_loss``, ours is ``outputs.moselora_aux_loss``
only). These are attributes: a new dict key would break DDP's rebuilding of the output
object. The closed state stays current until the next call, so a
checkpointed layer recomputed inside backward still sees its batch's mask; it records no
statistics then (they were recorded in the forward pass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .constants import task_type_of
from .router import route_backward, route_forward

__all__ = [
    "CALL_KWARG",
    "CallState",
    "CallRecorder",
    "BalanceGradient",
    "balance_terms",
    "balance_loss_and_grad",
    "install",
    "recorder_of",
    "balance_loss",
]

#: The forward keyword argument that carries a :class:`CallState` into a layer.
CALL_KWARG = "moselora_call"
#: Where the model the tuner wraps keeps its :class:`CallRecorder`.
_RECORDER = "_moselora_recorder"


@dataclass
class CallState:
    """What one forward pass of the wrapped model shares with every MoSELoRA layer."""

    #: The attention mask of the call (1 = real token), or ``None``: padding is left out of
    #: the balance loss and the routing statistics.
    token_mask: torch.Tensor | None = None
    #: This micro-batch's weight in the optimizer step (a 0-dim tensor, or 1.0).
    share: torch.Tensor | float = 1.0
    #: The MoSELoRA layers of the model: the objective is the mean of their terms.
    total: int = 1
    #: Balance terms recorded in the forward pass (for the mean value shown).
    layers: int = 0
    #: Their sum, detached (for ``outputs.aux_loss`` and the logs).
    aux_sum: torch.Tensor | None = None
    #: The call has returned: what runs now is a recomputation inside backward.
    closed: bool = False

    def scale(self, coef: float) -> torch.Tensor | float:
        """The factor of one layer's ``∂aux/∂logits`` in the objective: ``coef · share /
        total``, a tensor when the share is one (so a compiled graph reads it at run time)."""
        return self.share * (coef / max(self.total, 1))

    def record(self, aux: torch.Tensor) -> None:
        """Count one layer's balance term and add its value to the sum."""
        self.layers += 1
        self.aux_sum = aux if self.aux_sum is None else self.aux_sum + aux

    def aux_loss(self) -> torch.Tensor | None:
        """The mean balance loss of the call, or ``None`` if no layer recorded one."""
        return None if self.aux_sum is None else self.aux_sum / self.layers


class BalanceGradient(torch.autograd.Function):
    """Identity on the router logits; in backward, adds ``scale · grad``."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, grad: torch.Tensor, scale: Any):
        """The logits unchanged; ``scale · grad`` (``grad = ∂aux/∂logits``) waits on the node."""
        # an attribute, not save_for_backward: checkpointing must not recompute it
        ctx.balance = (grad * scale).to(logits.dtype)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        """The incoming gradient plus the scaled ``∂aux/∂logits``."""
        return g + ctx.balance, None, None


def balance_terms(
    probs: torch.Tensor,
    mask: torch.Tensor | None,
    top_k: int,
    weights: torch.Tensor | None = None,
    *,
    value: float = 1.0,
    scale: torch.Tensor | float = 1.0,
    grad: bool = True,
    aux: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, float, torch.Tensor | None]:
    r"""The Switch loss of one layer from the routing of :func:`mosgeo_lora.router.route_forward`
    (module docstring), without autograd: one formula for the fused layer and
    :func:`balance_loss_and_grad`.

    Args:
        probs: the softmax ``p``, shape ``(T, N)``.
        mask: ``value`` times the 0/1 mask of chosen experts, or ``None`` (dense routing).
        top_k: experts per token.
        weights: ``w``, shape ``(T, 1)`` (1 = real token), or ``None`` (every token counts).
        value: the constant folded into ``mask``.
        scale: the factor of the loss in the objective (a float or a 0-dim tensor).
        grad: also return the gradient's coefficients.
        aux: also return the loss value.

    Returns:
        ``(counts, c, alpha, aux)``: ``counts = value · Σ_t w_t m_t`` (``None`` when dense),
        the coefficients ``alpha · c`` of :func:`mosgeo_lora.router.route_backward` with
        ``scale · ∂aux/∂logits = p ⊙ (alpha·c − ⟨alpha·c, p⟩)`` (``None``: no gradient; dense
        routing has none, f being uniform), and the loss value (or ``None``).
    """
    n = probs.shape[-1]
    total = probs.shape[0] if weights is None else weights.sum().clamp_min(1.0)
    psum = None
    if aux:
        psum = probs.sum(0) if weights is None else (probs * weights).sum(0)
    if mask is None:  # f_i = 1/N: aux = Σ_i P_i, and its gradient vanishes
        return None, None, 1.0, (None if psum is None else psum.sum() / total)
    counts = mask.sum(0) if weights is None else (mask * weights).sum(0)
    base = n / (min(top_k, n) * value)  # aux = base · ⟨counts, Σ_t w_t p_t⟩ / W²
    value_aux = None
    if aux:
        value_aux = torch.dot(counts, psum) * (base / total**2)
    c, alpha = None, 1.0
    if grad:  # c_ti = N f_i w_t / W · scale = base · scale · w_t counts_i / W²
        if weights is None:
            if isinstance(scale, torch.Tensor):
                c, alpha = counts * scale, base / total**2
            else:
                c, alpha = counts, base * scale / total**2
        else:
            c, alpha = (weights * counts) * (scale / (total * total)), base
    return counts, c, alpha, value_aux


def balance_loss_and_grad(
    logits: torch.Tensor, top_k: int, token_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Switch loss of one layer (:func:`mosgeo_lora.router.load_balancing_loss`) and its
    gradient with respect to the router ``logits`` (module docstring), without autograd."""
    with torch.no_grad():
        n = logits.shape[-1]
        gates, p, m = route_forward(logits.reshape(-1, n), top_k)
        w = None
        if token_mask is not None:
            w = token_mask.expand(logits.shape[:-1]).reshape(-1, 1).to(p.dtype)
        _, c, alpha, aux = balance_terms(p, m, top_k, w, aux=True)
        if c is None:
            grad = torch.zeros_like(p)
        else:
            grad = route_backward(None, p, gates, m, top_k, balance=c, alpha=alpha)
        return aux, grad.reshape(logits.shape).to(logits.dtype)


class CallRecorder:
    """The per-call state of one wrapped model, and the balance losses since the last read."""

    def __init__(self) -> None:
        #: The state of the last call: open during its forward pass, closed after it.
        self.current: CallState | None = None
        #: The MoSELoRA layers installed on this model.
        self.layers = 0
        # [Σ aux, calls] of the training calls since the last read: a tensor, so that counting
        # neither waits for the device nor changes a Python int that compiled graphs guard on
        self._acc: torch.Tensor | None = None

    def begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Root forward pre-hook: open the call's state."""
        self.current = CallState(
            token_mask=kwargs.get("attention_mask"),
            share=_micro_batch_share(
                kwargs.get("shift_labels", kwargs.get("labels")),
                kwargs.get("num_items_in_batch"),
                shifted=_loss_shifts_labels(module) and "shift_labels" not in kwargs,
            ),
            total=self.layers,
        )

    def end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Root forward hook: close the state, expose ``output.aux_loss``, keep it for the logs."""
        state = self.current
        if state is None:
            return output
        state.closed = True
        aux = state.aux_loss()
        if aux is not None and torch.is_grad_enabled() and module.training:
            step = torch.stack([aux.detach().float(), torch.ones_like(aux, dtype=torch.float32)])
            self._acc = step if self._acc is None else self._acc + step
        if isinstance(output, dict):  # transformers ModelOutput: attributes, not keys
            object.__setattr__(output, "moselora_aux_loss", aux)
            if "aux_loss" not in {f.name for f in dataclasses.fields(output)}:
                object.__setattr__(output, "aux_loss", aux)  # a MoE model's own stays
        return output

    def inject(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Layer forward pre-hook: hand the current state to the layer."""
        return args, {**kwargs, CALL_KWARG: self.current}

    def read(self, reset: bool = True) -> float | None:
        """Mean balance loss of the training calls since the last read (one host sync)."""
        if self._acc is None:
            return None
        total, calls = self._acc.tolist()
        if reset:
            self._acc = None
        if calls == 0:
            return None
        value = total / calls
        return value


def _loss_shifts_labels(root: nn.Module) -> bool:
    """Whether ``root``'s loss predicts ``labels[..., 1:]`` (a decoder-only causal LM), the
    Trainer's rule for counting ``num_items_in_batch``."""
    cfg = getattr(root, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    try:
        return task_type_of(type(root).__name__) == "CAUSAL_LM"
    except ValueError:
        return False


def _micro_batch_share(labels: Any, num_items: Any, shifted: bool = True) -> torch.Tensor | float:
    """This micro-batch's share of the step's label items, counted as the Trainer counts them
    (``labels[..., 1:]`` where the loss shifts them, a causal LM; every label otherwise:
    one per sequence for classification, one per token for token classification), times the
    number of processes (the Trainer's count is over all of them); 1.0 without
    ``num_items_in_batch``."""
    if num_items is None or not isinstance(labels, torch.Tensor):
        return 1.0
    mine = labels[..., 1:] if shifted and labels.dim() > 1 else labels
    count = (mine != -100).sum().float()
    total = torch.as_tensor(num_items, device=count.device, dtype=count.dtype)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    return count * world / total.clamp_min(1)


def recorder_of(root: nn.Module) -> CallRecorder | None:
    """The :class:`CallRecorder` installed on ``root`` (or on a module inside it), if any."""
    for module in root.modules():
        recorder = getattr(module, _RECORDER, None)
        if recorder is not None:
            return recorder
    return None


def install(root: nn.Module, layer: nn.Module) -> CallRecorder:
    """Make ``layer`` receive the per-call state of ``root`` (hooks installed once each)."""
    recorder = getattr(root, _RECORDER, None)
    if recorder is None:
        recorder = CallRecorder()
        object.__setattr__(root, _RECORDER, recorder)
        root.register_forward_pre_hook(recorder.begin, with_kwargs=True)
        root.register_forward_hook(recorder.end, with_kwargs=True)
    if getattr(layer, _RECORDER, None) is not recorder:
        object.__setattr__(layer, _RECORDER, recorder)
        layer.register_forward_pre_hook(recorder.inject, with_kwargs=True)
        recorder.layers += 1
    return recorder


def balance_loss(model: nn.Module, reset: bool = True) -> float | None:
    """The mean load-balancing loss of the training forward passes of ``model`` since the
    last call (``None`` if there were none); ``reset=False`` keeps counting."""
    recorder = recorder_of(model)
    return None if recorder is None else recorder.read(reset)
