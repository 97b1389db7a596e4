"""Static attention heatmaps (PNG or SVG with matplotlib), the raw numbers as JSON, or the explorer's
views as one self-contained HTML page.

Up to ``MAX_TOKENS`` tokens a side every cell is labelled; longer inputs (up to the model's length, e.g.
512) are drawn at a fixed size with every n-th token labelled by its position and text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from qkv.checkpoint import check_output_file
from qkv.errors import QkvError, shown
from qkv.viz.maps import KINDS, AttentionMaps

__all__ = ["MAX_TOKENS", "save_attention"]

MAX_TOKENS = 60
FORMATS = ("png", "svg", "json", "html")
LONG_LABELS = 40  # at most this many labels an axis for a long input


def _heads(maps: AttentionMaps, kind: str, layer: int, head: str) -> tuple[list[Tensor], list[str]]:
    """The (T, S) matrices to draw and their titles: one head, the mean over heads, or all heads."""
    w = maps.maps[kind][layer][0]  # (H, T, S)
    if head == "mean":
        return [w.mean(0)], [f"layer {layer}, mean over {w.size(0)} heads"]
    if head == "all":
        return list(w), [f"head {h}" for h in range(w.size(0))]
    h = int(head)
    maps.check(kind, layer, h)
    return [w[h]], [f"layer {layer}, head {h}"]


def _ticks(labels: list[str]) -> tuple[list[int], list[str]]:
    """Tick positions and labels: every token for short inputs, every n-th as 'position token' for long ones."""
    if len(labels) <= MAX_TOKENS:
        return list(range(len(labels))), labels
    every = -(-len(labels) // LONG_LABELS)
    at = list(range(0, len(labels), every))
    return at, [f"{i} {labels[i]}" for i in at]


def save_attention(
    maps: AttentionMaps,
    path: str | Path,
    *,
    kind: str | None = None,
    layer: int | None = None,
    head: str = "all",
    fmt: str | None = None,
    run: Any = None,
) -> Path:
    """Write a heatmap grid of ``kind`` attention (default: the maps' default kind) at ``layer`` (default 0)
    for one head, the mean, or all heads; the maps as JSON (every map, or those ``kind``, ``layer`` and
    ``head`` choose); or (``html``, given the ``run``) the explorer's page of every map, self-contained."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise QkvError(f"unknown format {shown(fmt)}: use --format png, svg, json or html (or a file ending in one)")
    if head not in ("all", "mean") and not head.isdigit():
        raise QkvError(f"--head must be a head number, 'mean' or 'all' (got {shown(head)})")
    maps.check(kind or maps.default_kind, layer)
    check_output_file(path)
    if fmt == "json":
        path.write_text(json.dumps(maps.to_dict(kind, layer, head)), encoding="utf-8")
        return path
    kind, layer = kind or maps.default_kind, layer or 0
    if fmt == "html":
        from qkv.viz.server import standalone_page

        if head not in ("all", "mean"):
            maps.check(kind, layer, int(head))
        start = {"kind": kind, "layer": layer, "head": "0" if head == "all" else head}  # the page opens there
        path.write_text(standalone_page(run, maps, start=start), encoding="utf-8")
        return path
    rows, cols = maps.queries[kind], maps.keys[kind]
    mats, titles = _heads(maps, kind, layer, head)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mats)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    cell = 0.22 if max(len(rows), len(cols)) <= MAX_TOKENS else 10.0 / max(len(rows), len(cols))
    w = max(3.0, len(cols) * cell + 1.5)
    h = max(2.5, len(rows) * cell + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, (ax, m, title) in enumerate(zip(axes.flat, mats, titles, strict=False)):
        image = m.float().cpu().numpy()
        im = ax.imshow(image, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_xticks(*_ticks(cols), rotation=90, fontsize=8)
        ax.set_yticks(*_ticks(rows), fontsize=8)
        ax.set_xlabel("key (attended to)")
        if i % ncols == 0:
            ax.set_ylabel("query (attending)")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(f"{KINDS[kind]} — {maps.source!r} → {maps.output!r}", fontsize=11)
    fig.savefig(path, format=fmt, dpi=110)
    plt.close(fig)
    return path
