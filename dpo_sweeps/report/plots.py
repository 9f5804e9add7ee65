"""The sweep report's figures: final metrics against each swept parameter (one line per value of the other swept
parameters while there are few, else every point as a dot coloured by the next swept parameter with the median over
them), the curves (`curves`), the reward-KL frontier (`frontier`), the objective over two swept parameters
(`heatmap`) and seed means (`seeds`); plots/plots.json says what each figure shows.

matplotlib is imported inside `write_plots` only: the rest of the report runs without it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from dpo_sweeps.report import flat, frontier, seeds
from dpo_sweeps.report.curves import plot_curves
from dpo_sweeps.report.heatmap import plot_heatmap
from dpo_sweeps.report.points import (
    DEFAULT_MODE,
    PLOTS_MANIFEST,
    VS_PANELS,
    is_numeric_param,
    point_label,
    safe_filename,
    swept_params,
    value_order,
)
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import RunRecord, finite
from dpo_sweeps.search.files import PARETO_CSV, RESULTS_FILE

# Lines per panel of metric_vs_<param>.png at most; past it the points are dots coloured by the next parameter.
MAX_SERIES = 6


def write_plots(
    plots_dir: Path, points: list[RunRecord], metric: str, mode: str = DEFAULT_MODE
) -> tuple[list[Path], dict[str, Any]]:
    """Draw every figure, write plots/plots.json, return (png paths, manifest). A figure without data is not drawn
    (the manifest lists it under `skipped` with the reason)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_plots(plots_dir)
    swept, _ = swept_params(points)
    figures: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    written: list[Path] = []
    vs_panels = list(VS_PANELS)
    if metric not in dict(vs_panels):
        vs_panels.append((metric, metric))

    for param in swept:
        numeric = is_numeric_param(points, param)
        others = [k for k in swept if k != param]
        entry = _plot_vs_param(plt, plots_dir, points, param, others, numeric, vs_panels)
        if entry.get("skipped"):
            skipped.append(_skipped(entry))
        else:
            figures.append(entry)
            written.append(plots_dir / entry["file"])

    for entry in [
        plot_curves(plt, plots_dir, points, swept),
        frontier.plot_frontier(
            plt, plots_dir, points, swept, pareto=_pareto_points(plots_dir.parent), limits=_limits(plots_dir.parent)
        ),
        plot_heatmap(plt, plots_dir, points, swept, metric, mode),
        *seeds.plot_means_vs_param(plt, plots_dir, points, swept, metric),
    ]:
        if entry is None:
            continue
        if entry.get("skipped"):
            skipped.append(_skipped(entry))
        else:
            figures.append(entry)
            written.append(plots_dir / entry["file"])

    manifest = {"figures": figures, "skipped": skipped}
    run_folder.write_json_atomic(plots_dir / PLOTS_MANIFEST, manifest)
    return written, manifest


def _skipped(entry: dict[str, Any]) -> dict[str, Any]:
    out = {"file": entry["file"], "reason": entry["skipped"]}
    if entry.get(flat.NOTHING_TO_SHOW):  # left out for showing nothing: summary.md and the console say why
        out[flat.NOTHING_TO_SHOW] = True
    return out


def _pareto_points(sweep_dir: Path) -> set[str] | None:
    """The point folders a multi-objective search found Pareto-optimal (its pareto_front.csv), None without one."""
    path = sweep_dir / PARETO_CSV
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return {row["point"] for row in csv.DictReader(f) if row.get("point")}


def _limits(sweep_dir: Path) -> dict[str, float] | None:
    """{metric: limit} of a search under limits (its optimization_results.yaml `constraints`), None otherwise."""
    import yaml

    try:
        results = yaml.safe_load((sweep_dir / RESULTS_FILE).read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return None
    terms = results.get("constraints") if isinstance(results, dict) else None
    return {str(c["metric"]): float(c["at_most"]) for c in terms or []} or None


def _remove_previous_plots(plots_dir: Path) -> None:
    """A re-run with other points must not leave figures of parameters that are no longer swept."""
    try:
        old = json.loads((plots_dir / PLOTS_MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    for fig in old.get("figures", []):
        name = Path(str(fig.get("file", ""))).name
        if name.endswith(".png"):
            (plots_dir / name).unlink(missing_ok=True)


def _plot_vs_param(plt, plots_dir, points, param, others, numeric, panels) -> dict[str, Any]:
    filename = f"metric_vs_{safe_filename(param)}.png"
    entry: dict[str, Any] = {
        "file": filename,
        "kind": "metric_vs_param",
        "x": param,
        "x_kind": "numeric" if numeric else "categorical",
        "panels": [],
    }
    have = [p for p in points if param in p.overrides and any(finite(p.value(k)) for k, _ in panels)]
    if not have:
        entry["skipped"] = "no point with final metrics"
        return entry
    categories = sorted({p.overrides[param] for p in have}, key=value_order) if not numeric else []
    x_of = (lambda p: float(p.overrides[param])) if numeric else (lambda p: categories.index(p.overrides[param]))
    groups: dict[str, list[RunRecord]] = {}
    for p in sorted(have, key=lambda p: [value_order(p.overrides.get(k, "")) for k in others]):
        groups.setdefault(point_label(p, others) if others else "all points", []).append(p)

    dots = len(groups) > MAX_SERIES
    if dots:
        entry["colour"] = others[0]
        dot_colours, legend = frontier.colours(plt, have, others[0])
        colour_of = {id(p): c for p, c in zip(have, dot_colours, strict=True)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + (1 if dots else 0), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        panel = {"y": key, "series": []}
        if dots:
            _dots(plt, fig, ax, have, x_of, key, colour_of, legend, others[0], panel)
        for label, group in groups.items() if not dots else ():
            xy = sorted((x_of(p), p.value(key)) for p in group if finite(p.value(key)))
            if not xy:
                continue
            # Categories have no order: dashed lines only guide the eye between the points of one series.
            style = "-" if numeric else "--"
            ax.plot([x for x, _ in xy], [y for _, y in xy], style, marker="o", label=label)
            panel["series"].append({"label": label, "n_points": len(xy)})
        ax.set_title(title)
        ax.set_xlabel(param)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        if numeric:
            xs = [x_of(p) for p in have]
            if min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(categories)), categories)
        if panel["series"] and (others or len(panel["series"]) > 1) and not dots:
            ax.legend(fontsize="small")
        entry["panels"].append(panel)
    fig.suptitle(f"final eval metrics vs {param}")
    fig.tight_layout()
    fig.savefig(plots_dir / filename, dpi=100)
    plt.close(fig)
    return entry


def _dots(plt, fig, ax, have, x_of, key, colour_of, legend, colour_key, panel) -> None:
    """Every point as a dot coloured by `colour_key`, and the median at each x over the other parameters' values."""
    xy = [(x_of(p), p.value(key), colour_of[id(p)]) for p in have if finite(p.value(key))]
    if not xy:
        return
    ax.scatter([x for x, _, _ in xy], [y for _, y, _ in xy], c=[c for _, _, c in xy], s=14, alpha=0.6, linewidths=0)
    by_x: dict[float, list[float]] = {}
    for x, y, _ in xy:
        by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    medians = [sorted(by_x[x])[len(by_x[x]) // 2] for x in xs]
    ax.plot(xs, medians, color="black", linewidth=1.5, label="median over the other parameters")
    frontier.say_colours(plt, fig, ax, legend, colour_key)
    ax.legend(fontsize="x-small")
    panel["series"].append({"label": f"every point, coloured by {colour_key}", "n_points": len(xy)})
