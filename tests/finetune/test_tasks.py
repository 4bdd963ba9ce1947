"""Benchmark tasks offline: every task's loader and scorer on a fixture file in the hub
dataset's own schema (``tests/fixtures/tasks``, invented problems), the answer rules on
tricky answers, the label metrics against their definitions, and the training mix."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from mosgeo_lora.finetune import tasks  # noqa: E402
from mosgeo_lora.finetune.tasks import answers  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
#: task → (rows in its fixture, the first row's reference in the rule's form)
FIXTURE_ROWS = {
    "gsm8k": (4, Fraction(42)),
    "svamp": (3, Fraction(7)),
    "mawps": (3, Fraction(12)),
    "aqua": (3, "B"),
    "cola": (5, 1),
    "mrpc": (4, 1),
}
#: task → the scores of predictions/<task>.jsonl (each case is commented in that file's maker)
EXPECTED = {
    "gsm8k": {"n": 4, "correct": 3, "unparsed": 0},
    "svamp": {"n": 3, "correct": 2, "unparsed": 1},
    "mawps": {"n": 3, "correct": 3, "unparsed": 0},
    "aqua": {"n": 3, "correct": 2, "unparsed": 0},
    "math500": {"n": 3, "correct": 2, "unparsed": 0},
    # labels [1, 0, 1, 1, unparsed] for [1, 0, 1, 0, 1]: (3·5 − (3·3 + 1·2 + 1·0)) / √(14·12)
    "cola": {"n": 5, "correct": 3, "unparsed": 1, "matthews_correlation": 4 / 168**0.5},
    "mrpc": {"n": 4, "correct": 3, "unparsed": 0, "f1": 0.8},
}


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.jsonl"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_registry_has_the_papers_tasks_once():
    assert tasks.TASK_NAMES == ("gsm8k", "svamp", "mawps", "aqua", "math500", "cola", "mrpc")
    for name, task in tasks.TASKS.items():
        assert task.name == name and task.family in ("math", "nlu")
        assert task.hub and task.eval_split and task.fields and task.schema_source
    assert tasks.TASKS["math500"].train_split is None  # test only
    assert tasks.TASKS["cola"].eval_split == "validation"  # GLUE hides its test labels
    assert tasks.get_task("GSM8K") is tasks.TASKS["gsm8k"]
    with pytest.raises(tasks.TaskError, match="unknown task 'gsm9k'; tasks: gsm8k, svamp"):
        tasks.get_task("gsm9k")


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_each_task_loads_its_fixture_and_prompts_with_the_row(name):
    task = tasks.TASKS[name]
    data = tasks.load_rows(task, fixture(name))
    assert data.source == str(fixture(name)) and data.task is task
    rows = [json.loads(line) for line in fixture(name).read_text().splitlines()]
    assert data.rows == rows  # every field as the file has it, in order
    first = task.prompt(data.rows[0])
    text_field = {"svamp": "Body", "math500": "problem", "cola": "sentence", "mrpc": "sentence1"}
    assert data.rows[0][text_field.get(name, "question")].strip() in first
    if name in FIXTURE_ROWS:
        n, gold = FIXTURE_ROWS[name]
        assert len(data.rows) == n
        assert task.answer.gold(task.reference(data.rows[0])) == gold
    if name == "aqua":
        assert "A)40" in first and "E)240" in first  # the options are shown
    assert len(tasks.load_rows(task, fixture(name), limit=2).rows) == 2


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_each_task_scores_its_fixture_predictions(name):
    task = tasks.TASKS[name]
    rows = tasks.load_rows(task, fixture(name)).rows
    predictions = tasks.read_predictions(FIXTURES / "predictions" / f"{name}.jsonl")
    got = tasks.score(task, predictions, rows)
    want = EXPECTED[name]
    assert got["task"] == name
    assert got["accuracy"] == pytest.approx(want["correct"] / want["n"])
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert set(got) == {"task", "n", "correct", "accuracy", "unparsed", *task.metrics}


def test_a_task_reference_that_is_right_scores_one():
    """Each task's own training target (or its reference) answers every fixture row."""
    for name, task in tasks.TASKS.items():
        rows = tasks.load_rows(task, fixture(name)).rows
        if task.target is not None:
            preds = [task.target(r) for r in rows]
        else:  # MATH500: the worked solutions end in \boxed{answer}
            preds = [r["solution"] for r in rows]
        assert tasks.score(task, preds, rows)["accuracy"] == 1.0, name


