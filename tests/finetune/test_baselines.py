"""The paper's baselines that PEFT does not ship (MELoRA, HMoRA) as PEFT tuners, and the
command line running them, on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel, get_peft_model  # noqa: E402
from tiny_models import tiny_gpt2, tiny_llama  # noqa: E402
from torch import nn  # noqa: E402

from mosgeo_lora.finetune import base_models, cli  # noqa: E402
from mosgeo_lora.finetune.baselines import HMoRAConfig, MELoraConfig, hmora  # noqa: E402
from mosgeo_lora.finetune.baselines.hmora import HMoRALayer, gjs_loss  # noqa: E402
from mosgeo_lora.finetune.baselines.melora import MELoraLayer  # noqa: E402

IDS = torch.tensor([[5, 9, 11, 20, 7, 30, 41, 12, 3], [8, 17, 25, 6, 14, 33, 50, 22, 4]])
#: FFN of the tiny Llama: gate/up 32 → 64, down 64 → 32; Σ (d_in + d_out) over 2 layers
FFN_SUM = 2 * (96 + 96 + 96)


def melora_model(r=8, n=4, **kw):
    torch.manual_seed(0)
    cfg = MELoraConfig(r=r, num_mini=n, init_weights=False, task_type="CAUSAL_LM", **kw)
    return get_peft_model(tiny_llama(), cfg)


def melora_layers(model):
    return [m for m in model.modules() if isinstance(m, MELoraLayer)]


# --------------------------------------------------------------------------------- MELoRA
def test_melora_delta_is_block_diagonal_with_n_blocks_of_rank_r_over_n():
    model = melora_model(r=8, n=4)
    layers = melora_layers(model)
    assert len(layers) == 6
    for layer in layers:
        delta = layer.get_delta_weight("default")
        assert delta.shape == (layer.out_features, layer.in_features)
        bo, bi = layer.out_features // 4, layer.in_features // 4
        blocks = torch.zeros_like(delta, dtype=torch.bool)
        for i in range(4):
            block = delta[i * bo : (i + 1) * bo, i * bi : (i + 1) * bi]
            assert torch.linalg.matrix_rank(block) == 2  # r / n each, and not less
            blocks[i * bo : (i + 1) * bo, i * bi : (i + 1) * bi] = True
        assert torch.count_nonzero(delta[~blocks]) == 0  # nothing off the 4 diagonal blocks
        assert torch.linalg.matrix_rank(delta) == 8  # the equivalent rank r
        x = torch.randn(3, layer.in_features)
        torch.testing.assert_close(layer.adapter_delta(x, "default"), x @ delta.T)


@pytest.mark.parametrize(("r", "n"), [(8, 8), (8, 4), (16, 8), (4, 1)])
def test_melora_parameter_count_is_r_over_n_times_lora(r, n):
    model = melora_model(r=r, n=n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == r // n * FFN_SUM  # LoRA of rank r has r * FFN_SUM
    for layer in melora_layers(model):
        a, b = layer.melora_A["default"], layer.melora_B["default"]
        assert a.shape == (n, r // n, layer.in_features // n)
        assert b.shape == (n, layer.out_features // n, r // n)


def test_melora_scaling_is_the_official_per_mini_alpha_over_rank():
    # MELoRA's Llama-2 script: mini rank 1, 8 mini LoRAs, lora_alpha 16 -> scale 16 each
    assert MELoraConfig(r=8, num_mini=8, alpha=16).scaling == 16
    assert MELoraConfig(r=16, num_mini=4, alpha=32).scaling == 8
    with pytest.raises(ValueError, match="multiple of num_mini"):
        MELoraConfig(r=6, num_mini=4)
    with pytest.raises(ValueError, match="divisible by 5"):
        melora_model(r=5, n=5)  # 32 features do not split into 5 slices


def test_melora_merge_equals_forward_and_unmerge_restores_the_weights():
    model = melora_model().eval()
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        base_w = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=IDS).logits, adapted, atol=1e-5, rtol=0)
        model.unmerge_adapter()
        for n, p in model.named_parameters():
            if n in base_w:
                torch.testing.assert_close(p, base_w[n], atol=1e-6, rtol=0)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, MELoraLayer) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=IDS).logits, adapted, atol=1e-5, rtol=0)


def test_melora_on_conv1d_merges_in_the_transposed_layout():
    torch.manual_seed(0)
    cfg = MELoraConfig(r=8, num_mini=4, init_weights=False, target_modules=["c_fc", "c_proj"])
    model = get_peft_model(tiny_gpt2(), cfg).eval()
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=IDS).logits, adapted, atol=1e-5, rtol=0)


def test_melora_save_load_gives_identical_logits(tmp_path):
    model = melora_model().eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["num_mini"]) == ("MELORA", 8, 4)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, before)


# --------------------------------------------------------------------------------- HMoRA
def hmora_model(layers=4, seed=0, **kw):
    torch.manual_seed(seed)
    base = base_models.tiny_llama(64, layers=layers)
    kw = {"init_weights": False, "lora_modules": ["down_proj"], "dropout": 0.0, **kw}
    return get_peft_model(base, HMoRAConfig(task_type="CAUSAL_LM", **kw))


def hmora_layers(model, name="gate_proj"):
    return [m for n, m in model.named_modules() if isinstance(m, HMoRALayer) and n.endswith(name)]


def capture_inputs(model):
    """Record the input of every HMoRA layer on the next call."""
    seen = {}

    def hook(module, args):
        seen[module] = args[0]

    for m in model.modules():
        if isinstance(m, HMoRALayer):
            m.register_forward_pre_hook(hook)
    return seen


def test_hmora_mixing_weight_follows_the_depth_schedule():
    model = hmora_model(layers=8)
    modes, weights = [], []
    for layer in hmora_layers(model):
        modes.append(layer.settings["default"]["mode"])
        weights.append(layer.task_mixing("default"))
    # the paper's code: a_l = sigmoid(-eps + 2 eps l / (L - 1)), eps = 2, L = 8; token router
    # only below 0.2, task router only above 0.8
    expected = [1 / (1 + math.exp(2 - 4 * layer / 7)) for layer in range(8)]
    assert [round(a, 4) for a in expected] == [
        0.1192, 0.1933, 0.2979, 0.4291, 0.5709, 0.7021, 0.8067, 0.8808
    ]  # fmt: skip
    assert modes == ["token", "token", "hybrid", "hybrid", "hybrid", "hybrid", "task", "task"]
    for w, a, mode in zip(weights, expected, modes, strict=True):
        assert (w is None) if mode != "hybrid" else abs(w - a) < 1e-6
    for i, layer in enumerate(hmora_layers(model)):
        assert hmora.mixing_schedule(i, 8) == pytest.approx(expected[i], abs=1e-12)
        assert ("default" in layer.hmora_router) == (modes[i] != "task")
        assert ("default" in layer.hmora_task_router) == (modes[i] != "token")


def test_hmora_routing_shapes_per_token_and_per_sequence_and_gates_sum_to_one():
    model = hmora_model(layers=4).eval()  # modes: token, hybrid, hybrid, task
    seen = capture_inputs(model)
    with torch.no_grad():
        model(input_ids=IDS)
        for layer in hmora_layers(model):
            mode = layer.settings["default"]["mode"]
            gates, token, task = layer.gates(seen[layer], "default")
            assert gates.shape == (2, 9, 8)
            torch.testing.assert_close(gates.sum(-1), torch.ones(2, 9))
            assert (token is None) == (mode == "task") and (task is None) == (mode == "token")
            if token is not None:
                assert token.shape == (2, 9, 8)  # one distribution per token
            if task is not None:
                assert task.shape == (2, 8)  # one per sequence, the same for all its tokens
                assert not torch.allclose(task[0], task[1])
            if mode == "hybrid":
                a = layer.task_mixing("default")
                torch.testing.assert_close(gates, (1 - a) * token + a * task[:, None])
            if mode == "task":
                assert torch.equal(gates, task[:, None].expand(2, 9, 8))


def test_hmora_top_k_keeps_k_experts_per_token():
    model = hmora_model(layers=4, top_k=2).eval()
    seen = capture_inputs(model)
    with torch.no_grad():
        model(input_ids=IDS)
        for layer in hmora_layers(model):
            gates = layer.gates(seen[layer], "default")[0]
            assert torch.equal((gates > 0).sum(-1), torch.full((2, 9), 2))
            torch.testing.assert_close(gates.sum(-1), torch.ones(2, 9))


def test_hmora_task_representation_reads_the_prompt_only():
    model = hmora_model(layers=4).eval()
    encoder = model.base_model.hmora_task_encoder["default"]
    context = model.base_model._hmora_context
    labels = IDS.clone()
    labels[:, :5] = -100  # prompt: the first 5 tokens

    def representation(ids, mask=None, labels=None):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, labels=labels)
        return context.representation["default"].clone()

    rep = representation(IDS, labels=labels)
    other_answer = IDS.clone()
    other_answer[:, 5:] = 40
    torch.testing.assert_close(representation(other_answer, labels=labels), rep)
    other_prompt = IDS.clone()
    other_prompt[:, 1] = 40
    assert not torch.allclose(representation(other_prompt, labels=labels), rep)
    # padding on either side changes nothing: positions count the prompt's tokens
    prompt = IDS[:, :5]
    left = torch.cat([torch.zeros(2, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(representation(left, mask), rep, atol=1e-5, rtol=0)
    with torch.no_grad():
        direct = encoder(model.get_input_embeddings()(prompt), torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(direct, rep, atol=1e-5, rtol=0)


def test_hmora_parameter_counts_match_the_structure():
    model = hmora_model(layers=4)
    r, n, d, inner = 8, 8, 32, 64
    encoder = sum(p.numel() for p in nn.TransformerEncoderLayer(d, 16, 2 * d).parameters()) + d
    routers = {"token": d * n + n, "task": d * n + n, "hybrid": 2 * (d * n + n) + 1}
    experts = 2 * (r * d + n * r * inner)  # gate and up: shared A, B of N·r columns each
    plain = r * (inner + d)  # down_proj: a plain LoRA
    modes = ["token", "hybrid", "hybrid", "task"]
    expected = sum(experts + plain + routers[m] for m in modes) + encoder
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert hmora.inactive_per_token(model) == encoder  # the encoder runs once per sequence
    top2 = hmora.inactive_per_token(hmora_model(layers=4, top_k=2))
    assert top2 == encoder + 4 * 2 * (n * r * inner) * 3 // 4  # 2 of 8 B blocks act


def test_hmora_save_load_round_trip_gives_identical_logits_and_generation(tmp_path):
    model = hmora_model(layers=4).eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
        generated = model.generate(input_ids=IDS[:, :5], max_new_tokens=4, do_sample=False)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "HMORA"
    torch.manual_seed(0)  # the same base model
    base = base_models.tiny_llama(64, layers=4)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, encoder too
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, before)
        again = loaded.generate(input_ids=IDS[:, :5], max_new_tokens=4, do_sample=False)
    assert torch.equal(again, generated)


def test_hmora_cannot_merge_and_unloads_to_the_base_model():
    model = hmora_model(layers=4).eval()
    with pytest.raises(NotImplementedError, match="HMoRA cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="HMoRA cannot be merged"):
        hmora_layers(model)[0].merge()
    base = model.unload()
    assert not any(isinstance(m, HMoRALayer) for m in base.modules())
    torch.manual_seed(0)
    fresh = base_models.tiny_llama(64, layers=4)
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=IDS).logits, fresh(input_ids=IDS).logits)


def test_hmora_aux_loss_reaches_the_gradient_not_the_loss():
    """With coefficient λ the gradient is that of loss + λ Σ_routers GJS (token routers over
    the real tokens, task routers over the sequences); ``outputs.loss`` stays the LM loss."""
    lam = 0.5
    with_aux, without = hmora_model(aux_loss_coef=lam), hmora_model(aux_loss_coef=0.0)
    mask = torch.ones_like(IDS)
    mask[1, -2:] = 0  # padding is left out of the token routers' loss
    labels = IDS.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    out = with_aux(input_ids=IDS, attention_mask=mask, labels=labels)
    out.loss.backward()
    seen = capture_inputs(without)
    ref = without(input_ids=IDS, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ref.loss, out.loss)
    explicit = []
    for layer in hmora_layers(without):  # the router owners (gate_proj; up_proj shares)
        _, token, task = layer.gates(seen[layer], "default")
        if token is not None:
            explicit.append(gjs_loss(token, 0.5, 0.98, mask))
        if task is not None:
            explicit.append(gjs_loss(task, 0.5, 0.98))
    aux = torch.stack(explicit)
    assert len(explicit) == 6  # token, 2 × hybrid (token + task), task
    assert out.aux_loss is not None and abs(out.aux_loss.item() - aux.mean().item()) < 1e-5
    (ref.loss + lam * aux.sum()).backward()
    grads = dict(without.named_parameters())
    checked = 0
    for name, p in with_aux.named_parameters():
        if p.requires_grad:
            q = grads[name]
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
            checked += ("router" in name) or ("task_encoder" in name)
    assert checked > 10


def _hmora_step(model, checkpointing=None):
    """One training forward + backward on a padded batch with a prompt; the output and the
    gradients of every trainable parameter."""
    if checkpointing is not None:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing}
        )
        if checkpointing:  # as prepare_model_for_kbit_training does: inputs that need grad
            model.enable_input_require_grads()
    model.train()
    mask = torch.ones_like(IDS)
    mask[1, -2:] = 0
    labels = IDS.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    torch.manual_seed(5)  # the same dropout masks (checkpointing replays the RNG state)
    out = model(input_ids=IDS, attention_mask=mask, labels=labels)
    out.loss.backward()
    model = getattr(model, "_orig_mod", model)  # a compiled model's names: the original's
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _assert_same_step(got, ref):
    (out, grads), (ref_out, ref_grads) = got, ref
    torch.testing.assert_close(out.logits, ref_out.logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_out.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.aux_loss, ref_out.aux_loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    encoder = 0
    for name, grad in grads.items():
        assert grad is not None and ref_grads[name] is not None, name
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)
        encoder += "task_encoder" in name and bool(grad.abs().sum() > 0)
    assert encoder > 5  # the task encoder trains through every task router


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_hmora_gradient_checkpointing_gives_the_unchecked_gradients(use_reentrant):
    """Gradient checkpointing of the decoder layers changes no value and no gradient, the GJS
    term's included (λ = 0.5, so it weighs), with HMoRA's dropout 0.1. Found: non-reentrant
    checkpointing recorded the hybrid layers' token-router loss twice
    (``torch.autograd.grad`` of the GJS loss inside the layer unpacked the checkpoint's
    tensors and recomputed the layer in the forward pass; ``aux_loss`` 0.4461 instead of
    0.4541 at dropout 0); reentrant checkpointing raised "backward through the graph a
    second time" (each recomputed layer's own backward ran into the task encoder's graph,
    shared by all layers, and freed it)."""
    ref = _hmora_step(hmora_model(aux_loss_coef=0.5, dropout=0.1))
    got = _hmora_step(hmora_model(aux_loss_coef=0.5, dropout=0.1), use_reentrant)
    _assert_same_step(got, ref)


def test_hmora_compiles_as_one_graph_with_the_eager_values():
    """``torch.compile(fullgraph=True)`` of the wrapped model (``aot_eager``: graph capture
    and the traced backward, without a C++ compiler): the eager logits, loss, GJS value and
    every gradient. Found: the GJS gradient by ``torch.autograd.grad`` broke the graph."""
    from torch._dynamo.utils import counters

    ref = _hmora_step(hmora_model(aux_loss_coef=0.5))
    torch._dynamo.reset()
    counters.clear()
    model = hmora_model(aux_loss_coef=0.5)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _assert_same_step(_hmora_step(compiled), ref)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch._dynamo.reset()


@pytest.mark.parametrize("shape", [(2, 9, 8), (5, 8)], ids=["token", "task"])
@pytest.mark.parametrize("spread", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("gammas", [(0.5, 0.98), (0.2, 0.6), (0.9, 0.99)])
def test_hmora_gjs_gradient_is_autograds(shape, spread, gammas):
    """The closed-form GJS gradient (no autograd inside the forward pass) equals autograd of
    :func:`gjs_loss` through the softmax, padding left out, on both sides of each clamp."""
    torch.manual_seed(len(shape) + int(10 * spread))
    z = (spread * torch.randn(shape, dtype=torch.float64)).requires_grad_(True)
    w = None
    if len(shape) == 3:
        w = torch.ones(shape[:2])
        w[1, -3:] = 0
    loss = gjs_loss(torch.softmax(z, dim=-1), *gammas, w)
    (grad,) = torch.autograd.grad(loss, z)
    value, closed = hmora._gjs_and_grad(z.detach(), *gammas, w)
    torch.testing.assert_close(value, loss.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(closed, grad, atol=1e-12, rtol=1e-10)


def test_hmora_trains_on_a_tiny_model():
    model = hmora_model(layers=4, init_weights=True, dropout=0.1)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = IDS.clone()
    labels[:, :4] = -100
    losses = []
    for _ in range(8):
        loss = model(input_ids=IDS, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("method", ["melora", "hmora"])
def test_cli_finetune_runs_the_baseline_and_eval_reloads_it(tmp_path, capsys, method):
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "answer": a}) + "\n"
            for q, a in [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
        )
    )
    run = tmp_path / "run"
    common = ["--eval-limit", "2", "--eval-sets", "comparison__pair"]
    code = cli.main(
        ["finetune", "--model", "tiny-llama", "--data", str(data), "--method", method]
        + ["--steps", "2", "--batch-size", "2", "--output-dir", str(run), "--no-progress"]
        + ["--max-length", "160", *common]
    )
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["final_loss"] == metrics["final_loss"]
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == method.upper()
    capsys.readouterr()
    code = cli.main(["eval", str(run / "adapter"), "--output", str(tmp_path / "s.json"), *common])
    assert code == 0
    assert json.loads((tmp_path / "s.json").read_text())["accuracy"] == metrics["accuracy"]
