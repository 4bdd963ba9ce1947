"""``MoSELoraModel`` (the PEFT tuner), ``wrap``, and the per-call plumbing of the balance loss.

The auxiliary load-balancing loss reaches the training loss without a Trainer subclass:
``MoSELoraModel.forward`` (which ``PeftModel.forward`` calls) runs the model inside
:func:`moselora_call`, averages the per-layer Switch losses the pass collected, adds
``aux_loss_coef ·`` it to ``outputs["loss"]`` and exposes it as ``outputs["aux_loss"]``.
When the HF ``Trainer`` passes ``num_items_in_batch`` (it then does *not* divide the loss
by the gradient-accumulation steps), the aux term is weighted by this micro-batch's share
of the label tokens, so an accumulation window adds it up once instead of once per
micro-batch. Under *reentrant* gradient checkpointing the layer forward
runs under ``no_grad`` and the aux loss has no graph: training then stops with an error
that says so instead of silently dropping the router's balance gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import MoSELoraConfig
from .constants import FFN_TARGET_MODULES, PREFIX, ffn_targets
from .layer import (
    CALL_KWARG,
    MERGE_ERROR,
    CallState,
    MoSELoraLayer,
    MoSELoraLinear,
    moselora_layers,
)

__all__ = ["MoSELoraModel", "wrap", "moselora_call"]


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is an optional extra
        return False
    return isinstance(module, Conv1D)


class MoSELoraModel(BaseTuner):
    """PEFT tuner that replaces the target linear layers by :class:`MoSELoraLinear`."""

    #: The prefix of every adapter parameter name (PEFT's tuner contract).
    prefix: str = PREFIX
    tuner_layer_cls = MoSELoraLayer
    target_module_mapping = FFN_TARGET_MODULES

    def _prepare_adapter_config(self, peft_config: MoSELoraConfig, model_config: dict):
        if peft_config.target_modules is None:
            targets = ffn_targets(model_config.get("model_type"))
            peft_config.target_modules = targets if isinstance(targets, str) else set(targets)
        return peft_config

    def _create_and_replace(
        self,
        config: MoSELoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, MoSELoraLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = self._create_new_module(config, adapter_name, target)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until active
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: MoSELoraConfig, adapter_name: str, target: nn.Module):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Linear) or _is_conv1d(base):
            return MoSELoraLinear(target, adapter_name, config)
        raise TypeError(
            f"MoSELoRA adapts torch.nn.Linear and transformers Conv1D layers; target "
            f"{type(base).__name__} is neither. Choose other target_modules."
        )

    # ------------------------------------------------------------------ merging
    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Raises: a MoSELoRA adapter cannot be merged (:data:`~mosgeo_lora.layer.MERGE_ERROR`)."""
        raise NotImplementedError(MERGE_ERROR)

    # ------------------------------------------------------------------ forward + aux
    def forward(self, *args: Any, **kwargs: Any):
        """The wrapped model's forward, with the balance loss added to ``outputs["loss"]``."""
        with moselora_call(self.model, kwargs.get("attention_mask")) as call:
            outputs = self.model.forward(*args, **kwargs)
        return self._add_aux_loss(outputs, call, kwargs)

    def _add_aux_loss(self, outputs: Any, call: CallState, kwargs: dict) -> Any:
        active = [a for a in self.active_adapters if a in self.peft_config]
        coef = max((self.peft_config[a].aux_loss_coef for a in active), default=0.0)
        losses, without_grad = call.aux_losses, call.without_grad
        as_dict = isinstance(outputs, dict)
        # return_dict=False: with labels the loss is the first element of the tuple
        as_tuple = (
            isinstance(outputs, tuple)
            and kwargs.get("labels") is not None
            and len(outputs) > 0
            and isinstance(outputs[0], torch.Tensor)
            and outputs[0].dim() == 0
        )
        if coef <= 0 or not (as_dict or as_tuple):
            return outputs
        loss = outputs.get("loss") if as_dict else outputs[0]
        aux = torch.stack([loss.float() for loss in losses]).mean() if losses else None
        dead = without_grad or (aux is not None and not aux.requires_grad)
        if loss is not None and loss.requires_grad and dead:
            raise RuntimeError(
                "MoSELoRA's load-balancing loss has no gradient: the adapted layers ran under "
                "torch.no_grad while the training loss requires grad. This is what *reentrant* "
                "gradient checkpointing does (the router would silently get no balance "
                "gradient). Use gradient_checkpointing_kwargs={'use_reentrant': False}, or set "
                "aux_loss_coef=0 in the MoSELoraConfig."
            )
        if aux is None:
            return outputs
        if loss is not None:
            share = _micro_batch_share(kwargs, loss)
            loss = loss + (coef * share) * aux.to(loss.dtype)
        if not as_dict:
            return (loss, *outputs[1:])
        outputs["aux_loss"] = aux.detach()
        if loss is not None:
            outputs["loss"] = loss
        return outputs


