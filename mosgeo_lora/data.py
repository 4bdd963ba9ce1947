"""Math problems for fine-tuning and evaluation: generation, frozen eval sets, prompts, scoring.

Training problems come from DeepMind's offline generator ``mathematics_dataset==1.0.1``
(``pip install mosgeo[lora]``), made to run on current sympy / NumPy 2 by
:func:`install_shims`. Evaluation uses frozen JSONL files shipped in ``eval_sets/`` so every
run scores the same problems: held-out problems of the training modules (``SEEN_EVAL_SETS``)
and modules never trained on (``UNSEEN_EVAL_SETS``), mirroring "train on a mix, test on an
unseen benchmark".

Reproducibility. The generator draws from Python's ``random``, NumPy's global generator and,
for ``numbers__is_prime`` (``sympy.randprime``), sympy's private ``sympy.core.random`` generator;
:func:`generate` seeds all three and restores the caller's states afterwards. Modules that
name variables (``*_composed``, algebra, calculus, polynomials) iterate over sets of strings,
so their output also depends on ``PYTHONHASHSEED``, which a running process cannot change:
they are not offered (``MODULES`` lists the ones that are).

Prompt format, answer extraction and exact-match scoring live here too, plus the tokenization
and collation used for training on ``question``/``answer`` pairs (generated, or a user's JSONL).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Example",
    "DataError",
    "MODULES",
    "TRAIN_MODULES",
    "EVAL_SETS",
    "SEEN_EVAL_SETS",
    "UNSEEN_EVAL_SETS",
    "EVAL_SET_SIZE",
    "install_shims",
    "generate",
    "training_examples",
    "prompt_ids",
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
    "check_fits",
    "CausalLMCollator",
]


@dataclass(frozen=True)
class Example:
    """One problem: the question, its reference answer and where it came from."""

    question: str
    answer: str
    module: str = ""  # generator module name, or "user" for a user's JSONL file


class DataError(ValueError):
    """Bad input to this module: unknown module or eval set, malformed file, too-long example."""


# Generator modules whose output depends only on the seed (checked across processes with
# different PYTHONHASHSEED values in tests/test_data.py).
MODULES: tuple[str, ...] = (
    "arithmetic__add_or_sub",
    "arithmetic__add_or_sub_in_base",
    "arithmetic__add_sub_multiple",
    "arithmetic__div",
    "arithmetic__mixed",
    "arithmetic__mul",
    "arithmetic__mul_div_multiple",
    "arithmetic__nearest_integer_root",
    "arithmetic__simplify_surd",
    "comparison__closest",
    "comparison__kth_biggest",
    "comparison__pair",
    "comparison__sort",
    "measurement__conversion",
    "measurement__time",
    "numbers__base_conversion",
    "numbers__div_remainder",
    "numbers__gcd",
    "numbers__is_factor",
    "numbers__is_prime",
    "numbers__lcm",
    "numbers__list_prime_factors",
    "numbers__place_value",
    "numbers__round_number",
    "probability__swr_p_level_set",
    "probability__swr_p_sequence",
)

# Short exact answers a 135M model can partly learn in a few hundred steps.
TRAIN_MODULES: tuple[str, ...] = (
    "arithmetic__add_or_sub",
    "comparison__pair",
    "numbers__place_value",
    "numbers__round_number",
    "numbers__is_factor",
)
SEEN_EVAL_SETS: tuple[str, ...] = TRAIN_MODULES
# Low chance-level baselines (no True/False answers), related to but absent from training.
UNSEEN_EVAL_SETS: tuple[str, ...] = (
    "comparison__kth_biggest",
    "comparison__closest",
    "arithmetic__add_sub_multiple",
)
EVAL_SETS: tuple[str, ...] = SEEN_EVAL_SETS + UNSEEN_EVAL_SETS
EVAL_SET_SIZE = 100  # problems per shipped eval set

# Eval sets are generated from seeds >= 2**32; training only derives seeds < 2**32.
EVAL_SEED = 2**32 + 2024
_TRAIN_SEED_LIMIT = 2**32
_MAX_SEED = 2**64

# "train-easy" of the original release: the lowest third of each module's entropy range.
_LEVEL, _NUM_LEVELS = 0, 3
# Stricter than the generator's own 160/30 limits so that prompts stay well inside ~96 tokens.
MAX_QUESTION_CHARS = 100
MAX_ANSWER_CHARS = 16

EVAL_DIR = Path(__file__).parent / "eval_sets"
_UNSTABLE_GROUPS = ("algebra", "calculus", "polynomials")


# ----------------------------------------------------------------------------- shims


class _ItemsetArray(np.ndarray):
    """ndarray with ``itemset`` back (removed in NumPy 2.0), for mathematics_dataset only."""

    def itemset(self, *args: Any) -> None:
        *index, value = args
        key = index[0] if len(index) == 1 else tuple(index)
        if isinstance(key, (int, np.integer)):
            key = np.unravel_index(int(key), self.shape)  # itemset took flat indices too
        # A full index tuple stores `value` as one element, also when it is a list (object
        # arrays), which is what itemset did.
        self[tuple(key)] = value


class _NumpyCompat:
    """The ``np`` seen by ``mathematics_dataset.sample.polynomials``: NumPy plus removed names."""

    object = object  # np.object, removed in NumPy 1.24
    _mosgeo_shim = True

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def zeros(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.zeros(*args, **kwargs).view(_ItemsetArray)

    @staticmethod
    def empty(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.empty(*args, **kwargs).view(_ItemsetArray)


class _RandomCompat:
    """The ``random`` seen by ``mathematics_dataset.modules.numbers``: the global ``random``
    module, but ``randint`` accepts integral floats (an error since Python 3.12)."""

    _mosgeo_shim = True

    def __getattr__(self, name: str) -> Any:
        return getattr(random, name)

    @staticmethod
    def randint(a: float, b: float) -> int:
        # int() of an integral float draws exactly what Python <= 3.11 drew for the float
        return random.randint(
            *(int(x) if isinstance(x, float) and x.is_integer() else x for x in (a, b))
        )


def _shim_sympy_diophantine() -> None:
    """``base_solution_linear`` moved into ``sympy.solvers.diophantine.diophantine`` (sympy
    1.6); mathematics_dataset imports it from the package, so re-export it there."""
    package = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(package, "base_solution_linear"):
        inner = importlib.import_module("sympy.solvers.diophantine.diophantine")
        package.base_solution_linear = inner.base_solution_linear


def _shim_numpy_polynomials() -> None:
    """``sample/polynomials.py`` uses ``np.object`` and ``ndarray.itemset``, both gone in
    NumPy 2: give that one module a NumPy view that has them (global NumPy is untouched)."""
    polynomials = importlib.import_module("mathematics_dataset.sample.polynomials")
    if getattr(polynomials.np, "_mosgeo_shim", False):
        return
    if hasattr(np.ndarray, "itemset") and "object" in vars(np):
        return  # old NumPy: nothing to fix
    polynomials.np = _NumpyCompat()


def _shim_random_randint() -> None:
    """``numbers.round_number`` calls ``random.randint`` with floats such as ``50.0``:
    deprecated in Python 3.10, a TypeError from 3.12. Convert them for that module."""
    numbers = importlib.import_module("mathematics_dataset.modules.numbers")
    if not getattr(numbers.random, "_mosgeo_shim", False):
        numbers.random = _RandomCompat()


def install_shims() -> None:
    """Make ``mathematics_dataset`` importable and runnable on current sympy, NumPy 2 and
    Python 3.12+, without changing what it generates.

    Idempotent: each shim checks whether it is needed or already in place.
    """
    _shim_sympy_diophantine()  # first: polynomials.py fails to import without it
    _shim_numpy_polynomials()
    _shim_random_randint()


# ----------------------------------------------------------------------------- generation


def _entropy_fn(level: int, num_levels: int) -> Callable[[tuple[float, float]], tuple]:
    """Map a module's entropy range to its `level`-th of `num_levels` equal slices (with the
    float arithmetic of the original generate.py, so the ranges match to the last bit)."""
    lower, upper = level / num_levels, (level + 1) / num_levels

    def restrict(range_: tuple[float, float]) -> tuple[float, float]:
        low, high = range_
        width = high - low
        return (low + lower * width, low + upper * width)

    return restrict


def _flatten(tree: dict, prefix: str = "") -> dict[str, Callable[[], Any]]:
    """{'numbers': {'gcd': f}} -> {'numbers__gcd': f}, the generator's own naming."""
    flat: dict[str, Callable[[], Any]] = {}
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


