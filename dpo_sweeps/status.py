"""`python -m dpo_sweeps.status <sweep folder>`: how every point of a sweep is doing, now or with --watch.

One row per point: state, step / max steps, last logged loss and reward accuracy, elapsed time and ETA, attempts,
SLURM job id. Merged from what the points leave on disk (status.json, progress.json, metrics.jsonl; the point list
preflight.py writes to sweep_points.json) and, when the sweep went through SLURM, from `squeue -t all` (and `sacct`
for a job squeue has forgotten, where accounting works). It only reads: states are what the run folders and SLURM say.

Imports nothing heavy (no torch, no Hydra): it must answer in well under a second for a 64-point sweep on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder

PENDING, QUEUED, RUNNING, REQUEUED = "pending", "queued", run_folder.RUNNING, run_folder.REQUEUED
COMPLETED, FAILED, CANCELLED = run_folder.COMPLETED, run_folder.FAILED, "cancelled"
# Table order: what needs a person's attention first.
STATE_ORDER = (FAILED, CANCELLED, RUNNING, REQUEUED, QUEUED, PENDING, COMPLETED)
ACTIVE = frozenset({PENDING, QUEUED, RUNNING, REQUEUED})

EXIT_ALL_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_IN_PROGRESS = 0, 1, 2, 3
EXIT_CODES_HELP = f"""exit status:
  {EXIT_ALL_COMPLETED}  every point completed
  {EXIT_FAILED}  at least one point failed or was cancelled (whatever the others are doing)
  {EXIT_USAGE}  usage error: no such folder, or no sweep points in it
  {EXIT_IN_PROGRESS}  nothing failed so far, but points are still pending, queued, running or requeued
