"""The benchmark tasks on the command line: ``mosgeo-lora score`` prints one JSON object for
saved generations; ``eval --task`` and ``finetune --task`` write their generations in that
format beside their scores, and ``score`` re-scores them to the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from mosgeo_lora.finetune import cli, tasks  # noqa: E402
from mosgeo_lora.finetune.base_models import tiny_tokenizer  # noqa: E402
from mosgeo_lora.finetune.data import text_prompt_ids  # noqa: E402
from mosgeo_lora.finetune.evaluate import generate_texts  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def run_cli(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def score_args(task: str, predictions: Path | None = None, references: Path | None = None):
    predictions = predictions or FIXTURES / "predictions" / f"{task}.jsonl"
    references = references or FIXTURES / f"{task}.jsonl"
    return ["score", "--task", task, "--predictions", str(predictions), "--references",
            str(references)]  # fmt: skip


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_score_prints_one_json_object(task, capsys):
    code, out, err = run_cli(score_args(task), capsys)
    assert code == 0, err
    (line,) = out.strip().splitlines()
    result = json.loads(line)
    assert result["task"] == task and result["n"] >= 3
    assert 0 <= result["accuracy"] <= 1 and result["accuracy"] == result["correct"] / result["n"]
    if task == "cola":
        assert result["matthews_correlation"] == pytest.approx(4 / 168**0.5)
    if task == "mrpc":
        assert result["f1"] == pytest.approx(0.8)


def test_score_as_a_command_writes_only_json_to_stdout():
    out = subprocess.run(
        [sys.executable, "-m", "mosgeo_lora.finetune", *score_args("gsm8k")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "task": "gsm8k", "n": 4, "correct": 3, "accuracy": 0.75, "unparsed": 0,
    }  # fmt: skip


def test_score_limit_scores_the_first_references(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"prediction": "#### 42"}\n{"prediction": "1250"}\n')
    code, out, err = run_cli([*score_args("gsm8k", preds), "--limit", "2"], capsys)
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 1.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("count", "3 predictions for 4 references of gsm8k"),
        ("field", 'line 1: no "prediction" field'),
        ("task", "unknown task 'gsm9k'"),
        ("references", "file not found"),
    ],
)
def test_score_bad_input_is_one_line(tmp_path, capsys, case, message):
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join('{"prediction": "1"}\n' for _ in range(3)))
    args = score_args("gsm8k", preds)
    if case == "field":
        preds.write_text('{"text": "1"}\n')
    elif case == "task":
        args[2] = "gsm9k"
    elif case == "references":
        args[-1] = str(tmp_path / "nope.jsonl")
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert message in err and err.startswith("mosgeo-lora score: error:") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["finetune", "eval", "compare"])
def test_help_lists_the_tasks(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--task NAME[=PATH]" in text
    assert "tasks: gsm8k, svamp, mawps, aqua, math500, cola, mrpc" in text


def test_eval_help_says_the_method_comes_from_the_adapter(capsys):
    """``eval`` scores a saved adapter, whose config names its method: the help lists the
    methods and says why there is no ``--method``."""
    from mosgeo_lora.finetune.methods import METHODS

    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "eval takes no --method" in text and "adapter_config.json" in text
    assert ", ".join(METHODS) in text and "melora" in text and "hmora" in text
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "--base", "--method", "lora"])


def test_task_flag_repeats_and_takes_lists():
    ns = cli.build_parser().parse_args(
        ["eval", "--base", "--task", "gsm8k=a.jsonl,svamp", "--task", "cola"]
    )
    assert ns.tasks == ("gsm8k=a.jsonl", "svamp", "cola")
    assert cli.build_parser().parse_args(["finetune"]).tasks == ()


class _ScriptedModel:
    """A stand-in for a causal LM whose ``generate`` appends fixed text to every prompt."""

    def __init__(self, tokenizer, continuation: str):
        import torch

        self.tail = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        self.calls = []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.weight

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append((input_ids.tolist(), attention_mask.tolist(), kwargs))
        tail = torch.tensor([self.tail] * len(input_ids))
        return torch.cat([input_ids, tail], dim=1)


def test_generation_pads_left_cuts_at_stop_strings_and_keeps_order():
    tok = tiny_tokenizer()
    model = _ScriptedModel(tok, " 42\nQuestion: 7 + 1?")
    prompts = [text_prompt_ids(tok, "ab"), text_prompt_ids(tok, "abcd"), text_prompt_ids(tok, "x")]
    texts = generate_texts(
        model, tok, prompts, batch_size=2, max_new_tokens=9, stop=("\nQuestion:",)
    )
    assert texts == [" 42"] * 3
    (ids, mask, kwargs), second = model.calls
    assert ids[0] == [tok.pad_token_id] * 2 + prompts[0]
    assert mask[0] == [0, 0] + [1] * len(prompts[0])
    assert ids[1] == prompts[1] and second[0] == [prompts[2]]
    assert kwargs["stop_strings"] == ["\nQuestion:"] and kwargs["tokenizer"] is tok
    assert kwargs["max_new_tokens"] == 9 and kwargs["do_sample"] is False
    assert generate_texts(model, tok, prompts[:1])[0] == " 42\nQuestion: 7 + 1?"  # no stop


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one():
    tok = tiny_tokenizer()
    plain = text_prompt_ids(tok, "Hi", chat_template=True)  # no template: the plain prompt
    assert tok.decode(plain) == "<s>Hi" or tok.decode(plain) == "Hi"
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    ids = text_prompt_ids(tok, "Hi", chat_template=True)
    assert tok.decode(ids) == "[user] Hi\n[assistant]"
    assert text_prompt_ids(tok, "Hi", chat_template=False) == plain


def tiny_eval(tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--base", "--model", "tiny-llama", "--max-new-tokens", "12", "--no-progress",
            "--output", str(tmp_path / "scores.json"), *extra]  # fmt: skip


def test_eval_task_writes_predictions_that_score_reproduces(tmp_path, capsys):
    specs = [f"{name}={FIXTURES / name}.jsonl" for name in ("gsm8k", "cola")]
    code, out, err = run_cli(tiny_eval(tmp_path, "--task", ",".join(specs)), capsys)
    assert code == 0, err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["tasks"]) == {"gsm8k", "cola"} and scores["eval"] == {}  # only the tasks
    for name in ("gsm8k", "cola"):
        path = Path(scores["predictions"][name])
        assert path == tmp_path / f"predictions-{name}.jsonl" and str(path) in out
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert (
            len(lines)
            == scores["tasks"][name]["n"]
            == len((FIXTURES / f"{name}.jsonl").read_text().splitlines())
        )
        assert all(isinstance(line["prediction"], str) for line in lines)
        assert sum(line["correct"] for line in lines) == scores["tasks"][name]["correct"]
        code, printed, err = run_cli(score_args(name, path), capsys)
        assert code == 0, err
        assert json.loads(printed) == scores["tasks"][name]
        assert scores["accuracy"][name] == scores["tasks"][name]["accuracy"]
    assert "matthews_correlation" in scores["tasks"]["cola"]


def test_eval_task_checks_its_input_before_loading_a_model(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    code, _, err = run_cli(tiny_eval(tmp_path, "--task", f"gsm8k={bad}"), capsys)
    assert code == 2 and "missing field(s) ['answer']" in err and err.count("\n") == 1
    code, _, err = run_cli(tiny_eval(tmp_path, "--task", "gsm9k"), capsys)
    assert code == 2 and "unknown task 'gsm9k'" in err
    assert not (tmp_path / "scores.json").exists()


def test_finetune_task_scores_after_training_and_eval_agrees(tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n')
    run = tmp_path / "run"
    spec = f"svamp={FIXTURES / 'svamp.jsonl'}"
    code, out, err = run_cli(
        ["finetune", "--model", "tiny-llama", "--data", str(qa), "--steps", "2", "--batch-size",
         "2", "--output-dir", str(run), "--task", spec, "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"svamp"} and metrics["eval"] == {}
    assert metrics["accuracy"] == {"svamp": metrics["tasks"]["svamp"]["accuracy"]}
    predictions = run / "predictions-svamp.jsonl"
    assert metrics["files"]["predictions svamp"] == str(predictions)
    code, printed, _ = run_cli(score_args("svamp", predictions), capsys)
    assert code == 0 and json.loads(printed) == metrics["tasks"]["svamp"]
    # the saved adapter, scored again by eval: the same generations, the same scores
    code, _, err = run_cli(
        ["eval", str(run / "adapter"), "--task", spec, "--no-progress", "--output",
         str(tmp_path / "again" / "scores.json")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "scores.json").read_text())
    assert again["tasks"] == metrics["tasks"]
    assert (tmp_path / "again" / "predictions-svamp.jsonl").read_text() == predictions.read_text()
