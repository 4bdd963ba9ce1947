"""Plots of the recorded statistics: curvature dynamics per layer (the paper's Figure 2) and
the expert load over training.

Both functions take the history that :class:`mosgeo_lora.CurvatureCallback` records (its
``history`` list, the dict it writes to ``curvatures.json``, or the path of that file) and
write a PNG with matplotlib's non-interactive Agg canvas: no pyplot, no global backend
switch, no window. matplotlib is imported only when a plot is drawn
(``pip install 'mosgeo[lora]'`` brings it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence, Union

from .constants import space_of

__all__ = ["plot_curvature_dynamics", "plot_expert_load", "SPACE_COLORS"]

#: Line colour per space, chosen by the sign of an expert's initial κ.
SPACE_COLORS = {"hyperbolic": "#d62728", "spherical": "#1f77b4", "euclidean": "#7f7f7f"}
_SPACE_LABELS = {
    "hyperbolic": "hyperbolic (κ₀ < 0)",
    "spherical": "spherical (κ₀ > 0)",
    "euclidean": "Euclidean (κ = 0)",
}
_SPACE_CMAPS = {"hyperbolic": "Reds", "spherical": "Blues", "euclidean": "Greys"}
_SHORT = {"hyperbolic": "H", "spherical": "S", "euclidean": "E"}
_LINESTYLES = ["-", "--", ":", "-."]

History = Union[Sequence[dict], dict, str, os.PathLike]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise ImportError(
            "mosgeo_lora's plots need matplotlib: pip install 'mosgeo[lora]' "
            "(or pip install matplotlib)"
        ) from e
    return Figure, FigureCanvasAgg


def _entries(history: History) -> tuple[list[dict], dict[str, list[str]] | None]:
    """The list of recorded entries and the saved expert spaces (if any)."""
    spaces = None
    if isinstance(history, (str, os.PathLike)):
        with open(history, encoding="utf-8") as f:
            history = json.load(f)
    if isinstance(history, dict):
        spaces = history.get("spaces")
        history = history.get("history", [])
    entries = [e for e in history if e.get("kappa")]
    if not entries:
        raise ValueError(
            "the curvature history is empty: nothing to plot (did the CurvatureCallback "
            "record any step? it records every `every_n_steps` and at the end of training)"
        )
    return entries, spaces


def _spaces_of(name: str, entries: list[dict], spaces: dict | None) -> list[str]:
    if spaces and name in spaces:
        return list(spaces[name])
    first = next(e["kappa"][name] for e in entries if name in e.get("kappa", {}))
    return [space_of(k) for k in first]


def _names(entries: list[dict], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for e in entries:
        for n in e.get(key) or {}:
            seen.setdefault(n, None)
    return list(seen)


def _short(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    for p in ("model.", "transformer.", "gpt_neox.", "decoder."):
        if name.startswith(p) and name.count(".") > 2:
            return name[len(p) :]
    return name


def _evenly(items: list, k: int) -> list:
    if k <= 0 or len(items) <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def _resolve(names: list[str], wanted: Sequence[str | int]) -> list[str]:
    out = []
    for w in wanted:
        if isinstance(w, int):
            out.append(names[w])
            continue
        hits = [n for n in names if n == w] or [n for n in names if n.endswith("." + w)]
        if not hits:
            raise ValueError(f"no recorded layer matches {w!r}; recorded: {names}")
        out.extend(h for h in hits if h not in out)
    return out


def _blocks(names: list[str]) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(n.rpartition(".")[0], []).append(n)
    return blocks


def _layout(names: list[str], layers, max_layers: int) -> tuple[list[str], int]:
    """The layers to draw and the number of columns: a transformer's projections
    (gate/up/down, fc1/fc2, …) side by side in one row per block when every block has the
    same 2–4 of them, evenly spaced blocks when there are more than ``max_layers`` layers."""
    if layers is not None:
        chosen = _resolve(names, layers)
        return chosen, min(4, len(chosen))
    blocks = _blocks(names)
    kinds = {tuple(n.rpartition(".")[2] for n in v) for v in blocks.values()}
    if len(kinds) == 1 and 2 <= (p := len(next(iter(kinds)))) <= 4 and len(blocks) > 1:
        picked = _evenly(list(blocks), max(1, max_layers // p))
        return [n for b in picked for n in blocks[b]], p
    chosen = _evenly(names, max_layers)
    return chosen, min(4, len(chosen))


def _figure(n_panels: int, ncols: int, figsize, dpi: float, sharey: bool = True):
    Figure, FigureCanvasAgg = _matplotlib()
    nrows = math.ceil(n_panels / ncols)
    if figsize is None:
        figsize = (3.0 * max(ncols, 2), 2.2 * nrows + 1.0)  # room for title and legend
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for i in range(n_panels):  # the lowest panel of each column: x tick labels and label
        if i + ncols >= n_panels:
            axes[i].xaxis.set_tick_params(labelbottom=True)
            axes[i].set_xlabel("training step", fontsize=8)
    return fig, axes[:n_panels]


def _save(fig, path, dpi: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_curvature_dynamics(
    history: History,
    path: str | os.PathLike,
    layers: Sequence[str | int] | None = None,
    max_layers: int = 12,
    *,
    spaces: dict[str, list[str]] | None = None,
    group_by: str = "layer",
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    title: str | None = None,
) -> Path:
    """Curvature κ of every expert over training, one small panel per adapted layer (the
    paper's Figure 2), written as a PNG to ``path``; returns ``path``.

    Each expert is a line coloured by its space (the sign of its initial κ: red hyperbolic,
    blue spherical, grey Euclidean), with a dashed line at κ = 0 (flat) and a y axis shared
    by all panels, so a curved expert that crosses into the other geometry is visible.

    Args:
        history: ``CurvatureCallback.history``, the dict of ``curvatures.json`` or its path.
        layers: layer names (full, or a suffix such as ``"layers.0.mlp.up_proj"``) or
            indices to draw; default: all, or evenly spaced ones when there are more than
            ``max_layers`` (whole blocks, so a block's projections stay in one row).
        spaces: ``{layer: ["hyperbolic" | "spherical" | "euclidean", …]}`` per expert;
            default: from ``curvatures.json`` when given, else the sign of the first κ.
        group_by: ``"layer"`` (one panel per adapted layer) or ``"block"`` (one panel per
            transformer block: its projections share the panel, told apart by line style;
            ``max_layers`` then counts blocks).
        figsize: inches; default ``(3.0·max(ncols, 2), 2.2·nrows + 1.0)``.
    """
    if group_by not in ("layer", "block"):
        raise ValueError(f"group_by must be 'layer' or 'block', got {group_by!r}")
    entries, saved = _entries(history)
    spaces = spaces or saved
    names = _names(entries, "kappa")
    if group_by == "layer":
        chosen, ncols = _layout(names, layers, max_layers)
        panels = [(_short(n), [n]) for n in chosen]
    else:
        pool = _resolve(names, layers) if layers is not None else names
        blocks = _evenly(list(_blocks(pool).items()), max_layers)
        panels = [(_short(b), members) for b, members in blocks]
        ncols = min(4, len(panels))

    fig, axes = _figure(len(panels), ncols, figsize, dpi)
    present: set[str] = set()
    projections: dict[str, str] = {}
    for ax, (label, members) in zip(axes, panels, strict=True):
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--", zorder=0)
        for j, name in enumerate(members):
            rows = [e for e in entries if name in e["kappa"]]
            steps = [e["step"] for e in rows]
            style = _LINESTYLES[j % len(_LINESTYLES)] if group_by == "block" else "-"
            projections.setdefault(name.rpartition(".")[2], style)
            kinds = _spaces_of(name, entries, spaces)
            for i, kind in enumerate(kinds):
                present.add(kind)
                ax.plot(
                    steps,
                    [e["kappa"][name][i] for e in rows],
                    color=SPACE_COLORS[kind],
                    linestyle=style,
                    linewidth=1.2,
                    marker="o" if len(steps) <= 12 else None,
                    markersize=2.5,
                    alpha=0.9,
                )
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, linewidth=0.5)

    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=SPACE_COLORS[k], linewidth=1.5, label=_SPACE_LABELS[k])
        for k in SPACE_COLORS
        if k in present
    ]
    handles.append(Line2D([], [], color="black", linewidth=0.8, linestyle="--", label="κ = 0"))
    if group_by == "block" and len(projections) > 1:
        handles += [
            Line2D([], [], color="black", linewidth=1.0, linestyle=s, label=p)
            for p, s in projections.items()
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    per = "layer" if group_by == "layer" else "block"
    fig.suptitle(title or f"Curvature dynamics per {per} (κ of each expert)", fontsize=11)
    fig.supylabel("curvature κ", fontsize=9)
    return _save(fig, path, dpi)


def plot_expert_load(
    history: History,
    path: str | os.PathLike,
    layers: Sequence[str | int] | None = None,
    max_layers: int = 4,
    *,
    spaces: dict[str, list[str]] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    title: str | None = None,
) -> Path:
    """Expert load over training for a few adapted layers, as stacked areas (one panel per
    layer, the fraction of routing slots each expert received in each recorded window; a
    dashed line marks the uniform share 1/N), written as a PNG to ``path``; returns ``path``.

    Experts are shaded by space (reds hyperbolic, blues spherical, greys Euclidean).
    ``layers`` / ``spaces`` / ``figsize`` as in :func:`plot_curvature_dynamics`; by default
    ``max_layers`` evenly spaced layers are drawn.
    """
    entries, saved = _entries(history)
    spaces = spaces or saved
    loaded = [e for e in entries if e.get("load")]
    if not loaded:
        raise ValueError(
            "the history has no expert load: nothing to plot (the load of a window is "
            "recorded at the end of a training step, after forward passes)"
        )
    names = _names(loaded, "load")
    chosen = _resolve(names, layers) if layers is not None else _evenly(names, max_layers)
    ncols = min(4, len(chosen))
    fig, axes = _figure(len(chosen), ncols, figsize, dpi)

    from matplotlib import colormaps

    legend_handles = None
    for ax, name in zip(axes, chosen, strict=True):
        rows = [e for e in loaded if name in e["load"]]
        steps = [e["step"] for e in rows]
        loads = [[e["load"][name][i] for e in rows] for i in range(len(rows[0]["load"][name]))]
        kinds = _spaces_of(name, entries, spaces)
        colors, labels = [], []
        for i, kind in enumerate(kinds):
            same = [j for j, k in enumerate(kinds) if k == kind]
            shade = 0.45 + 0.4 * (same.index(i) / max(1, len(same) - 1))
            colors.append(colormaps[_SPACE_CMAPS[kind]](shade))
            labels.append(f"expert {i} ({_SHORT[kind]})")
        if len(steps) == 1:  # one window: a stacked bar (an area needs two points)
            bottom = 0.0
            for y, c, lab in zip(loads, colors, labels, strict=True):
                ax.bar(steps, y, bottom=bottom, color=c, label=lab, width=0.8)
                bottom += y[0]
            ax.set_xticks(steps)
        else:
            ax.stackplot(steps, loads, colors=colors, labels=labels, linewidth=0.3)
        ax.axhline(1.0 / len(kinds), color="black", linewidth=0.8, linestyle="--")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(_short(name), fontsize=12)
        ax.tick_params(labelsize=11)
        ax.xaxis.label.set_fontsize(11)  # "training step", set by _figure at 8
        if legend_handles is None:
            legend_handles = ax.get_legend_handles_labels()
    handles, labels = legend_handles
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 8), fontsize=9)
    fig.suptitle(title or "Expert load per layer (share of routing slots)", fontsize=14)
    fig.supylabel("load", fontsize=12)
    return _save(fig, path, dpi)
