"""``compare``'s summary: the learning rate is chosen on the validation set, never on the test
sets, and the table reports the test sets at that learning rate."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from mosgeo_lora.finetune.compare import (  # noqa: E402
    VALIDATION,
    choose_lr,
    markdown_table,
    summarize,
)
from mosgeo_lora.finetune.config import CompareConfig  # noqa: E402


def run(method, lr, seed, validation, test, nll=None):
    return {
        "method": method,
        "config": {"lr": lr, "seed": seed},
        "accuracy": {VALIDATION: validation, "numbers__place_value": test},
        **({} if nll is None else {"nll": {VALIDATION: nll, "numbers__place_value": 1.0}}),
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
    assert "| lora | accuracy | 0, 1 | exact match (%) | 45.0 | **65.0** |" in table


def test_ties_go_to_the_smaller_learning_rate():
    runs = [run("lora", 1e-3, 0, 0.5, 0.1), run("lora", 3e-3, 0, 0.5, 0.9)]
    assert summarize(runs, ["lora"])["lora"]["best_lr"] == 1e-3


def test_empty_grid_table():
    assert markdown_table({}, CompareConfig()) == "No finished runs yet.\n"


def test_the_default_choice_is_on_the_validation_nll_lowest_wins():
    runs = [
        run("lora", 1e-3, 0, 0.60, 0.1, nll=0.40),  # better exact match, worse NLL
        run("lora", 2e-3, 0, 0.50, 0.9, nll=0.30),
    ]
    s = summarize(runs, ["lora"])["lora"]
    assert (s["best_lr"], s["selected_on"]) == (2e-3, "nll")
    assert s["validation_nll_by_lr"] == {1e-3: 0.40, 2e-3: 0.30}
    on_accuracy = summarize(runs, ["lora"], select_on="accuracy")["lora"]
    assert (on_accuracy["best_lr"], on_accuracy["selected_on"]) == (1e-3, "accuracy")
    table = markdown_table({"lora": s}, CompareConfig(methods=("lora",), lrs=(1e-3, 2e-3)))
    assert "| lora | nll | 0 | answer NLL | 0.400 | **0.300** |" in table


def test_runs_without_a_validation_nll_are_chosen_on_exact_match():
    runs = [run("lora", 1e-3, 0, 0.60, 0.1, nll=0.40), run("lora", 2e-3, 0, 0.50, 0.9)]
    s = choose_lr({1e-3: runs[:1], 2e-3: runs[1:]})
    assert (s["best_lr"], s["selected_on"], s["validation_nll_by_lr"]) == (1e-3, "accuracy", {})


def test_the_choice_compares_learning_rates_on_the_seeds_all_of_them_ran():
    # 1e-3 ran seeds 0-2, 2e-3 only seed 0: the choice is on seed 0 alone. 2e-3 beats
    # 1e-3's seed 0 but not 1e-3's mean over three seeds, which a mean over each
    # learning rate's own seeds would pick.
    runs = [
        run("lora", 1e-3, 0, 0.5, 0.5, nll=0.50),
        run("lora", 1e-3, 1, 0.5, 0.5, nll=0.10),
        run("lora", 1e-3, 2, 0.5, 0.5, nll=0.10),
        run("lora", 2e-3, 0, 0.5, 0.5, nll=0.40),
    ]
    s = summarize(runs, ["lora"])["lora"]
    assert s["tuning_seeds"] == [0]
    assert s["best_lr"] == 2e-3 and s["seeds"] == [0]
    assert s["validation_nll_by_lr"] == {1e-3: 0.50, 2e-3: 0.40}
    # with no seed in common, each learning rate's mean over its own seeds
    disjoint = [runs[1], runs[2], runs[3]]
    s = summarize(disjoint, ["lora"])["lora"]
    assert s["tuning_seeds"] is None and s["best_lr"] == 1e-3 and s["seeds"] == [1, 2]


def test_an_unknown_selection_score_is_refused():
    with pytest.raises(ValueError, match="select_on"):
        choose_lr({1e-3: [run("lora", 1e-3, 0, 0.5, 0.5)]}, "loss")
