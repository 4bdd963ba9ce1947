"""Issue 15's results: ``benchmarks/issue15_results.py`` on invented run folders (every
number known), and ``docs/results.md`` held to the ``benchmarks/results/issue15.json`` that
command wrote: the page's tables are the ones the JSON gives, its figures and commands are
there, and every number its verdict quotes is one of the JSON's."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from fake_runs import LAYER, scores, write_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import issue15_results as r15  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"


def log(flips: list[int]) -> list[dict]:
    """A ``train_log.jsonl`` of κ scalars every 5 steps, with step 10 logged twice (a resumed
    run: the second entry counts) and the trainer's closing row, which has no κ."""
    rows = [
        {"step": 5 * (i + 1), "loss": 1.0, "kappa_hyperbolic": -1.0 + 0.1 * i}
        | {"kappa_spherical": 1.0 - 0.1 * i, "kappa_flipped": float(f)}
        for i, f in enumerate(flips)
    ]
    rows.insert(2, dict(rows[1], kappa_flipped=99.0))  # the interrupted run's step 10
    rows[1], rows[2] = rows[2], rows[1]  # ... logged first; the resumed one's last
    return [*rows, {"step": 5 * len(flips), "train_runtime": 12.0}]


@pytest.fixture
def grid(tmp_path: Path) -> list[Path]:
    """Two grid folders: moselora and moselora-e swept on seed 0 (1e-3 has the lowest
    validation NLL for both: the chosen rate) and run with seed 1 at 1e-3 (moselora better
    on the unseen set); hydralora with seed 0 at 1e-3 only (as bad as moselora-e, its sweep
    not finished); no lora-rmatch run."""
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for seed in (0, 1):
        write_run(a, "moselora", seed, *scores(good=True), log=log([0, 1, 2]))
        write_run(a, "moselora-e", seed, *scores(good=False), log=[{"step": 5, "loss": 1.0}])
    for lr in (5e-4, 2e-3, 4e-3, 8e-3):  # worse on validation: not chosen
        write_run(a, "moselora", 0, *scores(good=False), lr=lr, validation=(0.5, 0.3))
        write_run(a, "moselora-e", 0, *scores(good=True), lr=lr, validation=(0.5, 0.3))
    write_run(b, "hydralora", 0, *scores(good=False))
    return [a, b]


def test_collect_pairs_moselora_with_each_baseline_and_lists_the_rest(grid):
    result = r15.collect(grid, bootstrap=200, command="cmd")
    pairs = {c["baseline"]: c for c in result["contrasts"]}
    assert list(pairs) == ["moselora-e", "hydralora"]  # no lora-rmatch run: no contrast
    e = pairs["moselora-e"]
    assert e["all"]["accuracy"]["seeds"] == 2 and e["all"]["accuracy"]["problems"] == 6
    assert e["all"]["accuracy"]["diff"] == pytest.approx(2 / 6)
    assert e["unseen"]["nll"]["diff"] == pytest.approx(-0.2)
    assert e["seen"]["nll"]["diff"] == pytest.approx(0.0)
    assert pairs["hydralora"]["all"]["nll"]["seeds"] == 1
    g = result["grid"]
    assert (g["runs"], g["finished"], g["steps"], g["model"]) == (28, 13, 4, "tiny-llama")
    missing = {(m["method"], m["lr"], m["seed"]) for m in result["missing"]}
    sweep = {(m, lr, 0) for m in ("hydralora", "lora-rmatch:moselora") for lr in r15.LRS}
    waits = {(m, None, s) for m in ("hydralora", "lora-rmatch:moselora") for s in (1, 2)}
    assert missing == {("moselora", 1e-3, 2), ("moselora-e", 1e-3, 2)} | waits | (
        sweep - {("hydralora", 1e-3, 0)}
    )
    assert result["commands"]["results"] == "cmd"
    assert result["means"]["moselora"]["accuracy_unseen"] == [pytest.approx(2 / 3), 0.0]
    choice = result["lr_choice"]["moselora"]
    assert (choice["best_lr"], choice["selected_on"], choice["tuning_seeds"]) == (1e-3, "nll", [0])
    assert choice["validation_nll"] == {
        "0.0005": 0.3,
        "0.001": 0.1,
        "0.002": 0.3,
        "0.004": 0.3,
        "0.008": 0.3,
    }
    # the first grid: every method at 1e-3, the same pairs here
    assert [c["baseline"] for c in result["contrasts_fixed_lr"]] == ["moselora-e", "hydralora"]
    assert [(d["lr"], d["seed"]) for d in result["dynamics_by_lr"]] == [
        (5e-4, 0), (1e-3, 0), (2e-3, 0), (4e-3, 0), (8e-3, 0)
    ]  # fmt: skip


