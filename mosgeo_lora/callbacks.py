"""``CurvatureCallback``: κ per layer and expert, and the expert load, during HF training.

Pass it to any ``transformers.Trainer`` (no subclass)::

    cb = mosgeo_lora.CurvatureCallback()
    Trainer(model=peft_model, args=args, train_dataset=data, callbacks=[cb]).train()
    cb.history        # [{"step", "epoch", "kappa", "load", "tokens"}, …]
    # output_dir/curvatures.json, curvature_dynamics.png (Figure 2), expert_load.png

Every ``every_n_steps`` optimizer steps (default: the Trainer's logging steps) and at the
last step it records κ of every expert of every adapted layer
(:func:`mosgeo_lora.curvatures`) and the expert load of the training forward passes since
the previous record (:func:`mosgeo_lora.routing_stats`). The forward passes of evaluation
during training are left out: the counts of the training steps are collected right before
an evaluation, and those of the evaluation are dropped after it. A few scalars join the
Trainer's next log (``state.log_history``, progress bar): the mean κ of the hyperbolic and
of the spherical experts, the number of curved experts whose κ has changed sign, the mean
normalised load entropy (1 = balanced) and the largest load of any expert; every log also
gets ``aux_loss``, the mean load-balancing loss of the training steps since the last log
(:func:`mosgeo_lora.balance_loss`).

Under DDP each rank sees its own shard of the data: the recorded load is rank 0's (κ is
the same on every rank); only the main process writes files.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from .balance import balance_loss
from .constants import space_of
from .layer import MoSELoraLayer, moselora_layers
from .stats import curvatures, reset_routing_stats, routing_stats

__all__ = ["CurvatureCallback"]


def _has_matplotlib() -> bool:
    # find_spec, not import: matplotlib loads only when a plot is drawn
    return importlib.util.find_spec("matplotlib") is not None


class CurvatureCallback(TrainerCallback):
    """Record κ per layer and expert and the expert load; log summaries; write the history
    (``curvatures.json``) and the plots at the end of training.

    Args:
        every_n_steps: record every this many optimizer steps (and at the last step);
            default: the Trainer's resolved ``logging_steps``.
        output_dir: where ``curvatures.json`` and the PNGs go; default ``args.output_dir``.
        plot: write ``curvature_dynamics.png`` (the paper's Figure 2, see
            :func:`mosgeo_lora.plot_curvature_dynamics`) and ``expert_load.png``.
            ``None`` (default): when matplotlib is installed. ``True``: matplotlib is
            required (checked here, not after training).
        adapter_name: the adapter to follow; default the model's active adapter.
        model: the module to read (a ``PeftModel``, the bare ``MoSELoraModel`` or any module
            that contains MoSELoRA layers); default the model the Trainer passes to callbacks.
        log_prefix: prepended to the logged scalar names (e.g. ``"moselora/"``).

    Attributes:
        history: list of ``{"step", "epoch", "kappa": {layer: [κ_i]}, "load": {layer:
            [share_i]}, "tokens": {layer: n}}``; the first entry is the start of training
            (κ at init, no load).
        spaces: ``{layer: ["hyperbolic" | "spherical" | "euclidean", …]}`` per expert, from
            the adapter config (else the sign of κ at the start of training).
        files: the paths written by the last ``on_train_end``.

    The scalars join the ``logs`` dict in ``on_log``: ``state.log_history`` and the progress
    bar show them; the ``report_to`` integrations (TensorBoard, W&B, …) run before user
    callbacks and see them only if this callback is moved in front of them, which
    :meth:`attach` does.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        output_dir: str | None = None,
        plot: bool | None = None,
        adapter_name: str | None = None,
        model: nn.Module | None = None,
        log_prefix: str = "",
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if plot and not _has_matplotlib():
            raise ImportError(
                "CurvatureCallback(plot=True) needs matplotlib: pip install 'mosgeo[lora]' "
                "(or pip install matplotlib), or pass plot=False"
            )
        self.every_n_steps = every_n_steps
        self.output_dir = output_dir
        self.plot = _has_matplotlib() if plot is None else bool(plot)
        self.adapter_name = adapter_name
        self.model = model
        self.log_prefix = log_prefix
        self.history: list[dict[str, Any]] = []
        self.spaces: dict[str, list[str]] = {}
        self.files: list[Path] = []
        self._model: nn.Module | None = None
        self._adapter = "default"
        self._every = 1
        self._active = False
        self._acc: dict[str, list] = {}  # layer -> [tokens, [Σ tokens·load_i]]
        self._pending: dict[str, float] | None = None

    # ------------------------------------------------------------------ wiring
    def attach(self, trainer: Any) -> CurvatureCallback:
        """Add this callback to ``trainer`` right after ``DefaultFlowCallback``, before the
        reporting integrations, so that they log the scalars too. Returns ``self``."""
        from transformers.trainer_callback import DefaultFlowCallback

        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        at = 0
        while at < len(callbacks) and isinstance(callbacks[at], DefaultFlowCallback):
            at += 1
        callbacks.insert(at, self)
        return self

    def _resolve(self, model: nn.Module | None) -> bool:
        model = self.model if self.model is not None else model
        layers = [m for _, m in moselora_layers(model)] if isinstance(model, nn.Module) else []
        if not layers:
            warnings.warn(
                "CurvatureCallback: the model has no MoSELoRA layers; nothing is recorded "
                "(wrap it with mosgeo_lora.wrap or get_peft_model(model, MoSELoraConfig()))",
                UserWarning,
                stacklevel=3,
            )
            self._active = False
            return False
        self._model = model
        self._adapter = self.adapter_name or self._active_adapter(model, layers)
        if not curvatures(model, self._adapter):
            warnings.warn(
                f"CurvatureCallback: no MoSELoRA layer has the adapter {self._adapter!r}; "
                "nothing is recorded",
                UserWarning,
                stacklevel=3,
            )
            self._active = False
            return False
        self._active = True
        return True

    @staticmethod
    def _active_adapter(model: nn.Module, layers: list[MoSELoraLayer]) -> str:
        try:
            active = getattr(model, "active_adapter", None)  # PeftModel, BaseTuner
        except Exception:  # noqa: BLE001 - a property that may raise for several adapters
            active = None
        if isinstance(active, (list, tuple)):
            active = active[0] if active else None
        if isinstance(active, str):
            return active
        return layers[0].active_adapters[0]

    def _expert_spaces(self, kappa: dict[str, list[float]]) -> dict[str, list[str]]:
        config = None
        for module in self._model.modules():
            configs = getattr(module, "peft_config", None)
            if isinstance(configs, dict) and hasattr(configs.get(self._adapter), "num_experts"):
                config = configs[self._adapter]
                break
        spaces = {}
        for name, ks in kappa.items():
            if config is not None and config.num_experts == len(ks):
                spaces[name] = [space_of(k) for k in config.initial_curvatures()]
            else:
                spaces[name] = [space_of(k) for k in ks]
        return spaces

    # ------------------------------------------------------------------ recording
    def _harvest(self) -> None:
        """Move the routing counts of the layers into this callback's window."""
        for name, s in routing_stats(self._model, self._adapter).items():
            acc = self._acc.setdefault(name, [0, [0.0] * len(s["load"])])
            acc[0] += s["tokens"]
            acc[1] = [a + s["tokens"] * x for a, x in zip(acc[1], s["load"], strict=True)]
        reset_routing_stats(self._model)

    def _record(self, state: Any) -> dict[str, Any]:
        kappa = curvatures(self._model, self._adapter)
        load, tokens = {}, {}
        for name, (n, sums) in self._acc.items():
            total = sum(sums)
            if n > 0 and total > 0:
                load[name] = [x / total for x in sums]
                tokens[name] = int(n)
        self._acc = {}
        entry = {
            "step": int(state.global_step),
            "epoch": None if state.epoch is None else float(state.epoch),
            "kappa": kappa,
            "load": load,
            "tokens": tokens,
        }
        self.history.append(entry)
        return entry

    def summary(self, entry: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one history entry."""
        groups: dict[str, list[float]] = {"hyperbolic": [], "spherical": []}
        flipped = 0
        for name, ks in entry["kappa"].items():
            spaces = self.spaces.get(name) or [space_of(k) for k in ks]
            for k, space in zip(ks, spaces, strict=False):
                if space in groups:
                    groups[space].append(k)
                    flipped += (k > 0) if space == "hyperbolic" else (k < 0)
        p = self.log_prefix
        out = {f"{p}kappa_{g}": sum(v) / len(v) for g, v in groups.items() if v}
        if any(groups.values()):
            out[f"{p}kappa_flipped"] = float(flipped)
        if entry["load"]:
            entropies = [
                -sum(x * math.log(x) for x in load if x > 0) / math.log(len(load))
                for load in entry["load"].values()
                if len(load) > 1
            ]
            if entropies:
                out[f"{p}load_entropy"] = sum(entropies) / len(entropies)
            out[f"{p}load_max"] = max(max(load) for load in entry["load"].values())
        return out

    def _is_record_step(self, state: Any) -> bool:
        step = state.global_step
        return step % self._every == 0 or (state.max_steps > 0 and step >= state.max_steps)

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Find the layers, record κ at the start, forget routing counts from before training."""
        if not self._resolve(model):
            return
        every = self.every_n_steps or getattr(state, "logging_steps", 0) or args.logging_steps
        self._every = max(1, int(every))
        reset_routing_stats(self._model)  # forward passes before training are not counted
        self._acc, self._pending = {}, None
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._record(state)
        if not self.spaces:
            self.spaces = self._expert_spaces(self.history[-1]["kappa"])

    def on_step_end(self, args, state, control, **kwargs):
        """Collect the window's routing counts; record κ and load at record steps."""
        if not self._active:
            return
        record = self._is_record_step(state)
        if record or control.should_evaluate:
            self._harvest()  # before an evaluation runs its forward passes
        if record:
            self._pending = self.summary(self._record(state))

    def on_epoch_end(self, args, state, control, **kwargs):
        """Collect the training counts before an end-of-epoch evaluation runs."""
        if self._active and control.should_evaluate:
            self._harvest()

    def on_evaluate(self, args, state, control, **kwargs):
        """Drop the routing counts of the evaluation's forward passes."""
        if self._active:
            reset_routing_stats(self._model)  # the evaluation's forward passes

    on_predict = on_evaluate

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the pending summary scalars and the mean balance loss since the last log to
        the Trainer's log entry."""
        if not self._active or logs is None:
            return
        if any(k.startswith(("eval_", "test_")) for k in logs):
            return
        scalars = dict(self._pending or {})
        aux = balance_loss(self._model)
        if aux is not None:
            scalars[f"{self.log_prefix}aux_loss"] = aux
        if not scalars:
            return
        logs.update(scalars)
        # Trainer.log appended a copy of `logs` to the history just before this event
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step:
            last.update(scalars)
        self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        """Record the last step and write ``curvatures.json`` and the plots."""
        if not self._active:
            return
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._harvest()
            self._record(state)  # training stopped between two record steps
        if state.is_world_process_zero:
            self.save(self.output_dir or args.output_dir)

    # ------------------------------------------------------------------ output
    def save(self, output_dir: str | Path | None) -> list[Path]:
        """Write ``curvatures.json`` and (with ``plot``) the PNGs into ``output_dir``.

        Failures are warnings, not errors: this runs at the end of training, before the
        caller has saved the model."""
        self.files = []
        if output_dir is None:
            warnings.warn("CurvatureCallback: no output_dir; nothing written", stacklevel=2)
            return self.files
        out = Path(output_dir)
        data = {
            "adapter_name": self._adapter,
            "every_n_steps": self._every,
            "spaces": self.spaces,
            "history": self.history,
        }
        try:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "curvatures.json", "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            self.files.append(out / "curvatures.json")
        except OSError as e:
            warnings.warn(f"CurvatureCallback: could not write curvatures.json: {e}", stacklevel=2)
            return self.files
        if not self.plot:
            return self.files
        from .plot import plot_curvature_dynamics, plot_expert_load

        try:
            self.files.append(
                plot_curvature_dynamics(data, out / "curvature_dynamics.png", spaces=self.spaces)
            )
            if any(e["load"] for e in self.history):
                self.files.append(
                    plot_expert_load(data, out / "expert_load.png", spaces=self.spaces)
                )
        except Exception as e:  # noqa: BLE001 - a plot must not fail the end of training
            warnings.warn(f"CurvatureCallback: plotting failed: {e!r}", stacklevel=2)
        return self.files
