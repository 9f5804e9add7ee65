"""What the sweep report says across points: seeds aggregated into configurations (the frontier's figure is drawn by
frontier.py).

Called from `sweep_report.py` and `plots.py` (summary.csv, summary.md, plots/); stdlib and matplotlib only, like the report.

    plots/reward_kl_frontier.png  (frontier.py) with seeds swept, per-configuration means with 95% intervals
    summary_by_config.csv         when `seed` is swept: one row per configuration (every override except seed) with
                                  `n` (points with the objective), `seeds`, the seeds that failed, are unfinished or
                                  missing, and for each headline metric `<metric>_mean`, `<metric>_ci95` and
                                  `<metric>_n` (the points it averages: a metric missing from a point counts less);
                                  with seed racing, `seeds_skipped_by_racing` and `raced_out` (the decision in words)
    plots/<metric>_by_<param>_mean.png   the headline metrics against each swept parameter, mean over seeds, with
                                  95% error bars (a metric with one value at every point left out: flat.py)

The intervals are Student-t 95% half-widths of the mean over seeds (empty for a single seed). The frontier's data is
already in summary.csv (the gen/ columns); the manifest (plots.json) says which points each figure shows.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from dpo_sweeps.report import flat
from dpo_sweeps.report.points import (
    csv_value,
    fmt,
    is_numeric_param,
    md_cell,
    point_label,
    safe_filename,
    value_order,
)
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import RunRecord, finite

BY_CONFIG_CSV = "summary_by_config.csv"
SKIPPED = run_folder.SKIPPED_BY_RACING
SEED_KEY = "seed"
# Metrics aggregated over seeds (the objective is added when it is another one).
HEADLINE_METRICS = (
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_loss",
    "gen/score_before",
    "gen/score_after",
    "gen/win_rate_vs_ref",
    "gen/kl_to_ref",
    "gen/logratio_to_ref",
    "gen/ref_logprob_per_token_after",
    "gen/finished_before",
    "gen/finished_after",
)
# Two-sided 95% Student-t quantiles by degrees of freedom (1..30); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_ci95(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, 95% half-width of the mean); the half-width is None below two values."""
    values = [v for v in values if finite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    t = _T95[len(values) - 2] if len(values) - 1 <= len(_T95) else 1.96
    return mean, t * sd / math.sqrt(len(values))


def seeds_swept(swept: list[str]) -> bool:
    return SEED_KEY in swept


def group_by_config(points: list[RunRecord], swept: list[str]) -> dict[str, list[RunRecord]]:
    """Points with the same overrides except the seed, in the report's order of their first point."""
    keys = [k for k in swept if k != SEED_KEY]
    groups: dict[str, list[RunRecord]] = {}
    for p in sorted(points, key=lambda p: [value_order(p.overrides.get(k, "")) for k in keys]):
        groups.setdefault(point_label(p, keys) if keys else "all points", []).append(p)
    return groups


def headline_metrics(metric: str) -> list[str]:
    return list(HEADLINE_METRICS) + ([metric] if metric not in HEADLINE_METRICS else [])


def _seed(point: RunRecord) -> str:
    return point.overrides.get(SEED_KEY, "")


def aggregate(points: list[RunRecord], swept: list[str], metric: str) -> list[dict[str, Any]]:
    """One row per configuration: its swept values, n (points with the objective metric), its seeds, the seeds that
    failed, are unfinished (running, requeued) or missing (run by other configurations, not this one), and for each
    headline metric its mean, ci95 and n (the points that have it)."""
    keys = [k for k in swept if k != SEED_KEY]
    every_seed = sorted({_seed(p) for p in points}, key=value_order)
    rows = []
    for label, group in group_by_config(points, swept).items():
        row: dict[str, Any] = {"config": label, **{k: group[0].overrides.get(k, "") for k in keys}}
        row["n"] = sum(finite(p.value(metric)) for p in group)
        seeds = sorted((_seed(p) for p in group), key=value_order)
        row["seeds"] = " ".join(seeds)
        row["seeds_failed"] = " ".join(_seed(p) for p in group if p.state == run_folder.FAILED)
        row["seeds_unfinished"] = " ".join(
            _seed(p) for p in group if p.state not in (run_folder.FAILED, run_folder.COMPLETED, SKIPPED)
        )
        row["seeds_missing"] = " ".join(s for s in every_seed if s not in seeds)
        # Seed racing (sweep/racing.py): the seeds it did not train, and why, in the skipped seeds' status.json.
        skipped = [p for p in group if p.state == SKIPPED]
        row["seeds_skipped_by_racing"] = " ".join(_seed(p) for p in skipped)
        row["raced_out"] = str(skipped[0].status.get("reason") or "raced out") if skipped else ""
        for key in headline_metrics(metric):
            values = [p.value(key) for p in group if finite(p.value(key))]
            mean, ci = mean_ci95(values)
            row[f"{key}_mean"], row[f"{key}_ci95"], row[f"{key}_n"] = mean, ci, len(values)
        rows.append(row)
    return rows


def not_counted(row: dict[str, Any]) -> str:
    """The seeds a configuration's means leave out, in words ("" when none)."""
    parts = [
        f"seed {' '.join(row[key].split())} {what}"
        for key, what in (
            ("seeds_failed", "failed"),
            ("seeds_unfinished", "unfinished"),
            ("seeds_missing", "missing"),
            ("seeds_skipped_by_racing", "skipped by racing"),
        )
        if row.get(key)
    ]
    return "; ".join(parts)


def write_by_config(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0]) if rows else ["config", "n"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows([{k: csv_value(v) for k, v in row.items()} for row in rows])
    tmp.replace(path)


def markdown_section(rows: list[dict[str, Any]], metric: str) -> str:
    """summary.md's "Seeds aggregated" section: mean ± 95% interval per configuration, the seeds left out named."""
    shown = [m for m in headline_metrics(metric) if any(r.get(f"{m}_mean") is not None for r in rows)]
    lines = [
        "",
        "## Seeds aggregated",
        "",
        f"One row per configuration (every override except `seed`): mean ± 95% interval over its seeds "
        f"(Student t; none for one seed). `n` counts the points with `{metric}`; a metric that fewer points have "
        f"shows its own count. Also in `{BY_CONFIG_CSV}`.",
        "",
        "| " + " | ".join(["configuration", "n", "seeds", "not counted", *[f"`{m}`" for m in shown]]) + " |",
        "|" + "---|" * (4 + len(shown)),
    ]
    for r in rows:
        raced = f" (raced out after wave {_wave(r['raced_out'])})" if r.get("raced_out") else ""
        cells = [r["config"] + raced, str(r["n"]), r["seeds"], not_counted(r) or "-"]
        for m in shown:
            mean, ci, n = r.get(f"{m}_mean"), r.get(f"{m}_ci95"), r.get(f"{m}_n")
            cells.append(
                fmt(mean) + (f" ± {fmt(ci, 2)}" if ci is not None else "") + (f" (n={n})" if n != r["n"] else "")
            )
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    out = [r for r in rows if r.get("raced_out")]
    if out:
        lines += ["", "Raced out (seed racing: their remaining seeds were not trained, see their status.json):", ""]
        lines += [f"- {md_cell(r['config'])}: {md_cell(r['raced_out'])}" for r in out]
    return "\n".join(lines) + "\n"


def _wave(reason: str) -> str:
    """The wave in a racing reason ("raced out after wave 2: ..."), else "?"."""
    words = reason.split(":", 1)[0].split()
    return words[-1] if words and words[-1].isdigit() else "?"


# ------------------------------------------------------------------------------------------------ plots


def plot_means_vs_param(plt, plots_dir: Path, points: list[RunRecord], swept: list[str], metric: str) -> list[dict]:
    """Headline metrics against each numeric swept parameter, mean over seeds with 95% error bars."""
    entries = []
    if not seeds_swept(swept):
        return entries
    rows_by_config = group_by_config(points, swept)
    panels = [m for m in headline_metrics(metric) if any(finite(p.value(m)) for p in points)][:6]
    # A metric with one value at every point (a scorer that scored nothing, a saturated accuracy) would be a flat
    # line passing for a result: left out, with why (flat.py).
    same = {
        k: why for k in panels if (why := flat.same_value_reason(k, [p.value(k) for p in points], points, "points"))
    }
    drawn = [k for k in panels if k not in same]
    for param in [k for k in swept if k != SEED_KEY]:
        filename = f"metrics_by_{safe_filename(param)}_mean.png"
        entry: dict[str, Any] = {"file": filename, "kind": "mean_vs_param", "x": param, "panels": []}
        if not panels or not is_numeric_param(points, param):
            entry["skipped"] = "no finished metrics" if not panels else f"{param} is not numeric"
            entries.append(entry)
            continue
        if same:
            entry["not_drawn"] = same
        if not drawn:
            entries.append(flat.skip(entry, " ".join(dict.fromkeys(same.values()))))
            continue
        panels_here = drawn
        others = [k for k in swept if k not in (param, SEED_KEY)]
        fig, axes = plt.subplots(1, len(panels_here), figsize=(4.5 * len(panels_here), 4), squeeze=False)
        for ax, key in zip(axes[0], panels_here, strict=True):
            series: dict[str, list[tuple[float, float, float]]] = {}
            for group in rows_by_config.values():
                mean, ci = mean_ci95([p.value(key) for p in group])
                if mean is None:
                    continue
                series.setdefault(point_label(group[0], others) if others else "mean over seeds", []).append(
                    (float(group[0].overrides[param]), mean, ci or 0.0)
                )
            panel = {"y": key, "series": []}
            for label, xs in series.items():
                xs.sort()
                ax.errorbar([x for x, _, _ in xs], [m for _, m, _ in xs], yerr=[c for _, _, c in xs], marker="o",
                            capsize=3, label=label)  # fmt: skip
                panel["series"].append({"label": label, "n_points": len(xs)})
            values = [float(p.overrides[param]) for p in points if param in p.overrides]
            if values and min(values) > 0 and max(values) / min(values) >= 20:
                ax.set_xscale("log")
            ax.set_xlabel(param)
            ax.set_title(key, fontsize="small")
            ax.grid(True, alpha=0.3)
            if others:
                ax.legend(fontsize="x-small")
            entry["panels"].append(panel)
        left_out = f"\n(the same at every point, not drawn: {', '.join(same)})" if same else ""
        fig.suptitle(f"mean over seeds with 95% intervals vs {param}{left_out}")
        fig.tight_layout()
        fig.savefig(plots_dir / filename, dpi=100)
        plt.close(fig)
        entries.append(entry)
    return entries