def test_dynamics_of_each_moselora_run_with_its_kappa_trajectory(grid):
    result = r15.collect(grid, bootstrap=0, command="cmd")
    dyn = result["dynamics"]
    assert [(d["method"], d["seed"]) for d in dyn] == [("moselora", 0), ("moselora", 1)]
    d = dyn[0]
    assert (d["sign_changed"], d["curved_experts"], d["steps"]) == (1, 4, 4)
    assert (d["boundary_share_start"], d["boundary_share_end"]) == (0.05, 0.15)
    t = d["trajectory"]
    assert t["step"] == [5.0, 10.0, 15.0]  # one entry per step, the closing row left out
    assert t["kappa_flipped"] == [0.0, 1.0, 2.0]  # step 10: the resumed run's entry
    assert t["kappa_hyperbolic"] == pytest.approx([-1.0, -0.9, -0.8])
    assert result["dynamics_mean"]["boundary_share_end"] == pytest.approx(0.15)
    assert r15._by_layer(dyn, "end") == {"down_proj": {3: pytest.approx(0.15)}}


def test_markdown_and_verdict_say_what_the_intervals_say(grid):
    result = r15.collect(grid, bootstrap=200, command="cmd")
    md = r15.markdown(result)
    assert md.startswith("**Partial grid: 13 of 28 runs finished.**")
    assert "- lora-rmatch:moselora, lr 0.0005, seed 0: not started" in md
    assert "- hydralora, lr (its chosen), seed 1: waits for the learning-rate sweep" in md
    assert "| moselora | 0.3000 (50) | **0.1000 (50)** | 0.3000 (50) | 0.3000 (50) |" in md
    assert "| hydralora | – | 0.1000 (50) | – | – | – |" in md
    assert "| 0.004 | 0 | 25.0 % | 0.100 | 15.0 % |" in md
    assert "| moselora-e | all | 2 | 6 | +33.3 [" in md
    assert "| moselora-e | unseen | 2 | 3 | +66.7 [" in md
    assert "| -0.200 [-0.200, -0.200] |" in md  # the unseen NLL: -0.2 on every problem
    assert "| moselora | 0 | 4 | 1 of 4 (25.0 %) | 0.100 | 0.300 | 5.0 % → 15.0 % |" in md
    verdict = r15.verdict_markdown(result)
    # one line per contrast, the rates, the curvatures; and moselora vs moselora-e on seed 1
    # alone (the seeds that chose no rate), a heading and its line
    assert verdict.count("\n") == 6
    assert (
        "- On seeds 1, 2, 3, 4 alone (no rate chosen):\n  - **moselora vs moselora-e** (6 "
        in verdict
    )
    assert "- **Learning rates**, each method's lowest validation answer NLL (seed 0): " in verdict
    assert "moselora 0.001; moselora-e 0.001; hydralora 0.001." in verdict
    assert "- **moselora vs moselora-e** (6 problems, 2 seeds): answer NLL -0.100 [" in verdict
    assert "unseen sets alone, answer NLL -0.200 [-0.200, -0.200], better." in verdict
    assert "- **moselora vs hydralora** (6 problems, 1 seed: the interval covers the " in verdict
    assert verdict.endswith(
        "- **Curvatures** (2 moselora runs, mean): 25.0 % of the curved experts changed "
        "space, mean |Δκ| 0.100; boundary share 5.0 % → 15.0 %.\n"
    )


@pytest.mark.parametrize(
    ("low", "high", "lower_is_better", "word"),
    [
        (-0.3, -0.1, True, "better"),
        (-0.3, -0.1, False, "worse"),
        (0.1, 0.3, True, "worse"),
        (0.1, 0.3, False, "better"),
        (-0.1, 0.1, True, "no difference detected"),
        (0.0, 0.2, False, "no difference detected"),
    ],
)
def test_a_difference_is_better_or_worse_only_when_its_interval_excludes_zero(
    low, high, lower_is_better, word
):
    res = {"diff": (low + high) / 2, "low": low, "high": high}
    assert r15._word(res, lower_is_better) == word
    assert r15._word({"diff": 0.1, "low": None, "high": None}, True) == "no interval"


