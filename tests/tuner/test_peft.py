"""MoSELoRA as a PEFT tuner on tiny random transformers models (Llama, Qwen2, GPT-2 Conv1D):
PEFT's behaviours (save/load, disable, unload, generate, checkpointing, Trainer, bf16) and
the balance loss. The models and the adapter come from ``wrapped_models``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("peft")  # the `lora` extra
pytest.importorskip("transformers")

from peft import AutoPeftModelForCausalLM, PeftModel  # noqa: E402
from transformers import (  # noqa: E402
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)
from wrapped_models import (  # noqa: E402
    ARCHS,
    EXPECTED_TARGETS,
    N,
    R,
    adapted_layers,
    base_model,
    logits_of,
    sequential,
    small_config,
    strip_prefix,
    tokens,
    wrapped,
)

import mosgeo_lora  # noqa: E402
from mosgeo_lora import MoSELoraConfig, MoSELoraLayer  # noqa: E402
from mosgeo_lora import layer as layer_module  # noqa: E402


# --------------------------------------------------------------------------- init / targets
@pytest.mark.parametrize("arch", ARCHS)
def test_identity_at_init_and_targets(arch):
    ids = tokens()
    base = logits_of(base_model(arch), ids)
    model = wrapped(arch).eval()
    assert isinstance(model, PeftModel)
    assert model.peft_config["default"].peft_type == mosgeo_lora.MOSELORA
    names = {strip_prefix(n) for n in adapted_layers(model)}
    assert names == EXPECTED_TARGETS[arch]
    if arch == "gpt2":  # transformers Conv1D, and attention's c_proj is left alone
        from transformers.pytorch_utils import Conv1D

        for layer in adapted_layers(model).values():
            assert isinstance(layer.get_base_layer(), Conv1D)
        assert not isinstance(model.base_model.model.transformer.h[0].attn.c_proj, MoSELoraLayer)
    assert torch.equal(logits_of(model, ids), base)

    random_b = wrapped(arch, init_weights=False).eval()
    assert not torch.allclose(logits_of(random_b, ids), base, atol=1e-4)


# --------------------------------------------------------------------------- training
def _adam_steps(model, ids, steps, lr=1e-2, curvature_lr=None, record_grads_at=None):
    opt = torch.optim.AdamW(mosgeo_lora.param_groups(model, lr, curvature_lr))
    grads, losses = None, []
    model.train()
    for step in range(steps):
        opt.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss.item())
        if step == record_grads_at:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
    model.eval()
    return grads, losses


@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_only_the_adapter(arch):
    ids = tokens()
    model = wrapped(arch)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".moselora_" in n for n in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".moselora_" not in n)
    before_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    before_logits = logits_of(model, ids)

    grads, losses = _adam_steps(model, ids, steps=3, record_grads_at=2)
    assert all(math.isfinite(v) for v in losses)

    # every adapter component of every layer got a nonzero gradient at step 2
    for name, layer in adapted_layers(model).items():
        prefix = name + "."
        g = {n[len(prefix) :]: v for n, v in grads.items() if n.startswith(prefix)}
        d_out = layer.out_features
        b_blocks = g["moselora_B.default.weight"].view(d_out, N, R)
        for i in range(N):
            assert b_blocks[:, i].abs().sum() > 0, f"{name}: expert {i} B got no gradient"
        assert g["moselora_A.default.weight"].abs().sum() > 0, name
        assert g["moselora_router.default.weight"].abs().sum() > 0, name
        k_grad = g["moselora_k.default"]
        assert k_grad.shape == (3,)  # hyperbolic + 2 spherical are learnable
        assert (k_grad != 0).all(), f"{name}: κ gradient {k_grad}"

    after_state = model.state_dict()
    changed = {n for n in after_state if not torch.equal(after_state[n], before_state[n])}
    for n in after_state:
        if ".moselora_" not in n:
            assert n not in changed, f"base tensor {n} changed"
    for n in trainable:
        assert n in changed, f"adapter parameter {n} did not change"
    # Euclidean experts: κ stays exactly 0 (a buffer, never trained)
    for layer in adapted_layers(model).values():
        k = layer.curvatures("default")
        assert k[-1].item() == 0.0
        assert torch.equal(layer.moselora_k_fixed["default"], torch.zeros(1))
    assert not torch.allclose(logits_of(model, ids), before_logits, atol=1e-5)


def test_step0_curvature_gradient_is_zero_with_zero_b():
    """With B = 0 at init, κ gets exactly zero gradient at the first step; the router (and A,
    through the router's input z = A x) are trained by the aux loss alone."""
    ids = tokens()
    model = wrapped().train()
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if ".moselora_k." in name:
            assert torch.equal(p.grad, torch.zeros_like(p)), name
        if ".moselora_router." in name or ".moselora_A." in name:
            assert p.grad.abs().sum() > 0, name


def test_learn_curvature_false_keeps_curvatures_fixed():
    ids = tokens()
    model = wrapped(learn_curvature=False, init_weights=False)
    assert not any(".moselora_k." in n for n, _ in model.named_parameters())
    before = mosgeo_lora.curvatures(model)
    _adam_steps(model, ids, steps=3)
    after = mosgeo_lora.curvatures(model)
    assert after == before
    assert all(k == [-1.0, 1.0, 1.0, 0.0] for k in after.values())


# --------------------------------------------------------------------------- save / load
def _randomise_curvatures(model, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".moselora_k." in n:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip(arch, tmp_path):
    ids = tokens()
    model = wrapped(arch, init_weights=False)
    _randomise_curvatures(model)
    model.eval()
    ref = logits_of(model, ids)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MOSELORA"
    assert (saved["r"], saved["num_experts"], saved["top_k"]) == (R, N, 2)

    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert keys and all("moselora_" in k for k in keys)
    assert any("moselora_k" in k for k in keys)

    loaded = PeftModel.from_pretrained(base_model(arch), tmp_path)
    assert torch.equal(logits_of(loaded, ids), ref)
    assert mosgeo_lora.curvatures(loaded) == mosgeo_lora.curvatures(model)
    assert mosgeo_lora.curvatures(loaded) != mosgeo_lora.curvatures(wrapped(arch))


def test_auto_peft_model_and_transformers_load_adapter(tmp_path):
    ids = tokens()
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base_model().save_pretrained(base_dir)
    torch.manual_seed(1)
    model = mosgeo_lora.wrap(
        LlamaForCausalLM.from_pretrained(base_dir),
        small_config(init_weights=False, base_model_name_or_path=str(base_dir)),
    ).eval()
    _randomise_curvatures(model)
    ref = logits_of(model, ids)
    model.save_pretrained(adapter_dir)

    auto = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    assert isinstance(auto, PeftModel)
    assert torch.equal(logits_of(auto.eval(), ids), ref)

    plain = LlamaForCausalLM.from_pretrained(base_dir).eval()
    plain.load_adapter(str(adapter_dir))
    assert len(adapted_layers(plain)) == 6
    assert torch.equal(logits_of(plain, ids), ref)


# --------------------------------------------------------------------------- disable / unload
@pytest.mark.parametrize("arch", ARCHS)
def test_disable_adapter_unload_and_merge_errors(arch):
    ids = tokens()
    base = logits_of(base_model(arch), ids)
    model = wrapped(arch, init_weights=False).eval()
    adapted = logits_of(model, ids)
    assert not torch.allclose(adapted, base, atol=1e-4)
    with model.disable_adapter():
        assert torch.equal(logits_of(model, ids), base)
    assert torch.equal(logits_of(model, ids), adapted)

    for call in (model.merge_and_unload, model.merge_adapter):
        with pytest.raises(NotImplementedError, match="cannot be merged.*nonlinear"):
            call()
    assert torch.equal(logits_of(model, ids), adapted)  # a failed merge leaves it intact

    plain = model.unload()
    assert not adapted_layers(plain)
    assert not any("moselora" in n for n, _ in plain.named_parameters())
    assert torch.equal(logits_of(plain, ids), base)


# --------------------------------------------------------------------------- multiple adapters
def test_multiple_named_adapters(tmp_path):
    ids = tokens()
    # evaluation mode, as the loaded model below: the same (inference) path, bitwise logits
    model = wrapped(init_weights=False).eval()
    first = logits_of(model, ids)
    torch.manual_seed(5)
    second_cfg = MoSELoraConfig(r=R, num_experts=N, preset="moselora-h", init_weights=False)
    model.add_adapter("second", second_cfg)
    assert torch.equal(logits_of(model, ids), first)  # adding does not activate
    model.set_adapter("second")
    second = logits_of(model, ids)
    assert not torch.allclose(second, first, atol=1e-4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".second" in n for n in trainable)
    assert all(k < 0 for ks in mosgeo_lora.curvatures(model, "second").values() for k in ks)
    model.set_adapter("default")
    assert torch.equal(logits_of(model, ids), first)

    model.save_pretrained(tmp_path)
    assert (tmp_path / "second" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(base_model(), tmp_path)
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    assert torch.equal(logits_of(loaded, ids), first)
    loaded.set_adapter("second")
    assert torch.equal(logits_of(loaded, ids), second)


# --------------------------------------------------------------------------- generate
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_and_without_cache(arch):
    ids = tokens(length=6)
    model = wrapped(arch, init_weights=False).eval()
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        cached = model.generate(input_ids=ids, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=ids, use_cache=False, **kwargs)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, uncached)
    # the adapter is active during generate: greedy decoding by hand through the PEFT model
    seq = ids
    for _ in range(5):
        nxt = logits_of(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


# --------------------------------------------------------------------------- aux loss
def _router_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if ".moselora_router." in n}


def _train_forward_backward(model, ids, attention_mask=None):
    model.train()
    out = model(input_ids=ids, attention_mask=attention_mask, labels=ids)
    out.loss.backward()
    return out


def _padded(ids):
    """``ids`` with 3 pad positions on the right of the first row, and its attention mask."""
    padded = torch.cat([ids, torch.zeros(ids.shape[0], 3, dtype=ids.dtype)], dim=1)
    mask = torch.ones_like(padded)
    mask[0, ids.shape[1] :] = 0
    padded[1, ids.shape[1] :] = ids[1, :3]  # the second row is all real tokens
    return padded, mask


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_keeps_the_balance_gradient(use_reentrant):
    """Both checkpointing modes (reentrant is what ``prepare_model_for_kbit_training`` turns
    on) give the router the gradient of the unchecked model, on a padded batch: the
    recomputation inside backward sees the batch's mask and counts nothing twice."""
    ids, mask = _padded(tokens())
    ref = wrapped(init_weights=False)
    _train_forward_backward(ref, ids, mask)
    no_aux = wrapped(init_weights=False, aux_loss_coef=0.0)
    _train_forward_backward(no_aux, ids, mask)
    ckpt = wrapped(init_weights=False)
    ckpt.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
    )
    if use_reentrant:  # as prepare_model_for_kbit_training does: inputs that require grad
        ckpt.enable_input_require_grads()
    assert ckpt.base_model.model.is_gradient_checkpointing
    out = _train_forward_backward(ckpt, ids, mask)
    torch.testing.assert_close(out.aux_loss, _train_forward_backward(ref, ids, mask).aux_loss)
    g_ref, g_ckpt, g_no_aux = _router_grads(ref), _router_grads(ckpt), _router_grads(no_aux)
    for n in g_ref:
        # ref went through backward twice above: compare with half of its accumulated grad
        torch.testing.assert_close(g_ckpt[n], g_ref[n] / 2, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(g_ckpt[n], g_no_aux[n], rtol=1e-4, atol=1e-7), n
    real = int(mask.sum())
    assert all(s["tokens"] == real for s in mosgeo_lora.routing_stats(ckpt).values())
    assert not any(
        isinstance(v, torch.Tensor) and v.grad_fn is not None
        for layer in adapted_layers(ckpt).values()
        for v in vars(layer).values()
    )
    copy.deepcopy(ckpt)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_balance_loss_value_and_gradient(monkeypatch, fused):
    """``outputs.aux_loss`` is the mean Switch loss over the adapted layers on the real tokens;
    ``outputs.loss`` is the task loss; the gradient is that of ``loss + coef · aux``.

    The reference path routes with :func:`~mosgeo_lora.router.route` (spied on); the fused path
    routes inside its autograd Function (``fused.route_forward`` spied on, its mask divided by
    the folded output scale), so its explicit loss is rebuilt with autograd from each layer's
    input: ``route(W_g A x)``."""
    from mosgeo_lora import fused as fused_module
    from mosgeo_lora.router import load_balancing_loss, route

    ids = tokens()
    seen = []

    def spy(logits, top_k):
        gates, probs, mask = route(logits, top_k)
        seen.append((probs, mask, top_k))
        return gates, probs, mask

    def spy_fused(logits, top_k, value=1.0):
        gates, probs, mask = fused_module_route_forward(logits, top_k, value)
        seen.append((probs, mask / value, top_k))
        return gates, probs, mask

    fused_module_route_forward = fused_module.route_forward
    monkeypatch.setattr(layer_module, "route", spy)
    monkeypatch.setattr(fused_module, "route_forward", spy_fused)
    model = wrapped(init_weights=False, aux_loss_coef=0.5, fused=fused).train()
    out = model(input_ids=ids, labels=ids)
    assert len(seen) == 6  # one per adapted layer
    explicit = torch.stack([load_balancing_loss(p, m, k) for p, m, k in seen]).mean()
    torch.testing.assert_close(out.aux_loss, explicit.detach())
    assert not out.aux_loss.requires_grad
    task = model.base_model.model(input_ids=ids, labels=ids).loss  # the bare transformers loss
    torch.testing.assert_close(out.loss, task)
    out.loss.backward()
    injected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    monkeypatch.setattr(layer_module, "balance_loss_and_grad", _no_balance)
    monkeypatch.setattr(fused_module, "balance_terms", _no_balance_terms)
    inputs = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
        for layer in adapted_layers(model).values()
    ]
    seen.clear()
    out = model(input_ids=ids, labels=ids)
    for h in hooks:
        h.remove()
    if fused:  # the same routing, rebuilt with autograd from each layer's input
        seen[:] = [
            (*route(m.moselora_router["default"](m.moselora_A["default"](x)), k)[1:], k)
            for (m, x), (_, _, k) in zip(inputs, seen, strict=True)
        ]
    explicit = torch.stack([load_balancing_loss(p, m, k) for p, m, k in seen]).mean()
    (out.loss + 0.5 * explicit).backward()
    for n, p in model.named_parameters():
        if n in injected:
            torch.testing.assert_close(
                injected[n], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}"
            )

    as_tuple = model(input_ids=ids, labels=ids, return_dict=False)  # the task loss first
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], task)


