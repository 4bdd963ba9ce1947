"""``MoSELoraModel``'s plumbing: per-call data reaches the layers through forward pre-hooks
(``moselora_call``), nothing per-call stays on a layer, the FFN targets come from one
table, and an adapter saved before the package layout changed still loads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from wrapped_models import adapted_layers, tokens, wrapped  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.constants import FFN_TARGET_MODULES, ffn_targets  # noqa: E402
from mosgeo_lora.layer import CALL_KWARG  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adapter-0.1.0"


def test_moselora_call_collects_one_loss_per_layer_and_removes_its_hooks():
    model = wrapped(init_weights=False).train()
    inner = model.base_model.model  # the transformers model: no MoSELoraModel.forward
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with mosgeo_lora.moselora_call(inner, mask) as call:
        inner(input_ids=ids, attention_mask=mask)
    assert len(call.aux_losses) == len(adapted_layers(model)) == 6
    assert all(loss.requires_grad for loss in call.aux_losses)
    assert call.token_mask is mask and not call.without_grad
    # the same losses MoSELoraModel.forward averages into outputs.aux_loss
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    torch.testing.assert_close(out.aux_loss, torch.stack(call.aux_losses).mean().detach())
    for layer in adapted_layers(model).values():
        assert not layer._forward_pre_hooks  # removed on exit


def test_no_per_call_state_stays_on_the_layers():
    model = wrapped(init_weights=False).train()
    ids = tokens()
    model(input_ids=ids, labels=ids).loss.backward()
    model.base_model.model(input_ids=ids).logits.sum().backward()  # outside the PEFT forward
    for layer in adapted_layers(model).values():
        held = [k for k, v in vars(layer).items() if isinstance(v, torch.Tensor)]
        assert not [k for k in held if getattr(layer, k).grad_fn is not None], held
    copy.deepcopy(model)  # a graph on a layer would make this raise


def test_call_kwarg_is_not_passed_to_the_base_layer():
    model = wrapped().eval()
    layer = next(iter(adapted_layers(model).values()))
    x = torch.randn(3, layer.in_features)
    plain = layer(x)
    with_call = layer(x, **{CALL_KWARG: None})
    assert torch.equal(plain, with_call)


def test_ffn_targets_table_and_errors():
    assert ffn_targets("llama") == ["gate_proj", "up_proj", "down_proj"]
    assert ffn_targets("llama") is not FFN_TARGET_MODULES["llama"]  # a copy
    assert ffn_targets("gpt2") == FFN_TARGET_MODULES["gpt2"]  # a regex
    with pytest.raises(ValueError, match="pass target_modules=.*Known architectures: bert"):
        ffn_targets("no-such-architecture")


def test_adapter_saved_by_0_1_0_loads_with_the_same_logits():
    expected = load_file(FIXTURE / "expected.safetensors")
    base = LlamaForCausalLM.from_pretrained(FIXTURE / "base").eval()
    model = PeftModel.from_pretrained(base, FIXTURE / "adapter").eval()
    assert model.peft_config["default"].peft_type == mosgeo_lora.MOSELORA
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
    kappas = next(iter(mosgeo_lora.curvatures(model).values()))
    assert kappas == pytest.approx([-0.7, 0.8, 1.1, 0.0])