def test_the_command_writes_json_tables_and_figures(grid, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out, figs = tmp_path / "results", tmp_path / "figs"
    argv = ["--runs", "runs/a", "runs/b", "--bootstrap", "100"]
    assert r15.main([*argv, "--out", str(out), "--figures", str(figs)]) == 0
    result = json.loads((out / "issue15.json").read_text())
    assert result["commands"]["results"] == (
        "python benchmarks/issue15_results.py --runs runs/a runs/b --bootstrap 100"
    )
    assert (out / "issue15.md").read_text() == r15.markdown(result)
    assert (out / "issue15_verdict.md").read_text() == r15.verdict_markdown(result)
    for name in ("issue15_curvature_dynamics.png", "issue15_boundary_share.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "moselora vs moselora-e" in capsys.readouterr().out
    assert not (figs / "issue15_kappa_per_expert.png").exists()  # no curvatures.json


def test_the_per_expert_figure_is_drawn_from_the_first_run_with_a_history(grid, tmp_path):
    result = r15.collect(grid, bootstrap=0, command="cmd")
    history = {
        "history": [
            {"step": s, "kappa": {LAYER: [-1.0 + 0.1 * s, 1.0 - 0.1 * s, 0.0]}} for s in (0, 5, 10)
        ],
        "spaces": {LAYER: ["hyperbolic", "spherical", "euclidean"]},
    }
    seed1 = r15.run_folder(grid, "moselora", 1e-3, 1)
    (seed1 / "curvatures.json").write_text(json.dumps(history))
    out = r15.plot_per_expert(grid, result, tmp_path / "k.png")
    assert out == tmp_path / "k.png" and out.read_bytes()[:4] == b"\x89PNG"
    (seed1 / "curvatures.json").unlink()
    assert r15.plot_per_expert(grid, result, tmp_path / "none.png") is None
    with pytest.raises(FileNotFoundError, match="no finished moselora lr 0.001 seed 2"):
        r15.run_folder(grid, "moselora", 1e-3, 2)


def test_no_finished_run_is_a_report_too(tmp_path):
    (tmp_path / "a").mkdir()
    result = r15.collect([tmp_path / "a"], bootstrap=10, command="cmd")
    assert result["grid"]["finished"] == 0 and len(result["missing"]) == 28
    assert "| – | – | – | – | no paired runs yet | – |" in r15.markdown(result)
    assert r15.verdict_markdown(result) == "- No contrast has a finished pair of runs yet.\n"
    r15.plot_kappa(result, tmp_path / "k.png")  # empty figures, no error
    r15.plot_boundary(result, tmp_path / "b.png")


# ------------------------------------------------------------------ the page and its JSON
def _json_numbers(value, out: set[str]) -> set[str]:
    """Every way the page may print a number of the JSON: as is, to 1–3 decimals, and in
    percent or points to 0–2 decimals (signs dropped)."""
    if isinstance(value, dict):
        for v in value.values():
            _json_numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _json_numbers(v, out)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, (int, float)):
        for x in (abs(value), abs(100 * value)):
            out.update({f"{x:g}", *(f"{x:.{d}f}" for d in range(4))})
    return out


def _section(page: str, title: str) -> str:
    start = page.index(f"## {title}\n")
    end = page.find("\n## ", start + 1)
    return page[start : end if end > 0 else None]


NUMBER = re.compile(r"(?<![\w.\-])[-+−]?(\d+(?:\.\d+)?)(?![\w.]*\d)")


def test_the_results_page_is_the_one_its_json_gives():
    """``issue15.md`` and ``issue15_verdict.md`` are what the generator writes from
    ``issue15.json``, the page includes both and both figures, shows the grid's commands,
    and every number in its verdict section is one of the JSON's."""
    result = json.loads((RESULTS / "issue15.json").read_text())
    assert (RESULTS / "issue15.md").read_text() == r15.markdown(result)
    assert (RESULTS / "issue15_verdict.md").read_text() == r15.verdict_markdown(result)
    page = PAGE.read_text()
    for name in ("issue15.md", "issue15_verdict.md"):
        assert f"```{{include}} ../benchmarks/results/{name}\n```" in page
    for name in r15.FIGURE_NAMES:
        assert f"```{{figure}} _static/figures/{name}\n" in page
    flat = " ".join(page.replace("\\\n", " ").split())
    commands = result["commands"]
    extra = result.get("clean", {}).get("commands", [])
    for command in [*commands["grid"], *commands.get("variants", []), commands["report"], *extra]:
        assert command in flat, command
    assert result["commands"]["results"] in flat
    verdict = _section(page, "Verdict")
    allowed = _json_numbers(result, set())
    quoted = NUMBER.findall(verdict.split("```", 1)[0] + verdict.rsplit("```", 1)[-1])
    strays = [n for n in quoted if n not in allowed]
    assert not strays, f"the verdict quotes numbers that are not in issue15.json: {strays}"


def test_the_number_check_catches_a_stray_number():
    allowed = _json_numbers({"nll": {"diff": -0.0123, "low": -0.03}, "share": 0.148}, set())
    assert {"0.012", "1.2", "0.030", "14.8", "15"} <= allowed
    quoted = NUMBER.findall("NLL −0.012 [−0.030, +0.004]; 14.8 % of moselora-e; SmolLM2-135M")
    assert quoted == ["0.012", "0.030", "0.004", "14.8"]
    assert [n for n in quoted if n not in allowed] == ["0.004"]


def test_layer_fixture_is_a_real_layer_name():
    assert r15._LAYER.search(LAYER).groups() == ("3", "down_proj")


def test_the_variants_pair_with_moselora_each_at_its_own_rate(tmp_path):
    """The design options and Tables 2-3: each variant chooses its rate among
    ``VARIANT_LRS`` on seed 0 and pairs with MoSELoRA at MoSELoRA's rate; a variant whose
    sweep has not finished pairs with nothing and is listed."""
    a, c = tmp_path / "runs" / "a", tmp_path / "runs" / "c"
    for lr in r15.VARIANT_LRS:  # moselora: 4e-3 has the lowest validation NLL
        best = lr == 4e-3
        write_run(
            a, "moselora", 0, *scores(good=False), lr=lr, validation=(0.5, 0.1 if best else 0.3)
        )
        low = lr == 2e-3  # moselora@scale: 2e-3
        write_run(
            c, "moselora@scale", 0, *scores(good=low), lr=lr, validation=(0.5, 0.1 if low else 0.3)
        )
    write_run(c, "moselora-h", 0, *scores(good=True), lr=4e-3)
    result = r15.collect([a, c], bootstrap=50, command="cmd")
    v = result["variants"]
    assert [x["baseline"] for x in v["contrasts"]] == ["moselora@scale"]
    scale = v["contrasts"][0]
    assert scale["method"] == "moselora" and scale["unseen"]["nll"]["diff"] == pytest.approx(0.2)
    assert v["lr_choice"]["moselora@scale"]["best_lr"] == 2e-3
    assert v["lr_choice"]["moselora"]["best_lr"] == 4e-3
    assert {(d["method"], d["lr"]) for d in v["dynamics"]} == {
        ("moselora", 4e-3), ("moselora@scale", 2e-3)
    }  # fmt: skip
    # 7 methods, each its sweep on seed 0 and seeds 1, 2 at its chosen rate; moselora-h and
    # the clipping control on 4 rates
    assert v["grid"]["runs"] == 5 * (3 + 2) + 2 * (4 + 2) and v["grid"]["finished"] == 7
    missing = {(m["method"], m["lr"], m["seed"]) for m in v["missing"]}
    assert ("moselora-h", 2e-3, 0) in missing and ("moselora@scale", 2e-3, 1) in missing
    page = r15.markdown(result)
    assert "### The design options and Tables 2 and 3" in page and "| variant |" in page
    # its sweep unfinished: no choice; the columns are every variant's rates
    assert "| method | lr 0.001 | lr 0.002 | lr 0.004 | lr 0.008 | lr 0.016 |" in page
    assert "| moselora-h | – | – | 0.1000 (50) | – | – |" in page
    # moselora − variant: two fewer answers right of 3, 0.2 nats more on the unseen set
    assert "| moselora@scale | unseen | 1 | 3 | -66.7 [-100.0, -33.3] | +0.200" in page
    dyn = "| 0 | 4 | 1 of 4 (25.0 %) | 0.100 | 0.300 | 5.0 % → 15.0 % |"
    assert f"| moselora@scale {dyn} 24.0 → 20.0 |" in page and f"| moselora {dyn} – |" in page
    verdict = r15.verdict_markdown(result)
    assert "- **moselora vs moselora@scale** (6 problems, 1 seed" in verdict
    assert all(c in result["commands"]["variants"][0] for c in ("runs/issue15c", "2e-3,4e-3,8e-3"))


def test_the_clipping_control_pairs_with_moselora_and_with_moselora_e(tmp_path):
    """``moselora@flat`` chooses among its four rates (1e-3 too); it pairs with MoSELoRA at
    MoSELoRA's rate and, once its sweep has finished, with ``moselora-e`` at the rate that
    chose in the main grid. Its dynamics row has a boundary share and no κ."""
    a, f = tmp_path / "runs" / "a", tmp_path / "runs" / "f"
    for lr in r15.LRS:
        best = lr == 4e-3
        write_run(
            a, "moselora", 0, *scores(good=False), lr=lr, validation=(0.5, 0.1 if best else 0.3)
        )
        low = lr == 1e-3  # moselora-e chooses 1e-3
        write_run(
            a, "moselora-e", 0, *scores(good=low), lr=lr, validation=(0.5, 0.1 if low else 0.3)
        )
    flat_lrs = r15.variant_lrs("moselora@flat")
    assert flat_lrs == (1e-3, 2e-3, 4e-3, 8e-3)
    for lr in flat_lrs[:-1]:
        write_run(f, "moselora@flat", 0, *scores(good=True), lr=lr, validation=(0.5, 0.2))
    v = r15.collect([a, f], bootstrap=50, command="cmd")["variants"]
    assert v["controls"] == [] and v["contrasts"] == []  # 8e-3 not run: no choice yet
    assert ("moselora@flat", 8e-3, 0) in {(m["method"], m["lr"], m["seed"]) for m in v["missing"]}
    write_run(f, "moselora@flat", 0, *scores(good=True), lr=8e-3, validation=(0.5, 0.05))
    result = r15.collect([a, f], bootstrap=50, command="cmd")
    v = result["variants"]
    assert v["lr_choice"]["moselora@flat"]["best_lr"] == 8e-3
    assert [(c["method"], c["baseline"]) for c in v["contrasts"]] == [("moselora", "moselora@flat")]
    (control,) = v["controls"]
    assert (control["method"], control["baseline"]) == ("moselora@flat", "moselora-e")
    # both ran good=True (the control at 8e-3, moselora-e at 1e-3): no difference
    assert control["unseen"]["nll"]["diff"] == pytest.approx(0.0)
    page = r15.markdown(result)
    assert "| moselora@flat | 0 | 4 | – | – | – | 5.0 % → 15.0 % |" in page
    assert "moselora-h also 0.016; moselora@flat also 0.001" in page
    assert "moselora@flat − moselora-e" in page
    assert "- **moselora@flat vs moselora-e** (6 problems" in r15.verdict_markdown(result)


def test_the_clean_seeds_score_the_geometry_contrasts_without_seed_0(tmp_path):
    """Seeds 1-4 alone, each method at the rate its sweep chose: seed 0 (which chose the
    rates) is left out, the extra seeds' commands name each method's rate, and their runs
    not yet finished are listed; a method whose sweep is unfinished (the control here) is
    left out of every pair."""
    a, g = tmp_path / "runs" / "a", tmp_path / "runs" / "g"
    for lr in r15.LRS:
        best = lr == 4e-3
        write_run(
            a, "moselora", 0, *scores(good=True), lr=lr, validation=(0.5, 0.1 if best else 0.3)
        )
        low = lr == 1e-3
        write_run(
            a, "moselora-e", 0, *scores(good=True), lr=lr, validation=(0.5, 0.1 if low else 0.3)
        )
    for seed, root in ((1, a), (3, g)):  # seed 0 ties; seeds 1 and 3: moselora better
        write_run(root, "moselora", seed, *scores(good=True), lr=4e-3)
        write_run(root, "moselora-e", seed, *scores(good=False), lr=1e-3)
    result = r15.collect([a, g], bootstrap=50, command="cmd")
    clean = result["clean"]
    assert clean["seeds"] == [1, 2, 3, 4]
    assert clean["rates"] == {"moselora": 4e-3, "moselora-e": 1e-3, "moselora@flat": None}
    (c,) = clean["contrasts"]
    assert (c["method"], c["baseline"]) == ("moselora", "moselora-e")
    assert c["all"]["nll"]["seeds"] == 2  # seeds 1 and 3, not 0
    assert c["unseen"]["nll"]["diff"] == pytest.approx(-0.2)
    assert {(m["method"], m["seed"]) for m in clean["missing"]} == {
        ("moselora", 4), ("moselora-e", 4)
    }  # fmt: skip
    cmd = clean["commands"][0]
    assert "--methods moselora --lrs 4e-3 --seeds 3,4 --steps 400" in cmd
    assert cmd.endswith("--output-dir runs/issue15g") and "--tune-seeds" not in cmd
    page = r15.markdown(result)
    assert "### On the seeds that chose no rate" in page
    assert "| moselora − moselora-e | unseen | 2 | 3 |" in page
    assert "- moselora-e, lr 0.001, seed 4: not started" in page
    assert "  - **moselora vs moselora-e** (6 problems, 2 seeds)" in r15.verdict_markdown(result)
