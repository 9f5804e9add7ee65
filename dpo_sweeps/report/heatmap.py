"""plots/heatmap_<a>_<b>.png: the objective over two swept parameters, one cell per pair of values (the mean over
the points that share it: seeds, or a third swept parameter), the best cell outlined. Drawn when at least two
parameters other than the seed are swept; the first two (beta first) are the axes. Cells are annotated with their
values while the grid is small enough to read them. Not drawn when every cell has the same value (`flat.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dpo_sweeps.report import flat
from dpo_sweeps.report.points import fmt, safe_filename, value_order
from dpo_sweeps.report.seeds import SEED_KEY
from dpo_sweeps.runs.reading import RunRecord, finite

# Cells get their number written in them up to this many rows and columns.
ANNOTATE_MAX = 12
# Tick labels on an axis at most (every n-th value beyond).
MAX_TICKS = 25


def heatmap_axes(swept: list[str]) -> tuple[str, str] | None:
    keys = [k for k in swept if k != SEED_KEY]
    return (keys[0], keys[1]) if len(keys) >= 2 else None


def plot_heatmap(plt, plots_dir: Path, points: list[RunRecord], swept: list[str], metric: str, mode: str):
    axes = heatmap_axes(swept)
    if axes is None:
        return None
    x_key, y_key = axes
    filename = f"heatmap_{safe_filename(x_key)}_{safe_filename(y_key)}.png"
    entry: dict[str, Any] = {"file": filename, "kind": "heatmap", "x": x_key, "y": y_key, "value": metric}
    cells: dict[tuple[str, str], list[float]] = {}
    for p in points:
        value = p.value(metric)
        if finite(value) and x_key in p.overrides and y_key in p.overrides:
            cells.setdefault((p.overrides[x_key], p.overrides[y_key]), []).append(value)
    if not cells:
        entry["skipped"] = f"no point has {metric}"
        return entry
    means = [sum(values) / len(values) for values in cells.values()]
    nothing = flat.same_value_reason(metric, means, points, "cells")
    if nothing:  # one colour, and a "best" cell outlined by chance
        return flat.skip(entry, nothing)
    xs = sorted({x for x, _ in cells}, key=value_order)
    ys = sorted({y for _, y in cells}, key=value_order)
    col, row = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
    grid = [[math.nan] * len(xs) for _ in ys]
    for (x, y), values in cells.items():
        grid[row[y]][col[x]] = sum(values) / len(values)
    best = (max if mode == "max" else min)(cells, key=lambda c: sum(cells[c]) / len(cells[c]))
    entry.update(
        x_values=xs, y_values=ys, best={x_key: best[0], y_key: best[1], metric: grid[row[best[1]]][col[best[0]]]}
    )
    entry["cells"] = len(cells)

    width = min(14.0, 4.0 + 0.45 * len(xs))
    height = min(11.0, 3.0 + 0.35 * len(ys))
    fig, ax = plt.subplots(figsize=(width, height))
    # Better is brighter either way: reversed colours for a metric where lower wins.
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis" if mode == "max" else "viridis_r",
                      interpolation="nearest")  # fmt: skip
    fig.colorbar(image, ax=ax, label=f"{metric} ({mode})")
    ax.add_patch(plt.Rectangle((col[best[0]] - 0.5, row[best[1]] - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=2.5))  # fmt: skip
    for values, set_ticks in ((xs, ax.set_xticks), (ys, ax.set_yticks)):
        step = max(1, math.ceil(len(values) / MAX_TICKS))
        ticks = list(range(0, len(values), step))
        set_ticks(ticks, [values[i] for i in ticks], fontsize="small")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    if len(xs) <= ANNOTATE_MAX and len(ys) <= ANNOTATE_MAX:
        for (x, y), values in cells.items():
            ax.text(col[x], row[y], fmt(sum(values) / len(values), 3), ha="center", va="center", fontsize="x-small",
                    color="white")  # fmt: skip
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(f"{metric} by {x_key} and {y_key} (best outlined: {x_key}={best[0]}, {y_key}={best[1]})",
                 fontsize="small")  # fmt: skip
    fig.tight_layout()
    fig.savefig(plots_dir / filename, dpi=100)
    plt.close(fig)
    return entry
