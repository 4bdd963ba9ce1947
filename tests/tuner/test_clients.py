"""MoSELoRA in the clients PEFT users train with: each test runs the client itself on the tiny
random Llama (CPU, seconds) and checks that the load-balancing loss reaches the update."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

import mosgeo_lora  # noqa: E402
from mosgeo_lora.finetune.base_models import tiny_llama, tiny_tokenizer  # noqa: E402

WORKER = Path(__file__).with_name("trainer_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _small(**overrides) -> mosgeo_lora.MoSELoraConfig:
    kwargs = dict(r=4, num_experts=4, top_k=2, num_hyperbolic=1, num_spherical=2)
    return mosgeo_lora.MoSELoraConfig(**{**kwargs, **overrides})


def _router(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".moselora_router." in n}


def test_trl_sft_trainer_trains_the_balance_loss(tmp_path):
    """TRL computes its loss itself (from the log-probabilities, not ``outputs.loss``). With
    B = 0 at init the router's task gradient is 0, so only the balance loss can move it: it
    moves with ``aux_loss_coef > 0`` and stays with 0."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    data = Dataset.from_list(
        [{"prompt": f"What is {i} + 1?", "completion": f" {i + 1}"} for i in range(8)]
    )
    moved = {}
    for coef in (0.5, 0.0):
        tok = tiny_tokenizer()
        args = trl.SFTConfig(
            output_dir=str(tmp_path / f"coef{coef}"),
            max_steps=1,
            per_device_train_batch_size=4,
            learning_rate=0.1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = trl.SFTTrainer(
            model=tiny_llama(len(tok), seed=0, tie_word_embeddings=True),
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=_small(aux_loss_coef=coef),
        )
        before = _router(trainer.model)
        assert len(before) == 6
        trainer.train()
        after = _router(trainer.model)
        moved[coef] = max(float((after[n] - before[n]).abs().max()) for n in before)
        if coef > 0:  # the trained adapter saves and reloads to the same weights
            trainer.model.save_pretrained(tmp_path / "adapter")
            from peft import PeftModel

            again = PeftModel.from_pretrained(
                tiny_llama(len(tok), seed=0, tie_word_embeddings=True), tmp_path / "adapter"
            )
            trained, loaded = trainer.model.state_dict(), again.state_dict()
            names = [n for n in trained if ".moselora_" in n]
            assert names and all(torch.equal(trained[n], loaded[n]) for n in names)
    assert moved[0.5] > 1e-3, moved
    assert moved[0.0] == 0.0, moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(out: Path, batch: int, processes: int) -> dict[str, dict[str, torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(batch)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd += ["--master_port", str(_free_port()), str(WORKER), str(out), str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {p.stem: torch.load(p) for p in sorted(out.glob("rank*.pt"))}


def test_trainer_under_torchrun_with_default_arguments_equals_one_process(tmp_path):
    """HF ``Trainer`` with default ``TrainingArguments`` under 2-process ``torchrun`` (DDP with
    ``find_unused_parameters=True``, tokens averaged across devices) ends where one process
    with the same global batch ends. Without the process count in the balance loss's weight
    the routers differ by 2e-2 (measured); the task part alone agrees either way."""
    single = _run_worker(tmp_path / "single", batch=4, processes=1)["rank0"]
    ddp = _run_worker(tmp_path / "ddp", batch=2, processes=2)
    assert set(ddp) == {"rank0", "rank1"}
    for name, value in single.items():
        assert torch.equal(ddp["rank0"][name], ddp["rank1"][name]), name  # replicas agree
        torch.testing.assert_close(ddp["rank0"][name], value, rtol=0, atol=2e-5)
    assert any(".moselora_router." in n for n in single)
