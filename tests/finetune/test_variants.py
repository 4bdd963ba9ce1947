"""MoSELoRA variants by name, so that ``compare`` pairs them in one grid (issue 15): ``@uni`` /
``@sep`` set a run's optimizer grouping (Table 2's UNI vs SEP), ``@scale`` / ``@scale=X`` the
learnable input scale (``--input-scale``, item 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from tiny_models import tiny_llama  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from mosgeo_lora.finetune import cli  # noqa: E402
from mosgeo_lora.finetune.config import CompareConfig, ConfigError, FinetuneConfig  # noqa: E402
from mosgeo_lora.finetune.methods import MethodError, parse_method, peft_config  # noqa: E402
from mosgeo_lora.finetune.train import finetune  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "groups", "scale"),
    [
        ("moselora@uni", "uni", None),
        ("moselora@sep", "sep", None),
        ("moselora-h@scale", None, "sqrt_d_in"),
        ("moselora@scale=2", None, 2.0),
        ("moselora@uni@scale=0.5", "uni", 0.5),
        ("hydralora-code@uni", "uni", None),
    ],
)
def test_tags_parse(name, groups, scale):
    m = parse_method(name, 4)
    assert (m.name, m.family, m.rank) == (name, "moselora", 4)
    assert (m.optimizer_groups, m.input_scale) == (groups, scale)
    untagged = parse_method("moselora")
    assert (untagged.optimizer_groups, untagged.input_scale) == (None, None)


@pytest.mark.parametrize(
    "name",
    [
        "lora@uni",  # MoSELoRA only
        "lora-rmatch:moselora@uni",  # the tag would apply to the LoRA being trained
        "moselora@",
        "moselora@adam",
        "moselora@uni@sep",
        "moselora@scale@scale=2",
        "moselora@scale=0",
        "moselora@scale=x",
        "@uni",
    ],
)
def test_bad_tags_are_refused(name):
    with pytest.raises(MethodError):
        parse_method(name)


def test_the_scale_tag_reaches_the_config_and_overrides_the_flag():
    model = tiny_llama()
    cfg = peft_config(parse_method("moselora-h@scale=3"), model, 100, input_scale=2.0)
    assert (cfg.preset, cfg.input_scale) == ("moselora-h", 3.0)
    assert peft_config(parse_method("moselora"), model, 100, input_scale=2.0).input_scale == 2.0
    assert peft_config(parse_method("moselora@uni"), model, 100).input_scale is None
    code = peft_config(parse_method("hydralora-code@scale"), model, 100)
    assert (code.preset, code.router_input, code.input_scale) == ("hydralora", "code", "sqrt_d_in")


def test_the_input_scale_setting_is_checked():
    assert FinetuneConfig(input_scale="sqrt_d_in").validate().is_moselora
    assert FinetuneConfig(input_scale=2.0).moselora_overrides() == {"input_scale": 2.0}
    for bad in (0.0, -1.0, math.inf, "sqrt"):
        with pytest.raises(ConfigError, match="input_scale"):
            FinetuneConfig(input_scale=bad).validate()
    with pytest.raises(ConfigError, match="apply to MoSELoRA"):
        FinetuneConfig(method="lora", input_scale=2.0).validate()


def test_the_curvature_learning_rate_tag():
    """``@klr=X`` sets the κ learning rate of that method's runs (issue 15's κ-lr A/B in one
    paired grid); refused where κ has no group of its own (``@uni``)."""
    m = parse_method("moselora@klr=5e-2", 4)
    assert (m.curvature_lr, m.optimizer_groups, m.input_scale) == (5e-2, None, None)
    assert parse_method("moselora-h@scale=2@klr=0.1").curvature_lr == 0.1
    assert parse_method("moselora").curvature_lr is None
    assert FinetuneConfig(method="moselora@klr=0.2").curvature_learning_rate() == 0.2
    assert FinetuneConfig(curvature_lr=0.03).curvature_learning_rate() == 0.03
    for bad in ("moselora@klr", "moselora@klr=0", "moselora@klr=-1", "moselora@klr=x",
                "moselora@klr=1@klr=2", "moselora@uni@klr=1e-2", "lora@klr=1e-2"):  # fmt: skip
        with pytest.raises(MethodError):
            parse_method(bad)
    with pytest.raises(ConfigError, match="klr"):
        FinetuneConfig(method="moselora@klr=1e-2", optimizer_groups="uni").validate()
    assert FinetuneConfig(method="moselora@klr=1e-2").validate().is_moselora


def test_the_optimizer_grouping_of_a_run():
    assert FinetuneConfig().optimizer_grouping() == "sep"
    assert FinetuneConfig(method="moselora@uni").optimizer_grouping() == "uni"
    assert FinetuneConfig(optimizer_groups="uni").optimizer_grouping() == "uni"
    assert FinetuneConfig(method="moselora@sep", optimizer_groups="uni").optimizer_grouping() == (
        "sep"
    )


def test_the_command_line_reads_input_scale():
    parse = cli.build_parser().parse_args
    assert parse(["finetune", "--input-scale", "sqrt_d_in"]).input_scale == "sqrt_d_in"
    assert parse(["compare", "--input-scale", "2.5"]).input_scale == 2.5
    assert parse(["finetune"]).input_scale is None
    for bad in ("0", "-1", "inf", "nan", "sqrt"):
        with pytest.raises(SystemExit):
            parse(["finetune", "--input-scale", bad])
    ns = parse(["finetune", "--method", "moselora@uni@scale=2"])
    cfg = cli._run_config(ns)
    assert cfg.method == "moselora@uni@scale=2" and cfg.validate().input_scale == 2.0


class _Groups(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        self.groups = [
            (len(g["params"]), g.get("initial_lr", g["lr"])) for g in optimizer.param_groups
        ]


def _run(out: Path, method: str, **kw) -> tuple[dict, _Groups]:
    spy = _Groups()
    cfg = FinetuneConfig(
        model="tiny-llama",
        method=method,
        steps=2,
        batch_size=2,
        lr=1e-2,
        curvature_lr=0.1,
        max_length=400,
        eval_sets=("comparison__pair",),
        eval_limit=1,
        boundary_prompts=1,
        output_dir=str(out),
        disable_tqdm=True,
        **kw,
    )
    return finetune(cfg, callbacks=[spy]), spy


def test_a_klr_tagged_run_trains_kappa_at_its_rate(tmp_path):
    metrics, spy = _run(tmp_path / "klr", "moselora@klr=0.3")
    assert sorted(lr for _, lr in spy.groups) == [1e-2, 0.3]
    assert metrics["curvature_lr"] == 0.3 and metrics["config"]["curvature_lr"] == 0.1


def test_a_tagged_run_trains_its_variant(tmp_path):
    """``moselora@uni``: one optimizer group; ``moselora@scale=2``: the curvature group holds
    κ and ρ (one per layer), ρ moves, and the run's metrics report the scale."""
    metrics, spy = _run(tmp_path / "uni", "moselora@uni")
    assert len(spy.groups) == 1 and spy.groups[0][1] == 1e-2
    assert metrics["optimizer_groups"] == "uni"
    metrics, spy = _run(tmp_path / "scale", "moselora@scale=2")
    layers = 2 * 3  # tiny Llama: 2 blocks × 3 FFN projections
    assert metrics["optimizer_groups"] == "sep"
    assert len(spy.groups) == 2 and spy.groups[1] == (2 * layers, 0.1)  # κ and ρ of each layer
    d = metrics["curvature_dynamics"]
    assert d["input_scale_start"] == {"mean": 2.0, "min": 2.0, "max": 2.0, "layers": layers}
    assert d["input_scale_end"]["mean"] != pytest.approx(2.0, abs=1e-6)
    assert 0 <= d["boundary_share_end"]["share"] <= 1
    config = json.loads((tmp_path / "scale" / "adapter" / "adapter_config.json").read_text())
    assert config["input_scale"] == 2.0
    plain, _ = _run(tmp_path / "plain", "moselora")
    assert "input_scale_start" not in plain["curvature_dynamics"]


