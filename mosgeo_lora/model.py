"""``MoSELoraModel`` (the PEFT tuner) and ``wrap``.

The tuner installs the per-call plumbing of :mod:`mosgeo_lora.balance` on the model it wraps
(a forward pre-hook and a forward hook on that model, a pre-hook on each layer), so every
route to a MoSELoRA model trains with the balance loss: ``wrap``, ``get_peft_model`` with
or without ``task_type``, ``PeftModel.from_pretrained`` and transformers' ``load_adapter``.
``outputs.loss`` is the task loss the model computes; the balance term is added to the
gradient, not to the loss (``outputs.aux_loss`` shows its value).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from . import balance
from .config import MoSELoraConfig
from .constants import FFN_TARGET_MODULES, PREFIX, ffn_targets, task_type_of
from .layer import MERGE_ERROR, MoSELoraLayer, MoSELoraLinear

__all__ = ["MoSELoraModel", "wrap"]


def _task_type(model: nn.Module) -> str | None:
    """The PEFT task type of a transformers model (``None`` for any other module)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return None  # not a transformers model: no head to know about
    return task_type_of(type(model).__name__, bool(getattr(cfg, "is_encoder_decoder", False)))


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
        balance.install(self.model, new_module)

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

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any):
        """The wrapped model's forward, called as a module so that its hooks run."""
        return self.model(*args, **kwargs)


def wrap(
    model: nn.Module,
    config: MoSELoraConfig | None = None,
    *,
    seed: int | None = None,
    **overrides: Any,
) -> PeftModel:
    """``get_peft_model(model, config)`` with MoSELoRA defaults.

    ``config`` defaults to ``MoSELoraConfig()``; ``overrides`` replace its fields (e.g.
    ``wrap(model, preset="moselora-h", r=16)``). ``target_modules`` defaults to the FFN
    projections of the model's architecture
    (:data:`~mosgeo_lora.constants.FFN_TARGET_MODULES`); the inverse is PEFT's ``unload()``.

    The adapter's random initialisation (``A``, the router, and ``B`` with
    ``init_weights=False``) is drawn from torch's global generator, as in every PEFT tuner;
    ``seed`` draws it from ``torch.manual_seed(seed)`` instead and leaves the global generator
    as it was, so two runs with the same ``seed`` start from the same adapter.

    ``task_type`` (unset in ``config``) is read from the model's class
    (:func:`~mosgeo_lora.constants.task_type_of`): a causal LM gets PEFT's generate plumbing,
    a classification model a trainable head (PEFT's ``modules_to_save``).

    Raises:
        ValueError: a transformers model with a head whose task type is unknown and no
            ``task_type`` given.
    """
    if config is None:
        config = MoSELoraConfig(**overrides)
    elif overrides:
        fields = {**config.to_dict(), **overrides}
        fields.pop("peft_type", None)
        names = {f.name for f in dataclasses.fields(MoSELoraConfig)}
        config = MoSELoraConfig(**{k: v for k, v in fields.items() if k in names})
    if config.task_type is None:
        config.task_type = _task_type(model)
    if seed is None:
        return get_peft_model(model, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)
