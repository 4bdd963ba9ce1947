"""Registration of MoSELoRA with PEFT (peft_type ``MOSELORA``, parameter prefix ``moselora_``).

The ``PeftType`` member is added when this module is imported; :func:`register` then hands
config and tuner classes to PEFT. Both run once, on ``import mosgeo_lora``; after it
``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM`` and
transformers' ``load_adapter`` know the method. A saved adapter cannot be loaded before
``import mosgeo_lora``: PEFT then does not know the type.

:func:`peft_type` and :func:`register_method` do the same for any other tuner written
outside PEFT (the application's baselines, ``mosgeo_lora.finetune.baselines``): PEFT's
``PeftType`` is a closed enum, and the private enum API that opens it stays in ``_compat``.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

from ._compat import extend_str_enum
from .constants import NAME, PREFIX

__all__ = ["MOSELORA", "peft_type", "register_method", "register"]


def peft_type(name: str) -> PeftType:
    """The ``PeftType`` member of the method ``name`` (its upper case), added to PEFT's
    closed enum if PEFT does not have it yet (idempotent)."""
    return extend_str_enum(PeftType, name.upper(), name.upper())


#: The ``PeftType`` member added at import, the ``peft_type`` of
#: :class:`~mosgeo_lora.config.MoSELoraConfig`.
MOSELORA = peft_type(NAME)


def register_method(name: str, config_cls: type, model_cls: type, prefix: str) -> None:
    """Hand the config and tuner classes of the method ``name`` (lower case) to PEFT, with
    ``prefix`` the start of every adapter parameter name (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if peft_type(name) not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)


def register(config_cls: type, model_cls: type) -> None:
    """Hand the config and tuner classes of ``MOSELORA`` to PEFT (idempotent)."""
    register_method(NAME, config_cls, model_cls, PREFIX)
