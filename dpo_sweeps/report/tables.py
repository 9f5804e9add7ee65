"""The sweep report's tables: summary.csv (one row per point, every column), summary.md (for people: swept parameters as
columns, the fixed ones above the table, plots below) and the short table printed on the terminal."""

from __future__ import annotations

import csv
from pathlib import Path

from dpo_sweeps.report.points import (
    METRIC_COLUMNS,
    PLOTS_DIR,
    csv_value,
    fmt,
    md_cell,
    notes_for,
    one_line,
    point_label,
    state_counts,
    swept_params,
)
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import RunRecord, finite


def csv_columns(points: list[RunRecord], metric: str) -> list[str]:
    swept, fixed = swept_params(points)
    metric_cols = list(METRIC_COLUMNS)
    if metric not in metric_cols:
        metric_cols.insert(0, metric)
    return (
        ["rank", "point", *swept, *fixed, "status"]
        + metric_cols
        + ["wall_time_s", "started_at", "ended_at", "run_dir", "error", "notes"]
    )


def csv_rows(points: list[RunRecord], metric: str) -> tuple[list[str], list[dict]]:
    """(summary.csv's columns, one row per point with raw values: None where there is none, floats as floats)."""
    columns = csv_columns(points, metric)
    metric_cols = [c for c in columns if c in METRIC_COLUMNS or c == metric]
    rows = []
    rank = 0
    for p in points:
        ranked = finite(p.value(metric))
        rank += ranked
        row = {
            "rank": rank if ranked else None,
            "point": p.name,
            **{k: p.overrides.get(k) for k in columns if k in p.overrides},
            "status": p.state,
            **{c: p.value(c) for c in metric_cols},
            "wall_time_s": p.wall_time_s,
            "started_at": p.status.get("started_at", ""),
            "ended_at": p.status.get("ended_at", ""),
            "run_dir": p.run_dir,
            "error": p.error,
            "notes": "; ".join(notes_for(p, metric)),
        }
        rows.append(row)
    return columns, rows


def write_csv(path: Path, points: list[RunRecord], metric: str) -> None:
    columns, rows = csv_rows(points, metric)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: csv_value(v) for k, v in row.items()} for row in rows)
    tmp.replace(path)


def not_drawn_lines(not_drawn: list[dict]) -> list[str]:
    """One line per figure left out for showing nothing (report/flat.py), with why."""
    return [f"{s['file']} not drawn: {s['reason']}" for s in not_drawn]


def markdown_report(
    sweep_dir: Path, points: list[RunRecord], metric: str, mode: str, plots: list[Path], not_drawn: list[dict] = ()
) -> str:
    swept, fixed = swept_params(points)
    counts = state_counts(points)
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
    lines += ["", "| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    rank = 0
    for p in points:
        ranked = finite(p.value(metric))
        rank += ranked
        runtime = p.value("train_runtime")
        values = [fmt(p.value(c)) for c in metric_cols]
        if runtime is None and p.wall_time_s is not None:
            values[metric_cols.index("train_runtime")] = f"({fmt(p.wall_time_s)} wall)"
        notes = ([f"error: {one_line(p.error)}"] if p.error else []) + notes_for(p, metric)
        cells = [
            str(rank) if ranked else "-",
            *[p.overrides.get(k, "-") for k in swept],
            f"**{p.state}**" if p.state not in (run_folder.COMPLETED, run_folder.PRUNED) else p.state,
            *values,
            f"[{p.name}]({p.name}/)",
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    if plots or not_drawn:
        lines += ["", "## Plots", ""]
        lines += [f"![{plot.stem}]({PLOTS_DIR}/{plot.name})" for plot in plots]
    if not_drawn:
        lines += ["", *(f"- {md_cell(line)}" for line in not_drawn_lines(not_drawn))]
    return "\n".join(lines) + "\n"


# Rows of the terminal table at most: the best ones and then those that need a look; summary.csv has every point.
TERMINAL_ROWS = 40


def text_table(points: list[RunRecord], metric: str, limit: int | None = TERMINAL_ROWS) -> str:
    """point, status, eval reward accuracy, margin (and the target metric when it is another one). Past `limit` rows:
    the best half of it, then the failed/cancelled points, then how many are not listed."""
    cols = ["eval_rewards/accuracies", "eval_rewards/margins"]
    headers = ["point", "status", "reward acc", "margin"]
    if metric not in cols:
        cols.append(metric)
        headers.append(metric)
    # The generation eval's headline numbers, where the points have them (what a real-model sweep is judged by).
    for key in ("gen/score_before", "gen/score_after", "gen/kl_to_ref", "gen/logratio_to_ref", "gen/finished_after"):
        if key not in cols and any(finite(p.value(key)) for p in points):
            cols.append(key)
            headers.append(METRIC_COLUMNS[key])
    swept, _ = swept_params(points)
    shown = points
    if limit is not None and len(points) > limit:
        broken = [p for p in points if p.state in (run_folder.FAILED, run_folder.CANCELLED)]
        shown = points[: limit - min(len(broken), limit // 2)]
        shown_ids = {id(p) for p in shown}
        shown += [p for p in broken if id(p) not in shown_ids][: limit - len(shown)]
    rows = [
        [point_label(p, swept), p.state + (f" ({one_line(p.error, 60)})" if p.error else "")]
        + [fmt(p.value(c)) for c in cols]
        for p in shown
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt_row = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    lines = [fmt_row(headers), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows]
    if len(shown) < len(points):
        lines.append(f"... {len(points) - len(shown)} more point(s) not listed: every point is in summary.csv")
    return "\n".join(lines)
