"""The sweep's points as the report sees them: read through `runs.reading` (one `RunRecord` per point folder), which
parameters vary, which objective ranks them, and the small formatting helpers the tables and plots share.

Import-light (no matplotlib, nothing of the torch stack).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import DEFAULT_OBJECTIVE_MODE, RunRecord, all_point_dirs, finite, number, read_run

# A report point is a run folder's record.
Point = RunRecord

DEFAULT_METRIC = "eval_rewards/accuracies"
DEFAULT_MODE = DEFAULT_OBJECTIVE_MODE
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
    # The same mean outside the KL regime (another temperature, greedy, a logits processor): not a KL.
    "gen/logratio_to_ref": "log-ratio to ref (not KL)",
    "gen/finished_before": "finished before",
    "gen/finished_after": "finished after",
    # Fluency a rule scorer cannot see: mean log-prob per answer token under the reference (nats).
    "gen/ref_logprob_per_token_before": "ref logp/token before",
    "gen/ref_logprob_per_token_after": "ref logp/token after",
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
STATE_ORDER = {
    run_folder.RUNNING: 0,
    run_folder.REQUEUED: 1,
    run_folder.COMPLETED: 2,
    run_folder.PRUNED: 3,
    run_folder.FAILED: 4,
    run_folder.CANCELLED: 5,
}


class EmptySweepError(ValueError):
    """The sweep folder has no point folders (subfolders with a status.json)."""


def find_points(sweep_dir: str | Path, history: bool = True) -> list[RunRecord]:
    """Every point folder of the sweep (all invocations), in name order (`history=False`: without metrics.jsonl)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise EmptySweepError(f"{sweep_dir}: no such sweep folder")
    return [read_run(d, history=history) for d in all_point_dirs(sweep_dir)]


def swept_params(points: list[RunRecord]) -> tuple[list[str], dict[str, str]]:
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


def is_numeric_param(points: list[RunRecord], key: str) -> bool:
    values = [p.overrides[key] for p in points if key in p.overrides]
    return bool(values) and all(finite(number(v)) for v in values)


def resolve_objective(points: list[RunRecord], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The explicit arguments, else the objective in the points' config.yaml (the most common one), else the one
    recorded in metrics.json, else eval reward accuracy (max). An explicit metric without a mode gets the configured
    mode if it is the configured metric, else `default_mode(metric)`."""
    found = [p.objective for p in points if p.objective]
    found += [
        (str(p.metrics["objective_metric"]), DEFAULT_MODE)
        for p in points
        if not p.objective and p.metrics.get("objective_metric")
    ]
    # Counter, not max(found, key=found.count): that counted the whole list once per point (quadratic).
    configured = Counter(found).most_common(1)[0][0] if found else (DEFAULT_METRIC, DEFAULT_MODE)
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


def sort_points(points: list[RunRecord], metric: str, mode: str) -> list[RunRecord]:
    """Best first by `metric`; then the points without a finite value, unfinished before failed, by name."""
    ranked = [p for p in points if finite(p.value(metric))]
    ranked.sort(key=lambda p: (-p.value(metric) if mode == "max" else p.value(metric), p.name))
    rest = [p for p in points if not finite(p.value(metric))]
    rest.sort(key=lambda p: (STATE_ORDER.get(p.state, 6), p.name))
    return ranked + rest


def missing_reason(point: RunRecord, metric: str) -> str:
    value = point.value(metric)
    if value is not None and not math.isfinite(value):
        return f"{metric} is {value}"
    if point.state in (run_folder.RUNNING, run_folder.REQUEUED):
        return ""  # the status column already says why
    if point.state == run_folder.PRUNED:  # a search's pruner stopped it: where, and on what value
        pruned = point.status.get("pruned") or {}
        return f"pruned at step {pruned.get('step')} ({pruned.get('metric')}={fmt(number(pruned.get('value')))})"
    if point.metrics and metric not in point.metrics:
        return f"no {metric} in metrics.json"
    return ""


def fluency_note(point: RunRecord) -> str:
    """The generation eval's fluency flag (dpo_sweeps/eval/measures.py), said in words; "" when it is not up."""
    if point.metrics.get("gen/fluency_flag") is not True:
        return ""
    drop, limit = point.value("gen/fluency_drop"), point.value("gen/max_fluency_drop")
    return (
        f"fluency flag: answers {fmt(drop, 3)} nats/token less likely under the reference (> {fmt(limit, 3)}); "
        "read samples.jsonl"
    )


def notes_for(point: RunRecord, metric: str) -> list[str]:
    reason = missing_reason(point, metric)
    fluency = fluency_note(point)
    return point.notes + ([fluency] if fluency else []) + ([reason] if reason else [])


def csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def one_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    # A traceback's last line is the exception; an error message's first line names the cause (the hub's "We couldn't
    # connect to ..." comes before its "Check your internet connection ...").
    line = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def point_label(point: RunRecord, keys: list[str]) -> str:
    return ", ".join(f"{k}={point.overrides.get(k, '-')}" for k in keys) or point.name


def state_counts(points: list[RunRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in points:
        counts[p.state] = counts.get(p.state, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], 6)))


def value_order(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (beta=2 before beta=10), then everything else alphabetically."""
    n = number(value)
    return (0, n, "") if finite(n) else (1, 0.0, str(value))


def safe_filename(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
