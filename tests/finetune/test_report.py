"""``compare --report-only``: the report of a grid's finished runs, training nothing.

The runs here are invented folders in the layout and ``metrics.json`` schema that
``compare`` writes (``<out>/<method>/lr<lr>/seed<seed>/``), so every number of the report is
known: a partial grid lists its missing runs, two grid folders report as one grid paired by
seed, and runs made with other settings are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from fake_runs import scores, write_run  # noqa: E402

from mosgeo_lora.finetune.cli import main  # noqa: E402
from mosgeo_lora.finetune.compare import (  # noqa: E402
    check_one_experiment,
    finished_runs,
    missing_runs,
    report,
)
from mosgeo_lora.finetune.config import CompareConfig, ConfigError  # noqa: E402


def two_grids(tmp_path: Path) -> tuple[Path, Path]:
    """``a``: moselora and moselora-e, seeds 0 and 1, except moselora-e seed 1 (interrupted
    at a checkpoint); ``b``: hydralora, seeds 0 and 1, except seed 1 (started)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        write_run(a, "moselora", seed, *scores(good=True))
    write_run(a, "moselora-e", 0, *scores(good=False))
    (a / "moselora-e" / "lr0.001" / "seed1" / "checkpoint-50").mkdir(parents=True)
    write_run(b, "hydralora", 0, *scores(good=False))
    started = b / "hydralora" / "lr0.001" / "seed1"
    started.mkdir(parents=True)
    (started / "run_config.json").write_text("{}")
    return a, b


def test_finished_runs_reads_every_grid_folder_and_orders_by_seed(tmp_path):
    a, b = two_grids(tmp_path)
    runs = finished_runs([a, b])
    assert [(r["method"], r["config"]["seed"]) for r in runs] == [
        ("hydralora", 0),
        ("moselora", 0),
        ("moselora-e", 0),
        ("moselora", 1),
    ]
    with pytest.raises(ConfigError, match="same run \\(moselora, lr 0.001, seed 0\\)"):
        finished_runs([a, a])
    with pytest.raises(ConfigError, match="no such grid folder"):
        finished_runs([tmp_path / "nowhere"])


def test_missing_runs_name_each_unfinished_cell_and_how_far_it_got(tmp_path):
    a, b = two_grids(tmp_path)
    cfg = CompareConfig(methods=("moselora", "moselora-e", "hydralora"), lrs=(1e-3,), seeds=(0, 1))
    missing = missing_runs(cfg, finished_runs([a, b]), [a, b])
    assert missing == [
        {
            "method": "moselora-e",
            "lr": 1e-3,
            "seed": 1,
            "state": "interrupted or running at checkpoint-50",
        },
        {"method": "hydralora", "lr": 1e-3, "seed": 1, "state": "started"},
    ]
    cfg3 = CompareConfig(methods=("moselora",), lrs=(1e-3,), seeds=(0, 1, 2))
    assert missing_runs(cfg3, finished_runs([a]), [a])[0]["state"] == "not started"


def test_report_pairs_two_grid_folders_by_seed_and_lists_the_missing_runs(tmp_path):
    a, b = two_grids(tmp_path)
    cfg = CompareConfig(
        methods=("moselora", "moselora-e", "hydralora"),
        lrs=(1e-3,),
        seeds=(0, 1),
        baselines=("moselora-e", "hydralora"),
        bootstrap=200,
        output_dir=str(tmp_path / "report"),
    )
    result = report(cfg, [a, b])
    pairs = {(p["method"], p["baseline"]): p for p in result["paired"]}
    mine = pairs[("moselora", "hydralora")]  # across the two folders, on seed 0 alone
    assert mine["accuracy"]["seeds"] == 1 and mine["accuracy"]["problems"] == 6
    assert mine["accuracy"]["diff"] == pytest.approx(2 / 6)
    assert mine["groups"]["unseen"]["nll"]["diff"] == pytest.approx(-0.2)
    assert mine["groups"]["seen"]["nll"]["diff"] == pytest.approx(0.0)
    assert result["summary"]["moselora"]["seeds"] == [0, 1]
    assert [(m["method"], m["seed"]) for m in result["missing"]] == [
        ("moselora-e", 1),
        ("hydralora", 1),
    ]
    saved = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert saved["missing"] == result["missing"]
    assert saved["runs_dirs"] == [str(a), str(b)]
    md = (tmp_path / "report" / "compare.md").read_text()
    assert md.startswith("**Partial grid: 4 of 6 runs finished.**")
    assert "- moselora-e, lr 0.001, seed 1: interrupted or running at checkpoint-50" in md
    assert "- hydralora, lr 0.001, seed 1: started" in md
    assert "| moselora | hydralora | +33.3 [" in md


def test_a_complete_grid_has_no_missing_note(tmp_path):
    a, _ = two_grids(tmp_path)
    cfg = CompareConfig(methods=("moselora",), lrs=(1e-3,), seeds=(0, 1), output_dir=str(a))
    result = report(cfg, [a])
    assert result["missing"] == []
    assert (a / "compare.md").read_text().startswith("Exact match (%)")


def test_runs_of_other_settings_are_not_one_experiment(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "moselora", 0, *scores(good=True))
    write_run(b, "moselora-e", 0, *scores(good=False), curvature_lr=0.5)
    write_run(b, "hydralora", 0, *scores(good=False), save_steps=7)  # bookkeeping: fine
    check_one_experiment(finished_runs([a]) + finished_runs([b])[:1])  # hydralora alone
    with pytest.raises(ConfigError, match="curvature_lr: 0.01 vs 0.5"):
        check_one_experiment(finished_runs([a, b]))
    cfg = CompareConfig(methods=("moselora", "moselora-e"), lrs=(1e-3,), seeds=(0,))
    with pytest.raises(ConfigError, match="not one experiment"):
        report(cfg, [a, b], output_dir=str(tmp_path / "out"))


