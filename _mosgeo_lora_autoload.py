"""Register MoSELoRA with PEFT as soon as a process imports PEFT, without ``import mosgeo_lora``.

A wheel install of mosgeo puts ``mosgeo_lora_autoload.pth`` into site-packages; Python runs
its one line, ``import _mosgeo_lora_autoload``, at start-up (the technique coverage and
wrapt use). This module only adds a finder in front of ``sys.meta_path`` (microseconds);
when ``peft`` is imported, the finder lets it load as usual and then imports
``mosgeo_lora``, which adds ``MOSELORA`` to PEFT. So a script, lm-eval's ``peft=``,
``PeftModel.from_pretrained`` or ``AutoModelForCausalLM.from_pretrained(adapter_dir)`` load a
saved MoSELoRA adapter in a process that never imports mosgeo_lora itself.

Set ``MOSGEO_LORA_AUTOLOAD=0`` to turn it off. Editable installs (``pip install -e``) do not
install the ``.pth`` file; there ``import mosgeo_lora`` before loading an adapter.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["install"]


class _PeftLoader:
    """PEFT's own loader, then ``import mosgeo_lora``."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # as if we were never here
        try:
            import mosgeo_lora  # noqa: F401 - the import registers MOSELORA with PEFT
        except Exception as e:  # noqa: BLE001 - a broken optional add-on must not break peft
            warnings.warn(
                f"mosgeo: could not register MoSELoRA with PEFT ({e!r}); import mosgeo_lora "
                "yourself to see why",
                RuntimeWarning,
                stacklevel=2,
            )


class _PeftWatcher:
    """A ``sys.meta_path`` finder that answers for ``peft`` once, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "peft":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PeftLoader(spec.loader)
        return spec


def install() -> None:
    """Watch for ``import peft`` (unless ``MOSGEO_LORA_AUTOLOAD=0`` or PEFT is already in)."""
    if os.environ.get("MOSGEO_LORA_AUTOLOAD", "1") == "0" or "peft" in sys.modules:
        return
    if not any(isinstance(f, _PeftWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftWatcher())


install()
