"""`python -m dpo_sweeps.status <sweep folder>`: how every point of a sweep is doing, now or with --watch.

One row per point: state, step / max steps, last logged loss and reward accuracy, elapsed time and ETA, attempts,
SLURM job id. Merged from what the points leave on disk (read through `runs.reading`: status.json, progress.json, metrics.jsonl; the
point list the pre-launch check writes to sweep_points.json) and, when the sweep went through SLURM, from `squeue -t
all` (and `sacct` for a job squeue has forgotten, where accounting works), asked and mapped by `slurm.client`. It only
reads: states are what the run folders and SLURM say. `collect` is also what the submitting console's per-point lines
come from (`dpo_sweeps.sweep.watcher`).

Imports nothing heavy (no torch, no Hydra): it must answer in well under a second for a 64-point sweep on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading
from dpo_sweeps.slurm import client

PENDING, QUEUED, RUNNING, REQUEUED = "pending", client.QUEUED, run_folder.RUNNING, run_folder.REQUEUED
COMPLETED, FAILED, CANCELLED = run_folder.COMPLETED, run_folder.FAILED, run_folder.CANCELLED
# A search trial its pruner stopped early: finished, like completed (not a failure).
PRUNED = run_folder.PRUNED
# A seed that seed racing decided not to train (sweep/racing.py): finished as asked, neither failed nor pending.
SKIPPED_BY_RACING = run_folder.SKIPPED_BY_RACING
FINAL = (COMPLETED, FAILED, CANCELLED, PRUNED, SKIPPED_BY_RACING)
# Table order: what needs a person's attention first.
STATE_ORDER = (FAILED, CANCELLED, RUNNING, REQUEUED, QUEUED, PENDING, COMPLETED, PRUNED, SKIPPED_BY_RACING)
ACTIVE = frozenset({PENDING, QUEUED, RUNNING, REQUEUED})

EXIT_ALL_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_IN_PROGRESS = 0, 1, 2, 3
EXIT_CODES_HELP = f"""exit status:
  {EXIT_ALL_COMPLETED}  every point completed (or, in a search, was pruned; with racing, was skipped by it)
  {EXIT_FAILED}  at least one point failed or was cancelled (whatever the others are doing)
  {EXIT_USAGE}  usage error: no such folder, or no sweep points in it
  {EXIT_IN_PROGRESS}  nothing failed so far, but points are still pending, queued, running or requeued
With --watch the command returns when no point is active any more (or on Ctrl-C), with the code of the last table."""

# squeue/sacct answer well within this on a healthy controller; the command must answer in well under a minute.
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
    trial: int | None = None  # the search's trial number (hparams_search), else None


# ---------------------------------------------------------------------------------------------------------- reading


def read_point(run_dir: Path, now: float) -> PointStatus:
    """What the run folder alone says (no SLURM): pending when the point has not started."""
    if not (run_dir / run_folder.STATUS_FILE).exists():
        return PointStatus(name=run_dir.name, run_dir=str(run_dir), state=PENDING)
    status = reading.read_run(run_dir, history=False, objective=False).status
    progress = reading.read_json_object(run_dir / run_folder.PROGRESS_FILE) or {}
    logged = progress or reading.last_logged(run_dir)
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
        loss=reading.number(logged.get("loss")),
        reward_accuracy=reading.number(logged.get("reward_accuracy")),
        elapsed_s=reading.seconds_between(status.get("started_at"), status.get("ended_at"), now),
        attempts=status.get("attempts"),
        job_id=job_id,
        reason=status.get("error"),
        trial=(status.get("trial") or {}).get("number"),
    )
    if state == PRUNED:
        pruned = status.get("pruned") or {}
        point.step = pruned.get("step", point.step)
        point.reason = f"pruned at step {pruned.get('step')} ({pruned.get('metric')}={_short(pruned.get('value'))})"
    if state == SKIPPED_BY_RACING:
        point.reason = status.get("reason")
    if state == RUNNING:
        point.eta_s = reading.eta_seconds(progress, now)
    return point


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


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


def merge_slurm(point: PointStatus, slurm_state: str | None, slurm_reason: str = "") -> PointStatus:
    """Combine what the run folder says with SLURM's state of the point's task (`client.point_state`). The run folder
    wins once it holds a final state; SLURM tells a queued point from a pending one, and a task that died without
    recording its end."""
    if point.state in FINAL or slurm_state is None:
        return point
    state = client.point_state(slurm_state, ran_before=point.state != PENDING)
    if state in (QUEUED, REQUEUED):
        point.state = state
        point.reason = slurm_reason or point.reason
    elif state == RUNNING:
        point.state = RUNNING
    elif state in (CANCELLED, FAILED):  # died without recording its end
        point.state, point.reason = state, f"SLURM: {slurm_state}" + (f" ({slurm_reason})" if slurm_reason else "")
    return point


def collect(
    sweep_dir: Path,
    now: float | None = None,
    query_slurm: bool = True,
    task_states: dict[str, tuple[str, str]] | None = None,
) -> list[PointStatus]:
    """Every point's status: its run folder merged with SLURM's word. `task_states` (from the launcher's own poll, in
    the submitting process) is used instead of asking squeue again."""
    now = time.time() if now is None else now
    dirs = reading.point_dirs(sweep_dir)
    points = [read_point(d, now) for d in dirs]
    # A launcher that records each point's job id in sweep_points.json ("slurm_job_id") is taken at its word; else
    # the ids are read off submitit's task folders.
    recorded = [str(e.get("slurm_job_id") or "") for e in run_folder.read_sweep_points(sweep_dir) or []]
    tasks = submitted_tasks(sweep_dir, len(points)) if not any(recorded) else {}
    for i, p in enumerate(points):
        if p.job_id is None:
            p.job_id = (recorded[i] if i < len(recorded) and recorded[i] else None) or tasks.get(i)
    if not query_slurm and task_states is None:
        return points
    # Only points without a final state need SLURM's word.
    open_points = [p for p in points if p.job_id and p.state not in FINAL]
    if not open_points:
        return points
    queue = task_states
    if queue is None:
        try:
            queue = client.queue_states([p.job_id for p in open_points], timeout=SLURM_CALL_TIMEOUT_S)
        except client.SlurmCommandError:
            queue = {}  # no controller to ask: the run folders' word stands
    forgotten = [p.job_id for p in open_points if p.job_id not in queue and p.state in (RUNNING, REQUEUED)]
    accounting = client.accounting_states(forgotten, timeout=SLURM_CALL_TIMEOUT_S) if query_slurm else {}
    for p in open_points:
        state, reason = queue.get(p.job_id) or accounting.get(p.job_id) or (None, "")
        merge_slurm(p, state, reason)
    return points


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
        p.name if p.trial is None else f"#{p.trial} {p.name}",
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