def test_cli_report_only_takes_the_grid_from_the_runs(tmp_path, capsys):
    a, b = two_grids(tmp_path)
    out = tmp_path / "report"
    argv = ["compare", "--report-only", "--runs-dir", str(a), "--runs-dir", str(b)]
    argv += ["--output-dir", str(out), "--bootstrap", "50"]
    argv += ["--baselines", "moselora-e,hydralora"]
    assert main(argv) == 0
    saved = json.loads((out / "compare.json").read_text())
    c = saved["config"]
    assert c["methods"] == ["hydralora", "moselora", "moselora-e"]
    assert c["seeds"] == [0, 1] and c["lrs"] == [1e-3]
    assert c["base"]["steps"] == 4 and c["base"]["model"] == "tiny-llama"
    assert len(saved["missing"]) == 2
    assert "Partial grid: 4 of 6 runs finished" in capsys.readouterr().out
    # --seeds given: seed 2 is a missing cell of every method
    assert main([*argv, "--seeds", "0,1,2"]) == 0
    assert len(json.loads((out / "compare.json").read_text())["missing"]) == 5
    # a baseline with no finished run yet is a method of the grid, every run missing
    assert main([*argv[:-1], "lora,hydralora"]) == 0
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["methods"][-1] == "lora"
    assert [m["seed"] for m in saved["missing"] if m["method"] == "lora"] == [0, 1]


def test_cli_report_only_refuses_a_command_that_is_not_the_runs(tmp_path, capsys):
    a, _ = two_grids(tmp_path)
    base = ["compare", "--report-only", "--runs-dir", str(a), "--output-dir", str(tmp_path / "r")]
    assert main([*base, "--steps", "4", "--save-steps", "50"]) == 0  # the runs' own steps
    assert main([*base, "--steps", "400"]) == 2
    assert "--steps 400 given, the runs have 4" in capsys.readouterr().err
    assert main([*base, "--methods", "moselora", "--baselines", "lora"]) == 2
    assert "--baselines lora: not among --methods" in capsys.readouterr().err
    assert main(["compare", "--runs-dir", str(a)]) == 2  # --runs-dir trains nothing
    assert "--runs-dir is for --report-only" in capsys.readouterr().err
    assert main(["compare", "--report-only", "--runs-dir", str(tmp_path / "empty")]) == 2


def test_cli_select_on_chooses_the_learning_rate_on_that_validation_score(tmp_path, capsys):
    # lr 2e-3 has the lower validation NLL, lr 1e-3 the higher validation exact match
    for lr, validation in ((1e-3, (0.9, 0.5)), (2e-3, (0.1, 0.2))):
        write_run(tmp_path / "g", "lora", 0, *scores(good=lr == 1e-3), lr=lr, validation=validation)
    argv = ["compare", "--report-only", "--runs-dir", str(tmp_path / "g"), "--bootstrap", "0"]
    chosen = {}
    for flag in ((), ("--select-on", "accuracy")):
        out = tmp_path / f"out{len(flag)}"
        assert main([*argv, "--output-dir", str(out), *flag]) == 0
        saved = json.loads((out / "compare.json").read_text())
        s = saved["summary"]["lora"]
        chosen[saved["config"]["select_on"]] = (s["best_lr"], s["selected_on"])
    assert chosen == {"nll": (2e-3, "nll"), "accuracy": (1e-3, "accuracy")}
    with pytest.raises(SystemExit):
        main([*argv, "--select-on", "loss"])
    assert "invalid choice: 'loss'" in capsys.readouterr().err


def test_with_tune_seeds_the_other_seeds_are_missing_only_at_the_chosen_rate(tmp_path):
    g = tmp_path / "g"
    # lora swept on seed 0 (2e-3 has the lower validation NLL), seed 1 at 2e-3 done
    write_run(g, "lora", 0, *scores(good=True), lr=1e-3, validation=(0.5, 0.4))
    write_run(g, "lora", 0, *scores(good=True), lr=2e-3, validation=(0.5, 0.2))
    write_run(g, "lora", 1, *scores(good=True), lr=2e-3)
    # hydralora's sweep is not finished: its other seeds wait for it
    write_run(g, "hydralora", 0, *scores(good=False), lr=1e-3)
    cfg = CompareConfig(
        methods=("lora", "hydralora"), lrs=(1e-3, 2e-3), seeds=(0, 1, 2), tune_seeds=(0,)
    )
    runs = finished_runs([g])
    missing = {(m["method"], m["lr"], m["seed"]): m["state"] for m in missing_runs(cfg, runs, [g])}
    assert set(missing) == {
        ("lora", 2e-3, 2),
        ("hydralora", 2e-3, 0),
        ("hydralora", None, 1),
        ("hydralora", None, 2),
    }
    assert missing[("hydralora", None, 1)].startswith("waits for the learning-rate sweep")
    result = report(cfg, [g], output_dir=str(tmp_path / "out"))
    assert result["summary"]["lora"]["best_lr"] == 2e-3
    assert result["summary"]["lora"]["tuning_seeds"] == [0]
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "Partial grid: 4 of 8 runs finished" in table
    assert "- hydralora, lr (chosen), seed 1: waits for the learning-rate sweep" in table