def test_gsm8k_target_drops_the_calculator_notes_and_ends_with_the_answer():
    row = json.loads(fixture("gsm8k").read_text().splitlines()[0])
    target = tasks.TASKS["gsm8k"].target(row)
    assert "<<" not in target and "####" not in target
    assert target.endswith("The answer is 42.")


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,234", 1234),
        ("The total is $5.00.", 5),
        ("The answer is 5.0.", 5),
        ("It is -3 degrees", -3),
        ("It is \u22123 degrees", -3),  # Unicode minus
        ("x = 3/4", Fraction(3, 4)),
        ("\\frac{1}{2}", Fraction(1, 2)),
        ("\\dfrac{-3}{4}", Fraction(-3, 4)),
        ("It costs $1,234.50 in all", Fraction(246900, 200)),
        ("50%", 50),
        ("answer: .5", Fraction(1, 2)),
        ("5 apples and 3 pears, 8 in all", 8),  # no anchor: the last number
        ("The answer is 8. Next question: 2 + 2", 8),  # anchor: the first number after it
        ("#### 72", 72),
        ("So 5-3 = 2", 2),  # a subtraction, not the number -3
        ("The answer is 8 - 3", 8),
        ("We get 5 - 3", 3),  # a sign only right before its digits
        ("I think \\boxed{42}, not 7", 42),
        ("2 then 3; the answer is 4, then 9. Answer: 6", 6),  # the last anchor wins
        ("no number at all", None),
        ("", None),
    ],
)
def test_number_extraction(text, value):
    assert answers.extract_number(text) == (None if value is None else Fraction(value))


@pytest.mark.parametrize(
    "prediction, gold, same",
    [
        ("The answer is 1,234", "1234", True),
        ("$5.00", 5.0, True),
        ("12.50", "12.5", True),
        ("-7", -7, True),
        ("7", -7, False),
        ("1/3", 0.3333333333, True),  # a float reference of a fraction
        ("0.33", 0.3333333333, False),
        ("0.5", "1/2", True),
        ("no idea", 5, False),
        ("5", float("nan"), None),  # not a reference: an error, not a silent wrong
    ],
)
def test_numbers_are_compared_as_numbers(prediction, gold, same):
    task = tasks.TASKS["svamp"]
    row = {"Body": "b.", "Question": "q?", "Answer": gold}
    if same is None:
        with pytest.raises(tasks.TaskError, match="row 1: reference answer nan is not a number"):
            tasks.score(task, [prediction], [row])
        return
    assert tasks.score(task, [prediction], [row])["correct"] == int(same)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("(C)", "C"),
        ("C)", "C"),
        ("C", "C"),
        ("The answer is C", "C"),
        ("The answer is (c).", "C"),
        ("the answer is: option D.", "D"),
        ("I think B) 60 is right", "B"),
        ("A man walks 3 km, so (A) 3 is wrong and (D) 6 is right", "D"),  # the last one marked
        ("\\boxed{\\text{C}}", "C"),
        ("Answer: E", "E"),
        ("A train travels far.", None),  # the article "A" is no answer
        ("the answer is a train", None),
        ("The answer is F", None),  # not an option
    ],
)
def test_choice_extraction(text, letter):
    assert answers.extract_choice(text) == letter