def _no_balance(logits, top_k, token_mask=None):
    return torch.zeros(()), torch.zeros_like(logits)


def _no_balance_terms(probs, mask, top_k, weights=None, **kwargs):
    from mosgeo_lora.balance import balance_terms

    counts, _, _, aux = balance_terms(probs, mask, top_k, weights, **{**kwargs, "grad": False})
    return counts, None, 1.0, aux


def test_balance_loss_leaves_padding_out():
    ids = tokens()
    model = wrapped(init_weights=False).eval()
    with torch.enable_grad():
        model.train()
        out = model(input_ids=ids)
        # right-padding with attention_mask = 0 leaves the real tokens (causal) and the loss
        pad = torch.zeros(2, 3, dtype=ids.dtype)
        padded = torch.cat([ids, pad], dim=1)
        mask = torch.cat([torch.ones_like(ids), torch.zeros_like(pad)], dim=1)
        out_pad = model(input_ids=padded, attention_mask=mask)
        torch.testing.assert_close(out_pad.aux_loss, out.aux_loss, rtol=1e-6, atol=1e-7)
        # ... whereas the same padded batch counted unmasked gives another value
        unmasked = model(input_ids=padded)
        assert not torch.allclose(unmasked.aux_loss, out.aux_loss, rtol=1e-4)


