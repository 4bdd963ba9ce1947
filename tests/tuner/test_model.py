"""``MoSELoraModel``'s plumbing: every route to a MoSELoRA model trains with the balance
loss, nothing per-call stays on a layer, the FFN targets come from one table, and an adapter
saved before the package layout changed still loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from wrapped_models import (  # noqa: E402
    R,
    adapted_layers,
    base_model,
    logits_of,
    small_config,
    tokens,
    wrapped,
)

import mosgeo_lora  # noqa: E402
from mosgeo._compat import compile_supported  # noqa: E402
from mosgeo_lora.balance import CALL_KWARG  # noqa: E402
from mosgeo_lora.constants import FFN_TARGET_MODULES, ffn_targets, task_type_of  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adapter-0.1.0"


def _router_grad_norm(model) -> float:
    grads = [p.grad for n, p in model.named_parameters() if ".moselora_router." in n]
    assert grads and all(g is not None for g in grads)
    return float(sum(g.abs().sum() for g in grads))


def _route(name: str, tmp_path, coef: float):
    """A MoSELoRA model with B = 0 (the router's task gradient is 0) built by ``name``."""
    cfg = small_config(aux_loss_coef=coef)
    if name == "wrap":
        return mosgeo_lora.wrap(base_model(), cfg)
    if name == "get_peft_model":  # task_type unset: a plain PeftModel
        return get_peft_model(base_model(), cfg)
    if name == "get_peft_model+task_type":
        cfg.task_type = "CAUSAL_LM"
        return get_peft_model(base_model(), cfg)
    saved = tmp_path / "adapter"
    mosgeo_lora.wrap(base_model(), cfg).save_pretrained(saved)
    if name == "from_pretrained":
        return PeftModel.from_pretrained(base_model(), saved, is_trainable=True)
    model = base_model()  # transformers' load_adapter: no PeftModel at all
    model.load_adapter(str(saved))
    for n, p in model.named_parameters():
        p.requires_grad_(".moselora_" in n)
    return model


ROUTES = ["wrap", "get_peft_model", "get_peft_model+task_type", "from_pretrained", "load_adapter"]


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_trains_with_the_balance_loss(route, tmp_path):
    ids = tokens()
    for coef in (0.5, 0.0):
        model = _route(route, tmp_path / str(coef), coef).train()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        norm = _router_grad_norm(model)
        assert (norm > 0) == (coef > 0), (route, coef, norm)
        assert (out.aux_loss is not None) == (coef > 0)
        copy.deepcopy(model)  # nothing with a graph stays on the model


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
    """The recorded logits (|logit| ≤ 0.38) to float32 rounding: the fused path of 0.1.0
    reproduced them bit for bit, the literal per-expert path of the same version is 1.3e-6
    away and today's fused path (mosgeo_lora.fused: the same formulas, other roundings, which
    tokens on the projected rim amplify ~1/(2ε)) 1.2e-6; a wrong load is off by > 1e-3."""
    expected = load_file(FIXTURE / "expected.safetensors")
    base = LlamaForCausalLM.from_pretrained(FIXTURE / "base").eval()
    model = PeftModel.from_pretrained(base, FIXTURE / "adapter").eval()
    assert model.peft_config["default"].peft_type == mosgeo_lora.MOSELORA
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=4e-6)
    kappas = next(iter(mosgeo_lora.curvatures(model).values()))
    assert kappas == pytest.approx([-0.7, 0.8, 1.1, 0.0])


def test_the_0_1_0_adapter_routes_on_the_code():
    """The fixture's ``adapter_config.json`` (mosgeo-lora 0.1.0) has no ``router_input``: it
    loads as ``"code"``, its router ``N × r``."""
    config = PeftConfig.from_pretrained(FIXTURE / "adapter")
    assert "router_input" not in json.loads((FIXTURE / "adapter/adapter_config.json").read_text())
    assert config.router_input == "code"


