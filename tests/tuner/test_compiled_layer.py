"""The fused adapter compiled whole (``mosgeo.radial.set_kernel("compiled")``; the default
``"auto"`` does this for tensors on a GPU): forward, backward and the inference call each run
as one compiled function — the matmuls and a few fused kernels instead of ~100 kernel
launches per layer (``tests/tuner/test_ops.py`` counts them). On the CPU these tests force
``"compiled"``; the values and every gradient must be the eager layer's."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from wrapped_models import tokens, wrapped  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo import radial  # noqa: E402
from mosgeo._compat import compile_supported  # noqa: E402
from mosgeo_lora import fused  # noqa: E402

pytestmark = pytest.mark.skipif(not compile_supported(), reason="torch too old to compile")

#: the settings whose code paths differ inside the compiled functions: (overrides, dtype,
#: activation checkpointing)
CONFIGS = {
    # top-k of N, padding (the balance term's token weights: its alpha folded into c), the
    # forward recomputed inside backward (transformers' reentrant checkpointing)
    "top2-padded+checkpointing": (dict(), torch.float32, True),
    # the router on x, the learnable input scale (ρ's gradient), the lift input map
    "router-on-input+scale+lift": (
        dict(router_input="input", input_scale=0.5, input_map="lift"),
        torch.float32,
        False,
    ),
    # the clipping control (an input ball per expert), top-1 routing, and what a GPU trains
    # in: bfloat16 weights (γ in float32, the outputs kept inside the ball)
    "flatten+top1+bfloat16": (dict(flatten=True, top_k=1), torch.bfloat16, False),
}

#: (rtol, atol of the outputs, atol of a gradient relative to its largest entry); bfloat16:
#: one rounding step (the two were bit-identical on torch 2.13, CPU)
TOLERANCES = {torch.float32: (1e-5, 1e-5, 1e-4), torch.bfloat16: (8e-3, 8e-3, 1e-2)}


def _run(model, ids, mask):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():  # the inference call: prompt, then one token
        prompt = model(input_ids=ids[:, :5]).logits
        step = model(input_ids=ids[:, 5:6]).logits
    model.train()
    return out.loss.detach(), out.logits.detach(), grads, prompt, step


@pytest.mark.parametrize(("overrides", "dtype", "checkpointing"), CONFIGS.values(),
                         ids=CONFIGS.keys())  # fmt: skip
def test_the_compiled_adapter_gives_the_eager_model(overrides, dtype, checkpointing):
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    model = wrapped(init_weights=False, **overrides).to(dtype).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    results = {}
    for kernel in ("compiled", "eager"):
        previous = radial.set_kernel(kernel)
        try:
            results[kernel] = _run(model, ids, mask)
            results[kernel] += (mosgeo_lora.routing_stats(model),)
        finally:
            radial.set_kernel(previous)
    (loss, logits, grads, prompt, step, stats) = results["compiled"]
    (r_loss, r_logits, r_grads, r_prompt, r_step, r_stats) = results["eager"]
    rtol, atol, gtol = TOLERANCES[dtype]
    torch.testing.assert_close(loss, r_loss, rtol=rtol, atol=atol)
    for got, ref in ((logits, r_logits), (prompt, r_prompt), (step, r_step)):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    assert grads.keys() == r_grads.keys()
    assert any(".moselora_B." in n for n in grads) and any(".moselora_router." in n for n in grads)
    for name, ref in r_grads.items():
        scale = float(ref.abs().max())
        torch.testing.assert_close(grads[name], ref, rtol=10 * gtol, atol=gtol * scale, msg=name)
    assert stats.keys() == r_stats.keys()


@pytest.fixture
def failing_adapter_compiler(monkeypatch):
    """``"auto"`` made to compile on the CPU, with a compiler that fails for the adapter."""

    def broken(*args, **kwargs):
        raise RuntimeError("no working C compiler")

    for name in ("_forward_kernel", "_backward_kernel", "_infer_kernel"):
        monkeypatch.setattr(fused, name, lambda *a, **k: broken)
    monkeypatch.setattr(radial, "_COMPILED", {})
    monkeypatch.setattr(radial, "dispatch_mode_active", lambda: False)

    def kernel_for(device):
        return "eager" if radial.get_kernel() == "eager" else "compiled"

    monkeypatch.setattr(radial, "kernel_for", kernel_for)
    previous = radial.set_kernel("auto")
    yield
    radial.set_kernel(previous)


def test_auto_runs_the_eager_adapter_where_compiling_fails(failing_adapter_compiler):
    """Under ``"auto"`` a failed compilation of the adapter warns once per variant and runs
    the eager code: the same loss as an eager run, and the next step warns no more."""
    ids = tokens()
    model = wrapped(init_weights=False).train()
    with pytest.warns(RuntimeWarning, match="compiling the kernel 'adapter forward' failed"):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = model(input_ids=ids, labels=ids).loss
    radial.set_kernel("eager")
    torch.testing.assert_close(again, model(input_ids=ids, labels=ids).loss)
    adapter = {key: ok for key, ok in radial._COMPILED.items() if key[0].startswith("adapter")}
    assert adapter and set(adapter.values()) == {False}  # (γ's own kernel compiled, inside)
