"""The sweep report: one table of every point of a sweep (CSV + markdown) and the plots people compare across it.

    python -m dpo_sweeps.report outputs/sweeps/<sweep>                      # sort by the config's objective
    python -m dpo_sweeps.report outputs/sweeps/<sweep> --metric eval_loss --mode min

Every immediate subfolder of the sweep folder that holds a `status.json` is one point (the run-folder contract in
`dpo_sweeps/run_folder.py`). Written into the sweep folder:

    summary.csv             one row per point: its overrides as columns, status, final eval metrics, runtime, folder, error
    summary.md              the same for people: swept parameters as columns, the fixed ones listed above the table
    plots/metric_vs_<p>.png reward accuracy and margin (and the objective) against each swept parameter (beta first),
                            one line per value of the other swept parameters
    plots/curves.png        train/eval loss and reward margin over steps, one series per point
    plots/reward_kl_frontier.png, summary_by_config.csv (when seeds are swept): see sweep_stats.py
    plots/plots.json        what each figure shows (file, x parameter, panels, series labels and point counts)

Rows are sorted by the target metric, best first; points without it (failed, running, NaN, unreadable metrics) come
after with their status and the reason, never silently dropped. Imports stay light (this runs at the end of a multirun
on a login node): matplotlib is imported inside the plotting function, nothing from the torch stack at all.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

DEFAULT_METRIC = "eval_rewards/accuracies"
DEFAULT_MODE = "max"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOTS_DIR = "plots"
PLOTS_MANIFEST = "plots.json"
CURVES_PNG = "curves.png"

# Final metrics shown for every point (metrics.json keys), with their short markdown headers.
METRIC_COLUMNS = {
    "eval_rewards/accuracies": "reward acc",
    "eval_rewards/margins": "margin",
    "eval_loss": "eval loss",
    "eval_rewards/chosen": "chosen",
    "eval_rewards/rejected": "rejected",
    "initial_eval_rewards/accuracies": "initial acc",
    "train_loss": "train loss",
    "train_runtime": "runtime (s)",
    # The generation eval (dpo_sweeps/eval/): what the answers gained, how far the policy moved, whether they finish.
    "gen/score_before": "score before",
    "gen/score_after": "score after",
    "gen/win_rate_vs_ref": "win rate",
    "gen/kl_to_ref": "KL to ref",
    "gen/finished_before": "finished before",
    "gen/finished_after": "finished after",
}
# Panels of curves.png: (metrics.jsonl key, title).
CURVE_PANELS = (
    ("loss", "train loss"),
    ("eval_loss", "eval loss"),
    ("rewards/margins", "train reward margin"),
    ("eval_rewards/margins", "eval reward margin"),
)
# Panels of metric_vs_<param>.png; the objective metric is added when it is not one of these.
VS_PANELS = (("eval_rewards/accuracies", "eval reward accuracy"), ("eval_rewards/margins", "eval reward margin"))
# Order of points without the target metric: unfinished first, then the broken ones.
STATE_ORDER = {run_folder.RUNNING: 0, run_folder.REQUEUED: 1, run_folder.COMPLETED: 2, run_folder.FAILED: 3}


class EmptySweepError(ValueError):
    """The sweep folder has no point folders (subfolders with a status.json)."""


@dataclass
class Point:
    name: str  # the folder name (the point's identity overrides)
    path: Path
    state: str
    overrides: dict[str, str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # Why a value is missing: unreadable files, a completed point without metrics, NaN target metric, ...
    notes: list[str] = field(default_factory=list)
    objective: tuple[str, str] | None = None  # (metric, mode) from the point's config.yaml

    def value(self, key: str) -> float | None:
        return _number(self.metrics.get(key))

    @property
    def run_dir(self) -> str:
        return str(self.status.get("run_dir") or self.path)

    @property
    def wall_time_s(self) -> float | None:
        start, end = _parse_time(self.status.get("started_at")), _parse_time(self.status.get("ended_at"))
        return (end - start).total_seconds() if start and end else None


@dataclass
class ReportPaths:
    sweep_dir: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    manifest: Path | None  # plots/plots.json, None when no plot was drawn (no data, or plots=False)
    metric: str
    mode: str
    table: str  # the short plain-text table printed on the terminal
    n_points: int
    counts: dict[str, int]  # points per state


# ----------------------------------------------------------------------------------------------- reading points


def _number(value: Any) -> float | None:
    """A finite or non-finite float from a metrics value (run_folder stores NaN/inf as the strings "nan"/"inf");
    None for anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _parse_time(value: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    """`["beta=0.1", "+lora.r=8", "~logger"]` -> `{"beta": "0.1", "lora.r": "8", "logger": "<deleted>"}`."""
    out: dict[str, str] = {}
    for item in overrides or []:
        item = str(item)
        if "=" in item:
            key, value = item.split("=", 1)
        else:
            key, value = item, "<deleted>" if item.startswith("~") else ""
        out[key.lstrip("+~")] = value
    return out


def _read_objective(run_dir: Path) -> tuple[str, str] | None:
    path = run_dir / run_folder.CONFIG_FILE
    if not path.exists():
        return None
    import yaml  # PyYAML comes with omegaconf; imported here so that the module itself stays stdlib-only

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError):
        return None
    objective = config.get("objective") if isinstance(config, dict) else None
    if not isinstance(objective, dict) or not objective.get("metric"):
        return None
    return str(objective["metric"]), str(objective.get("mode") or DEFAULT_MODE)


