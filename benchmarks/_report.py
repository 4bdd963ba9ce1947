"""What every benchmark here shares: interleaved timing, the machine line, the command line
that reproduces a run, Markdown tables and the JSON + Markdown result files, and the count
of aten ops of a call (``tests/tuner/test_ops.py`` counts with it too).

Timing rule (the house rule of ``benchmarks/``): every contender runs once per repetition,
in a rotated order, in the same process, so that a slow spell of the machine hits all of
them; tables report medians and ratios of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

#: The default output folder of every benchmark.
RESULTS = Path(__file__).parent / "results"

__all__ = [
    "interleaved",
    "timed",
    "median_ms",
    "paired_quartiles",
    "fmt",
    "markdown_table",
    "machine",
    "add_common_options",
    "command_line",
    "write_results",
    "sync",
    "aten_ops",
]


class _DispatchCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def aten_ops(fn: Callable[[], Any]) -> tuple[Counter, int]:
    """The aten ops of one call of ``fn`` (after a warm-up call), two ways.

    * top-level: profiler events named ``aten::…`` with no ``aten::`` ancestor — the ops
      eager mode dispatches from Python or the autograd engine (a composite op such as
      ``linear`` counts once), by name;
    * kernel-level: every op a ``TorchDispatchMode`` sees, after decomposition (views
      included; each non-view op is at least one kernel launch on a GPU).
    """
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    top = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            top[event.name] += 1
    with _DispatchCounter() as counter:
        fn()
    return top, counter.count


def sync(device: str) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    runs: Mapping[str, Callable[[], float]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Call every ``runs[name]()`` (which returns its own elapsed seconds) once per
    repetition, rotating the order each repetition; ``warmup`` repetitions are run first
    and dropped. Returns the kept times per name."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(-warmup, reps):
        for name in order:
            t = runs[name]()
            if r >= 0:
                times[name].append(t)
        order = order[1:] + order[:1]  # every contender runs in every position
    return times


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Seconds ``fn()`` takes, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_ms(times: Sequence[float]) -> float:
    """The median of ``times`` (seconds) in milliseconds."""
    return statistics.median(times) * 1e3


def paired_quartiles(a: Sequence[float], b: Sequence[float]) -> list[float] | None:
    """Median and quartiles ``[median, q1, q3]`` of the per-repetition ratios ``a/b`` (both
    ran in the same repetition); ``None`` with fewer than two repetitions."""
    if not a or not b or len(a) < 2:
        return None
    q = statistics.quantiles([x / y for x, y in zip(a, b, strict=True)], n=4, method="inclusive")
    return [q[1], q[0], q[2]]


def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or an en dash for a missing value."""
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: the
    first column left, the others right)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or "unknown CPU"


def machine(device: str = "cpu") -> str:
    """One line naming the hardware a run used."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()
    return f"{name}, {os.cpu_count()} CPU(s) ({platform.machine()})"


def add_common_options(ap: argparse.ArgumentParser, reps: int, warmup: int) -> None:
    """The options every benchmark has: repetitions, warm-up, threads, seed, output folder."""
    ap.add_argument("--reps", type=int, default=reps, help="timed repetitions")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed repetitions first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the results go")


def command_line(
    script: str,
    ap: argparse.ArgumentParser,
    args: argparse.Namespace,
    skip: Iterable[str] = ("out",),
    flags: Mapping[str, str] | None = None,
) -> str:
    """``python benchmarks/<script>`` plus every option whose value differs from the
    parser's default; ``flags`` names the flag of a ``dest`` whose flag is not ``--dest``
    (e.g. ``{"input_grad": "--no-input-grad"}``), and a changed boolean is written bare."""
    defaults = vars(ap.parse_args([]))
    flags = flags or {}
    argv = [f"python benchmarks/{script}"]
    for dest, value in vars(args).items():
        if isinstance(value, (list, tuple)):  # a comma list the script has split already
            value = ",".join(map(str, value))
        if dest in skip or value == defaults.get(dest):
            continue
        flag = flags.get(dest, "--" + dest.replace("_", "-"))
        argv.append(flag if isinstance(value, bool) else f"{flag} {value}")
    return " ".join(argv)


def write_results(out: Path, stem: str, payload: dict, markdown: str) -> Path:
    """Write ``<out>/<stem>.json`` (the numbers) and ``<out>/<stem>.md`` (the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    path = out / f"{stem}.md"
    path.write_text(markdown)
    print(f"wrote {path}")
    return path