def _micro_batch_share(kwargs: dict, loss: torch.Tensor) -> torch.Tensor | float:
    """This micro-batch's share of the label tokens of the optimizer step (1 without
    ``num_items_in_batch``), counted as the Trainer counts them (causal LM: ``labels[..., 1:]``)."""
    total = kwargs.get("num_items_in_batch")
    labels = kwargs.get("labels")
    if total is None or labels is None:
        return 1.0
    shifted = kwargs.get("shift_labels")
    mine = shifted if shifted is not None else (labels[..., 1:] if labels.dim() > 1 else labels)
    count = (mine != -100).sum().to(loss.dtype)
    total = torch.as_tensor(total, device=loss.device, dtype=loss.dtype)
    return count / total.clamp_min(1)


@contextlib.contextmanager
def moselora_call(model: nn.Module, token_mask: torch.Tensor | None = None) -> Iterator[CallState]:
    """Share one :class:`~mosgeo_lora.layer.CallState` with every MoSELoRA layer of ``model``
    for the forward passes run inside the ``with`` block.

    A forward pre-hook on each layer adds the state as the keyword argument
    ``moselora_call``; the hooks are removed on exit. ``MoSELoraModel.forward`` uses it;
    code that calls the wrapped model directly (a custom loop, a benchmark) can collect the
    layers' balance losses the same way::

        with moselora_call(model, attention_mask) as call:
            out = model(input_ids, attention_mask=attention_mask)
        aux = torch.stack(call.aux_losses).mean()
    """
    state = CallState(token_mask=token_mask)
    hook = functools.partial(_inject_call, state=state)
    handles = [
        layer.register_forward_pre_hook(hook, with_kwargs=True)
        for _, layer in moselora_layers(model)
    ]
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


def _inject_call(
    module: nn.Module, args: tuple, kwargs: dict, *, state: CallState
) -> tuple[tuple, dict]:
    return args, {**kwargs, CALL_KWARG: state}


def wrap(model: nn.Module, config: MoSELoraConfig | None = None, **overrides: Any) -> PeftModel:
    """``get_peft_model(model, config)`` with MoSELoRA defaults.

    ``config`` defaults to ``MoSELoraConfig()``; ``overrides`` replace its fields (e.g.
    ``wrap(model, preset="moselora-h", r=16)``). ``target_modules`` defaults to the FFN
    projections of the model's architecture
    (:data:`~mosgeo_lora.constants.FFN_TARGET_MODULES`); the inverse is PEFT's ``unload()``.
    """
    if config is None:
        config = MoSELoraConfig(**overrides)
    elif overrides:
        fields = {**config.to_dict(), **overrides}
        fields.pop("peft_type", None)
        names = {f.name for f in dataclasses.fields(MoSELoraConfig)}
        config = MoSELoraConfig(**{k: v for k, v in fields.items() if k in names})
    if config.task_type is None and getattr(getattr(model, "config", None), "is_decoder", True):
        # PeftModelForCausalLM handles generate() and the inputs_embeds plumbing
        if hasattr(model, "generate") and hasattr(model, "lm_head"):
            config.task_type = "CAUSAL_LM"
    return get_peft_model(model, config)