def test_a_larger_scale_leaves_fewer_inputs_on_the_rim():
    """The boundary share divides ``‖A x‖`` by ``s``: a huge ``A`` clips every code, unless
    the scale is as large."""
    import mosgeo_lora
    from mosgeo_lora.finetune import data as mdata
    from mosgeo_lora.finetune.base_models import load
    from mosgeo_lora.finetune.dynamics import boundary_share, input_scale_summary

    tiny = load("tiny-llama")
    prompts = [mdata.prompt_ids(tiny.tokenizer, "What is 2 + 3?")]
    shares = []
    for scale in (None, 1e6):
        model = mosgeo_lora.wrap(load("tiny-llama").model, input_scale=scale)
        for m in model.modules():
            if hasattr(m, "moselora_A"):
                m.moselora_A["default"].weight.data.mul_(1e4)
        shares.append(boundary_share(model, prompts)["share"])
        assert (input_scale_summary(model) is None) == (scale is None)
    assert shares == [1.0, 0.0]


def test_compare_pairs_uni_with_sep_in_one_grid(tmp_path):
    from mosgeo_lora.finetune.compare import compare

    data = tmp_path / "qa.jsonl"
    rows = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    base = FinetuneConfig(
        model="tiny-llama",
        data=str(data),
        steps=1,
        batch_size=2,
        max_length=200,
        eval_sets=("comparison__pair",),
        eval_limit=2,
        boundary_prompts=0,
        disable_tqdm=True,
    )
    grid = CompareConfig(
        methods=("moselora", "moselora@uni"),
        lrs=(1e-2,),
        seeds=(0,),
        baselines=("moselora",),
        validation_per_module=1,
        bootstrap=10,
        output_dir=str(tmp_path / "grid"),
        base=base,
    )
    result = compare(grid)
    by_method = {r["method"]: r for r in result["runs"]}
    assert by_method["moselora"]["optimizer_groups"] == "sep"
    assert by_method["moselora@uni"]["optimizer_groups"] == "uni"
    pair = result["paired"][0]
    assert (pair["method"], pair["baseline"]) == ("moselora@uni", "moselora")
    assert (tmp_path / "grid" / "moselora@uni" / "lr0.01" / "seed0" / "metrics.json").is_file()


