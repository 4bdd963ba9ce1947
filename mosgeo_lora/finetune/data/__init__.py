"""Math problems for fine-tuning and evaluation, offline.

========================  =================================================================
module                    holds
========================  =================================================================
:mod:`.examples`          :class:`Example`, :class:`DataError`, JSONL files of problems
:mod:`.shims`             the compatibility shims ``mathematics_dataset`` needs today
:mod:`.seeds`             the seed ranges of training / validation / test, and seeding
:mod:`.generator`         the generator modules offered, and :func:`generate`
:mod:`.frozen`            the frozen test sets shipped in ``eval_sets/``
:mod:`.training`          the training mix, the validation set, true/false rows
:mod:`.prompts`           the prompt format, answer extraction and exact match
:mod:`.collate`           tokenisation and batching for training
========================  =================================================================

Every public name is re-exported here: ``from mosgeo_lora.finetune import data`` then
``data.generate(...)``, ``data.eval_sets()``, ``data.exact_match(...)``.
"""

from __future__ import annotations

from .collate import (
    CausalLMCollator,
    ClassificationCollator,
    check_fits,
    prompt_ids,
    text_prompt_ids,
    tokenize_example,
    tokenize_pair,
    tokenize_prompted,
    tokenize_text,
)
from .examples import DataError, Example, load_jsonl, to_jsonl
from .frozen import (
    EVAL_DIR,
    EVAL_SET_SIZE,
    EVAL_SETS,
    SEEN_EVAL_SETS,
    UNSEEN_EVAL_SETS,
    eval_sets,
    make_eval_set,
)
from .generator import MAX_ANSWER_CHARS, MAX_QUESTION_CHARS, MODULES, TRAIN_MODULES, generate
from .prompts import build_prompt, exact_match, extract_answer, normalize_answer, target_text
from .seeds import EVAL_SEED, VALIDATION_SEED
from .shims import install_shims
from .training import BINARY_MODULES, binary_rows, training_examples, validation_examples

__all__ = [
    "Example",
    "DataError",
    "MODULES",
    "TRAIN_MODULES",
    "EVAL_SETS",
    "SEEN_EVAL_SETS",
    "UNSEEN_EVAL_SETS",
    "EVAL_SET_SIZE",
    "EVAL_DIR",
    "EVAL_SEED",
    "VALIDATION_SEED",
    "MAX_QUESTION_CHARS",
    "MAX_ANSWER_CHARS",
    "install_shims",
    "generate",
    "training_examples",
    "validation_examples",
    "make_eval_set",
    "to_jsonl",
    "load_jsonl",
    "eval_sets",
    "build_prompt",
    "target_text",
    "extract_answer",
    "normalize_answer",
    "exact_match",
    "tokenize_example",
    "tokenize_pair",
    "tokenize_prompted",
    "tokenize_text",
    "prompt_ids",
    "text_prompt_ids",
    "check_fits",
    "CausalLMCollator",
    "ClassificationCollator",
    "BINARY_MODULES",
    "binary_rows",
]