def test_trainer_gradient_accumulation_does_not_multiply_aux_loss(tmp_path):
    """Batch 4 × GA 1 and batch 2 × GA 2 on four identical examples: with B = 0 at init the
    router's gradient is the aux gradient alone, so equal router updates = equal aux
    gradients (a factor of the accumulation count would double it)."""
    ids = tokens(batch=1, length=8)[0]
    data = [{"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}] * 4

    def one_step(batch_size, accumulation):
        model = wrapped(aux_loss_coef=1.0)
        seen = []
        model.base_model.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(kwargs.get("num_items_in_batch")),
            with_kwargs=True,
        )
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1.0,
            optim="sgd",
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=data).train()
        assert len(seen) == accumulation and all(s is not None for s in seen)
        return {n: p.detach() - before[n] for n, p in model.named_parameters() if n in before}

    single, accumulated = one_step(4, 1), one_step(2, 2)
    routers = [n for n in single if ".moselora_router." in n]
    assert len(routers) == 6
    for n in routers:
        assert single[n].abs().max() > 1e-6, n
        torch.testing.assert_close(accumulated[n], single[n], rtol=1e-4, atol=1e-8)
    for n in single:  # the task part (B's update) agrees too
        torch.testing.assert_close(accumulated[n], single[n], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- curvature / dtype
def test_curvature_crosses_zero_and_stays_finite():
    ids = tokens()
    model = wrapped(init_weights=False)
    start = mosgeo_lora.curvatures(model)
    signs = set()
    opt = torch.optim.AdamW(mosgeo_lora.param_groups(model, 1e-3, curvature_lr=0.3))
    model.train()
    for _ in range(12):
        opt.zero_grad()
        out = model(input_ids=ids, labels=ids)
        assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        opt.step()
        for name, ks in mosgeo_lora.curvatures(model).items():
            for i, (k0, k) in enumerate(zip(start[name], ks, strict=True)):
                if k0 != 0 and k * k0 < 0:
                    signs.add((name, i))
    assert signs, "no curvature changed sign"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_and_bf16_base_model():
    ids = tokens()
    model = wrapped(init_weights=False).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    torch.manual_seed(0)
    half = mosgeo_lora.wrap(base_model().to(torch.bfloat16), small_config(init_weights=False))
    adapter = {n: p for n, p in half.named_parameters() if ".moselora_" in n}
    assert adapter and all(p.dtype == torch.float32 for p in adapter.values())
    assert all(b.dtype == torch.float32 for n, b in half.named_buffers() if "moselora_" in n)
    assert half.base_model.model.lm_head.weight.dtype == torch.bfloat16
    out = half.train()(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in adapter.values())

    # B = 0: the router's gradient under autocast is the balance term's alone, as in float32
    routers = []
    for autocast in (True, False):
        model = wrapped().train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        routers.append({n: p.grad for n, p in model.named_parameters() if "_router." in n})
    for n, g in routers[0].items():
        assert g.abs().sum() > 0, n
        torch.testing.assert_close(g, routers[1][n], rtol=2e-2, atol=1e-6, msg=n)


# --------------------------------------------------------------------------- presets / config


# --------------------------------------------------------------------------- fused vs reference
#: the router's input: the code A x (the MoSELoRA default), the layer input x (top-2 of 4), and
#: HydraLoRA (dense routing, Euclidean experts, its default router on x)
ROUTINGS = {
    "code": {},
    "input": {"router_input": "input"},
    "hydralora": {"preset": "hydralora", "num_hyperbolic": 0, "num_spherical": 0, "top_k": None},
}


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_and_reference_paths_agree(dtype, padded, routing):
    """Same weights, fused=True vs the literal per-expert path: same logits, loss, aux loss
    and gradients (to rounding; float32 is loose because B ~ N(0, 0.5²) drives most tokens
    into the spherical clip, which amplifies rounding). With padding, the fused layer's
    balance gradient (added in its router backward, weighted by the attention mask) equals
    the reference path's ``BalanceGradient``. With the router on the layer input (``W_g``
    ``N × d_in``), its gradient and its share of ``∂L/∂x`` (which reaches the earlier
    layers' adapters) are the fused backward's other branch."""
    ids, mask = _padded(tokens()) if padded else (tokens(), None)
    over = ROUTINGS[routing]
    fused = wrapped(init_weights=False, fused=True, **over).to(dtype)
    _randomise_curvatures(fused)
    reference = wrapped(init_weights=False, fused=False, adapter_seed=99, **over).to(dtype)
    assert not torch.equal(
        reference.state_dict()[_first_b(reference)], fused.state_dict()[_first_b(fused)]
    )
    reference.load_state_dict(fused.state_dict())
    for layer in adapted_layers(reference).values():
        assert layer.settings["default"]["fused"] is False
        on_input = layer.settings["default"]["router_input"] == "input"
        assert on_input == (routing != "code")
        d_router = layer.in_features if on_input else R
        assert layer.moselora_router["default"].weight.shape == (N, d_router)
    outs = [_train_forward_backward(m, ids, mask) for m in (fused, reference)]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=tol, atol=tol)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=tol, atol=tol)
    torch.testing.assert_close(outs[0].aux_loss, outs[1].aux_loss, rtol=tol, atol=tol)
    grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for n, p in fused.named_parameters():
        if p.requires_grad:
            scale = grads[n].abs().max().item()
            assert scale > 0, n
            # float32 κ-gradients: the two paths compute ‖B_i s_i‖ differently (Gram matrix vs
            # the vector), and a token at the spherical clip can fall on either side of it; one
            # κ component of layer 0's down_proj then differs by 1.6e-3 of the largest
            # (transformers 5.25 weights). float64 is the strict check of the same formulas.
            rel = 1e-2 if dtype == torch.float32 and ".moselora_k." in n else 10 * tol
            torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=rel * scale, msg=n)


