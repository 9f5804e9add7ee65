"""The one reader of run folders: the sweep report, `python -m dpo_sweeps.status`, the sweep summary, the SLURM
launcher and the tests all read points through it, so they agree on what a folder says.

- `read_run(run_dir)`: status, overrides, final metrics, history and objective of one run; files that are missing,
  cut short or malformed become notes, never exceptions.
- `number(value)`: a metrics value as a float. Run folders store non-finite floats as the strings "nan"/"inf"
  (JSON has no NaN), so every reader parses them the same way.
- `point_dirs(sweep_dir)`: the last invocation's points in launch order (sweep_points.json), else every point
  folder; `all_point_dirs(sweep_dir)`: every point folder, by name (the report covers all invocations).
- `last_logged`, `seconds_between`, `eta_seconds`: what a progress display needs.

Standard library only (PyYAML, which comes with OmegaConf, inside `read_objective`, for folders older than the
`objective` field of status.json).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

DEFAULT_OBJECTIVE_MODE = "max"


@dataclass
class RunRecord:
    """Everything one run folder says, read once; what could not be read is in `notes`."""

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
    objective: tuple[str, str] | None = None  # (metric, mode): status.json's, else the point's config.yaml

    def value(self, key: str) -> float | None:
        return number(self.metrics.get(key))

    @property
    def run_dir(self) -> str:
        return str(self.status.get("run_dir") or self.path)

    @property
    def wall_time_s(self) -> float | None:
        start, end = parse_time(self.status.get("started_at")), parse_time(self.status.get("ended_at"))
        return (end - start).total_seconds() if start and end else None


def number(value: Any) -> float | None:
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


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def parse_time(value: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


# Overrides that steer how a sweep runs its points, not what a point trains: a seed retrained with
# racing.enabled=false after a raced sweep is the same configuration, not a new value of a swept parameter.
NOT_A_PARAMETER = ("racing.",)


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    """`["beta=0.1", "+lora.r=8", "~logger"]` -> `{"beta": "0.1", "lora.r": "8", "logger": "<deleted>"}` (without the
    `NOT_A_PARAMETER` keys)."""
    out: dict[str, str] = {}
    for item in overrides or []:
        item = str(item)
        if "=" in item:
            key, value = item.split("=", 1)
        else:
            key, value = item, "<deleted>" if item.startswith("~") else ""
        if not key.lstrip("+~").startswith(NOT_A_PARAMETER):
            out[key.lstrip("+~")] = value
    return out


# The `objective:` block of a config.yaml as OmegaConf.to_yaml writes it (a top-level key, its fields indented):
# parsed alone, because PyYAML's pure-Python loader takes ~45 ms for a whole resolved config (minutes at 1,000 points).
_OBJECTIVE_BLOCK = re.compile(r"^objective:[ \t]*\n((?:[ \t]+.*\n?)*)", re.MULTILINE)


def objective_from_status(status: dict) -> tuple[str, str] | None:
    """(metric, mode) that the job recorded in status.json when it started (runs since 2026-12)."""
    objective = status.get("objective")
    if not isinstance(objective, dict) or not objective.get("metric"):
        return None
    return str(objective["metric"]), str(objective.get("mode") or DEFAULT_OBJECTIVE_MODE)


def read_objective(run_dir: Path) -> tuple[str, str] | None:
    """(metric, mode) from the point's config.yaml, for folders whose status.json predates the `objective` field."""
    path = run_dir / run_folder.CONFIG_FILE
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    import yaml  # PyYAML comes with omegaconf; imported here so that the module itself stays stdlib-only

    match = _OBJECTIVE_BLOCK.search(text)
    try:
        objective = (yaml.safe_load(match.group(0)) or {}).get("objective") if match else None
    except yaml.YAMLError:
        objective = None
    if objective is None and not match and "objective" in text:
        # Written by hand in another layout (flow style, comments): the whole file, slowly but right.
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            return None
        objective = config.get("objective") if isinstance(config, dict) else None
    if not isinstance(objective, dict) or not objective.get("metric"):
        return None
    return str(objective["metric"]), str(objective.get("mode") or DEFAULT_OBJECTIVE_MODE)


