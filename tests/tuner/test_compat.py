"""Every private torch / PEFT / enum API the tuner uses (``mosgeo_lora._compat``) still
exists and behaves as the tuner assumes: an upgrade that breaks one fails here, by name."""

from __future__ import annotations

import enum

import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("transformers")

from mosgeo_lora import _compat  # noqa: E402


def test_buffer_dict_keeps_persistent_buffers_in_the_state_dict():
    holder = nn.Module()
    holder.k = _compat.BufferDict({}, persistent=True)
    holder.k["default"] = torch.tensor([0.5, 0.0])
    assert torch.equal(holder.state_dict()["k.default"], torch.tensor([0.5, 0.0]))
    holder.to(torch.float64)
    assert holder.k["default"].dtype == torch.float64


def test_in_out_features_of_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    assert _compat.in_out_features(nn.Linear(3, 5)) == (3, 5)
    assert _compat.in_out_features(Conv1D(7, 4)) == (4, 7)  # Conv1D(nf=out, nx=in)


def test_extend_str_enum_adds_a_member_once():
    class Kind(str, enum.Enum):
        A = "A"

    b = _compat.extend_str_enum(Kind, "B", "B")
    assert Kind["B"] is b and Kind("B") is b and Kind.B is b
    assert isinstance(b, Kind) and b == "B" and b.value == "B" and b.name == "B"
    assert list(Kind) == [Kind.A, b]
    assert _compat.extend_str_enum(Kind, "B", "B") is b  # idempotent
    assert list(Kind) == [Kind.A, b]


def test_tensor_versions_change_with_every_in_place_update_and_only_then():
    """The inference cache's key (``Tensor._version`` and the storage address)."""
    tensor_versions = _compat.tensor_versions
    p = torch.nn.Parameter(torch.ones(3))
    key = tensor_versions(p, None)
    assert key[1] is None
    assert tensor_versions(p, None) == key and (p * 2).sum() > 0  # reading changes nothing
    assert tensor_versions(p, None) == key
    with torch.no_grad():
        p.add_(1.0)
    assert tensor_versions(p, None) != key
    key = tensor_versions(p)
    p.grad = torch.ones(3)
    torch.optim.SGD([p], lr=0.1).step()
    assert tensor_versions(p) != key
    key = tensor_versions(p)
    p.data = p.data.double()  # a new tensor
    assert tensor_versions(p) != key


@pytest.mark.parametrize("scaled", [False, True])
def test_adapter_tensors_are_the_modules_own(scaled):
    from tiny_models import tiny_llama

    import mosgeo_lora

    cfg = mosgeo_lora.MoSELoraConfig(input_scale="sqrt_d_in" if scaled else None)
    model = mosgeo_lora.wrap(tiny_llama(), cfg)
    layer = model.get_base_model().model.layers[0].mlp.gate_proj
    name = "default"
    want = (
        layer.moselora_A[name].weight,
        layer.moselora_router[name].weight,
        layer.moselora_B[name].weight,
        layer.moselora_k[name],
        layer.moselora_k_fixed[name],
        layer.moselora_log_scale[name] if scaled else None,
    )
    assert _compat.adapter_dropout(layer, name) is layer.moselora_dropout[name]
    got = _compat.adapter_tensors(layer, name)
    assert len(got) == len(want)
    assert all(g is w for g, w in zip(got, want, strict=True))
