"""The run folder: what every sweep point leaves on disk, independent of W&B.

    config.yaml      the resolved config (no ${...} left)
    status.json      state (running/completed/failed/cancelled/requeued/pruned/skipped_by_racing), times, host, overrides, SLURM ids, error + traceback
    metrics.jsonl    one JSON object per logged step (train and eval), appended as training goes
    progress.json    while training: step / max_steps, last loss and reward accuracy, times (for `dpo_sweeps.status`)
    metrics.json     the final metrics: eval_* (after training), initial_eval_* (before), train_*, data/*, ref_cache
    adapter/ or model/   the trained LoRA adapter or full model, with the tokenizer (merged/ optionally)
    samples.jsonl    completions for held-out prompts from the reference and the trained policy
    README.md        the model card

Every JSON file is written atomically (temp file + os.replace): after a preemption an old process can linger, and a
reader must never see half a file. Imports nothing heavy (the sweep report and the launcher read these files).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
SAMPLES_FILE = "samples.jsonl"
PROGRESS_FILE = "progress.json"
# In the sweep folder: the points of the last invocation, in launch order (written by sweep/preflight.py).
SWEEP_POINTS_FILE = "sweep_points.json"
MODEL_CARD_FILE = "README.md"

RUNNING, COMPLETED, FAILED, REQUEUED = "running", "completed", "failed", "requeued"
# A search trial its pruner stopped early (dpo_sweeps/search/): finished, not an error.
PRUNED = "pruned"
# A point whose SLURM task was cancelled (scancel, an admin) before it recorded an end: not a failure of the run.
CANCELLED = "cancelled"
# A seed of a grid sweep that seed racing decided not to train (dpo_sweeps/sweep/racing.py): its configuration was
# clearly worse than the best after the seeds run so far. Finished, not an error; nothing but status.json is written.
SKIPPED_BY_RACING = "skipped_by_racing"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as strings so that the file stays parseable by any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; run folders are shared with collaborators like any other output.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def read_status(run_dir: str | os.PathLike) -> dict | None:
    return read_json(Path(run_dir) / STATUS_FILE)


def update_status(folder: str | os.PathLike, /, **fields: Any) -> dict:
    """Merge `fields` into status.json (created if absent) and return the new status."""
    status = read_status(folder) or {}
    status.update(fields)
    status["updated_at"] = now_iso()
    write_json_atomic(Path(folder) / STATUS_FILE, status)
    return status


def read_sweep_points(sweep_dir: str | os.PathLike) -> list[dict] | None:
    try:
        return json.loads((Path(sweep_dir) / SWEEP_POINTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


# A search's driver (new trials, their states) and its launcher's threads (each trial's SLURM task id) both rewrite
# sweep_points.json from what they read: without one lock, one of them writes back a list without the other's change.
_SWEEP_POINTS_LOCK = threading.Lock()


def update_sweep_points(sweep_dir: str | os.PathLike, change: Callable[[list[dict] | None], list[dict] | None]) -> None:
    """Read sweep_points.json, let `change` return the new list (None: leave the file), write it: one writer at a time
    in this process."""
    with _SWEEP_POINTS_LOCK:
        points = change(read_sweep_points(sweep_dir))
        if points is not None:
            write_json_atomic(Path(sweep_dir) / SWEEP_POINTS_FILE, points)


def slurm_ids() -> dict[str, str]:
    """The SLURM identity of this process, if it runs in a SLURM job."""
    keys = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
        "restart_count": "SLURM_RESTART_COUNT",
        "node": "SLURMD_NODENAME",
        "partition": "SLURM_JOB_PARTITION",
    }
    return {name: os.environ[var] for name, var in keys.items() if var in os.environ}


def host() -> str:
    return socket.gethostname()


def append_history(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one logged step to metrics.jsonl (one line per write, so a crash loses at most the line in flight)."""
    path = Path(run_dir) / HISTORY_FILE
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record), sort_keys=True) + "\n")
        f.flush()


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A line cut short by a killed process: everything before it is intact.
            continue
    return rows


def truncate_history_after(run_dir: str | os.PathLike, step: int) -> None:
    """On resume from a checkpoint at `step`, drop history lines logged after it (they will be logged again)."""
    rows = read_history(run_dir)
    kept = [r for r in rows if r.get("step", 0) <= step]
    write_text_atomic(
        Path(run_dir) / HISTORY_FILE, "".join(json.dumps(_json_safe(r), sort_keys=True) + "\n" for r in kept)
    )
