"""``param_groups``: κ in its own optimizer group (SEP) or one group (UNI), and with the HF
``Trainer``'s ``optimizer_cls_and_kwargs``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from transformers import Trainer, TrainingArguments  # noqa: E402
from wrapped_models import wrapped  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.optim import is_curvature  # noqa: E402


def test_param_groups_sep_uni_and_trainer(tmp_path):
    model = wrapped()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    kappas = {id(p) for n, p in model.named_parameters() if ".moselora_k." in n}
    assert len(kappas) == 6

    sep = mosgeo_lora.param_groups(model, 1e-3, curvature_lr=5e-2, weight_decay=0.1)
    assert len(sep) == 2
    rest, curv = sep
    assert {id(p) for p in curv["params"]} == kappas
    assert (curv["lr"], curv["weight_decay"]) == (5e-2, 0.0)
    assert (rest["lr"], rest["weight_decay"]) == (1e-3, 0.1)
    assert {id(p) for p in rest["params"]} == trainable - kappas

    uni = mosgeo_lora.param_groups(model, 1e-3, weight_decay=0.1, separate=False)
    assert len(uni) == 1 and {id(p) for p in uni[0]["params"]} == trainable

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=1e-4
    )
    trainer = Trainer(
        model=model,
        args=args,
        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": sep}),
    )
    opt = trainer.create_optimizer()
    assert isinstance(opt, torch.optim.AdamW)
    lrs = sorted((g["lr"], g["weight_decay"]) for g in opt.param_groups)
    assert lrs == [(1e-3, 0.1), (5e-2, 0.0)]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable


def test_is_curvature_names_and_no_trainable_parameters():
    assert is_curvature("base_model.model.model.layers.0.mlp.up_proj.moselora_k.default")
    assert is_curvature("moselora_k.default")
    assert not is_curvature("base_model.model.model.layers.0.mlp.up_proj.moselora_k_fixed.default")
    assert not is_curvature("base_model.model.model.layers.0.mlp.up_proj.moselora_B.default.weight")
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        mosgeo_lora.param_groups(frozen, 1e-3)
