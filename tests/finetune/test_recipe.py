"""The paper's recipe as configuration: ``--epochs``, ``--warmup-ratio``, ``--bf16``,
``--optimizer-groups``, ``--truncate`` and the ``--recipe`` presets (Table 4)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import TrainerCallback  # noqa: E402

from mosgeo_lora.finetune import cli  # noqa: E402
from mosgeo_lora.finetune import data as mdata  # noqa: E402
from mosgeo_lora.finetune.base_models import tiny_tokenizer  # noqa: E402
from mosgeo_lora.finetune.config import (  # noqa: E402
    RECIPES,
    ConfigError,
    FinetuneConfig,
)
from mosgeo_lora.finetune.methods import ffn_targets  # noqa: E402
from mosgeo_lora.finetune.train import finetune  # noqa: E402

#: The paper's Table 4 ("Hyperparameters for MoSELoRA", appendix D.1), copied from the paper:
#: the same for language understanding and mathematical reasoning.
PAPER_TABLE4 = {
    "Base Model": "Qwen2-1.5B",
    "Num Train Epoch": 3,
    "Optimizer": "AdamW",
    "Weight Decay": 0.01,
    "Warmup Ratio": 0.1,
    "Learning Rate": 3e-4,
    "Target Modules": "gate_proj,down_proj,up_proj",
}

QA = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3"), ("What is 6 * 2?", "12")]


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QA))
    return path


def resolved(argv: list[str]) -> FinetuneConfig:
    """The run settings the command line resolves ``argv`` to (preset, then flags)."""
    ns = cli.build_parser().parse_args(argv)
    return cli._run_config(ns, cli._explicit(argv, argv[0]))


@pytest.mark.parametrize("name", ["paper-math", "paper-nlu"])
def test_each_recipe_is_table4(name):
    cfg = resolved(["finetune", "--recipe", name])
    assert cfg.recipe == name
    assert cfg.model.split("/")[-1] == PAPER_TABLE4["Base Model"]
    assert cfg.epochs == PAPER_TABLE4["Num Train Epoch"]
    assert cfg.weight_decay == PAPER_TABLE4["Weight Decay"]
    assert cfg.warmup_ratio == PAPER_TABLE4["Warmup Ratio"] and cfg.warmup_steps == 0
    assert cfg.lr == PAPER_TABLE4["Learning Rate"]
    # AdamW is the one optimizer of finetune (checked on a run below); the targets are the FFN
    # projections every method adapts, which on Qwen2 are Table 4's
    qwen2 = torch.nn.Module()
    qwen2.config = SimpleNamespace(model_type="qwen2")  # what ffn_targets reads
    assert sorted(ffn_targets(qwen2)) == sorted(PAPER_TABLE4["Target Modules"].split(","))


def test_recipes_differ_only_where_documented():
    math, nlu = RECIPES["paper-math"], RECIPES["paper-nlu"]
    table4 = {k: v for k, v in nlu.items() if k != "max_length"}
    assert table4 == {k: v for k, v in math.items() if k not in ("data", "max_length", "truncate")}
    assert math["data"] == "paper-mix" and math["truncate"]


def test_flags_given_override_the_recipe():
    cfg = resolved(
        ["finetune", "--recipe", "paper-math", "--model", "tiny-llama", "--lr", "1e-3"]
        + ["--weight-decay", "0", "--warmup-steps", "2", "--steps", "7"]
    )
    assert (cfg.model, cfg.lr, cfg.weight_decay) == ("tiny-llama", 1e-3, 0.0)
    assert (cfg.steps, cfg.epochs, cfg.warmup_steps, cfg.warmup_ratio) == (7, 0.0, 2, 0.0)
    # a flag set to its default value is still an explicit override
    assert resolved(["finetune", "--recipe", "paper-nlu", "--lr", "1e-3"]).lr == 1e-3
    assert resolved(["finetune", "--recipe", "paper-nlu", "--epochs", "1"]).epochs == 1.0
    # without --recipe nothing changes
    assert resolved(["finetune"]) == FinetuneConfig()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "5", "--epochs", "1"], "--steps or --epochs"),
        (["--warmup-steps", "5", "--warmup-ratio", "0.1"], "--warmup-steps or --warmup-ratio"),
        (["--warmup-ratio", "1.5"], "warmup_ratio must be in [0, 1)"),
        (["--epochs", "2"], "train_examples"),  # generated problems have no epoch
        (["--epochs", "-1"], "epochs must be >= 0"),
    ],
)
def test_conflicting_or_bad_settings_are_one_line(flags, message, capsys):
    assert cli.main(["finetune", "--model", "tiny-llama", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_config_refuses_both_warmups():
    with pytest.raises(ConfigError, match="not both"):
        FinetuneConfig(warmup_steps=1, warmup_ratio=0.1).validate()


def test_epoch_steps_are_the_trainers_count():
    cfg = FinetuneConfig(epochs=3, batch_size=2, grad_accum=1)
    assert cfg.total_steps(5) == 9  # 3 batches of ≤ 2 per epoch
    assert FinetuneConfig(epochs=1.5, batch_size=2, grad_accum=2).total_steps(8, 2) == 2
    assert FinetuneConfig(steps=11).total_steps(1000) == 11
    assert FinetuneConfig(warmup_ratio=0.1).total_warmup(25) == 3


class Spy(TrainerCallback):
    """Records the optimizer's groups, the warm-up and the dtype the LM head computes in."""

    def __init__(self):
        self.groups, self.dtypes, self.lrs = None, set(), []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        groups = optimizer.param_groups  # the scheduler keeps the set lr as initial_lr
        self.groups = [(len(g["params"]), g.get("initial_lr", g["lr"])) for g in groups]
        self.optimizer = type(getattr(optimizer, "optimizer", optimizer)).__name__
        self.warmup = args.warmup_steps
        head = model.get_output_embeddings()
        head.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype))

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def run(tmp_path: Path, data: Path, **kw) -> tuple[dict, Spy]:
    spy = Spy()
    cfg = FinetuneConfig(
        model="tiny-llama",
        data=str(data),
        batch_size=2,
        lr=1e-2,
        max_length=96,
        eval_sets=("none",),
        output_dir=str(tmp_path / "run"),
        logging_steps=1,
        disable_tqdm=True,
        **kw,
    )
    return finetune(cfg, callbacks=[spy]), spy


