"""The application's ``TrainerCallback`` classes: step time and peak memory, the JSONL log,
AdaLoRA's rank allocation, and the κ history kept in every checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

__all__ = [
    "StepStats",
    "JsonlLog",
    "AdaLoraAllocator",
    "CheckpointCurvatures",
    "reset_peak_rss",
    "peak_rss_mb",
]


class StepStats(TrainerCallback):
    """Wall time per optimizer step and peak resident memory during training."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        """Start a new peak-memory window."""
        reset_peak_rss()

    def on_step_begin(self, args, state, control, **kwargs):
        """Start the step's clock."""
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        """Record the step's wall time."""
        self.times.append(time.perf_counter() - self._t0)


class JsonlLog(TrainerCallback):
    """Append every Trainer log entry to ``train_log.jsonl`` as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Append the log entry (main process only)."""
        if logs is not None and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class AdaLoraAllocator(TrainerCallback):
    """AdaLoRA's rank allocation, after each optimizer step (gradients still present)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Reallocate AdaLoRA's ranks for this step."""
        base = model.base_model if hasattr(model, "base_model") else model
        base.update_and_allocate(state.global_step)


class CheckpointCurvatures(TrainerCallback):
    """Keep the κ/load history in each checkpoint, so a resumed run plots all of it."""

    def __init__(self, curvature_cb) -> None:
        self.cb = curvature_cb

    def on_save(self, args, state, control, **kwargs):
        """Write the κ/load history (no plots) into the new checkpoint folder."""
        if not state.is_world_process_zero or not self.cb.history:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        plot, self.cb.plot = self.cb.plot, False
        try:
            self.cb.save(ckpt)
        finally:
            self.cb.plot = plot


def reset_peak_rss() -> None:
    """Start a new peak of resident memory (Linux; a no-op elsewhere)."""
    try:  # Linux: "5" resets VmHWM, so the peak excludes model loading
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """The peak resident memory of this process in MB since the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