def test_the_table_shows_the_boundary_share_at_both_ends_and_the_scale():
    """A summary with the start's boundary share and the input scale gets their columns; one
    without them (written before) keeps the old table."""
    from mosgeo_lora.finetune.compare import _dynamics_lines, summarize

    def run(method, seed, start, end, scale):
        dyn = {
            "curved_experts": 6,
            "sign_changed_share": 0.0,
            "mean_abs_delta": 0.05,
            "boundary_share_start": {"share": start},
            "boundary_share_end": {"share": end},
        }
        if scale:
            dyn["input_scale_start"] = {"mean": scale[0]}
            dyn["input_scale_end"] = {"mean": scale[1]}
        return {
            "method": method,
            "config": {"lr": 1e-3, "seed": seed},
            "accuracy": {"validation": 0.5, "numbers__place_value": 0.5},
            "final_loss": 1.0,
            "step_time_s": 1.0,
            "peak_rss_mb": 1.0,
            "trainable_parameters": 1,
            "activated_parameters": 1,
            "curvature_dynamics": dyn,
        }

    runs = [
        run("moselora", 0, 0.05, 0.15, None),
        run("moselora@scale=2", 0, 0.01, 0.02, (2.0, 1.8)),
    ]
    summary = summarize(runs, ["moselora", "moselora@scale=2"])
    d = summary["moselora@scale=2"]["curvature_dynamics"]
    assert d["boundary_share_start"] == (0.01, 0.0) and d["input_scale_end"] == (1.8, 0.0)
    lines = "\n".join(_dynamics_lines(summary))
    assert (
        "| boundary share, start (%) | boundary share (%) | input scale s, start → end |" in lines
    )
    assert "| moselora | 0.0 ± 0.0 | 0.050 ± 0.000 | 5.0 ± 0.0 | 15.0 ± 0.0 | – |" in lines
    assert (
        "| moselora@scale=2 | 0.0 ± 0.0 | 0.050 ± 0.000 | 1.0 ± 0.0 | 2.0 ± 0.0 | 2.00 → 1.80 |"
        in lines
    )
    for dyn in (r["curvature_dynamics"] for r in runs):
        for key in ("boundary_share_start", "input_scale_start", "input_scale_end"):
            dyn.pop(key, None)
    old = "\n".join(_dynamics_lines(summarize(runs, ["moselora", "moselora@scale=2"])))
    assert "| method | κ sign changed (%) | mean \\|Δκ\\| | boundary share (%) |" in old


