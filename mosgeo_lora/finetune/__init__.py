"""The ``mosgeo-lora`` application: fine-tune, evaluate and compare adapters on real LLMs.

Grouped by verb, over the tuner's public API (:mod:`mosgeo_lora`); the tuner never imports
anything from here.

======================  ====================================================================
module                  holds
======================  ====================================================================
:mod:`.cli`             the ``mosgeo-lora`` command (``python -m mosgeo_lora.finetune``)
:mod:`.config`          the run settings the command line reads (dataclasses)
:mod:`.train`           :func:`~.train.finetune`: one run with the HF ``Trainer``
:mod:`.evaluate`        greedy decoding and exact match; scoring a saved adapter
:mod:`.compare`         methods × learning rates × seeds, one table
:mod:`.methods`         method names → PEFT configs; activated parameters
:mod:`.baselines`       MELoRA and HMoRA as PEFT tuners (the paper's baselines PEFT lacks)
:mod:`.base_models`     the embedded SmolLM2, model folders, GGUF files, tiny test models
:mod:`.callbacks`       the application's ``TrainerCallback`` classes
:mod:`.data`            math problems, frozen test sets, prompts, scoring, collation
======================  ====================================================================
"""
