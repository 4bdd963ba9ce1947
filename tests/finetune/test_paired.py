"""The paired experiment of issue 15: the answer NLL (a continuous metric beside exact match),
per-problem results, paired bootstrap differences, the same training stream for every method
of a seed, MoSELoRA-E as MoSELoRA without geometry, and the curvature dynamics of a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from mosgeo_lora.finetune import data as mdata  # noqa: E402
from mosgeo_lora.finetune.base_models import load  # noqa: E402
from mosgeo_lora.finetune.compare import (  # noqa: E402
    VALIDATION,
    markdown_table,
    paired_bootstrap,
    paired_differences,
    summarize,
)
from mosgeo_lora.finetune.config import CompareConfig, ConfigError, FinetuneConfig  # noqa: E402
from mosgeo_lora.finetune.dynamics import boundary_share, kappa_dynamics  # noqa: E402
from mosgeo_lora.finetune.evaluate import answer_nll, evaluate  # noqa: E402
from mosgeo_lora.finetune.train import finetune  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load("tiny-llama")


@pytest.fixture(scope="module")
def problems():
    sets = mdata.eval_sets(["comparison__pair", "numbers__place_value"])
    return sets["comparison__pair"][:5] + sets["numbers__place_value"][:4]


# --------------------------------------------------------------------------- answer NLL
def test_batched_nll_is_the_per_example_loss(tiny, problems):
    model, tok = tiny.model.eval(), tiny.tokenizer
    loop = []
    with torch.no_grad():
        for ex in problems:  # the model's own loss on one unpadded example
            f = mdata.tokenize_example(tok, ex, 10**6)
            out = model(
                input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])
            )
            loop.append(out.loss.item())
    batched = answer_nll(model, tok, problems, batch_size=4)
    assert len(batched) == len(problems)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-5)
    for side in ("left", "right"):
        for bs in (1, 3, 16):
            np.testing.assert_allclose(
                answer_nll(model, tok, problems, bs, padding_side=side), loop, rtol=1e-5, atol=1e-5
            )
    assert len(set(np.round(loop, 4))) > 1  # the problems do differ
    with pytest.raises(ValueError, match="padding_side"):
        answer_nll(model, tok, problems, padding_side="middle")


def test_nll_scores_only_the_answer(tiny, problems):
    """Changing the question changes the context but the scored tokens stay the answer's; a
    different answer changes the value."""
    ex = problems[0]
    other = mdata.Example(ex.question, ex.answer + "7", ex.module)
    a, b = answer_nll(tiny.model, tiny.tokenizer, [ex, other])
    assert a != pytest.approx(b)


def test_evaluate_keeps_per_problem_results_in_order(tiny, problems):
    res = evaluate(tiny.model, tiny.tokenizer, {"s": problems}, batch_size=4, max_new_tokens=3)
    s = res["s"]
    pp = s["per_problem"]
    assert len(pp["correct"]) == len(pp["nll"]) == len(problems) == s["n"]
    assert set(pp["correct"]) <= {0, 1} and sum(pp["correct"]) == s["correct"]
    assert s["nll"] == pytest.approx(float(np.mean(pp["nll"])))
    np.testing.assert_allclose(pp["nll"], answer_nll(tiny.model, tiny.tokenizer, problems), 1e-6)
    assert "nll" not in evaluate(tiny.model, tiny.tokenizer, {"s": problems[:2]}, nll=False)["s"]


# --------------------------------------------------------------------------- paired bootstrap
def test_bootstrap_recovers_a_known_difference():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(3, 400))
    res = paired_bootstrap(b + 0.25, b, resamples=500)
    assert res["diff"] == pytest.approx(0.25) and res["low"] == pytest.approx(0.25)
    assert res["high"] == pytest.approx(0.25)
    noisy = b + 0.25 + rng.normal(scale=0.5, size=b.shape)
    res = paired_bootstrap(noisy, b, resamples=1000)
    assert res["low"] < 0.25 < res["high"] and res["low"] > 0  # covers the truth, excludes 0
    assert (res["seeds"], res["problems"], res["level"]) == (3, 400, 0.95)


def test_bootstrap_of_an_all_equal_pair_is_zero():
    a = np.random.default_rng(0).integers(0, 2, size=(2, 50))
    res = paired_bootstrap(a, a.copy(), resamples=300)
    assert (res["diff"], res["low"], res["high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_shrinks_with_more_problems_and_is_seeded():
    rng = np.random.default_rng(2)
    width = {}
    for n in (50, 800):
        a, b = rng.integers(0, 2, size=(3, n)), rng.integers(0, 2, size=(3, n))
        r = paired_bootstrap(a, b, resamples=1000, seed=7)
        width[n] = r["high"] - r["low"]
        assert r == paired_bootstrap(a, b, resamples=1000, seed=7)  # deterministic
    assert width[800] < 0.5 * width[50]  # ~ 1/√n: 4× narrower expected
    none = paired_bootstrap(a, b, resamples=0)
    assert none["low"] is None and none["diff"] == pytest.approx(float(np.mean(a - b)))
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros(3), np.zeros(3))


def _run(method, seed, correct, nll, lr=1e-3):
    sets = {"numbers__place_value": (correct, nll)}
    ev = {
        k: {"n": len(c), "per_problem": {"correct": c, "nll": n}, "nll": float(np.mean(n))}
        for k, (c, n) in sets.items()
    }
    ev[VALIDATION] = {"n": 1, "per_problem": {"correct": [1], "nll": [0.1]}, "nll": 0.1}
    return {
        "method": method,
        "config": {"lr": lr, "seed": seed},
        "accuracy": {VALIDATION: 0.5, **{k: float(np.mean(c)) for k, (c, _) in sets.items()}},
        "nll": {k: v["nll"] for k, v in ev.items()},
        "eval": ev,
        "final_loss": 1.0,
        "step_time_s": 1.0,
        "peak_rss_mb": 1.0,
        "trainable_parameters": 1,
        "activated_parameters": 1,
        "curvature_dynamics": {
            "curved_experts": 6,
            "sign_changed_share": 1 / 6,
            "mean_abs_delta": 0.1,
            "boundary_share_end": {"share": 0.25},
        }
        if method == "moselora"
        else None,
    }


def test_paired_differences_pair_seeds_and_problems_and_reach_the_table():
    runs = []
    for seed in (0, 1):
        runs.append(_run("moselora", seed, [1, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]))
        runs.append(_run("lora", seed, [1, 0, 0, 1], [0.7, 0.7, 0.7, 0.7]))
    runs.append(_run("lora", 2, [0, 0, 0, 0], [9.0] * 4))  # no moselora seed 2: not paired
    summary = summarize(runs, ["moselora", "lora"])
    paired = paired_differences(runs, summary, resamples=200)
    assert [(p["method"], p["baseline"]) for p in paired] == [
        ("moselora", "lora"),
        ("lora", "moselora"),
    ]
    acc, nll = paired[0]["accuracy"], paired[0]["nll"]
    assert acc["diff"] == pytest.approx(0.25) and acc["seeds"] == 2 and acc["problems"] == 4
    assert nll["diff"] == nll["low"] == nll["high"] == pytest.approx(-0.2)
    groups = paired[0]["groups"]
    assert list(groups) == ["seen"]  # numbers__place_value is a seen set; no unseen one ran
    assert groups["seen"]["accuracy"]["diff"] == pytest.approx(0.25)
    assert paired_differences(runs, summary, baselines=("lora",), resamples=0)[0]["method"] == (
        "moselora"
    )
    table = markdown_table(summary, CompareConfig(methods=("moselora", "lora")), paired)
    assert "| moselora | lora | +25.0 [" in table and "| -0.200 [-0.200, -0.200] | 2 | 4 |" in table
    assert "| moselora | 16.7 ± 0.0 | 0.100 ± 0.000 | 25.0 ± 0.0 |" in table  # κ dynamics
    assert "Answer NLL" in table
    assert "| Δ exact match, seen | Δ answer NLL, seen |" in table


# --------------------------------------------------------------------------- paired design
class _Recording(mdata.CausalLMCollator):
    seen: list[list[list[int]]] = []

    def __call__(self, features):
        _Recording.seen[-1].append([tuple(f["input_ids"]) for f in features])
        return super().__call__(features)


def _stream(tmp_path, monkeypatch, method, seed):
    monkeypatch.setattr(mdata, "CausalLMCollator", _Recording)
    _Recording.seen.append([])
    cfg = FinetuneConfig(
        model="tiny-llama",
        method=method,
        seed=seed,
        steps=3,
        batch_size=2,
        lr=1e-2,
        max_length=400,
        eval_sets=("none",),
        boundary_prompts=0,
        output_dir=str(tmp_path / f"{method}-{seed}"),
        disable_tqdm=True,
    )
    finetune(cfg)
    return _Recording.seen[-1]


def test_same_seed_same_training_stream_whatever_the_method(tmp_path, monkeypatch):
    """Seeds pair across methods: each optimizer step of every method gets the same problems
    in the same order (the adapter's initialisation draws from the global generator, which
    must not move the data order)."""
    first = _stream(tmp_path, monkeypatch, "moselora", 3)
    assert len(first) == 3 and all(len(b) == 2 for b in first)
    for method in ("lora", "moselora-e", "hydralora"):
        assert _stream(tmp_path, monkeypatch, method, 3) == first, method
    assert _stream(tmp_path, monkeypatch, "moselora", 4) != first


def test_same_evaluation_problems_for_every_method():
    """The test sets are frozen files, the validation set a fixed seed: nothing depends on
    the method or the run's seed."""
    from mosgeo_lora.finetune.evaluate import eval_examples

    a = eval_examples(FinetuneConfig(method="moselora", seed=0))
    b = eval_examples(FinetuneConfig(method="lora", seed=5))
    assert a == b and [len(v) for v in a.values()] == [mdata.EVAL_SET_SIZE] * len(mdata.EVAL_SETS)
    assert mdata.validation_examples(2) == mdata.validation_examples(2)