def test_the_scale_pilot_table_is_the_one_its_json_gives():
    """``benchmarks/results/scale15_compare.md`` (included in docs/paired-experiment.md) is
    what ``markdown_table`` writes from ``scale15_compare.json``, and the boundary shares the
    page quotes are the JSON's."""
    from mosgeo_lora.finetune.compare import markdown_table

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    result = json.loads((root / "scale15_compare.json").read_text())
    c = result["config"]
    cfg = CompareConfig(methods=tuple(c["methods"]), lrs=tuple(c["lrs"]), seeds=tuple(c["seeds"]))
    assert markdown_table(result["summary"], cfg, result["paired"]) == (
        (root / "scale15_compare.md").read_text()
    )
    page = (root.parents[1] / "docs" / "paired-experiment.md").read_text()
    for method, quoted in (
        ("moselora", "4.8 % → 15.0 %"),
        ("moselora@scale", "0.14 % → 0.14 %"),
        ("moselora@scale=2", "2.0 % → 4.7 %"),
    ):
        d = result["summary"][method]["curvature_dynamics"]
        start, end = 100 * d["boundary_share_start"][0], 100 * d["boundary_share_end"][0]
        digits = 2 if start < 1 else 1
        assert f"{start:.{digits}f} % → {end:.{digits}f} %" == quoted
        assert quoted in page


def test_the_kappa_lr_table_is_the_one_its_json_gives():
    """``benchmarks/results/klr15_compare.md`` (included in docs/paired-experiment.md) is what
    ``markdown_table`` writes from ``klr15_compare.json``, and the shares, distances and
    differences the page quotes are the JSON's."""
    from mosgeo_lora.finetune.compare import markdown_table

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    result = json.loads((root / "klr15_compare.json").read_text())
    c = result["config"]
    cfg = CompareConfig(methods=tuple(c["methods"]), lrs=tuple(c["lrs"]), seeds=tuple(c["seeds"]))
    assert markdown_table(result["summary"], cfg, result["paired"], result["missing"]) == (
        (root / "klr15_compare.md").read_text()
    )
    page = (root.parents[1] / "docs" / "paired-experiment.md").read_text()
    page = " ".join(page.split())
    for method, share, delta in (
        ("moselora@klr=1e-2", "0.0", "0.091"),
        ("moselora", "3.8", "0.411"),
    ):
        d = result["summary"][method]["curvature_dynamics"]
        assert f"{100 * d['sign_changed_share'][0]:.1f}" == share
        assert f"{d['mean_abs_delta'][0]:.3f}" == delta
        assert f"{share} %" in page and f"|Δκ| {delta}" in page
    (pair,) = result["paired"]
    nll, em = pair["nll"], pair["accuracy"]
    quoted = f"{nll['diff']:+.3f} [{nll['low']:+.3f}, {nll['high']:+.3f}]".replace("-", "−")
    assert quoted in page, quoted
    quoted = f"{100 * em['diff']:+.1f} [{100 * em['low']:+.1f}, {100 * em['high']:+.1f}]"
    assert quoted.replace("-", "−") in page, quoted