def read_point(run_dir: Path) -> Point:
    """One point, whatever state its files are in: problems become notes, never exceptions."""
    notes: list[str] = []
    try:
        status = run_folder.read_status(run_dir) or {}
    except (json.JSONDecodeError, OSError) as e:
        status, notes = {}, [f"status.json unreadable: {e}"]
    if not isinstance(status, dict):
        status, notes = {}, ["status.json is not a JSON object"]
    state = str(status.get("state") or "unknown")

    if "overrides" in status:
        overrides = parse_overrides(status.get("overrides"))
    else:
        # Older or broken status files: the folder name is the sorted identity overrides joined by commas.
        overrides = parse_overrides([p for p in run_dir.name.split(",") if "=" in p])
        notes.append("no overrides in status.json (taken from the folder name)")

    metrics: dict[str, Any] = {}
    metrics_path = run_dir / run_folder.METRICS_FILE
    try:
        loaded = run_folder.read_json(metrics_path)
        if loaded is None:
            if state == run_folder.COMPLETED:
                notes.append("completed but no metrics.json")
        elif isinstance(loaded, dict):
            metrics = loaded
        else:
            notes.append("metrics.json is not a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        notes.append(f"metrics.json unreadable: {e}")

    try:
        history = [row for row in run_folder.read_history(run_dir) if isinstance(row, dict)]
    except (OSError, UnicodeDecodeError) as e:
        history = []
        notes.append(f"metrics.jsonl unreadable: {e}")

    error = status.get("error") or ""
    if isinstance(error, dict):  # tolerate {"type":..., "message":...}
        error = ": ".join(str(v) for v in error.values())
    return Point(
        name=run_dir.name,
        path=run_dir,
        state=state,
        overrides=overrides,
        metrics=metrics,
        history=history,
        status=status,
        error=str(error),
        notes=notes,
        objective=_read_objective(run_dir),
    )


def find_points(sweep_dir: str | Path) -> list[Point]:
    """Every immediate subfolder with a status.json, in name order (hidden folders, e.g. runs moved aside, skipped)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise EmptySweepError(f"{sweep_dir}: no such sweep folder")
    return [
        read_point(d)
        for d in sorted(sweep_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / run_folder.STATUS_FILE).exists()
    ]


# ------------------------------------------------------------------------------------------------ the table


def swept_params(points: list[Point]) -> tuple[list[str], dict[str, str]]:
    """(swept keys, beta first; fixed key -> value): a key is swept when its value differs across points (a key that
    only some points set counts as swept)."""
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.overrides if k not in keys]
    swept, fixed = [], {}
    for key in keys:
        values = {p.overrides.get(key) for p in points}
        if len(values) > 1:
            swept.append(key)
        else:
            fixed[key] = values.pop()
    swept.sort(key=lambda k: (k != "beta", k))
    return swept, fixed


def is_numeric_param(points: list[Point], key: str) -> bool:
    values = [p.overrides[key] for p in points if key in p.overrides]
    return bool(values) and all(_finite(_number(v)) for v in values)


def resolve_objective(points: list[Point], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The explicit arguments, else the objective in the points' config.yaml (the most common one), else the one
    recorded in metrics.json, else eval reward accuracy (max). An explicit metric without a mode gets the configured
    mode if it is the configured metric, else `default_mode(metric)`."""
    found = [p.objective for p in points if p.objective]
    found += [
        (str(p.metrics["objective_metric"]), DEFAULT_MODE)
        for p in points
        if not p.objective and p.metrics.get("objective_metric")
    ]
    configured = max(found, key=found.count) if found else (DEFAULT_METRIC, DEFAULT_MODE)
    if metric is None:
        metric = configured[0]
    if mode is None:
        mode = configured[1] if metric == configured[0] else default_mode(metric)
    if mode not in ("max", "min"):
        raise ValueError(f"mode={mode!r}: use 'max' or 'min'")
    return metric, mode


def default_mode(metric: str) -> str:
    """min for losses and times, max for everything else (accuracies, margins, rewards)."""
    return "min" if any(word in metric.lower() for word in ("loss", "runtime", "time", "perplexity")) else "max"


def sort_points(points: list[Point], metric: str, mode: str) -> list[Point]:
    """Best first by `metric`; then the points without a finite value, unfinished before failed, by name."""
    ranked = [p for p in points if _finite(p.value(metric))]
    ranked.sort(key=lambda p: (-p.value(metric) if mode == "max" else p.value(metric), p.name))
    rest = [p for p in points if not _finite(p.value(metric))]
    rest.sort(key=lambda p: (STATE_ORDER.get(p.state, 4), p.name))
    return ranked + rest


def _missing_reason(point: Point, metric: str) -> str:
    value = point.value(metric)
    if value is not None and not math.isfinite(value):
        return f"{metric} is {value}"
    if point.state in (run_folder.RUNNING, run_folder.REQUEUED):
        return ""  # the status column already says why
    if point.metrics and metric not in point.metrics:
        return f"no {metric} in metrics.json"
    return ""


def _notes(point: Point, metric: str) -> list[str]:
    reason = _missing_reason(point, metric)
    return point.notes + ([reason] if reason else [])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _one_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""  # a traceback's last line is the exception
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def csv_columns(points: list[Point], metric: str) -> list[str]:
    swept, fixed = swept_params(points)
    metric_cols = list(METRIC_COLUMNS)
    if metric not in metric_cols:
        metric_cols.insert(0, metric)
    return (
        ["rank", "point", *swept, *fixed, "status"]
        + metric_cols
        + ["wall_time_s", "started_at", "ended_at", "run_dir", "error", "notes"]
    )


def write_csv(path: Path, points: list[Point], metric: str) -> None:
    columns = csv_columns(points, metric)
    metric_cols = [c for c in columns if c in METRIC_COLUMNS or c == metric]
    rows = []
    rank = 0
    for p in points:
        ranked = _finite(p.value(metric))
        rank += ranked
        row = {
            "rank": rank if ranked else "",
            "point": p.name,
            **{k: p.overrides.get(k, "") for k in columns if k in p.overrides},
            "status": p.state,
            **{c: _csv_value(p.value(c)) for c in metric_cols},
            "wall_time_s": _csv_value(p.wall_time_s),
            "started_at": p.status.get("started_at", ""),
            "ended_at": p.status.get("ended_at", ""),
            "run_dir": p.run_dir,
            "error": p.error,
            "notes": "; ".join(_notes(p, metric)),
        }
        rows.append(row)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _label(point: Point, keys: list[str]) -> str:
    return ", ".join(f"{k}={point.overrides.get(k, '-')}" for k in keys) or point.name


def markdown_report(sweep_dir: Path, points: list[Point], metric: str, mode: str, plots: list[Path]) -> str:
    swept, fixed = swept_params(points)
    counts = _counts(points)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(points)} points: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + ".",
        f"Sorted by `{metric}` ({mode}), best first; points without it are listed after, with their status.",
    ]
    if fixed:
        lines.append("Same for every point: " + ", ".join(f"`{k}={v}`" for k, v in fixed.items()) + ".")
    metric_cols = list(METRIC_COLUMNS)
    if metric not in metric_cols:
        metric_cols.insert(0, metric)
    headers = ["#", *swept, "status"] + [METRIC_COLUMNS.get(c, f"`{c}`") for c in metric_cols] + ["folder", "notes"]
    lines += ["", "| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    rank = 0
    for p in points:
        ranked = _finite(p.value(metric))
        rank += ranked
        runtime = p.value("train_runtime")
        values = [_fmt(p.value(c)) for c in metric_cols]
        if runtime is None and p.wall_time_s is not None:
            values[metric_cols.index("train_runtime")] = f"({_fmt(p.wall_time_s)} wall)"
        notes = ([f"error: {_one_line(p.error)}"] if p.error else []) + _notes(p, metric)
        cells = [
            str(rank) if ranked else "-",
            *[p.overrides.get(k, "-") for k in swept],
            f"**{p.state}**" if p.state != run_folder.COMPLETED else p.state,
            *values,
            f"[{p.name}]({p.name}/)",
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{plot.stem}]({PLOTS_DIR}/{plot.name})" for plot in plots]
    return "\n".join(lines) + "\n"


def text_table(points: list[Point], metric: str) -> str:
    """point, status, eval reward accuracy, margin (and the target metric when it is another one)."""
    cols = ["eval_rewards/accuracies", "eval_rewards/margins"]
    headers = ["point", "status", "reward acc", "margin"]
    if metric not in cols:
        cols.append(metric)
        headers.append(metric)
    # The generation eval's headline numbers, where the points have them (what a real-model sweep is judged by).
    for key in ("gen/score_before", "gen/score_after", "gen/kl_to_ref", "gen/finished_after"):
        if key not in cols and any(_finite(p.value(key)) for p in points):
            cols.append(key)
            headers.append(METRIC_COLUMNS[key])
    swept, _ = swept_params(points)
    rows = [
        [_label(p, swept), p.state + (f" ({_one_line(p.error, 60)})" if p.error else "")]
        + [_fmt(p.value(c)) for c in cols]
        for p in points
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt_row = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(headers), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows])