@pytest.mark.parametrize(
    "prediction, gold, same",
    [
        ("So it is $\\boxed{0.5}$.", "\\frac{1}{2}", True),
        ("$\\boxed{\\frac{2}{4}}$", "\\frac{1}{2}", True),
        ("We get \\boxed{x^2}.", "x^2", True),
        ("We get \\boxed{x^3}.", "x^2", False),
        ("The answer is $\\boxed{12}$, not 13", "12", True),
        ("I cannot solve this.", "12", False),
    ],
)
def test_math500_is_scored_by_math_verify(prediction, gold, same):
    pytest.importorskip("math_verify")
    task = tasks.TASKS["math500"]
    assert tasks.score(task, [prediction], [{"problem": "p", "answer": gold}])["correct"] == same


@pytest.mark.parametrize(
    "prediction, label",
    [
        ("acceptable", 1),
        ("Unacceptable.", 0),  # not "acceptable" inside "unacceptable"
        ("not acceptable", 0),
        ("yes", 1),
        ("1", 1),
        (0, 0),
        (True, 1),
        ("The sentence is acceptable", 1),
        ("hmm", None),
        ("7", None),
    ],
)
def test_cola_labels_from_text_or_numbers(prediction, label):
    assert tasks.TASKS["cola"].answer.extract(prediction) == label


@pytest.mark.parametrize(
    "prediction, label",
    [("equivalent", 1), ("not equivalent", 0), ("not_equivalent", 0), ("No, they differ", 0)],
)
def test_mrpc_labels_from_text(prediction, label):
    assert tasks.TASKS["mrpc"].answer.extract(prediction) == label


def _mcc_binary(pred, gold):
    tp = sum(p == g == 1 for p, g in zip(pred, gold, strict=True))
    tn = sum(p == g == 0 for p, g in zip(pred, gold, strict=True))
    fp = sum(p == 1 and g == 0 for p, g in zip(pred, gold, strict=True))
    fn = sum(p == 0 and g == 1 for p, g in zip(pred, gold, strict=True))
    d = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / math.sqrt(d) if d else 0.0


@pytest.mark.parametrize(
    "pred, gold",
    [
        ([1, 0, 1, 1, 0], [1, 0, 1, 0, 1]),
        ([1, 1, 1, 1], [1, 0, 1, 0]),  # a constant prediction: MCC 0
        ([0, 1, 0, 1, 1, 0], [0, 1, 0, 1, 1, 0]),
        ([1, 0, 0, 1], [0, 1, 1, 0]),
        ([1, -1, 0, 1, -1], [1, 0, 0, 0, 1]),  # unparsed predictions: a class of their own
        ([-1, -1, -1], [1, 0, 1]),  # never an answer: MCC 0, F1 0
    ],
)
def test_label_metrics_match_their_definitions(pred, gold):
    if -1 not in pred:
        assert tasks.matthews_correlation(pred, gold) == pytest.approx(_mcc_binary(pred, gold))
    tp = sum(p == g == 1 for p, g in zip(pred, gold, strict=True))
    precision = tp / max(1, pred.count(1))
    recall = tp / max(1, gold.count(1))
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    assert tasks.f1_score(pred, gold) == pytest.approx(f1)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert tasks.matthews_correlation(pred, gold) == pytest.approx(
        sklearn.matthews_corrcoef(gold, pred)
    )
    assert tasks.f1_score(pred, gold) == pytest.approx(
        sklearn.f1_score(gold, pred, labels=[1], average="macro", zero_division=0)
    )


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_other_file_formats_read_like_jsonl(tmp_path, suffix):
    pandas = pytest.importorskip("pandas")
    rows = [json.loads(line) for line in fixture("gsm8k").read_text().splitlines()]
    frame = pandas.DataFrame(rows)
    path = tmp_path / f"gsm8k{suffix}"
    {".json": lambda: path.write_text(json.dumps(rows)), ".parquet": lambda: frame.to_parquet(path),
     ".csv": lambda: frame.to_csv(path, index=False)}[suffix]()  # fmt: skip
    assert tasks.load_rows(tasks.TASKS["gsm8k"], path).rows == rows