@pytest.mark.parametrize("where", ["float64", "bf16-base"])
def test_dropout_is_applied_once_on_both_paths(where):
    """Adapter dropout > 0: the fused and literal paths draw the same mask (one dropout call
    per layer, before the paths fork), so with the same seed they agree — also where the
    frozen layer's output has another dtype than the adapter (a bfloat16 base model), where
    the fused layer adds it outside its Function. (Found: that branch re-entered the
    adapter and dropped the input out twice.)"""
    ids = tokens()
    outs = []
    for fused in (True, False):
        if where == "float64":
            model = wrapped(init_weights=False, fused=fused, dropout=0.5).to(torch.float64)
        else:
            torch.manual_seed(1)
            model = mosgeo_lora.wrap(
                base_model().to(torch.bfloat16),
                small_config(init_weights=False, fused=fused, dropout=0.5),
            )
        torch.manual_seed(3)
        outs.append(model.train()(input_ids=ids).logits)
    tol = 1e-10 if where == "float64" else 0.0625  # bfloat16 logits: 8 ulps at |logit| ≤ 1
    torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)


def _first_b(model) -> str:
    return next(n for n in model.state_dict() if ".moselora_B." in n)


# --------------------------------------------------------------------------- wrap on any module
def test_wrap_plain_module_needs_target_modules():
    with pytest.raises(ValueError, match="target_modules"):
        mosgeo_lora.wrap(sequential())
    x = torch.randn(3, 8)
    seq = sequential()
    base = seq(x).detach()
    model = mosgeo_lora.wrap(seq, target_modules=["0", "2"], r=2, num_experts=4, top_k=1)
    assert set(adapted_layers(model)) == {"base_model.model.0", "base_model.model.2"}
    assert model.peft_config["default"].r == 2
    assert torch.equal(model(x), base)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.moselora_B["default"].weight.normal_()
    out = model(x)
    assert not torch.allclose(out, base, atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- optimizer groups


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_model_without_autocast(dtype):
    """PEFT's ``test_forward_float16_no_autocast``, for both weight dtypes: the wrapped model
    converted whole (adapter included) with ``.to(dtype)`` trains without autocast — finite
    loss and gradients in the storage dtype, fused and literal paths agreeing to its
    precision. (Found: the fused path crashed in float16 inside ``project_factor``.)"""
    ids = tokens()
    outs, grads = [], []
    for fused in (True, False):
        model = wrapped(init_weights=False, fused=fused)
        _randomise_curvatures(model)
        model = model.to(dtype).train()
        assert all(p.dtype == dtype for p in model.parameters())
        out = model(input_ids=ids, labels=ids)
        assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
        assert torch.isfinite(out.loss)
        out.loss.backward()
        g = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(v is not None and v.dtype == dtype and torch.isfinite(v).all()
                   for v in g.values())  # fmt: skip
        assert any(v.abs().sum() > 0 for n, v in g.items() if ".moselora_B." in n)
        outs.append(out)
        grads.append(g)
    tol = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=tol, atol=tol)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=tol, atol=tol)