@functools.cache
def _module_table() -> dict[str, Callable[[], Any]]:
    """Every training module of the generator at our difficulty, by name."""
    install_shims()
    from mathematics_dataset.modules import modules

    return _flatten(modules.train(_entropy_fn(_LEVEL, _NUM_LEVELS)))


def _check_module(module: str) -> None:
    if module in MODULES:
        return
    valid = ", ".join(MODULES)
    if isinstance(module, str) and (
        module.endswith("_composed") or module.startswith(_UNSTABLE_GROUPS)
    ):
        raise DataError(
            f"module {module!r} is not supported: its output depends on PYTHONHASHSEED, so it "
            f"is not reproducible across processes; valid modules: {valid}"
        )
    raise DataError(f"unknown module {module!r}; valid modules: {valid}")


def _check_count(n: int, what: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"{what} must be an integer >= 0, got {n!r}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < _MAX_SEED:
        raise DataError(f"seed must be an integer in [0, 2**64), got {seed!r}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed every generator mathematics_dataset draws from; restore the caller's states after."""
    import sympy.core.random as sympy_random

    generators = (random, sympy_random.rng, sympy_random._assumptions_rng)
    saved_states = [g.getstate() for g in generators]
    saved_numpy = np.random.get_state()
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # legacy seeding takes 32-bit words
    sympy_random.seed(seed)  # randprime (numbers__is_prime) draws from sympy's own rng
    try:
        yield
    finally:
        for g, state in zip(generators, saved_states, strict=True):
            g.setstate(state)
        np.random.set_state(saved_numpy)


def _fits_limits(question: str, answer: str) -> bool:
    return len(question) <= MAX_QUESTION_CHARS and 0 < len(answer) <= MAX_ANSWER_CHARS


def _sample(
    module: str, n: int, seed: int, exclude: frozenset[str] = frozenset(), unique: bool = False
) -> list[Example]:
    """The first `n` problems of `module`'s stream for `seed` that pass the length limits,
    are not in `exclude` and (if `unique`) repeat no earlier question."""
    make = _module_table()[module]
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    with _seeded(seed):
        while len(out) < n:
            attempts += 1
            if attempts > 20 * n + 1000:  # a module that cannot fill the request
                raise DataError(f"{module}: only {len(out)} of {n} problems after {attempts}")
            problem = make()
            question, answer = str(problem.question), str(problem.answer)
            if not _fits_limits(question, answer) or question in exclude or question in seen:
                continue
            if unique:
                seen.add(question)
            out.append(Example(question, answer, module))
    return out


def generate(module: str, n: int, seed: int) -> list[Example]:
    """`n` problems from generator `module` (one of ``MODULES``), at easy difficulty.

    Deterministic for (module, n, seed) in-process and across processes; ``generate(m, k, s)``
    is a prefix of ``generate(m, n, s)`` for k <= n. Global random states are left unchanged.
    """
    _check_module(module)
    _check_count(n)
    _check_seed(seed)
    return _sample(module, n, seed)


def _train_seed(seed: int, module: str) -> int:
    """Per-module seed below 2**32 (eval sets use seeds above), independent of module order."""
    digest = hashlib.sha256(f"train|{seed}|{module}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _TRAIN_SEED_LIMIT


@functools.cache
def _eval_questions() -> frozenset[str]:
    """Every question of the shipped eval sets, which training must never see."""
    return frozenset(ex.question for exs in eval_sets().values() for ex in exs)


def training_examples(n: int, seed: int, modules: Sequence[str] = TRAIN_MODULES) -> list[Example]:
    """A shuffled mix of `n` problems, as balanced over `modules` as `n` allows.

    Questions that occur in the shipped eval sets are skipped, so no eval problem is ever
    trained on, whatever `n` and `seed`.
    """
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    if not modules:
        raise DataError("modules is empty")
    if len(set(modules)) != len(modules):
        raise DataError(f"modules has duplicates: {modules}")
    for module in modules:
        _check_module(module)
    _check_count(n)
    _check_seed(seed)
    exclude = _eval_questions()
    base, extra = divmod(n, len(modules))
    mix: list[Example] = []
    for i, module in enumerate(modules):
        count = base + (i < extra)
        mix += _sample(module, count, _train_seed(seed, module), exclude=exclude)
    random.Random(seed).shuffle(mix)
    return mix


def make_eval_set(name: str, n: int = EVAL_SET_SIZE) -> list[Example]:
    """Regenerate eval set `name` (a module of ``MODULES``): `n` distinct problems."""
    _check_module(name)
    _check_count(n)
    return _sample(name, n, EVAL_SEED, unique=True)


def to_jsonl(examples: Sequence[Example]) -> str:
    """The JSONL text of `examples` (one object per line, fixed key order, '\\n' endings)."""
    lines = (
        json.dumps({"question": ex.question, "answer": ex.answer, "module": ex.module})
        for ex in examples
    )
    return "".join(line + "\n" for line in lines)


# ----------------------------------------------------------------------------- files


def _field(value: Any, name: str, where: str) -> str:
    """A required text field. Answers may be JSON numbers or booleans: they are converted
    with ``str`` (``7``, ``0.5``, ``True``), the generator's own spelling."""
    if value is None:
        raise DataError(f"{where}: missing {name!r} field")
    convertible = name == "answer" and isinstance(value, (bool, int, float))
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where}: {name!r} is {value}, not a finite number")
    if not isinstance(value, str) and not convertible:
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: empty {name!r} field")
    return text


def _parse_line(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = _field(record.get("question"), "question", where)
    answer = _field(record.get("answer"), "answer", where)
    module = record.get("module")
    return Example(question, answer, module if isinstance(module, str) and module else "user")


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Examples from a JSONL file: one object per line with string ``question`` and ``answer``
    (answers may be numbers or booleans, see :func:`_field`); an optional ``module`` string is
    kept (default ``"user"``), other fields are ignored; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    examples = [
        _parse_line(line, f"{path}, line {number}")
        # split on "\n" only: str.splitlines would also break at U+2028 inside JSON strings
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not examples:
        raise DataError(f"{path}: empty file, no examples")
    return examples


def eval_sets(names: Sequence[str] | None = None) -> dict[str, list[Example]]:
    """The shipped frozen eval sets, by name (all of ``EVAL_SETS`` by default)."""
    names = EVAL_SETS if names is None else (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in EVAL_SETS]
    if unknown:
        raise DataError(f"unknown eval set(s) {unknown}; valid: {', '.join(EVAL_SETS)}")
    return {name: load_jsonl(EVAL_DIR / f"{name}.jsonl") for name in names}


# ----------------------------------------------------------------------------- prompts, scoring


def build_prompt(question: str) -> str:
    """The plain-text prompt (no chat template, so any causal LM can take it)."""
    return f"Question: {question}\nAnswer:"


def target_text(answer: str) -> str:
    """What follows the prompt in training; the tokenizer step appends EOS."""
    return f" {answer}"


# Where a continuation stops being the answer: the model starting a new problem, or special
# tokens decoded as text.
_STOP_MARKERS = ("\n", "Question:", "<|", "</s>")


def extract_answer(generation: str) -> str:
    """The answer in a model's continuation of :func:`build_prompt`: its first line, without
    a repeated ``Answer:`` prefix, surrounding whitespace or a trailing period."""
    text = generation.lstrip()
    for marker in _STOP_MARKERS:
        text = text.split(marker, 1)[0]
    text = text.strip()
    if text.lower().startswith("answer:"):
        text = text[len("answer:") :].strip()
    return text.rstrip(".").strip()


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:/\d+)?")
_LETTER_CHOICE = re.compile(r"\(([a-z])\)")


def _normalize_item(item: str) -> str:
    """One comma-separated item: numbers become their exact value as 'p/q' or 'p'."""
    item = item.strip()
    choice = _LETTER_CHOICE.fullmatch(item)
    if choice:  # "(b)" names the same option as "b"
        return choice.group(1)
    if _NUMBER.fullmatch(item):
        try:
            value = Fraction(item)
        except (ValueError, ZeroDivisionError):
            return item
        return str(value.numerator) if value.denominator == 1 else f"{value}"
    return item


def normalize_answer(s: str) -> str:
    """Canonical form for comparison: whitespace collapsed, case folded, trailing period
    dropped, list items separated by ', ', and numbers replaced by their exact value, so
    '0.50', '.5' and '1/2' agree, as do '-0' and '0' ('0.333' and '1/3' do not)."""
    text = " ".join(s.split()).casefold().rstrip(".").strip()
    return ", ".join(_normalize_item(item) for item in text.split(","))


def exact_match(prediction: str, gold: str) -> bool:
    """Whether `prediction` (e.g. ``extract_answer(generation)``) equals `gold` after
    :func:`normalize_answer`. An empty prediction never matches."""
    pred = normalize_answer(prediction)
    return pred != "" and pred == normalize_answer(gold)


# ----------------------------------------------------------------------------- tokenization


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_bos(tokenizer: Any) -> list[int]:
    """[bos] if the tokenizer itself starts sequences with BOS (Llama-style), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    adds_bos = tokenizer("0")["input_ids"][:1] == [bos] and _encode(tokenizer, "0")[:1] != [bos]
    return [bos] if adds_bos else []


def _describe(ex: Example) -> str:
    question = ex.question if len(ex.question) <= 60 else ex.question[:57] + "..."
    source = f" from {ex.module}" if ex.module else ""
    return f"example{source} {question!r} -> {ex.answer!r}"


def tokenize_example(tokenizer: Any, ex: Example, max_length: int) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for one example: prompt tokens (and BOS) are
    labelled -100, answer tokens and the appended EOS are trained on. Prompt and answer are
    tokenized separately so the label boundary is exact. Never truncates: raises DataError."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    prompt = _leading_bos(tokenizer) + _encode(tokenizer, build_prompt(ex.question))
    target = _encode(tokenizer, target_text(ex.answer)) + [eos]
    length = len(prompt) + len(target)
    if length > max_length:
        raise DataError(
            f"{_describe(ex)} is {length} tokens (prompt {len(prompt)} + answer {len(target)}),"
            f" over max_length={max_length}"
        )
    return {
        "input_ids": prompt + target,
        "attention_mask": [1] * length,
        "labels": [-100] * len(prompt) + target,
    }


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The token ids a model is prompted with at evaluation: exactly the prompt part of
    :func:`tokenize_example` (BOS where the tokenizer adds one, then :func:`build_prompt`)."""
    return _leading_bos(tokenizer) + _encode(tokenizer, build_prompt(question))


def check_fits(tokenizer: Any, examples: Sequence[Example], max_length: int) -> None:
    """Raise DataError, before any training, if any example exceeds `max_length` tokens."""
    if not examples:
        raise DataError("no examples to check")
    errors: list[str] = []
    for ex in examples:
        try:
            tokenize_example(tokenizer, ex, max_length)
        except DataError as e:
            errors.append(str(e))
    if errors:
        raise DataError(
            f"{len(errors)} of {len(examples)} examples do not fit in max_length={max_length};"
            f" first: {errors[0]}"
        )


class CausalLMCollator:
    """Right-pads tokenized examples into a batch of LongTensors: input_ids with the pad id
    (the tokenizer's pad, else its EOS), attention_mask with 0 and labels with -100."""

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        if pad is None:
            raise DataError("the tokenizer has neither pad_token_id nor eos_token_id")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise DataError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if m is None else -(-longest // m) * m

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise DataError("cannot collate an empty batch")
        width = self._width(max(len(f["input_ids"]) for f in features))
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            pad = width - len(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            labels = list(f.get("labels", ids))  # no labels given: plain language modelling
            batch["input_ids"].append(ids + [self.pad_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [-100] * pad)
        return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