def test_epochs_warmup_ratio_and_separate_groups(tmp_path, qa_file):
    metrics, spy = run(tmp_path, qa_file, epochs=2, warmup_ratio=0.5)
    assert metrics["steps"] == 4  # 3 examples, batches of 2: 2 steps an epoch
    assert spy.warmup == 2
    assert spy.lrs[0] < spy.lrs[1]  # warming up
    assert spy.optimizer == "AdamW"
    assert len(spy.groups) == 2 and spy.groups[1][1] == FinetuneConfig.curvature_lr  # κ's


def test_uni_puts_every_parameter_in_one_group(tmp_path, qa_file):
    _, sep = run(tmp_path / "sep", qa_file, steps=1)
    _, uni = run(tmp_path / "uni", qa_file, steps=1, optimizer_groups="uni")
    assert uni.groups == [(sum(n for n, _ in sep.groups), 1e-2)]


def test_bf16_trains_in_bfloat16_autocast_on_the_cpu(tmp_path, qa_file):
    metrics, spy = run(tmp_path, qa_file, steps=2, bf16=True)
    assert spy.dtypes == {torch.bfloat16}
    assert torch.isfinite(torch.tensor(metrics["final_loss"]))
    _, fp32 = run(tmp_path / "fp32", qa_file, steps=1)
    assert fp32.dtypes == {torch.float32}


