"""``compare``'s summary: the learning rate is chosen on the validation set, never on the test
sets, and the table reports the test sets at that learning rate."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from mosgeo_lora.finetune.compare import VALIDATION, markdown_table, summarize  # noqa: E402
from mosgeo_lora.finetune.config import CompareConfig  # noqa: E402


def run(method, lr, seed, validation, test):
    return {
        "method": method,
        "config": {"lr": lr, "seed": seed},
        "accuracy": {VALIDATION: validation, "numbers__place_value": test},
        "final_loss": 1.0 + lr,
        "step_time_s": 2.0,
        "peak_rss_mb": 100.0 + seed,
        "trainable_parameters": 10,
        "activated_parameters": 8,
    }


def test_best_lr_is_the_best_on_validation_not_on_test():
    runs = [
        run("lora", 1e-3, 0, 0.50, 0.90),  # best on test, worse on validation
        run("lora", 1e-3, 1, 0.40, 0.80),
        run("lora", 2e-3, 0, 0.60, 0.20),
        run("lora", 2e-3, 1, 0.70, 0.30),
    ]
    summary = summarize(runs, ["lora", "moselora"])
    assert list(summary) == ["lora"]  # no finished moselora run: no row
    s = summary["lora"]
    assert s["best_lr"] == 2e-3
    assert s["validation_by_lr"] == {1e-3: pytest.approx(0.45), 2e-3: pytest.approx(0.65)}
    mean, sd = s["accuracy"]["numbers__place_value"]
    assert mean == pytest.approx(0.25) and sd == pytest.approx(0.0707, abs=1e-4)
    assert s["accuracy"]["seen (mean)"][0] == pytest.approx(0.25)
    assert s["seeds"] == [0, 1] and s["peak_rss_mb"] == 101.0

    table = markdown_table(
        summary, CompareConfig(methods=("lora",), lrs=(1e-3, 2e-3), seeds=(0, 1))
    )
    assert "| lora | 0.002 | 25.0 ± 7.1 |" in table
    assert "| lora | 45.0 | 65.0 |" in table


def test_ties_go_to_the_smaller_learning_rate():
    runs = [run("lora", 1e-3, 0, 0.5, 0.1), run("lora", 3e-3, 0, 0.5, 0.9)]
    assert summarize(runs, ["lora"])["lora"]["best_lr"] == 1e-3


def test_empty_grid_table():
    assert markdown_table({}, CompareConfig()) == "No finished runs yet.\n"
