"""CurvatureCallback and the Figure-2 plots, on the tiny random Llama of test_peft.py
(hidden 32, 2 layers, vocab 64; r = 4, N = 4 experts: 1 hyperbolic, 2 spherical,
1 Euclidean, top-2), trained by a plain HF Trainer for a few steps."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from tiny_models import tiny_llama  # noqa: E402
from transformers import (  # noqa: E402
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import mosgeo_lora  # noqa: E402
from mosgeo_lora import CurvatureCallback, plot_curvature_dynamics, plot_expert_load  # noqa: E402

VOCAB, N, STEPS, BATCH, LENGTH = 64, 4, 6, 2, 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFIX = "base_model.model.model.layers"
LAYERS = [f"{PREFIX}.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")]
SCALARS = ("kappa_hyperbolic", "kappa_spherical", "kappa_flipped", "load_entropy", "load_max")


def wrapped(seed: int = 0):
    torch.manual_seed(seed)
    return mosgeo_lora.wrap(
        tiny_llama(), r=4, num_experts=N, num_hyperbolic=1, num_spherical=2, top_k=2
    )


def dataset(n: int = STEPS * BATCH):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (n, LENGTH), generator=g)
    return [{"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)} for x in ids]


def png_size(path) -> tuple[int, int]:
    """(height, width) in pixels, read back by matplotlib."""
    import matplotlib.image

    return matplotlib.image.imread(str(path)).shape[:2]


def check_png(path, height: int, width: int) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    assert png_size(path) == (height, width)


# --------------------------------------------------------------------------- Trainer run
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model = wrapped()
    callback = CurvatureCallback(plot=True)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset(),
        optimizer_cls_and_kwargs=(
            torch.optim.AdamW,
            {"params": mosgeo_lora.param_groups(model, 1e-3, curvature_lr=0.3)},
        ),
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback, out


def test_history_steps_kappa_and_load(trained):
    _, cb, _ = trained
    assert [e["step"] for e in cb.history] == [0, 2, 4, 6]
    for entry in cb.history:
        assert set(entry) == {"step", "epoch", "kappa", "load", "tokens"}
        assert list(entry["kappa"]) == LAYERS
        assert all(len(k) == N for k in entry["kappa"].values())
    first, last = cb.history[0], cb.history[-1]
    assert all(k == [-1.0, 1.0, 1.0, 0.0] for k in first["kappa"].values())
    assert first["load"] == {} and first["tokens"] == {}  # no forward pass yet
    for name in LAYERS:
        moved = [abs(a - b) for a, b in zip(last["kappa"][name], first["kappa"][name], strict=True)]
        assert max(moved[:3]) > 5e-2 and min(moved[:3]) > 0.0, (name, moved)
        assert last["kappa"][name][3] == 0.0  # the Euclidean expert is fixed
    for before, after in zip(
        cb.history, cb.history[1:], strict=False
    ):  # κ changes from record to record
        assert before["kappa"] != after["kappa"]
    for entry in cb.history[1:]:
        assert list(entry["load"]) == LAYERS
        for name, load in entry["load"].items():
            assert len(load) == N and sum(load) == pytest.approx(1.0)
            assert all(0.0 <= x <= 1.0 for x in load)
            # two optimizer steps of BATCH × LENGTH real tokens per recorded window
            assert entry["tokens"][name] == 2 * BATCH * LENGTH
    assert cb.spaces == {n: ["hyperbolic", "spherical", "spherical", "euclidean"] for n in LAYERS}


def test_scalars_in_log_history(trained):
    trainer, cb, _ = trained
    logged = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    assert sorted(logged) == [2, 4, 6]
    for entry in cb.history[1:]:
        log = logged[entry["step"]]
        assert set(SCALARS) <= set(log)
        hyp = [k[0] for k in entry["kappa"].values()]
        sph = [x for k in entry["kappa"].values() for x in k[1:3]]
        assert log["kappa_hyperbolic"] == pytest.approx(sum(hyp) / len(hyp))
        assert log["kappa_spherical"] == pytest.approx(sum(sph) / len(sph))
        flips = sum(x > 0 for x in hyp) + sum(x < 0 for x in sph)
        assert log["kappa_flipped"] == flips
        assert 0.0 < log["load_entropy"] <= 1.0 + 1e-9
        # the Switch loss is N Σ f_i P_i: 1 when balanced, at most N (all on one expert)
        assert 0.9 < log["aux_loss"] < N
        assert log["load_max"] == pytest.approx(max(max(v) for v in entry["load"].values()))
        assert log["load_max"] >= 1.0 / N


def test_files_json_and_png(trained):
    _, cb, out = trained
    assert cb.files == [
        out / "curvatures.json",
        out / "curvature_dynamics.png",
        out / "expert_load.png",
    ]
    data = json.loads((out / "curvatures.json").read_text())
    assert data["history"] == cb.history
    assert data["spaces"] == cb.spaces and data["every_n_steps"] == 2
    assert data["adapter_name"] == "default"
    # Figure 2: 6 layers as 2 blocks × (gate, up, down): 3 columns × 2 rows of 3.0 × 2.2 in
    # panels, plus 1 in for title and legend, at 100 dpi
    check_png(out / "curvature_dynamics.png", height=round((2.2 * 2 + 1.0) * 100), width=900)
    # the load plot: 4 evenly spaced layers in one row
    check_png(out / "expert_load.png", height=round((2.2 + 1.0) * 100), width=1200)
    # the saved JSON (or its path) plots again
    again = plot_curvature_dynamics(out / "curvatures.json", out / "again.png", dpi=50)
    check_png(again, height=round((2.2 * 2 + 1.0) * 50), width=450)


# --------------------------------------------------------------------------- driven by hand
class Plain(nn.Module):
    """A plain module (neither PeftModel nor tuner) that contains MoSELoRA layers."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, **kwargs):
        return self.lm(**kwargs)


