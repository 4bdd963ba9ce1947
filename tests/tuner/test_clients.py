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
FSDP_WORKER = Path(__file__).with_name("fsdp_worker.py")
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


def _run(script: Path, processes: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd += ["--master_port", str(_free_port()), str(script), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def _run_worker(out: Path, batch: int, processes: int) -> dict[str, dict[str, torch.Tensor]]:
    _run(WORKER, processes, str(out), str(batch))
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


def test_fsdp2_on_two_processes_equals_one_process(tmp_path):
    """FSDP2 (``fully_shard`` per decoder layer and on the model, gloo on CPU) in a plain
    training loop: two SGD steps on two processes end where one process with the whole
    batch ends, balance gradient included (measured: 1e-7 apart)."""
    pytest.importorskip("torch.distributed.fsdp")
    _run(FSDP_WORKER, 1, str(tmp_path))
    _run(FSDP_WORKER, 2, str(tmp_path))
    one, two = torch.load(tmp_path / "world1.pt"), torch.load(tmp_path / "world2.pt")
    assert set(one) == set(two) and any(".moselora_router." in n for n in one)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-6, msg=name)


def test_qlora_recipe_trains_keeps_the_4bit_base_and_reloads(tmp_path):
    """The standard QLoRA recipe: a bitsandbytes 4-bit (NF4) base,
    ``prepare_model_for_kbit_training`` with its default (reentrant) checkpointing, then
    MoSELoRA. The balance gradient equals the unchecked one, the Trainer trains, the 4-bit
    weights stay bit-identical, and the saved adapter reloads to identical logits."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=0, hidden=64, tie_word_embeddings=True).save_pretrained(
        tmp_path / "base"
    )
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )

    def qlora(checkpointing: bool):
        base = AutoModelForCausalLM.from_pretrained(
            tmp_path / "base", quantization_config=quant, device_map="cpu"
        )
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
        return mosgeo_lora.wrap(base, _small(init_weights=False), seed=0)

    rows = [tok(t) for t in ("Q: 2 + 3? A: 5", "Q: what is 17 plus 25? A: 42")]
    for row in rows:
        row["labels"] = row["input_ids"]
    collate = DataCollatorForSeq2Seq(tok)
    batch = collate(rows)
    grads = []
    for checkpointing in (True, False):
        model = qlora(checkpointing).train()
        assert model.base_model.model.is_gradient_checkpointing == checkpointing
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if ".moselora_router." in n})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-5, atol=1e-7, msg=name)

    model = qlora(True)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    router = _router(model)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=rows * 4, data_collator=collate).train()
    now = dict(model.named_parameters())
    assert frozen and all(torch.equal(now[n].detach(), v) for n, v in frozen.items())
    assert max(float((now[n].detach() - v).abs().max()) for n, v in router.items()) > 1e-3
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=quant, device_map="cpu"
    )
    again = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([rows[1]["input_ids"]])
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        assert torch.equal(again(input_ids=ids).logits, expected)


TASK_YAML = """task: mosgeo_tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_scores_a_saved_adapter(tmp_path, monkeypatch):
    """lm-evaluation-harness loads the adapter through ``HFLM(pretrained=..., peft=...)`` and
    scores it on a local task (a task YAML over a local JSONL), offline."""
    pytest.importorskip("lm_eval")
    import json

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import PeftModel

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=0, tie_word_embeddings=True).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model = tiny_llama(len(tok), seed=0, tie_word_embeddings=True)
    mosgeo_lora.wrap(model, _small(init_weights=False), seed=0).save_pretrained(tmp_path / "ad")
    rows = [
        {"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2), str(i)], "label": 0}
        for i in range(6)
    ]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        TASK_YAML.format(data=tmp_path / "tasks" / "test.jsonl")
    )
    tasks = TaskManager(include_path=str(tmp_path / "tasks"))
    scores = {}
    for peft in (str(tmp_path / "ad"), None):
        lm = HFLM(pretrained=str(tmp_path / "base"), peft=peft, device="cpu", batch_size=4)
        if peft:
            assert isinstance(lm.model, PeftModel)
            assert type(lm.model.base_model).__name__ == "MoSELoraModel"
        out = simple_evaluate(
            model=lm, tasks=["mosgeo_tiny_qa"], task_manager=tasks, log_samples=True
        )
        result = out["results"]["mosgeo_tiny_qa"]
        assert result["sample_len"] == 6 and 0.0 <= result["acc,none"] <= 1.0
        scores[peft] = [s["resps"][0][0][0] for s in out["samples"]["mosgeo_tiny_qa"]]
    # the adapter changes every log-likelihood: lm-eval scored the adapted model
    assert all(a != b for a, b in zip(scores[str(tmp_path / "ad")], scores[None], strict=True))
