"""The sweep report: one table of every point of a sweep (CSV + markdown) and the plots people compare across it.

    python -m dpo_sweeps.report outputs/sweeps/<sweep>                      # sort by the config's objective
    python -m dpo_sweeps.report outputs/sweeps/<sweep> --metric eval_loss --mode min

Every immediate subfolder of the sweep folder that holds a `status.json` is one point (the run-folder contract in
`dpo_sweeps/runs/`). Written into the sweep folder:

    summary.csv             one row per point: its overrides as columns, status, final eval metrics, runtime, folder, error
    summary.md              the same for people: swept parameters as columns, the fixed ones listed above the table
    summary.html            one self-contained interactive page: table, parallel coordinates, frontier, curves,
                            each point's answers (page.py)
    plots/metric_vs_<p>.png reward accuracy and margin (and the objective) against each swept parameter (beta first),
                            one line per value of the other swept parameters (dots coloured by one when too many)
    plots/curves.png        train/eval loss and reward margin over steps: every point named up to 10, else the best
                            5 named and the others as a band (curves.py)
    plots/heatmap_<a>_<b>.png  the objective over two swept parameters (heatmap.py)
    plots/reward_kl_frontier.png (frontier.py), summary_by_config.csv (when seeds are swept): see seeds.py
    plots/plots.json        what each figure shows (file, x parameter, panels, series labels and point counts)

The parts: `points` (reading and ranking), `tables`, `plots` (with `curves`, `frontier`, `heatmap`), `seeds`. Rows are sorted by the target metric, best first; points without it (failed, running, NaN, unreadable metrics) come
after with their status and the reason, never silently dropped. Imports stay light (this runs at the end of a multirun
on a login node): matplotlib is imported inside the plotting function, nothing from the torch stack at all.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_sweeps.report import flat, seeds
from dpo_sweeps.report.page import write_page
from dpo_sweeps.report.plots import write_plots
from dpo_sweeps.report.points import (
    PLOTS_DIR,
    PLOTS_MANIFEST,
    SUMMARY_CSV,
    SUMMARY_MD,
    EmptySweepError,
    find_points,
    resolve_objective,
    sort_points,
    state_counts,
    swept_params,
)
from dpo_sweeps.report.tables import markdown_report, not_drawn_lines, text_table, write_csv
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import RunRecord

__all__ = ["EmptySweepError", "ReportPaths", "main", "write_sweep_report"]


@dataclass
class ReportPaths:
    sweep_dir: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    manifest: Path | None  # plots/plots.json, None when no plot was drawn (no data, or plots=False)
    page: Path  # summary.html
    metric: str
    mode: str
    table: str  # the short plain-text table printed on the terminal
    n_points: int
    counts: dict[str, int]  # points per state
    # Figures left out because they would show nothing (report/flat.py): {"file", "reason"} each.
    not_drawn: list[dict[str, Any]] = field(default_factory=list)


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
    not_drawn: list[dict[str, Any]] = []
    if plots:
        plot_paths, manifest = write_plots(sweep_dir / PLOTS_DIR, points, metric, mode)
        manifest_path = sweep_dir / PLOTS_DIR / PLOTS_MANIFEST
        not_drawn = [s for s in manifest["skipped"] if s.get(flat.NOTHING_TO_SHOW)]

    csv_path = sweep_dir / SUMMARY_CSV
    write_csv(csv_path, points, metric)
    md_path = sweep_dir / SUMMARY_MD
    markdown = markdown_report(sweep_dir, points, metric, mode, plot_paths, not_drawn)
    by_config_path = _write_seed_aggregation(sweep_dir, points, metric)
    if by_config_path:
        swept, _ = swept_params(points)
        markdown += seeds.markdown_section(seeds.aggregate(points, swept, metric), metric)
    run_folder.write_text_atomic(md_path, markdown)
    page = write_page(sweep_dir, points, metric, mode)
    return ReportPaths(
        sweep_dir=sweep_dir,
        csv=csv_path,
        markdown=md_path,
        plots=plot_paths,
        manifest=manifest_path,
        page=page,
        metric=metric,
        mode=mode,
        table=text_table(points, metric),
        n_points=len(points),
        counts=state_counts(points),
        not_drawn=not_drawn,
    )


def _write_seed_aggregation(sweep_dir: Path, points: list[RunRecord], metric: str) -> Path | None:
    """summary_by_config.csv when the sweep varies `seed` (see seeds.py); a stale one is removed otherwise."""
    path = sweep_dir / seeds.BY_CONFIG_CSV
    swept, _ = swept_params(points)
    if not seeds.seeds_swept(swept):
        path.unlink(missing_ok=True)
        return None
    seeds.write_by_config(path, seeds.aggregate(points, swept, metric))
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
    for line in not_drawn_lines(report.not_drawn):
        print(line)
    plots = f", {len(report.plots)} plots" if report.plots else ""
    print(f"wrote {report.csv}, {report.markdown}{plots} and {report.page} (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