@pytest.mark.parametrize("route", ["PeftModel", "PeftConfig", "MoSELoraConfig", "transformers"])
def test_hydralora_saved_without_router_input_loads_routing_on_the_code(tmp_path, route):
    """A ``hydralora`` adapter saved before ``router_input`` existed routed on the code
    ``A x``; today the preset routes on ``x`` by default. Its config (written here by removing
    the field from a code-routed adapter's file) loads as ``"code"`` by every loading route
    (``PeftModel.from_pretrained`` via ``MoSELoraConfig.check_kwargs``; ``PeftConfig`` and
    transformers' ``load_adapter`` via the saved ``peft_version``), with the same logits. A
    hydralora adapter saved today keeps ``"input"``."""
    ids = tokens()
    model = wrapped(preset="hydralora", router_input="code", num_hyperbolic=0,
                    num_spherical=0, top_k=None, init_weights=False).eval()  # fmt: skip
    before = logits_of(model, ids)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    assert saved["router_input"] == "code" and saved["peft_version"]
    del saved["router_input"]
    path.write_text(json.dumps(saved))
    if route == "PeftModel":
        loaded = PeftModel.from_pretrained(base_model(), tmp_path).eval()
        config = loaded.peft_config["default"]
    elif route == "PeftConfig":
        config = PeftConfig.from_pretrained(tmp_path)
    elif route == "MoSELoraConfig":
        config = mosgeo_lora.MoSELoraConfig.from_pretrained(tmp_path)
    else:
        loaded = base_model()
        loaded.load_adapter(str(tmp_path))
        config = loaded.peft_config["default"]
    assert isinstance(config, mosgeo_lora.MoSELoraConfig)
    assert (config.preset, config.router_input) == ("hydralora", "code")
    if route in ("PeftModel", "transformers"):
        layer = next(iter(adapted_layers(loaded).values()))
        assert layer.moselora_router["default"].in_features == R
        torch.testing.assert_close(logits_of(loaded, ids), before, rtol=0, atol=0)
    fresh = wrapped(preset="hydralora", num_hyperbolic=0, num_spherical=0, top_k=None)
    assert fresh.peft_config["default"].router_input == "input"
    fresh.save_pretrained(tmp_path / "new")
    assert PeftConfig.from_pretrained(tmp_path / "new").router_input == "input"


