"""plots/curves.png: train/eval loss and reward margin over steps.

Up to `ALL_NAMED` points every point is a named line (the 3-point demo). Past that a person cannot tell 1,000 lines
apart: the best `BEST` points by the objective (the report's order) are drawn and named, and all the others become a
grey band per step (10-90% quantiles) with their median, so the legend stays a few lines long at any sweep size.
plots/plots.json lists every point's series with its number of logged values either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_sweeps.report.points import CURVE_PANELS, CURVES_PNG, point_label
from dpo_sweeps.runs.reading import RunRecord, number

ALL_NAMED = 10
BEST = 5


def _series(point: RunRecord, key: str) -> list[tuple[float, float]]:
    xy = [(r["step"], number(r.get(key))) for r in point.history if "step" in r and number(r.get(key)) is not None]
    return sorted(xy)


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), on an already sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def band(series: list[list[tuple[float, float]]]) -> list[tuple[float, float, float, float]]:
    """(step, 10%, median, 90%) over the series that logged that step."""
    by_step: dict[float, list[float]] = {}
    for xy in series:
        for x, y in xy:
            by_step.setdefault(x, []).append(y)
    out = []
    for step in sorted(by_step):
        values = sorted(by_step[step])
        out.append((step, quantile(values, 0.1), quantile(values, 0.5), quantile(values, 0.9)))
    return out


def plot_curves(plt, plots_dir: Path, points: list[RunRecord], swept: list[str]) -> dict[str, Any]:
    """`points` in the report's order (best first). See the module docstring."""
    entry: dict[str, Any] = {"file": CURVES_PNG, "kind": "curves", "x": "step", "panels": []}
    if not any(p.history for p in points):
        entry["skipped"] = "no point has a metrics.jsonl history"
        return entry
    logged = [p for p in points if p.history]
    named = logged if len(logged) <= ALL_NAMED else logged[:BEST]
    named_ids = {id(p) for p in named}
    rest = [p for p in logged if id(p) not in named_ids]
    if rest:
        entry["highlighted"] = [p.name for p in named]
        entry["band"] = {"points": len(rest), "quantiles": [0.1, 0.5, 0.9]}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    colors = plt.get_cmap("tab10")
    handles: dict[str, Any] = {}
    for ax, (key, title) in zip(axes.flat, CURVE_PANELS, strict=True):
        panel: dict[str, Any] = {"y": key, "series": []}
        rest_series = []
        for p in logged:
            xy = _series(p, key)
            if not xy:
                continue
            panel["series"].append({"label": point_label(p, swept), "n_points": len(xy)})
            if id(p) not in named_ids:
                rest_series.append(xy)
        if rest_series:
            steps = band(rest_series)
            others = f"the other {len(rest_series)} points"
            fill = ax.fill_between([s for s, *_ in steps], [lo for _, lo, _, _ in steps],
                                   [hi for *_, hi in steps], color="grey", alpha=0.25, linewidth=0)  # fmt: skip
            (median,) = ax.plot([s for s, *_ in steps], [m for _, _, m, _ in steps], color="grey", linewidth=1.2)
            handles.setdefault(f"{others}: 10-90% band", fill)
            handles.setdefault(f"{others}: median", median)
        for i, p in enumerate(named):
            xy = _series(p, key)
            if not xy:
                continue
            rank = f"#{i + 1} " if rest else ""
            label = rank + point_label(p, swept)
            (line,) = ax.plot([x for x, _ in xy], [y for _, y in xy], color=colors(i % colors.N),
                              marker="o" if len(xy) <= 20 else None, markersize=3, label=label,
                              linewidth=2 if rest else 1.5)  # fmt: skip
            handles.setdefault(label, line)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not panel["series"]:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        entry["panels"].append(panel)
    if rest:
        fig.suptitle(f"best {len(named)} of {len(logged)} points by the objective, the others as a band")
    # The named points first, then what stands for the others.
    labels = sorted(handles, key=lambda label: label.startswith("the other "))
    entry["legend"] = labels
    fig.legend([handles[k] for k in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(plots_dir / CURVES_PNG, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return entry
