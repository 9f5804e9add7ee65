"""A sweep as a pandas DataFrame, for notebooks (`from dpo_sweeps import load_sweep`):

    from dpo_sweeps import load_sweep
    df = load_sweep("outputs/sweeps/demo")
    df.sort_values("eval_rewards/accuracies", ascending=False)[["beta", "eval_rewards/accuracies"]]

One row per point, in the report's order (best first by the objective), with summary.csv's columns: the parameters
typed (numbers as int or float, true/false as bool, the rest as strings), the metrics as floats (NaN where a point
has none), `rank` as a nullable integer. Read from the run folders (never from a summary.csv that may be stale), the
metric histories left unread, so 10,000 points take seconds. pandas is imported here only.
"""

from __future__ import annotations

from pathlib import Path

from dpo_sweeps.report.points import (
    METRIC_COLUMNS,
    EmptySweepError,
    find_points,
    resolve_objective,
    sort_points,
    swept_params,
)
from dpo_sweeps.report.tables import csv_rows
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import number


def _typed(values: list):
    """A parameter's strings as numbers or bools when every value present is one, else as they are."""
    present = [v for v in values if v is not None]
    if present and all(str(v).lower() in ("true", "false") for v in present):
        return [None if v is None else str(v).lower() == "true" for v in values]
    parsed = [number(v) for v in present]
    if present and all(n is not None for n in parsed):
        if all(
            float(n).is_integer() and "." not in str(v) and "e" not in str(v).lower()
            for n, v in zip(parsed, present, strict=True)
        ):
            return [None if v is None else int(float(v)) for v in values]
        return [None if v is None else float(v) for v in values]
    return values


def load_sweep(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None):
    """The sweep's points as a DataFrame (see the module docstring). `metric`/`mode` rank the rows as
    `python -m dpo_sweeps.report --metric/--mode` does (default: the points' objective)."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    points = find_points(sweep_dir, history=False)
    if not points:
        raise EmptySweepError(
            f"{sweep_dir}: no sweep points found (a point is a subfolder with a {run_folder.STATUS_FILE}); give the "
            "sweep folder a `-m` run printed (outputs/sweeps/<name>)"
        )
    metric, mode = resolve_objective(points, metric, mode)
    points = sort_points(points, metric, mode)
    columns, rows = csv_rows(points, metric)
    swept, fixed = swept_params(points)
    data = {c: [row.get(c) for row in rows] for c in columns}
    for key in [*swept, *fixed]:
        data[key] = _typed(data[key])
    frame = pd.DataFrame(data, columns=columns)
    for c in columns:
        if c in METRIC_COLUMNS or c in (metric, "wall_time_s"):
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    frame["rank"] = frame["rank"].astype("Int64")
    frame.attrs.update(sweep_dir=str(sweep_dir), metric=metric, mode=mode, swept=swept)
    return frame
