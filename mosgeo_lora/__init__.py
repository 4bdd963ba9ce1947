"""mosgeo_lora: Mixture-of-Space LoRA (MoSELoRA) built on :mod:`mosgeo` (work in progress)."""

__version__ = "0.1.0"