# --------------------------------------------------------------------------- MoSELoRA-E
def test_moselora_e_is_moselora_with_every_kappa_fixed_at_zero():
    from mosgeo_lora import MoSELoraConfig

    full, flat = MoSELoraConfig(preset="moselora"), MoSELoraConfig(preset="moselora-e")
    same = ("r", "num_experts", "top_k", "input_map", "aux_loss_coef", "alpha", "dropout")
    for name in same:
        assert getattr(flat, name) == getattr(full, name), name
    assert flat.initial_curvatures() == [0.0] * flat.num_experts
    assert sum(flat.curved_mask()) == 0  # no learnable κ

    from peft import get_peft_model

    from mosgeo_lora.finetune.base_models import tiny_llama
    from mosgeo_lora.finetune.methods import activated_parameters, parse_method, peft_config

    counts = {}
    for preset in ("moselora", "moselora-e"):
        net = tiny_llama(64, seed=0)
        model = get_peft_model(net, peft_config(parse_method(preset), net, 10))
        layers = [m for m in model.modules() if hasattr(m, "moselora_k")]
        if preset == "moselora-e":
            assert all(len(m.moselora_k) == 0 for m in layers)
            assert all(torch.all(m.curvatures("default") == 0) for m in layers)
        counts[preset] = (activated_parameters(model), len(layers))
    (t_full, a_full), n_layers = counts["moselora"]
    (t_flat, a_flat), _ = counts["moselora-e"]
    assert t_full - t_flat == 6 * n_layers  # only the 6 learnable κ per layer differ
    assert a_full - a_flat == 6 * n_layers