def drive(callback, model, tmp_path, *, steps=2, is_world_process_zero=True, evaluate_at=None):
    """Run the callback's Trainer events around plain forward passes (no Trainer)."""
    forward = callback is not None and any(
        isinstance(m, mosgeo_lora.MoSELoraLayer) for m in model.modules()
    )
    args = TrainingArguments(output_dir=str(tmp_path), logging_steps=1, report_to=[], use_cpu=True)
    state = TrainerState(max_steps=steps, logging_steps=1)
    state.is_world_process_zero = is_world_process_zero
    control = TrainerControl()
    ids = dataset(2)[0]["input_ids"].unsqueeze(0)
    callback.on_train_begin(args, state, control, model=model)
    logs = []
    for step in range(1, steps + 1):
        if forward:
            with torch.no_grad():
                model(input_ids=ids)
        state.global_step, state.epoch = step, step / steps
        control.should_evaluate = step == evaluate_at
        callback.on_step_end(args, state, control)
        if control.should_evaluate:  # the evaluation's forward passes are not counted
            with torch.no_grad():
                model(input_ids=ids)
                model(input_ids=ids)
            callback.on_evaluate(args, state, control, metrics={})
        logs.append({"loss": 1.0})
        state.log_history.append({**logs[-1], "step": step})
        callback.on_log(args, state, control, logs=logs[-1])
    callback.on_train_end(args, state, control)
    return logs, state


@pytest.mark.parametrize("kind", ["peft", "tuner", "plain"])
def test_callback_on_peft_tuner_and_plain_module(kind, tmp_path):
    peft_model = wrapped()
    model = {
        "peft": peft_model,
        "tuner": peft_model.base_model,
        "plain": Plain(peft_model.base_model.model),
    }[kind]
    cb = CurvatureCallback(plot=False)
    logs, state = drive(cb, model, tmp_path, steps=3, evaluate_at=2)
    assert [e["step"] for e in cb.history] == [0, 1, 2, 3]
    for entry in cb.history[1:]:
        assert len(entry["kappa"]) == 6 and len(entry["load"]) == 6
        assert set(entry["tokens"].values()) == {LENGTH}  # one pass per step; eval left out
        assert all(sum(v) == pytest.approx(1.0) for v in entry["load"].values())
    assert all(set(SCALARS) <= set(log) for log in logs)
    assert all(set(SCALARS) <= set(e) for e in state.log_history)
    want = ["hyperbolic", "spherical", "spherical", "euclidean"]
    assert all(s == want for s in cb.spaces.values())
    assert cb.files == [tmp_path / "curvatures.json"]
    assert json.loads((tmp_path / "curvatures.json").read_text())["history"] == cb.history


def test_only_the_main_process_writes(tmp_path):
    cb = CurvatureCallback(plot=True, output_dir=str(tmp_path / "cb"))
    drive(cb, wrapped(), tmp_path, is_world_process_zero=False)
    assert len(cb.history) == 3 and not (tmp_path / "cb").exists()