def test_truncate_keeps_the_answer_and_the_end_of_the_prompt():
    tok = tiny_tokenizer()  # one token per character
    ex = mdata.Example("x" * 40 + " What is 2 + 3?", "5")
    full = mdata.tokenize_example(tok, ex, 200)
    with pytest.raises(mdata.DataError, match="over max_length=30"):
        mdata.tokenize_example(tok, ex, 30)
    cut = mdata.tokenize_example(tok, ex, 30, truncate=True)
    assert len(cut["input_ids"]) == 30
    answer = sum(label != -100 for label in full["labels"])
    assert cut["labels"][-answer:] == full["labels"][-answer:]  # the whole answer and EOS
    assert cut["input_ids"][-answer - 10 :] == full["input_ids"][-answer - 10 :]
    bos = full["input_ids"][:1] if full["input_ids"][0] == tok.bos_token_id else []
    assert cut["input_ids"][: len(bos)] == bos
    with pytest.raises(mdata.DataError, match="the answer alone does not fit"):
        mdata.tokenize_example(tok, mdata.Example("q", "1" * 40), 30, truncate=True)


def test_truncate_on_the_command_line(tmp_path, qa_file, capsys):
    argv = ["finetune", "--model", "tiny-llama", "--data", str(qa_file), "--steps", "1"]
    argv += ["--max-length", "30", "--eval-sets", "none", "--no-progress"]
    argv += ["--output-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert "over max_length=30" in capsys.readouterr().err
    assert cli.main([*argv, "--truncate"]) == 0


def test_compare_takes_the_recipe(monkeypatch, tmp_path):
    seen = {}

    def fake_compare(cfg):
        seen["cfg"] = cfg
        (Path(cfg.output_dir) / "compare.md").write_text("table\n")

    import mosgeo_lora.finetune.compare as mcompare

    monkeypatch.setattr(mcompare, "compare", fake_compare)
    out = tmp_path / "cmp"
    out.mkdir()
    argv = ["compare", "--recipe", "paper-math", "--methods", "moselora,lora"]
    argv += ["--train-examples", "8"]
    assert cli.main([*argv, "--output-dir", str(out)]) == 0
    cfg = seen["cfg"]
    assert cfg.lrs == (3e-4,) and cfg.methods == ("moselora", "lora")
    assert (cfg.base.model, cfg.base.epochs, cfg.base.recipe) == (
        "Qwen/Qwen2-1.5B",
        3.0,
        "paper-math",
    )
    assert cli.main([*argv, "--output-dir", str(out), "--lrs", "1e-4,2e-4"]) == 0
    assert seen["cfg"].lrs == (1e-4, 2e-4)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def test_paper_mix_trains_on_each_tasks_prompt_and_target(tmp_path, monkeypatch):
    from mosgeo_lora.finetune import tasks

    real = tasks.training_mix
    asked = {}

    def offline_mix(size, seed, **kw):  # the hub's training splits, from the test fixtures
        asked.update(size=size, seed=seed)
        return real(size, seed, sources={t: FIXTURES / f"{t}.jsonl" for t in tasks.MIX_TASKS})

    monkeypatch.setattr(tasks, "training_mix", offline_mix)
    seen = []

    class Batches(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            seen.extend(train_dataloader.dataset)

    cfg = FinetuneConfig(
        model="tiny-llama",
        data="paper-mix",
        train_examples=6,
        epochs=1,
        batch_size=3,
        max_length=400,
        truncate=True,
        eval_sets=("none",),
        output_dir=str(tmp_path / "run"),
        disable_tqdm=True,
    )
    metrics = finetune(cfg, callbacks=[Batches()])
    assert asked == {"size": 6, "seed": 0} and metrics["steps"] == 2
    tok = tiny_tokenizer()
    mix = real(6, 0, sources={t: FIXTURES / f"{t}.jsonl" for t in tasks.MIX_TASKS})
    texts = sorted(tok.decode(f["input_ids"], skip_special_tokens=True) for f in seen)
    wanted = [ex.prompt + ex.target for ex in mix]
    for text in texts:  # each training sequence is a row's prompt then its target (or its end)
        assert any(w.endswith(text) or text == w for w in wanted), text
    trained = sorted(
        tok.decode([t for t in f["labels"] if t != -100], skip_special_tokens=True) for f in seen
    )
    assert trained == sorted(ex.target for ex in mix)
