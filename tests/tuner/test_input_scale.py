"""The learnable input scale (``MoSELoraConfig(input_scale=...)``, issue 15 item 4): every
expert computes ``s·o_i(z/s)``, the fused path as ``o_i`` at curvature ``κ/s²``; ``s = e^ρ``
is trained, saved and loaded; without the option nothing changes."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from wrapped_models import (  # noqa: E402
    adapted_layers,
    base_model,
    logits_of,
    small_config,
    tokens,
    wrapped,
)

import mosgeo_lora  # noqa: E402
from mosgeo_lora import MoSELoraConfig  # noqa: E402
from mosgeo_lora.constants import SQRT_D_IN  # noqa: E402
from mosgeo_lora.experts import experts_reference  # noqa: E402
from mosgeo_lora.optim import param_groups  # noqa: E402


def _randomise(model, seed=7):
    """κ moved off ±1 and ρ off its start, so that both gradients are generic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".moselora_k." in n or ".moselora_log_scale." in n:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def _forward_backward(model, ids):
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize("scale", [0.5, SQRT_D_IN], ids=["s0.5", "sqrt_d_in"])
@pytest.mark.parametrize("learn", [True, False], ids=["learned-k", "fixed-k"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_reference_with_the_input_scale(dtype, learn, scale):
    """The fused path (``κ e^{-2ρ}`` as its curvatures) and the literal one (``s·õ(z/s)``):
    the same logits, loss and every gradient, ρ's included; also with κ fixed
    (``learn_curvature=False``: the curved experts' κ are a buffer, ρ still scales them).
    ``s = 0.5`` pushes more tokens onto the rim than none, ``√d_in`` (5.7) almost none."""
    ids = tokens()
    over = dict(init_weights=False, input_scale=scale, learn_curvature=learn)
    fused = wrapped(fused=True, **over).to(dtype)
    _randomise(fused)
    reference = wrapped(fused=False, **over).to(dtype)
    reference.load_state_dict(fused.state_dict())
    (out_f, g_f), (out_r, g_r) = (_forward_backward(m, ids) for m in (fused, reference))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out_f.logits, out_r.logits, rtol=tol, atol=tol)
    torch.testing.assert_close(out_f.loss, out_r.loss, rtol=tol, atol=tol)
    assert g_f.keys() == g_r.keys()
    assert sum(".moselora_log_scale." in n for n in g_f) == len(adapted_layers(fused))
    for n, g in g_f.items():
        top = g_r[n].abs().max().item()
        assert top > 0, n
        # float32 κ and ρ: the two paths round ‖B_i s_i‖ differently (Gram matrix vs the
        # vector; test_peft's test_fused_and_reference_paths_agree); measured ≤ 1.8e-4 of the
        # largest here. float64 is strict
        curv = ".moselora_k." in n or "log_scale" in n
        rel = 1e-3 if dtype == torch.float32 and curv else 0
        torch.testing.assert_close(g, g_r[n], rtol=0, atol=max(rel, 10 * tol) * top, msg=n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_scaled_expert_is_the_expert_at_curvature_k_over_s2(dtype):
    """The identity the fused path relies on, on the literal maps alone: ``s·o(z/s; κ)`` is
    ``o(z; κ/s²)`` (clip and projection included: ``z`` reaches past the ball)."""
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(64, 4, generator=g, dtype=dtype)
    b = torch.randn(16, 3 * 4, generator=g, dtype=dtype)
    k = torch.tensor([-1.3, 0.7, 0.0], dtype=dtype)
    for s in (0.25, 1.0, 5.0):
        lhs = s * experts_reference(z / s, b, k)
        rhs = experts_reference(z, b, k / s**2)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(lhs, rhs, rtol=tol, atol=tol * float(rhs.abs().max()))


def test_the_scale_starts_where_the_config_says_and_one_changes_nothing():
    model = wrapped(init_weights=False, input_scale=SQRT_D_IN)
    for layer in adapted_layers(model).values():
        s = layer.input_scale("default")
        assert s.shape == (1,)
        assert float(s.detach()) == pytest.approx(math.sqrt(layer.in_features))
    ids = tokens()
    plain = wrapped(init_weights=False)
    one = wrapped(init_weights=False, input_scale=1.0)
    one.load_state_dict(plain.state_dict(), strict=False)  # the same A, B, router, κ
    assert all(
        float(layer.input_scale("default").detach()) == 1.0
        for layer in adapted_layers(one).values()
    )
    torch.testing.assert_close(logits_of(one, ids), logits_of(plain, ids), rtol=0, atol=1e-6)


def test_without_the_option_there_is_no_scale():
    """The default adapter: no ``moselora_log_scale`` parameter, the same state-dict keys as
    before the option, and ``input_scale`` is ``None`` in the saved config."""
    model = wrapped()
    assert MoSELoraConfig().input_scale is None
    assert not any("log_scale" in n for n in model.state_dict())
    assert all(layer.input_scale("default") is None for layer in adapted_layers(model).values())


def test_the_scale_trains_in_the_curvature_group_and_is_saved_and_loaded(tmp_path):
    ids = tokens()
    model = wrapped(init_weights=False, input_scale=2.0)
    rho = {n: p for n, p in model.named_parameters() if ".moselora_log_scale." in n}
    assert rho and all(p.requires_grad for p in rho.values())
    groups = param_groups(model, 1e-3, 5e-2)
    curv = next(g for g in groups if g.get("name") == "curvature")
    assert {id(p) for p in rho.values()} <= {id(p) for p in curv["params"]}
    assert curv["weight_decay"] == 0.0
    start = {n: p.detach().clone() for n, p in rho.items()}
    opt = torch.optim.AdamW(groups)
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert all(not torch.equal(p, start[n]) for n, p in rho.items())  # ρ moved
    model.eval()
    ref = logits_of(model, ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["input_scale"] == 2.0
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert sum("moselora_log_scale" in k for k in keys) == len(rho)
    loaded = PeftModel.from_pretrained(base_model(), tmp_path)
    assert torch.equal(logits_of(loaded, ids), ref)
    for n, layer in adapted_layers(loaded).items():
        trained = dict(adapted_layers(model))[n]
        assert torch.equal(layer.input_scale("default"), trained.input_scale("default"))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "sqrt", True])
def test_a_bad_input_scale_is_refused(bad):
    with pytest.raises(ValueError, match="input_scale"):
        small_config(input_scale=bad)


def test_input_scale_reaches_a_recreated_adapter():
    """``update_layer`` again without the option drops the scale of that adapter."""
    model = wrapped(input_scale=2.0)
    layer = next(iter(adapted_layers(model).values()))
    layer.update_layer("default", small_config())
    assert layer.input_scale("default") is None
    assert mosgeo_lora.curvatures(model)


def test_the_scaled_model_compiles_as_one_graph():
    """``torch.compile(fullgraph=True)``: no graph break with the scale, and the eager
    gradients, ρ's included."""
    ids = tokens()
    over = dict(init_weights=False, input_scale=2.0)
    explained = torch._dynamo.explain(wrapped(**over).train())(input_ids=ids, labels=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    eager, compiled = wrapped(**over).train(), wrapped(**over).train()
    run = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        out_e, out_c = eager(input_ids=ids, labels=ids), run(input_ids=ids, labels=ids)
        out_e.loss.backward()
        out_c.loss.backward()
        torch.testing.assert_close(out_c.loss, out_e.loss)
    grads = dict(compiled.named_parameters())
    for n, p in eager.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n].grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)
    assert any("log_scale" in n and p.grad is not None for n, p in grads.items())
