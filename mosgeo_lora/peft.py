"""Registration of MoSELoRA with PEFT (peft_type ``MOSELORA``, parameter prefix ``moselora_``).

PEFT's ``PeftType`` is a closed ``str`` enum and ``register_peft_method`` only accepts names
that are already members, so the member is added at import time. The registration runs
once, on ``import mosgeo_lora``; after it ``get_peft_model``, ``PeftModel.from_pretrained``,
``AutoPeftModelForCausalLM`` and transformers' ``load_adapter`` know the method. A saved
adapter cannot be loaded before ``import mosgeo_lora``: PEFT then does not know the type.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

#: The method name PEFT registers (``register_peft_method(name=...)``).
NAME = "moselora"
#: The prefix of every adapter parameter and buffer name.
PREFIX = "moselora_"

__all__ = ["MOSELORA", "NAME", "PREFIX", "register"]


def _extend_str_enum(enum_cls: type, name: str, value: str):
    """Add the member ``name = value`` to a ``(str, Enum)`` class, or return the existing one.

    Uses only the documented member tables (``_member_map_``, ``_value2member_map_``,
    ``_member_names_``) that ``Enum`` keeps on every CPython from 3.8 to 3.13.
    """
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    # EnumType.__setattr__ refuses to (re)bind member names; the class dict is ours to set
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


#: The ``PeftType`` member added at import, the ``peft_type`` of
#: :class:`~mosgeo_lora.config.MoSELoraConfig`.
MOSELORA = _extend_str_enum(PeftType, NAME.upper(), NAME.upper())

_registered = False


def register() -> None:
    """Register config and tuner with PEFT (idempotent)."""
    global _registered
    if _registered:
        return
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    from .config import MoSELoraConfig
    from .model import MoSELoraModel

    if MOSELORA not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(
            name=NAME, config_cls=MoSELoraConfig, model_cls=MoSELoraModel, prefix=PREFIX
        )
    _registered = True
