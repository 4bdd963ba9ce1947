"""The baselines of the paper's Table 1 that PEFT does not ship, as PEFT tuners.

==================  ==========================================================================
module              holds
==================  ==========================================================================
:mod:`.melora`      MELoRA (Ren et al., ACL 2024): mini LoRAs on a block-diagonal ΔW
:mod:`.hmora`       HMoRA (Liao et al., ICLR 2025): LoRA experts, token- and task-level routing
==================  ==========================================================================

Importing this package registers both with PEFT (peft_types ``MELORA`` and ``HMORA``), so
``get_peft_model``, ``save_pretrained`` and ``PeftModel.from_pretrained`` know them; the
application imports it through :mod:`mosgeo_lora.finetune.methods`. They are baselines of
the application, not part of the MoSELoRA tuner: ``import mosgeo_lora`` never loads them, and
another process that loads a saved MELoRA or HMoRA adapter must ``import
mosgeo_lora.finetune.baselines`` first (``docs/design.md`` §4.2).
"""

from __future__ import annotations

from mosgeo_lora.registry import register_method

from . import hmora, melora
from .hmora import HMoRAConfig, HMoRAModel
from .melora import MELoraConfig, MELoraModel

__all__ = ["melora", "hmora", "MELoraConfig", "MELoraModel", "HMoRAConfig", "HMoRAModel"]

register_method(melora.NAME, MELoraConfig, MELoraModel, melora.PREFIX)
register_method(hmora.NAME, HMoRAConfig, HMoRAModel, hmora.PREFIX)