# --------------------------------------------------------------------------- κ dynamics
def test_kappa_dynamics_counts_sign_changes_and_distance():
    start = {"a": [-1.0, -1.0, 1.0], "b": [1.0]}
    end = {"a": [-0.5, 0.2, 1.0], "b": [0.0]}
    d = kappa_dynamics(start, end)
    assert d["curved_experts"] == 4 and d["sign_changed"] == 2
    assert d["sign_changed_share"] == 0.5
    assert d["mean_abs_delta"] == pytest.approx((0.5 + 1.2 + 0 + 1) / 4)
    assert d["max_abs_delta"] == pytest.approx(1.2)
    assert kappa_dynamics({}, {})["sign_changed_share"] is None
    with pytest.raises(ValueError):
        kappa_dynamics({"a": [1.0]}, {"a": [1.0, 2.0]})


def test_boundary_share_sees_clipped_inputs(tiny, problems):
    import mosgeo_lora

    net = load("tiny-llama").model
    model = mosgeo_lora.wrap(net)
    prompts = [mdata.prompt_ids(tiny.tokenizer, ex.question) for ex in problems[:2]]
    layers = [m for m in model.modules() if hasattr(m, "moselora_A")]
    for m in layers:
        m.moselora_A["default"].weight.data.mul_(1e4)  # every code far outside the ball
    big = boundary_share(model, prompts)
    assert big["share"] == 1.0 and big["pairs"] > 0 and len(big["by_layer"]) == len(layers)
    for m in layers:
        m.moselora_A["default"].weight.data.mul_(1e-8)  # every code near the origin
    assert boundary_share(model, prompts)["share"] == 0.0


