"""Registration of MoSELoRA with PEFT (peft_type ``MOSELORA``, parameter prefix ``moselora_``).

The ``PeftType`` member is added when this module is imported; :func:`register` then hands
config and tuner classes to PEFT. Both run once, on ``import mosgeo_lora``; after it
``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM`` and
transformers' ``load_adapter`` know the method. A saved adapter cannot be loaded before
``import mosgeo_lora``: PEFT then does not know the type.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

from ._compat import extend_str_enum
from .constants import NAME, PREFIX

__all__ = ["MOSELORA", "register"]

#: The ``PeftType`` member added at import, the ``peft_type`` of
#: :class:`~mosgeo_lora.config.MoSELoraConfig`.
MOSELORA = extend_str_enum(PeftType, NAME.upper(), NAME.upper())


def register(config_cls: type, model_cls: type) -> None:
    """Hand the config and tuner classes of ``MOSELORA`` to PEFT (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if MOSELORA not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