def test_every_n_steps_and_last_step(tmp_path):
    cb = CurvatureCallback(every_n_steps=2, plot=False, log_prefix="moselora/")
    logs, _ = drive(cb, wrapped(), tmp_path, steps=5)
    assert [e["step"] for e in cb.history] == [0, 2, 4, 5]  # and the last step
    assert [e["tokens"][LAYERS[0]] for e in cb.history[1:]] == [2 * LENGTH, 2 * LENGTH, LENGTH]
    assert [("moselora/kappa_hyperbolic" in log) for log in logs] == [0, 1, 0, 1, 1]


def test_attach_puts_callback_before_integrations(tmp_path):
    model = wrapped()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    cb = CurvatureCallback(plot=False).attach(trainer)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names[0] == "DefaultFlowCallback" and names[1] == "CurvatureCallback"
    assert trainer.callback_handler.callbacks.count(cb) == 1


def test_warns_without_moselora_layers(tmp_path):
    cb = CurvatureCallback(plot=True)
    with pytest.warns(UserWarning, match="no MoSELoRA layers"):
        drive(cb, nn.Sequential(nn.Linear(4, 4)), tmp_path)
    assert cb.history == [] and cb.files == []
    assert not (tmp_path / "curvatures.json").exists()


# --------------------------------------------------------------------------- plots alone
def synthetic_history(blocks: int = 8, steps: int = 5):
    names = [f"model.layers.{b}.mlp.{p}" for b in range(blocks) for p in ("gate", "up", "down")]
    history = []
    for s in range(steps):
        kappa = {n: [-1.0 + 0.1 * s, 1.0 - 0.3 * s, 0.5, 0.0] for n in names}
        load = {n: [0.1, 0.2, 0.3, 0.4] for n in names} if s else {}
        history.append({"step": 10 * s, "epoch": None, "kappa": kappa, "load": load})
    return history


def test_plot_layouts(tmp_path):
    history = synthetic_history()
    # 24 layers, max_layers 12: 4 evenly spaced blocks × 3 projections
    p = plot_curvature_dynamics(history, tmp_path / "a.png", dpi=40)
    check_png(p, height=round((2.2 * 4 + 1.0) * 40), width=round(9.0 * 40))
    p = plot_curvature_dynamics(history, tmp_path / "b.png", figsize=(8, 5), dpi=50)
    check_png(p, height=250, width=400)
    p = plot_curvature_dynamics(history, tmp_path / "c.png", group_by="block", dpi=40)
    check_png(p, height=round((2.2 * 2 + 1.0) * 40), width=round(12.0 * 40))  # 8 blocks
    p = plot_curvature_dynamics(history, tmp_path / "d.png", layers=["layers.3.mlp.up", 0])
    check_png(p, height=round(3.2 * 100), width=600)
    p = plot_expert_load(history[:2], tmp_path / "e.png", layers=[1], dpi=40)  # one window
    check_png(p, height=round(3.2 * 40), width=round(6.0 * 40))  # at least two panels wide
    with pytest.raises(ValueError, match="no recorded layer matches"):
        plot_curvature_dynamics(history, tmp_path / "f.png", layers=["nope"])
    with pytest.raises(ValueError, match="group_by"):
        plot_curvature_dynamics(history, tmp_path / "f.png", group_by="head")


def test_plots_reject_empty_history(tmp_path):
    for plot in (plot_curvature_dynamics, plot_expert_load):
        for empty in ([], {"history": []}, [{"step": 0, "kappa": {}, "load": {}}]):
            with pytest.raises(ValueError, match="history is empty"):
                plot(empty, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no expert load"):
        plot_expert_load(synthetic_history()[:1], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plots_need_matplotlib(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'mosgeo\[lora\]'.*matplotlib"):
        plot_curvature_dynamics(synthetic_history(), tmp_path / "x.png")
    with pytest.raises(ImportError, match="matplotlib"):
        CurvatureCallback(plot=True)
    assert CurvatureCallback().plot is False  # plot=None: only when matplotlib is there


def test_summary_entropy_bounds():
    cb = CurvatureCallback(plot=False)
    entry = {"kappa": {"l": [-1.0, 1.0, 0.0]}, "load": {"l": [1 / 3, 1 / 3, 1 / 3]}}
    s = cb.summary(entry)
    assert s["load_entropy"] == pytest.approx(1.0) and s["load_max"] == pytest.approx(1 / 3)
    cb.spaces = {"l": ["hyperbolic", "spherical", "euclidean"]}
    s = cb.summary({"kappa": {"l": [0.2, -0.5, 0.0]}, "load": {"l": [1.0, 0.0, 0.0]}})
    assert s["load_entropy"] == 0.0 and s["kappa_flipped"] == 2.0
    assert math.isclose(s["kappa_hyperbolic"], 0.2) and math.isclose(s["kappa_spherical"], -0.5)