def test_run_metrics_hold_curvature_dynamics_and_nll(tmp_path):
    cfg = FinetuneConfig(
        model="tiny-llama",
        steps=3,
        batch_size=2,
        lr=1e-2,
        curvature_lr=0.5,
        max_length=400,
        eval_sets=("comparison__pair",),
        eval_limit=3,
        boundary_prompts=1,
        output_dir=str(tmp_path / "run"),
        disable_tqdm=True,
    )
    m = finetune(cfg)
    saved = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    d = saved["curvature_dynamics"]
    assert d["curved_experts"] == 6 * 2 * 3  # 6 curved experts × 3 projections × 2 layers
    assert d["mean_abs_delta"] > 0 and 0 <= d["sign_changed_share"] <= 1
    assert 0 <= d["boundary_share_end"]["share"] <= 1
    assert d["boundary_share_start"]["pairs"] > 0
    pp = saved["eval"]["comparison__pair"]["per_problem"]
    assert len(pp["correct"]) == len(pp["nll"]) == 3
    assert saved["nll"]["comparison__pair"] == pytest.approx(float(np.mean(pp["nll"])))
    assert m["nll"] == saved["nll"]


# --------------------------------------------------------------------------- resumable grid
class _StopAt:
    """Ends training after ``step`` optimizer steps with a checkpoint: a killed run's folder
    (once its ``metrics.json`` is removed)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_save = True
                    control.should_training_stop = True

        return Stop()


def test_compare_resumes_an_interrupted_run_to_the_uninterrupted_adapter(tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    from mosgeo_lora.finetune.compare import _run_dir, compare

    data = tmp_path / "qa.jsonl"
    rows = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3"), ("What is 6 * 2?", "12")]
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    base = FinetuneConfig(
        model="tiny-llama",
        data=str(data),
        steps=4,
        save_steps=2,
        batch_size=2,
        curvature_lr=0.1,
        max_length=200,
        eval_sets=("comparison__pair",),
        eval_limit=2,
        boundary_prompts=0,
        disable_tqdm=True,
    )

    def grid(out):
        return CompareConfig(
            methods=("moselora",),
            lrs=(1e-2,),
            seeds=(0,),
            validation_per_module=1,
            bootstrap=0,
            output_dir=str(out),
            base=base,
        )

    compare(grid(tmp_path / "full"))
    run_dir = _run_dir(tmp_path / "cut", "moselora", 1e-2, 0)
    killed = replace(base, method="moselora", lr=1e-2, seed=0, output_dir=str(run_dir))
    finetune(killed, callbacks=[_StopAt(2)])
    (run_dir / "metrics.json").unlink()  # killed after the checkpoint: no metrics
    assert (run_dir / "checkpoint-2").is_dir()
    result = compare(grid(tmp_path / "cut"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["steps"] == 4
    assert len(result["runs"]) == 1
    full = load_file(
        str(_run_dir(tmp_path / "full", "moselora", 1e-2, 0) / "adapter/adapter_model.safetensors")
    )
    cut = load_file(str(run_dir / "adapter/adapter_model.safetensors"))
    assert full.keys() == cut.keys()
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=1e-5, atol=1e-6, msg=name)

    # a finished grid is reused when only bookkeeping changes, refused when a setting does
    assert compare(grid(tmp_path / "cut"))["runs"][0]["config"]["steps"] == 4
    longer = grid(tmp_path / "cut")
    longer.base = replace(base, save_steps=3, disable_tqdm=False)
    compare(longer)  # reused: checkpointing and progress bars change nothing learnt
    longer.base = replace(base, steps=6)
    with pytest.raises(ConfigError, match="other settings.*steps: 4 there, 6 now"):
        compare(longer)


def test_the_pilot_table_is_the_one_its_json_gives():
    """``benchmarks/results/pilot15_compare.md`` (included in docs/paired-experiment.md) is
    what ``markdown_table`` writes from the summary and paired differences in
    ``pilot15_compare.json``."""
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    result = json.loads((root / "pilot15_compare.json").read_text())
    c = result["config"]
    cfg = CompareConfig(methods=tuple(c["methods"]), lrs=tuple(c["lrs"]), seeds=tuple(c["seeds"]))
    table = markdown_table(result["summary"], cfg, result["paired"])
    assert table == (root / "pilot15_compare.md").read_text()
    pair = result["paired"][0]
    assert (pair["method"], pair["baseline"]) == ("moselora", "moselora-e")
    assert pair["nll"]["high"] < 0  # the pilot's one finding the page states