def test_bad_task_input_is_a_clear_error(tmp_path, monkeypatch):
    gsm8k, cola = tasks.TASKS["gsm8k"], tasks.TASKS["cola"]
    with pytest.raises(tasks.TaskError, match="file not found"):
        tasks.parse_task_spec(f"gsm8k={tmp_path / 'nope.jsonl'}")
    with pytest.raises(tasks.TaskError, match="unknown file type '.txt'"):
        tasks.load_rows(gsm8k, write_jsonl(tmp_path / "rows.txt", [{"question": "q"}]))
    no_answer = write_jsonl(
        tmp_path / "a.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "r"}]
    )
    with pytest.raises(tasks.TaskError, match=r"row 2: missing field\(s\) \['answer'\]"):
        tasks.load_rows(gsm8k, no_answer)
    hidden = write_jsonl(tmp_path / "test.jsonl", [{"sentence": "s", "label": -1, "idx": 0}])
    with pytest.raises(tasks.TaskError, match="row 1: .*GLUE test splits hide their labels"):
        tasks.load_rows(cola, hidden)
    not_a_number = write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "#### many"}])
    with pytest.raises(tasks.TaskError, match="'many' is not a number"):
        tasks.load_rows(gsm8k, not_a_number)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(tasks.TaskError, match="cannot read it as json"):
        tasks.load_rows(gsm8k, broken)

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        tasks.TaskError, match=r"cannot load openai/gsm8k \(main\) test .*--task gsm8k=PATH"
    ):
        tasks.load_rows(gsm8k)