def _counts(points: list[Point]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in points:
        counts[p.state] = counts.get(p.state, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], 4)))


# ------------------------------------------------------------------------------------------------ plots


def _value_order(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (beta=2 before beta=10), then everything else alphabetically."""
    number = _number(value)
    return (0, number, "") if _finite(number) else (1, 0.0, str(value))


def _safe_filename(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def write_plots(plots_dir: Path, points: list[Point], metric: str) -> tuple[list[Path], dict[str, Any]]:
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
            skipped.append({"file": entry["file"], "reason": entry["skipped"]})
        else:
            figures.append(entry)
            written.append(plots_dir / entry["file"])

    from dpo_sweeps.report import seeds as sweep_stats

    for entry in [
        _plot_curves(plt, plots_dir, points, swept),
        sweep_stats.plot_frontier(plt, plots_dir, points, swept),
        *sweep_stats.plot_means_vs_param(plt, plots_dir, points, swept, metric),
    ]:
        if entry is None:
            continue
        if entry.get("skipped"):
            skipped.append({"file": entry["file"], "reason": entry["skipped"]})
        else:
            figures.append(entry)
            written.append(plots_dir / entry["file"])

    manifest = {"figures": figures, "skipped": skipped}
    run_folder.write_json_atomic(plots_dir / PLOTS_MANIFEST, manifest)
    return written, manifest


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
    filename = f"metric_vs_{_safe_filename(param)}.png"
    entry: dict[str, Any] = {
        "file": filename,
        "kind": "metric_vs_param",
        "x": param,
        "x_kind": "numeric" if numeric else "categorical",
        "panels": [],
    }
    have = [p for p in points if param in p.overrides and any(_finite(p.value(k)) for k, _ in panels)]
    if not have:
        entry["skipped"] = "no point with final metrics"
        return entry
    categories = sorted({p.overrides[param] for p in have}, key=_value_order) if not numeric else []
    x_of = (lambda p: float(p.overrides[param])) if numeric else (lambda p: categories.index(p.overrides[param]))
    groups: dict[str, list[Point]] = {}
    for p in sorted(have, key=lambda p: [_value_order(p.overrides.get(k, "")) for k in others]):
        groups.setdefault(_label(p, others) if others else "all points", []).append(p)

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        panel = {"y": key, "series": []}
        for label, group in groups.items():
            xy = sorted((x_of(p), p.value(key)) for p in group if _finite(p.value(key)))
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
        if panel["series"] and (others or len(panel["series"]) > 1):
            ax.legend(fontsize="small")
        entry["panels"].append(panel)
    fig.suptitle(f"final eval metrics vs {param}")
    fig.tight_layout()
    fig.savefig(plots_dir / filename, dpi=100)
    plt.close(fig)
    return entry


def _plot_curves(plt, plots_dir, points, swept) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": CURVES_PNG, "kind": "curves", "x": "step", "panels": []}
    if not any(p.history for p in points):
        entry["skipped"] = "no point has a metrics.jsonl history"
        return entry
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    colors = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
    handles: dict[str, Any] = {}
    for ax, (key, title) in zip(axes.flat, CURVE_PANELS, strict=True):
        panel = {"y": key, "series": []}
        for i, p in enumerate(points):
            xy = [
                (r["step"], _number(r.get(key))) for r in p.history if "step" in r and _number(r.get(key)) is not None
            ]
            if not xy:
                continue
            xy.sort()
            label = _label(p, swept)
            (line,) = ax.plot(
                [x for x, _ in xy],
                [y for _, y in xy],
                color=colors(i % colors.N),
                marker="o" if len(xy) <= 20 else None,
                markersize=3,
                label=label,
            )
            handles.setdefault(label, line)
            panel["series"].append({"label": label, "n_points": len(xy)})
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not panel["series"]:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        entry["panels"].append(panel)
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(plots_dir / CURVES_PNG, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return entry


# ------------------------------------------------------------------------------------------------ entry points


def write_sweep_report(
    sweep_dir: str | Path, metric: str | None = None, mode: str | None = None, plots: bool = True
) -> ReportPaths:
    """Write summary.csv, summary.md and plots/ into `sweep_dir` and return where they are (plus the terminal
    table). Raises EmptySweepError when there is no point folder, ValueError for a mode other than max/min."""
    sweep_dir = Path(sweep_dir)
    points = find_points(sweep_dir)
    if not points:
        raise EmptySweepError(
            f"{sweep_dir}: no sweep points found (a point is a subfolder with a {run_folder.STATUS_FILE}); "
            "did the sweep start, and is this the sweep folder (outputs/sweeps/<name>) rather than a run folder?"
        )
    metric, mode = resolve_objective(points, metric, mode)
    points = sort_points(points, metric, mode)

    plot_paths: list[Path] = []
    manifest_path = None
    if plots:
        plot_paths, _ = write_plots(sweep_dir / PLOTS_DIR, points, metric)
        manifest_path = sweep_dir / PLOTS_DIR / PLOTS_MANIFEST

    csv_path = sweep_dir / SUMMARY_CSV
    write_csv(csv_path, points, metric)
    md_path = sweep_dir / SUMMARY_MD
    markdown = markdown_report(sweep_dir, points, metric, mode, plot_paths)
    by_config_path = _write_seed_aggregation(sweep_dir, points, metric)
    if by_config_path:
        from dpo_sweeps.report import seeds as sweep_stats

        swept, _ = swept_params(points)
        markdown += sweep_stats.markdown_section(sweep_stats.aggregate(points, swept, metric), metric)
    run_folder.write_text_atomic(md_path, markdown)
    return ReportPaths(
        sweep_dir=sweep_dir,
        csv=csv_path,
        markdown=md_path,
        plots=plot_paths,
        manifest=manifest_path,
        metric=metric,
        mode=mode,
        table=text_table(points, metric),
        n_points=len(points),
        counts=_counts(points),
    )


def _write_seed_aggregation(sweep_dir: Path, points: list[Point], metric: str) -> Path | None:
    """summary_by_config.csv when the sweep varies `seed` (see sweep_stats.py); a stale one is removed otherwise."""
    from dpo_sweeps.report import seeds as sweep_stats

    path = sweep_dir / sweep_stats.BY_CONFIG_CSV
    swept, _ = swept_params(points)
    if not sweep_stats.seeds_swept(swept):
        path.unlink(missing_ok=True)
        return None
    sweep_stats.write_by_config(path, sweep_stats.aggregate(points, swept, metric))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_sweeps.report",
        description="Write the sweep report (summary.csv, summary.md, plots/) into a sweep folder and print a table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder, e.g. outputs/sweeps/<name>")
    parser.add_argument("--metric", help="metrics.json key to sort by (default: the config's objective.metric)")
    parser.add_argument(
        "--mode",
        choices=("max", "min"),
        help="whether higher or lower is better (default: the config's objective.mode; min for *loss*/*runtime* metrics)",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    args = parser.parse_args(argv)
    try:
        report = write_sweep_report(args.sweep_dir, metric=args.metric, mode=args.mode, plots=not args.no_plots)
    except EmptySweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table)
    print()
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items())
    print(f"{report.n_points} points ({counts}), sorted by {report.metric} ({report.mode}).")
    print(f"wrote {report.csv}, {report.markdown}" + (f" and {len(report.plots)} plots" if report.plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