With --watch the command returns when no point is active any more (or on Ctrl-C), with the code of the last table."""

# SLURM job states (squeue %T / sacct State) and what they mean for a point that has not recorded a final state.
SLURM_WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
SLURM_ACTIVE = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"})
SLURM_CALL_TIMEOUT_S = 5
# Folder names submitit gives array tasks under <sweep>/.submitit/ (its %j is <array job id>_<task id>).
_TASK_DIR = re.compile(r"^(\d+)_(\d+)$")


@dataclass
class PointStatus:
    name: str
    run_dir: str
    state: str
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    reward_accuracy: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    attempts: int | None = None
    job_id: str | None = None
    reason: str | None = None


# ---------------------------------------------------------------------------------------------------------- reading


def point_dirs(sweep_dir: Path) -> list[Path]:
    """The point folders in launch order: from sweep_points.json (the last invocation's points), else every subfolder
    with a status.json. The stored paths are relative to where the sweep was started; the status command may run from
    anywhere, so only their last component (the point's folder name) is used."""
    points = run_folder.read_sweep_points(sweep_dir)
    if points:
        return [sweep_dir / Path(p["run_dir"]).name for p in points]
    return sorted(p.parent for p in sweep_dir.glob(f"*/{run_folder.STATUS_FILE}"))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # absent, or (from another writer than ours) cut short
        return None
    return data if isinstance(data, dict) else None


def _last_logged(run_dir: Path) -> dict:
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


def _seconds_between(start: str | None, end: str | None, now: float) -> float | None:
    if not start:
        return None
    try:
        t0 = datetime.fromisoformat(start).timestamp()
        t1 = datetime.fromisoformat(end).timestamp() if end else now
    except ValueError:
        return None
    return max(0.0, t1 - t0)


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_point(run_dir: Path, now: float) -> PointStatus:
    """What the run folder alone says (no SLURM): pending when the point has not started."""
    status = run_folder.read_status(run_dir) if (run_dir / run_folder.STATUS_FILE).exists() else None
    if status is None:
        return PointStatus(name=run_dir.name, run_dir=str(run_dir), state=PENDING)
    progress = _read_json(run_dir / run_folder.PROGRESS_FILE) or {}
    logged = progress or _last_logged(run_dir)
    slurm = status.get("slurm") or {}
    job_id = (
        f"{slurm['array_job_id']}_{slurm['array_task_id']}"
        if slurm.get("array_job_id") and slurm.get("array_task_id") is not None
        else slurm.get("job_id")
    )
    state = status.get("state") or PENDING
    point = PointStatus(
        name=run_dir.name,
        run_dir=str(run_dir),
        state=state,
        step=logged.get("step"),
        max_steps=progress.get("max_steps"),
        loss=_number(logged.get("loss")),
        reward_accuracy=_number(logged.get("reward_accuracy")),
        elapsed_s=_seconds_between(status.get("started_at"), status.get("ended_at"), now),
        attempts=status.get("attempts"),
        job_id=job_id,
        reason=status.get("error"),
    )
    if state == RUNNING:
        point.eta_s = eta_seconds(progress, now)
    return point


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


# ------------------------------------------------------------------------------------------------------------ SLURM


def submitted_tasks(sweep_dir: Path, n_points: int) -> dict[int, str]:
    """Point index -> SLURM array task id ("<array>_<task>"), from the task folders submitit leaves under
    <sweep>/.submitit/. hydra-submitit-launcher submits each batch of points as one array whose task i is the batch's
    i-th point; every invocation of the sweep launches all its points (completed ones skip themselves), so the newest
    arrays whose sizes add up to the number of points are this invocation's, in launch order."""
    folder = sweep_dir / ".submitit"
    arrays: dict[int, set[int]] = {}
    try:
        for entry in os.scandir(folder):
            m = _TASK_DIR.match(entry.name)
            if m:
                arrays.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    except FileNotFoundError:
        return {}
    chosen, total = [], 0
    for array_id in sorted(arrays, reverse=True):
        if total >= n_points:
            break
        chosen.append(array_id)
        total += max(arrays[array_id]) + 1
    mapping, index = {}, 0
    for array_id in reversed(chosen):
        for task in range(max(arrays[array_id]) + 1):
            mapping[index] = f"{array_id}_{task}"
            index += 1
    return mapping if total == n_points else {}


def _slurm(args: list[str]) -> str | None:
    if not shutil.which(args[0]):
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=SLURM_CALL_TIMEOUT_S)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return out.stdout if out.returncode == 0 else None


def squeue_states(array_ids: set[str]) -> dict[str, tuple[str, str]]:
    """Task id -> (state, reason) for every task slurmctld remembers, finished ones included (MinJobAge)."""
    if not array_ids:
        return {}

    def query(ids):
        return _slurm(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(sorted(ids)), "-o", "%i|%T|%r"])

    out = query(array_ids)
    if out is None and len(array_ids) > 1:  # one purged id makes squeue refuse the whole list: ask one by one
        out = "".join(query([i]) or "" for i in array_ids)
    states = {}
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], "" if parts[2] in ("None", "(null)") else parts[2])
    return states