def test_hub_datasets_are_asked_for_by_id_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return [{"sentence": "s", "label": 1, "idx": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = tasks.load_rows(tasks.TASKS["cola"])
    assert calls == [(("nyu-mll/glue", "cola"), {"split": "validation"})]
    assert data.source == "nyu-mll/glue (cola) validation" and len(data.rows) == 1


def test_predictions_must_match_their_references(tmp_path):
    task = tasks.TASKS["gsm8k"]
    rows = tasks.load_rows(task, fixture("gsm8k")).rows
    with pytest.raises(tasks.TaskError, match="3 predictions for 4 references of gsm8k"):
        tasks.score(task, ["1", "2", "3"], rows)
    missing = write_jsonl(tmp_path / "p.jsonl", [{"prediction": "1"}, {"output": "2"}])
    with pytest.raises(tasks.TaskError, match='line 2: no "prediction" field'):
        tasks.read_predictions(missing)
    wrong_type = write_jsonl(tmp_path / "q.jsonl", [{"prediction": ["1"]}])
    with pytest.raises(tasks.TaskError, match="must be text or a number"):
        tasks.read_predictions(wrong_type)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(tasks.TaskError, match="no predictions"):
        tasks.read_predictions(tmp_path / "empty.jsonl")


def test_predictions_files_round_trip(tmp_path):
    task = tasks.TASKS["aqua"]
    rows = tasks.load_rows(task, fixture("aqua")).rows
    texts = ["(B)", "The answer is C.", "no idea"]
    judged = tasks.judge(task, texts, rows)
    path = tasks.write_predictions(tmp_path / "p.jsonl", task, texts, judged)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"prediction": "(B)", "extracted": "B", "correct": True}
    assert lines[2] == {"prediction": "no idea", "extracted": None, "correct": False}
    assert tasks.read_predictions(path) == texts


MIX_SOURCES = {name: fixture(name) for name in tasks.MIX_TASKS}


def test_training_mix_is_a_seeded_uniform_sample_of_the_training_rows():
    mix = tasks.training_mix(8, seed=0, sources=MIX_SOURCES, balance="pool")
    assert len(mix) == 8
    assert mix == tasks.training_mix(8, seed=0, sources=MIX_SOURCES, balance="pool")
    assert mix != tasks.training_mix(8, seed=1, sources=MIX_SOURCES, balance="pool")
    assert len({(m.task, m.prompt) for m in mix}) == 8  # without replacement
    everything = tasks.training_mix(13, seed=0, sources=MIX_SOURCES)  # all 4 + 3 + 3 + 3 rows
    assert sorted(m.task for m in everything) == sorted(
        ["gsm8k"] * 4 + ["mawps"] * 3 + ["svamp"] * 3 + ["aqua"] * 3
    )
    for m in everything:
        task = tasks.TASKS[m.task]
        assert m.prompt.endswith("Answer:") and m.target.rstrip(".")  # the task's own prompt
        assert tasks.score(task, [m.target], [_row_of(m)])["accuracy"] == 1.0
    with pytest.raises(tasks.TaskError, match="size 14 is more than the 13 training rows"):
        tasks.training_mix(14, seed=0, sources=MIX_SOURCES)
    with pytest.raises(tasks.TaskError, match="math500 has no training split"):
        tasks.training_mix(2, seed=0, tasks=("math500",))


def _row_of(example):
    task = tasks.TASKS[example.task]
    rows = tasks.load_rows(task, fixture(example.task)).rows
    return next(r for r in rows if task.prompt(r) == example.prompt)


#: The training rows of GSM8K, MAWPS, SVAMP and AQuA on the hub (docs/tasks.md)
HUB_TRAIN_ROWS = [7_473, 1_089, 700, 97_467]


def test_training_mix_default_is_the_papers_counts_smaller_sets_whole():
    """The default ``balance="whole"``: GSM8K, MAWPS and SVAMP whole (9,262 rows) and 4,000
    of AQuA make the paper's 13,262 ("GSM8K, MAWPS, SVAMP, and subset of AQuA", its
    appendix D.3); the other two readings give other counts at that size."""
    from mosgeo_lora.finetune.tasks import mix as mix_module

    assert mix_module.BALANCES[0] == "whole"
    assert mix_module._whole_quotas(13_262, HUB_TRAIN_ROWS) == [7_473, 1_089, 700, 4_000]
    assert mix_module._quotas(13_262, HUB_TRAIN_ROWS) == [5_737, 1_089, 700, 5_736]  # equal
    pooled = [round(13_262 * n / sum(HUB_TRAIN_ROWS)) for n in HUB_TRAIN_ROWS]
    assert pooled == [929, 135, 87, 12_111]  # pool: AQuA is 91 % of the mix
    # the fixtures: gsm8k (4 rows) is the largest, the others have 3 each
    mix = tasks.training_mix(11, seed=2, sources=MIX_SOURCES)
    assert mix == tasks.training_mix(11, seed=2, sources=MIX_SOURCES, balance="whole")
    counts = {name: sum(m.task == name for m in mix) for name in tasks.MIX_TASKS}
    assert counts == {"gsm8k": 2, "mawps": 3, "svamp": 3, "aqua": 3}
    assert len({(m.task, m.prompt) for m in mix}) == 11
    assert [m.task for m in mix] != sorted(m.task for m in mix)  # shuffled, not in blocks
    assert mix != tasks.training_mix(11, seed=3, sources=MIX_SOURCES)
    # below the smaller sets' total: a uniform sample of them, the largest fills nothing
    short = tasks.training_mix(5, seed=2, sources=MIX_SOURCES)
    assert len(short) == 5 and not any(m.task == "gsm8k" for m in short)
    assert len({(m.task, m.prompt) for m in short}) == 5


def test_training_mix_equal_shares():
    mix = tasks.training_mix(12, seed=3, sources=MIX_SOURCES, balance="equal")
    counts = {name: sum(m.task == name for m in mix) for name in tasks.MIX_TASKS}
    assert counts == {"gsm8k": 3, "mawps": 3, "svamp": 3, "aqua": 3}
    mix = tasks.training_mix(13, seed=3, sources=MIX_SOURCES, balance="equal")
    assert sum(m.task == "gsm8k" for m in mix) == 4  # the others have only 3 each
    with pytest.raises(tasks.TaskError, match="balance must be one of"):
        tasks.training_mix(2, seed=0, sources=MIX_SOURCES, balance="uniform")