def test_wrap_seed_fixes_the_adapter_and_leaves_the_global_generator():
    state = torch.random.get_rng_state()
    a = mosgeo_lora.wrap(base_model(), small_config(init_weights=False), seed=7)
    torch.random.set_rng_state(state)
    b = mosgeo_lora.wrap(base_model(), small_config(init_weights=False), seed=7)
    c = mosgeo_lora.wrap(base_model(), small_config(init_weights=False), seed=8)
    after = torch.random.get_rng_state()
    torch.random.set_rng_state(state)
    base_model()  # what the three base models drew: the adapters drew nothing from it
    base_model()
    base_model()
    assert torch.equal(torch.random.get_rng_state(), after)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    adapter = [k for k in sa if ".moselora_" in k and "k_fixed" not in k]
    assert adapter and all(torch.equal(sa[k], sb[k]) for k in adapter)
    assert any(not torch.equal(sa[k], sc[k]) for k in adapter if ".moselora_A." in k)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_the_whole_wrapped_model_compiles_as_one_graph(padded):
    """``torch.compile(fullgraph=True)`` of the whole wrapped model: no graph break, the
    eager values and gradients (balance term included: its scale is a graph input, not a
    constant traced once), and the routing statistics, five calls in a row with no new
    graph after the first ones (without an attention mask the routing's token count was a
    Python int on the module, a guard that recompiled every call)."""
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    if not padded:
        mask = None
    explained = torch._dynamo.explain(wrapped(init_weights=False).train())(
        input_ids=ids, attention_mask=mask, labels=ids
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    eager = wrapped(init_weights=False).train()
    compiled = wrapped(init_weights=False).train()
    run = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    graphs = []
    for _ in range(5):  # a counter that changes per call would recompile every call
        out_e = eager(input_ids=ids, attention_mask=mask, labels=ids)
        out_c = run(input_ids=ids, attention_mask=mask, labels=ids)
        out_e.loss.backward()
        out_c.loss.backward()
        torch.testing.assert_close(out_c.loss, out_e.loss)
        torch.testing.assert_close(out_c.aux_loss, out_e.aux_loss)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[1], graphs  # the first calls fill the caches; then no new graph
    assert mosgeo_lora.balance_loss(compiled) == pytest.approx(mosgeo_lora.balance_loss(eager))
    for (n, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)
    assert mosgeo_lora.routing_stats(compiled) == mosgeo_lora.routing_stats(eager)


@pytest.mark.skipif(not compile_supported(), reason="torch too old to compile mosgeo's code")
def test_the_whole_wrapped_model_compiled_by_inductor_gives_the_eager_gradients():
    """What ``torch.compile(model)`` (and ``mosgeo-lora --compile``) runs: inductor, not the
    ``aot_eager`` backend above. Inductor fuses a matmul and a following ``add(…, alpha=…)``
    into one ``addmm`` and drops the ``alpha`` (torch 2.13): ``∂L/∂B`` written that way was
    4–9 % off under inductor and exact in eager. Loss, every adapter gradient and an
    evaluation call must equal eager mode's."""
    ids = tokens()
    eager = wrapped(init_weights=False).train()
    compiled = wrapped(init_weights=False).train()
    run = torch.compile(compiled)
    out_e = eager(input_ids=ids, labels=ids)
    out_c = run(input_ids=ids, labels=ids)
    out_e.loss.backward()
    out_c.loss.backward()
    torch.testing.assert_close(out_c.logits, out_e.logits, rtol=1e-5, atol=1e-6)
    checked = 0
    for (n, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        if p.grad is not None:
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * scale, msg=n)
            checked += ".moselora_B." in n
    assert checked >= 2
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(input_ids=ids).logits, eager(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def _host_syncs(model, ids, mask) -> int:
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    return [e.name for e in prof.events()].count("aten::_local_scalar_dense")


def test_moselora_adds_no_host_synchronisation():
    """A training forward+backward of the whole wrapped model, padded batch: MoSELoRA waits
    for the device no more often than PEFT LoRA on the same model (the syncs left are
    transformers' own); the routing statistics accumulate on the device until read."""
    from peft import LoraConfig

    ids = tokens()
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    torch.manual_seed(1)
    targets = ["gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(base_model(), LoraConfig(r=4, target_modules=targets))
    mose = wrapped(init_weights=False)
    assert _host_syncs(mose, ids, mask) == _host_syncs(lora, ids, mask)
    real = int(mask.sum())
    assert all(s["tokens"] == 2 * real for s in mosgeo_lora.routing_stats(mose).values())


def _classifier(num_labels: int = 3):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, pad_token_id=0, num_labels=num_labels,
    )  # fmt: skip
    return LlamaForSequenceClassification(cfg)


def test_wrap_trains_the_head_of_a_classification_model():
    # the head of a sequence-classification model is new (random): wrap() must make it
    # trainable, as PEFT's SEQ_CLS task does, or the run trains a frozen random classifier
    torch.manual_seed(0)
    model = mosgeo_lora.wrap(_classifier(), small_config())
    assert model.peft_config["default"].task_type == "SEQ_CLS"
    head = [n for n, p in model.named_parameters() if p.requires_grad and "moselora" not in n]
    assert head == ["base_model.model.score.modules_to_save.default.weight"]
    ids = tokens()
    out = model(input_ids=ids, labels=torch.tensor([0, 2])[: ids.shape[0]])
    out.loss.backward()
    score = model.base_model.model.score.modules_to_save["default"].weight
    assert score.grad is not None and score.grad.abs().sum() > 0


def test_task_type_from_the_model_class():
    assert task_type_of("LlamaForCausalLM") == "CAUSAL_LM"
    assert task_type_of("GPT2LMHeadModel") == "CAUSAL_LM"
    assert task_type_of("Qwen2ForSequenceClassification") == "SEQ_CLS"
    assert task_type_of("BertForTokenClassification") == "TOKEN_CLS"
    assert task_type_of("RobertaForMaskedLM") is None  # a pretrained head: stays frozen
    assert task_type_of("LlamaModel") is None  # no head
    assert task_type_of("T5ForConditionalGeneration", is_encoder_decoder=True) == "SEQ_2_SEQ_LM"
    assert task_type_of("LlavaForConditionalGeneration") == "CAUSAL_LM"
    with pytest.raises(ValueError, match="pass task_type"):
        task_type_of("BertForMultipleChoice")
    # a plain torch module has no head to know about; an explicit task_type wins
    assert mosgeo_lora.wrap(base_model(), small_config()).peft_config["default"].task_type == (
        "CAUSAL_LM"
    )
    explicit = mosgeo_lora.wrap(_classifier(), small_config(task_type="FEATURE_EXTRACTION"))
    assert explicit.peft_config["default"].task_type == "FEATURE_EXTRACTION"


@pytest.mark.parametrize("head", ["ForSequenceClassification", "ForTokenClassification"])
def test_balance_weight_counts_classification_labels_as_the_trainer_does(head):
    # the Trainer counts every label of a classification model (no shift: one per sequence,
    # or one per token) in num_items_in_batch; a micro-batch holding all of them weighs 1,
    # so its balance gradient equals a call without num_items_in_batch (B = 0: the router's
    # gradient is the balance term alone)
    import transformers

    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    ids = tokens()
    labels = torch.tensor([0, 2]) if head == "ForSequenceClassification" else ids % 3
    grads = []
    for items in (None, int(labels.numel()), 2 * int(labels.numel())):
        torch.manual_seed(0)
        model = mosgeo_lora.wrap(getattr(transformers, f"Llama{head}")(cfg), small_config())
        model.train()
        extra = {} if items is None else {"num_items_in_batch": torch.tensor(items)}
        model(input_ids=ids, labels=labels, **extra).loss.backward()
        grads.append(_router_grad_norm(model))
    assert grads[1] == pytest.approx(grads[0], rel=1e-6)  # all the step's labels: weight 1
    assert grads[2] == pytest.approx(grads[0] / 2, rel=1e-6)  # half of them: weight 1/2


@pytest.mark.parametrize("input_scale", [None, 2.0])
@pytest.mark.parametrize("length", [1, 7])
def test_a_no_grad_call_equals_a_training_call(length, input_scale):
    """Evaluation and decoding skip the autograd node and the local derivatives (and, for
    fewer tokens than the rank, the Gram matrices): the same logits as a call that builds
    the backward, padded batch included."""
    model = wrapped(init_weights=False, input_scale=input_scale).eval()
    ids = tokens(length=length)
    mask = torch.ones_like(ids)
    mask[0, :1] = 0
    with_grad = model(input_ids=ids, attention_mask=mask).logits
    assert with_grad.requires_grad
    with torch.no_grad():
        no_grad = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(no_grad, with_grad.detach(), rtol=1e-5, atol=1e-6)


def _stats_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name]["tokens"] == b[name]["tokens"]
        assert a[name]["load"] == pytest.approx(b[name]["load"], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("length", [1, 7])
def test_a_no_grad_call_counts_the_routing_of_a_training_call(length):
    """The inference path counts the chosen experts (an ``index_add`` of their indices,
    padding weighted out) as the training path counts its mask."""
    model = wrapped(init_weights=False).eval()
    ids = tokens(batch=3, length=length)
    mask = torch.ones_like(ids)
    mask[0, :1] = 0
    stats = []
    for grad in (True, False):
        mosgeo_lora.reset_routing_stats(model)
        with torch.set_grad_enabled(grad):
            model(input_ids=ids, attention_mask=mask)
            model(input_ids=ids[:, :1])  # no mask: every token counts
        stats.append(mosgeo_lora.routing_stats(model))
    _stats_close(stats[1], stats[0])
    first = next(iter(stats[1].values()))
    assert first["tokens"] == int(mask.sum()) + ids.shape[0]


def test_decoding_counts_every_call_though_it_counts_them_in_batches():
    """Single-token calls without a gradient keep their chosen experts and count them once
    per ``_PENDING_ROUTES`` calls; a read of the counts (``routing_stats``) counts the rest
    first, and a reset forgets them: the counts equal those of one call per token."""
    from mosgeo_lora.layer import _PENDING_ROUTES

    model = wrapped(init_weights=False).eval()
    ids = tokens(batch=1, length=_PENDING_ROUTES + 5)
    with torch.no_grad():
        mosgeo_lora.reset_routing_stats(model)
        model(input_ids=ids[:, :3])  # a pending call, then forgotten
        mosgeo_lora.reset_routing_stats(model)
        model(input_ids=ids)  # the reference: every token in one call
        whole = mosgeo_lora.routing_stats(model)
        mosgeo_lora.reset_routing_stats(model)
        for i in range(ids.shape[1]):  # one token per call, as decoding; no cache: the
            model(input_ids=ids[:, i : i + 1])  # same tokens, other contexts, so compare
        layer = next(iter(adapted_layers(model).values()))  # the totals, not the loads
        assert 0 < len(layer._pending_routes["default"]) < _PENDING_ROUTES
        one_by_one = mosgeo_lora.routing_stats(model)
    assert not layer._pending_routes
    for name, s in one_by_one.items():
        assert s["tokens"] == whole[name]["tokens"] == ids.shape[1]
        assert sum(s["load"]) == pytest.approx(1.0)
    counts = layer.route_counts["default"]
    assert float(counts.sum()) == ids.shape[1] * layer.settings["default"]["top_k"]


def test_the_inference_cache_follows_the_weights(tmp_path):
    """A call without a gradient reuses the layer's weight-only terms (κ's terms, the Gram
    matrices) while the weights are unchanged, and recomputes them after an optimizer step,
    an in-place edit, ``load_state_dict`` or a dtype change: always the logits of a call
    that builds the backward (which reads the weights themselves)."""
    model = wrapped(init_weights=False).eval()
    ids = tokens(length=5)

    def check() -> torch.Tensor:
        with torch.no_grad():
            cached = model(input_ids=ids).logits
        reference = model(input_ids=ids).logits.detach()
        torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-6)
        return cached

    start = check()
    layer = next(iter(adapted_layers(model).values()))
    assert layer._inference_constants  # the no-grad call filled the cache
    saved = {k: v.clone() for k, v in model.state_dict().items() if "moselora" in k}

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()  # every adapter weight, κ included, moves in place
    stepped = check()
    assert not torch.allclose(stepped, start)

    with torch.no_grad():  # an edit of κ alone
        for name, p in model.named_parameters():
            if ".moselora_k." in name:
                p.mul_(-1.0)
    assert not torch.allclose(check(), stepped)

    model.load_state_dict(saved, strict=False)
    torch.testing.assert_close(check(), start, rtol=1e-5, atol=1e-6)

    with torch.no_grad():  # the router alone: the cached call reads its weight too
        for name, p in model.named_parameters():
            if ".moselora_router." in name:
                p.mul_(-1.0)
    router_flipped = check()
    for layer in adapted_layers(model).values():  # the output scale (PEFT's scale_layer)
        layer.scaling["default"] *= 3.0
    assert not torch.allclose(check(), router_flipped)

    model.double()  # new tensors: the float32 terms must not be served to float64 weights
    assert check().dtype == torch.float64


def test_inference_mode_then_no_grad_then_training():
    """The cache filled under ``torch.inference_mode`` (its tensors are inference tensors)
    serves a later ``no_grad`` call, and training afterwards builds its graph as usual."""
    model = wrapped(init_weights=False).eval()
    ids = tokens(length=5)
    with torch.inference_mode():
        first = model(input_ids=ids).logits
    with torch.no_grad():
        second = model(input_ids=ids).logits
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".moselora_B." in n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_no_grad_call_equals_a_training_call_in_half_precision(dtype):
    """Half-precision weights: the inference path (the delta rounded to the storage dtype,
    then added to the base layer's output, as the training path does) gives the logits of
    a call that builds the backward."""
    model = wrapped(init_weights=False).eval().to(dtype)
    ids = tokens(length=4)
    with_grad = model(input_ids=ids).logits
    assert with_grad.requires_grad and with_grad.dtype == dtype
    with torch.no_grad():
        no_grad = model(input_ids=ids).logits
    torch.testing.assert_close(no_grad.float(), with_grad.detach().float(), rtol=2e-2, atol=2e-2)


def test_the_inference_cache_is_built_outside_autocast():
    """A cache filled inside a bfloat16 autocast region (an evaluation in a bf16 recipe)
    holds float32 terms, and serves a float32 call after it: autocast would run the Gram
    matrices' einsum in bfloat16."""
    model = wrapped(init_weights=False).eval()
    ids = tokens(length=5)
    layer = next(iter(adapted_layers(model).values()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        consts = layer._constants("default")
        model(input_ids=ids)
    assert consts.gram.dtype == torch.float32
    assert all(
        t.dtype == torch.float32 for t in consts.terms if t is not None and t.is_floating_point()
    )
    with torch.no_grad():
        cached = model(input_ids=ids).logits
    torch.testing.assert_close(cached, model(input_ids=ids).logits.detach(), rtol=1e-5, atol=1e-6)