def sacct_states(task_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Task id -> (state, exit code) from accounting; {} where accounting is off (sacct fails, we stay silent)."""
    if not task_ids:
        return {}
    out = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(task_ids), "-o", "JobID,State,ExitCode"])
    states = {}
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], f"exit code {parts[2]}")
    return states


def merge_slurm(point: PointStatus, slurm_state: str | None, slurm_reason: str = "") -> PointStatus:
    """Combine what the run folder says with SLURM's state of the point's task. The run folder wins once it holds a
    final state; SLURM tells a queued point from a pending one, and a task that died without recording its end."""
    if point.state in (COMPLETED, FAILED) or slurm_state is None:
        return point
    base = slurm_state.split()[0]  # "CANCELLED by 0"
    if base in SLURM_WAITING:
        point.state = QUEUED if point.state == PENDING else REQUEUED
        point.reason = slurm_reason or point.reason
    elif base in SLURM_ACTIVE:
        point.state = RUNNING
    elif base == "CANCELLED":
        point.state, point.reason = CANCELLED, f"SLURM: {slurm_state}" + (f" ({slurm_reason})" if slurm_reason else "")
    elif base != "COMPLETED":  # FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...: died without recording its end
        point.state, point.reason = FAILED, f"SLURM: {slurm_state}" + (f" ({slurm_reason})" if slurm_reason else "")
    return point


def collect(sweep_dir: Path, now: float | None = None, query_slurm: bool = True) -> list[PointStatus]:
    now = time.time() if now is None else now
    dirs = point_dirs(sweep_dir)
    points = [read_point(d, now) for d in dirs]
    # A launcher that records each point's job id in sweep_points.json ("slurm_job_id") is taken at its word; else
    # the ids are read off submitit's task folders.
    recorded = [str(e.get("slurm_job_id") or "") for e in run_folder.read_sweep_points(sweep_dir) or []]
    tasks = submitted_tasks(sweep_dir, len(points)) if not any(recorded) else {}
    for i, p in enumerate(points):
        if p.job_id is None:
            p.job_id = (recorded[i] if i < len(recorded) and recorded[i] else None) or tasks.get(i)
    if not query_slurm:
        return points
    # Only points without a final state need SLURM's word.
    open_points = [p for p in points if p.job_id and p.state not in (COMPLETED, FAILED)]
    if not open_points:
        return points
    queue = squeue_states({p.job_id.split("_")[0] for p in open_points})
    forgotten = [p.job_id for p in open_points if p.job_id not in queue and p.state in (RUNNING, REQUEUED)]
    accounting = sacct_states(forgotten)
    for p in open_points:
        state, reason = queue.get(p.job_id) or accounting.get(p.job_id) or (None, "")
        merge_slurm(p, state, reason)
    return points


class SweepWatcher:
    """For launchers that run points in other processes (submitit local, SLURM): prints a point's line when it starts
    and when it ends, from the submitting process, by polling `collect` every `interval_s` on a daemon thread."""

    def __init__(self, sweep_dir: Path, interval_s: float = 5.0, stream=None):
        import threading

        self.sweep_dir, self.interval_s, self.stream = sweep_dir, interval_s, stream or sys.stdout
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpo-sweeps-watcher", daemon=True)

    def start(self) -> SweepWatcher:
        # What the folders hold before this invocation (a previous attempt's failure) is not news.
        self.seen = {p.name: p.state for p in collect(self.sweep_dir, query_slurm=False)}
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and print what changed since the last poll (the sweep is over: no more lines after this)."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + SLURM_CALL_TIMEOUT_S * 2)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # a status glitch must never take the sweep down
                print(f"(sweep status unavailable: {type(exc).__name__}: {exc})", file=self.stream, flush=True)

    def poll(self) -> None:
        points = collect(self.sweep_dir)
        for i, p in enumerate(points):
            before = self.seen.get(p.name)
            if before == p.state:
                continue
            self.seen[p.name] = p.state
            line = self.transition(before, p)
            if line:
                print(console.point_line(i, len(points), p.name, *line), file=self.stream, flush=True)

    @staticmethod
    def transition(before: str | None, p: PointStatus) -> tuple[str, str] | None:
        job = f"SLURM job {p.job_id}" if p.job_id else ""
        if p.state == RUNNING and before != RUNNING:
            return ("started", f"({job})" if job else "")
        if p.state == REQUEUED:
            return ("requeued", p.reason or "")
        if p.state == COMPLETED and before is not None:
            final = run_folder.read_json(Path(p.run_dir) / run_folder.METRICS_FILE) or {}
            acc = final.get("eval_rewards/accuracies")
            acc = f", eval reward acc {acc:.3f}" if isinstance(acc, int | float) else ""
            return ("completed", f"in {console.duration(p.elapsed_s)}{acc}")
        if p.state in (FAILED, CANCELLED):
            return (p.state, (p.reason or "").splitlines()[0][:200] if p.reason else "")
        return None


# ----------------------------------------------------------------------------------------------------------- output


def exit_code(points: list[PointStatus]) -> int:
    states = {p.state for p in points}
    if states & {FAILED, CANCELLED}:
        return EXIT_FAILED
    if states & ACTIVE:
        return EXIT_IN_PROGRESS
    return EXIT_ALL_COMPLETED


def _cells(p: PointStatus) -> list[str]:
    step = "-" if p.step is None else (f"{p.step}/{p.max_steps}" if p.max_steps else str(p.step))
    return [
        p.name,
        p.state,
        step,
        "-" if p.loss is None else f"{p.loss:.4f}",
        "-" if p.reward_accuracy is None else f"{p.reward_accuracy:.3f}",
        console.duration(p.elapsed_s),
        console.duration(p.eta_s) if p.state == RUNNING else "-",
        "-" if p.attempts is None else str(p.attempts),
        p.job_id or "-",
    ]


HEADER = ["point", "state", "step", "loss", "reward_acc", "elapsed", "eta", "attempts", "slurm_job"]


def format_table(sweep_dir: Path, points: list[PointStatus], limit: int | None = 40) -> str:
    """The whole table while it fits `limit` rows (None = always). Past that, a person cannot read 1000 rows: the
    points that need attention (failed, cancelled, running, requeued) are listed first, up to `limit`, and the rest are
    counted by state."""
    counts = Counter(p.state for p in points)
    summary = ", ".join(f"{counts[s]} {s}" for s in STATE_ORDER if counts[s]) or "no points"
    lines = [f"Sweep {sweep_dir}: {len(points)} point(s): {summary}"]
    shown = points
    hidden: Counter = Counter()
    if limit is not None and len(points) > limit:
        rank = {s: i for i, s in enumerate(STATE_ORDER)}
        urgent = [p for p in points if p.state in (FAILED, CANCELLED, RUNNING, REQUEUED)]
        urgent.sort(key=lambda p: rank[p.state])
        shown = urgent[:limit]
        shown_ids = {id(p) for p in shown}
        hidden = Counter(p.state for p in points if id(p) not in shown_ids)
    rows = [HEADER, *(_cells(p) for p in shown)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    numeric = {2, 3, 4, 5, 6, 7}
    for r in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    if hidden:
        rest = ", ".join(f"{hidden[s]} {s}" for s in STATE_ORDER if hidden[s])
        lines.append(f"  ... not listed: {rest} (--all lists every point)")
    problems = [p for p in shown if p.state in (FAILED, CANCELLED) and p.reason]
    if problems:
        lines.append("Why:")
        lines += [f"  {p.name}: {p.reason.splitlines()[0][:200]}" for p in problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_sweeps.status",
        description="How every point of a sweep is doing: state, step, loss, reward accuracy, elapsed, ETA, attempts, "
        "SLURM job. Reads the run folders and, for SLURM sweeps, squeue/sacct.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (outputs/sweeps/<name>)")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=10.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 10) until no point is pending, queued, running or requeued",
    )
    parser.add_argument("--all", action="store_true", help="list every point, however many (default: at most 40)")
    parser.add_argument("--json", action="store_true", help="one JSON object per point instead of the table")
    parser.add_argument("--no-slurm", action="store_true", help="read the run folders only; do not call squeue/sacct")
    args = parser.parse_args(argv)

    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        print(f"Error: {sweep_dir} is not a folder. Give a sweep folder, e.g. outputs/sweeps/<name>.", file=sys.stderr)
        return EXIT_USAGE
    interactive = sys.stdout.isatty()
    try:
        while True:
            points = collect(sweep_dir, query_slurm=not args.no_slurm)
            if not points:
                print(
                    f"Error: {sweep_dir} holds no sweep points (no {run_folder.SWEEP_POINTS_FILE}, no */"
                    f"{run_folder.STATUS_FILE}). Is it the folder a `-m` sweep printed?",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            if args.json:
                text = json.dumps([asdict(p) for p in points], indent=1)
            else:
                text = format_table(sweep_dir, points, limit=None if args.all else 40)
            if args.watch and interactive:
                print("\033[H\033[2J", end="")  # clear the screen: a redraw, not a scroll of tables
            if args.watch:
                text = f"{time.strftime('%H:%M:%S')}  {text}"
            print(text, flush=True)
            code = exit_code(points)
            if not args.watch or code == EXIT_ALL_COMPLETED or not any(p.state in ACTIVE for p in points):
                return code
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return exit_code(points) if "points" in locals() and points else EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