def replan_notes(status: dict) -> list[str]:
    """One note per re-plan of a point that died of memory (status.json `replans`, slurm/replan.py): what changed
    and why, for the sweep's tables and its console summary."""
    notes = []
    for plan in status.get("replans") or []:
        if isinstance(plan, dict):
            changes = ", ".join(
                f"{k} {c.get('from')} -> {c.get('to')}"
                for k, c in (plan.get("changes") or {}).items()
                if isinstance(c, dict)
            )
            notes.append(f"re-planned: {changes} ({plan.get('why', '')})")
    return notes


def read_run(run_dir: Path, history: bool = True, objective: bool = True) -> RunRecord:
    """One point, whatever state its files are in: problems become notes, never exceptions. `history=False` skips
    metrics.jsonl, `objective=False` the objective (what `status` does not need)."""
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

    rows: list[dict[str, Any]] = []
    if history:
        try:
            rows = [row for row in run_folder.read_history(run_dir) if isinstance(row, dict)]
        except (OSError, UnicodeDecodeError) as e:
            notes.append(f"metrics.jsonl unreadable: {e}")

    notes += replan_notes(status)
    error = status.get("error") or ""
    if isinstance(error, dict):  # tolerate {"type":..., "message":...}
        error = ": ".join(str(v) for v in error.values())
    return RunRecord(
        name=run_dir.name,
        path=run_dir,
        state=state,
        overrides=overrides,
        metrics=metrics,
        history=rows,
        status=status,
        error=str(error),
        notes=notes,
        objective=(objective_from_status(status) or read_objective(run_dir)) if objective else None,
    )


def all_point_dirs(sweep_dir: Path) -> list[Path]:
    """Every immediate subfolder with a status.json, in name order (hidden folders, e.g. runs moved aside, skipped)."""
    return [
        d
        for d in sorted(Path(sweep_dir).iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / run_folder.STATUS_FILE).exists()
    ]


def point_dirs(sweep_dir: Path) -> list[Path]:
    """The point folders in launch order: from sweep_points.json (the last invocation's points), else every subfolder
    with a status.json. The stored paths are relative to where the sweep was started; a reader may run from
    anywhere, so only their last component (the point's folder name) is used."""
    points = run_folder.read_sweep_points(sweep_dir)
    if points:
        return [Path(sweep_dir) / Path(p["run_dir"]).name for p in points]
    return sorted(p.parent for p in Path(sweep_dir).glob(f"*/{run_folder.STATUS_FILE}"))


def read_json_object(path: Path) -> dict | None:
    """A JSON object from `path`; None when absent, cut short (another writer than ours) or not an object."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_logged(run_dir: Path) -> dict:
    """Last train loss / reward accuracy from the tail of metrics.jsonl (runs that predate progress.json)."""
    path = run_dir / run_folder.HISTORY_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            return {"step": row.get("step"), "loss": row.get("loss"), "reward_accuracy": row.get("rewards/accuracies")}
    return {}


def seconds_between(start: str | None, end: str | None, now: float) -> float | None:
    if not start:
        return None
    try:
        t0 = _dt.datetime.fromisoformat(start).timestamp()
        t1 = _dt.datetime.fromisoformat(end).timestamp() if end else now
    except ValueError:
        return None
    return max(0.0, t1 - t0)


def eta_seconds(progress: dict, now: float) -> float | None:
    """Remaining time at the pace since training (re)started: steps left / steps per second, less the time since the
    last update."""
    step, max_steps = progress.get("step"), progress.get("max_steps")
    start_step, started, updated = progress.get("start_step", 0), progress.get("started_at"), progress.get("updated_at")
    if not (isinstance(step, int) and isinstance(max_steps, int) and started and updated):
        return None
    done, spent = step - start_step, updated - started
    if done <= 0 or spent <= 0:
        return None
    return max(0.0, (max_steps - step) * spent / done - (now - updated))
