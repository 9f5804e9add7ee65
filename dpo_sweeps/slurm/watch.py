"""Waiting for a sweep's SLURM tasks, with an answer for every one, including tasks that die without a result.

submitit learns that a task ended from its result pickle (or from sacct, which the local cluster lacks): a task
killed outright (scancel without a signal, out of memory, node failure) writes none, and the stock launcher's
`job.results()` waits forever. Here every poll asks `squeue` for the states of all the sweep's tasks at once (one
command, whatever the size, through `client.py`, whose state map `status` shares). A task that squeue shows in a final
state, or no longer shows, for `GRACE_S` without a result file is asked about with `scontrol`/`sacct`
(`client.task_details`), and only a final state they confirm (or squeue's own final state) ends it: CANCELLED is
recorded as `cancelled`, every other final state as `failed`, in its point's status.json with SLURM's state, reason
and exit code, and the other points go on. An empty or "Invalid job id" answer from squeue alone never marks a task
dead: a task nobody can tell about (squeue, scontrol and sacct all silent) is given up only after `LOST_CONTACT_S`.
Requeued tasks (PENDING again) are not final. If the controller cannot be reached for `LOST_CONTACT_S`, the remaining
points are marked failed too: every wait here has an end.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.claim import describe
from dpo_sweeps.slurm import client, liveness

log = logging.getLogger(__name__)

POLL_S = 2.0
# A finished task's result pickle can land a moment after slurmctld marks it done (shared filesystems lag);
# submitit itself waits 15 s for it.
GRACE_S = 20.0
LOST_CONTACT_S = 600.0
# How often a task that squeue does not list, and that scontrol/sacct cannot place, is asked about again.
CONFIRM_EVERY_S = 10.0
GONE = client.GONE


# srun's line for a task that ended badly, in the job's first log: "srun: error: n2: task 3: Killed".
_SRUN_TASK_ERROR = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<rank>[\d,-]+): (?P<how>.+)$", re.M)
_SIGNALS = {
    "Killed": "SIGKILL",
    "Terminated": "SIGTERM",
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Hangup": "SIGHUP",
}


def _record(run_dir: str | Path, **fields: Any) -> None:
    """`update_status` that cannot end the sweep: a point's folder on a full disk (or gone) is said in the log, and the
    other points are still waited for; the summary then shows what the folder last held."""
    try:
        run_folder.update_status(run_dir, **fields)
    except OSError as exc:
        log.error("Could not record %s in %s: %s", fields.get("state", "an end"), Path(run_dir) / "status.json", exc)


def dead_rank(log_path: Path) -> dict[str, str] | None:
    """The first task of the job's latest attempt that srun reports killed or failed: rank, node and signal (or
    srun's words, "Exited with exit code 1"). None when every task ended well (or the log is unreadable)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    start = text.rfind(console.RANKS_START_MARKER)  # the log is appended to across requeues
    match = _SRUN_TASK_ERROR.search(text, max(start, 0))
    if match is None:
        return None
    how = match["how"].strip()
    return {"rank": match["rank"], "node": match["node"], "signal": _SIGNALS.get(how, how)}


def note_dead_rank(job: Any, point: dict | None) -> None:
    """Name the rank that died in the point's failure (status.json `error` and `dead_rank`)."""
    dead = dead_rank(job.paths.stderr) if point is not None else None
    if dead is None:
        return
    status = run_folder.read_status(point["run_dir"]) or {}
    # A scancel kills every rank: srun then reports rank 0 killed, but the cause is the cancel, and it stays cancelled.
    if status.get("state") in (run_folder.COMPLETED, run_folder.PRUNED, run_folder.CANCELLED):
        return
    said = f"rank {dead['rank']} on node {dead['node']} ended first ({dead['signal']}); srun ended the other ranks"
    error = status.get("error") or ""
    if said not in error:
        error = f"{said}. {error or 'SLURM task ' + str(job.job_id) + ' ended without a result.'}"
    _record(point["run_dir"], state=run_folder.FAILED, error=error, dead_rank=dead)
    log.error("Point %s: %s", point["run_dir"], said)


def _failed_with_peers(point: dict | None) -> bool:
    if point is None:
        return False
    status = run_folder.read_status(point["run_dir"]) or {}
    return status.get("state") == run_folder.FAILED and int(status.get("world_size") or 1) > 1


def _failed_return(overrides: list[str] | None, error: str) -> JobReturn:
    """What the sweeper gets for a point without a result: NaN, not an exception (Hydra's basic sweeper aborts the
    whole sweep on one, see sweep/job.py). The point's status.json says failed and why (`mark_dead`): the search's driver
    reads that."""
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=math.nan)


# What a final state without a result means, where SLURM's state says it (the others: any of the default's causes).
_HOW = {
    "CANCELLED": "cancelled (scancel by you or an admin)",
    "NODE_FAIL": "lost with its node (node failure: the node went down, or its slurmd came back without the job)",
    "OUT_OF_MEMORY": "killed for using more memory than it asked for (out of memory)",
    "TIMEOUT": "stopped at its time limit and not requeued",
}


def mark_dead(job_id: str, point: dict | None, overrides: list[str] | None, details: dict[str, str]) -> str:
    """Record a task that ended without a result: `cancelled` for SLURM's CANCELLED, else `failed`."""
    state, reason, code = details["state"], details["reason"], details["exit_code"]
    cancelled = client.base_state(state) == "CANCELLED"
    said = "is no longer known to SLURM" if state == GONE else f"ended {state}"
    why = ", ".join(
        x for x in (f"reason {reason}" if reason and reason != "None" else "", f"exit code {code}" if code else "") if x
    )
    how = _HOW.get(
        client.base_state(state), "killed outright (scancel, out of memory, node failure, a time limit without requeue)"
    )
    error = (
        f"SLURM task {job_id} {said}{f' ({why})' if why else ''} without a result: {how}. Its log: the sweep's "
        ".submitit/ folder. Rerun the sweep to run it again (completed points are skipped; this one resumes from its "
        "last complete checkpoint, if it has one)."
    )
    holder = liveness.other_live_holder(point["run_dir"], job_id) if point is not None else None
    if holder is not None:  # this task never trained there: the folder is the live holder's to record
        log.warning("SLURM task %s ended; %s holds its folder %s.", job_id, describe(holder), point["run_dir"])
        return error
    if point is not None:
        status = run_folder.read_status(point["run_dir"]) or {}
        if status.get("state") == run_folder.FAILED and status.get("error"):
            error = status["error"]  # the job recorded its own failure (a rank of a multi-task job, see sweep/job.py)
        if status.get("state") not in (run_folder.COMPLETED, run_folder.PRUNED):  # finished: not dead
            _record(
                point["run_dir"],
                state=run_folder.CANCELLED if cancelled else run_folder.FAILED,
                ended_at=status.get("ended_at") or run_folder.now_iso(),
                error=error,
                traceback=status.get("traceback"),
                overrides=status.get("overrides", overrides),
                slurm={
                    **status.get("slurm", {}),
                    "job_id_submitted": job_id,
                    "state": state,
                    "reason": reason,
                    "exit_code": code,
                },
            )
    log.error("Point %s: %s", point["run_dir"] if point else job_id, error)
    return error


def _result(job: Any, point: dict | None, overrides: list[str]) -> JobReturn:
    """The JobReturn the task pickled; a task whose function raised is a failed point, not a crash of the sweep."""
    try:
        return job.results()[0]
    except Exception as exc:
        error = f"SLURM task {job.job_id} raised: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
        if (
            point is not None
            and (run_folder.read_status(point["run_dir"]) or {}).get("state") != run_folder.FAILED
            and liveness.other_live_holder(point["run_dir"], job.job_id) is None
        ):
            _record(point["run_dir"], state=run_folder.FAILED, ended_at=run_folder.now_iso(), error=error)
        log.error("Point %s: %s", point["run_dir"] if point else job.job_id, error)
        return _failed_return(overrides, error)


def _ended(details: dict[str, str], queue_state: str) -> dict[str, str] | None:
    """`details` (from scontrol/sacct) when they confirm the task ended, or squeue itself showed a final state that
    scontrol/sacct have lost since; None otherwise. squeue's silence alone is not an end."""
    if client.is_final(details["state"]):
        return details
    if client.is_final(queue_state) and details["state"] == GONE:
        return {**details, "state": client.base_state(queue_state)}
    return None


def collect(
    jobs: list,
    points: list[dict | None],
    overrides: list[list[str]],
    on_task_states: Callable[[dict[str, tuple[str, str]]], None] | None = None,
) -> list[JobReturn]:
    """One JobReturn per job, in order, once every task has a result or is known dead (see the module doc). Each
    poll's states also go to `on_task_states` (the submitting console's lines), so no other poller is needed."""
    results: list[JobReturn | None] = [None] * len(jobs)
    pending = set(range(len(jobs)))
    final_since: dict[int, float] = {}  # squeue has shown the task final, or not at all, since
    unknown_since: dict[int, float] = {}  # scontrol and sacct have not known a final state for it since
    ask_after: dict[int, float] = {}
    unreachable_since: float | None = None
    while pending:
        for i in sorted(pending):
            # A failed multi-task point is collected once its task has ended: rank 0 records a lost peer at once,
            # srun's line naming the rank that died (`note_dead_rank`) comes a moment later.
            if jobs[i].paths.result_pickle.exists() and not _failed_with_peers(points[i]):
                results[i] = _result(jobs[i], points[i], overrides[i])
                pending.discard(i)
        if not pending:
            break
        now = time.monotonic()
        try:
            states = client.queue_states([jobs[i].job_id for i in pending])
            unreachable_since = None
        except client.SlurmCommandError as exc:
            unreachable_since = unreachable_since or now
            if now - unreachable_since < LOST_CONTACT_S:
                log.warning("Cannot read task states (retrying for up to %.0f s): %s", LOST_CONTACT_S, exc)
                time.sleep(POLL_S * 5)
                continue
            for i in sorted(pending):
                error = mark_dead(
                    jobs[i].job_id,
                    points[i],
                    overrides[i],
                    {"state": GONE, "reason": f"controller unreachable: {exc}", "exit_code": ""},
                )
                results[i] = _failed_return(overrides[i], error)
            break
        for i in sorted(pending):
            job_id = jobs[i].job_id
            state = states.get(job_id, (GONE, ""))[0]
            if not (client.is_final(state) or state == GONE):
                final_since.pop(i, None)  # queued, running, or requeued: running again
                unknown_since.pop(i, None)
                continue
            if jobs[i].paths.result_pickle.exists() or _failed_with_peers(points[i]):
                # A failed multi-task point (its rank recorded the failure, see sweep/job.py), now that its job has
                # ended: srun's line naming the rank that died is in the log by then, and submitit's own results()
                # would wait for every rank's result file.
                note_dead_rank(jobs[i], points[i])
                error = (run_folder.read_status(points[i]["run_dir"]) or {}).get("error") or "failed"
                results[i] = _failed_return(overrides[i], error)
                pending.discard(i)
                continue
            final_since.setdefault(i, now)
            if now - final_since[i] < GRACE_S or now < ask_after.get(i, 0.0) or jobs[i].paths.result_pickle.exists():
                continue
            details = client.task_details(job_id)
            ended = _ended(details, state)
            if ended is not None:
                error = mark_dead(job_id, points[i], overrides[i], ended)
                note_dead_rank(jobs[i], points[i])
                results[i] = _failed_return(overrides[i], error)
                pending.discard(i)
                continue
            if details["state"] != GONE:  # scontrol/sacct know it alive (pending again, running): squeue was wrong
                final_since.pop(i, None)
                unknown_since.pop(i, None)
                continue
            # scontrol and sacct cannot place it (accounting lagging or off, a purged id): ask again later, and give
            # up only when nobody has been able to tell for LOST_CONTACT_S.
            if i not in unknown_since:
                log.warning(
                    "SLURM task %s: squeue does not show it and neither scontrol nor sacct knows a final state; "
                    "waiting (up to %.0f s) before counting it lost.",
                    job_id,
                    LOST_CONTACT_S,
                )
            unknown_since.setdefault(i, now)
            ask_after[i] = now + CONFIRM_EVERY_S
            if now - unknown_since[i] >= LOST_CONTACT_S:
                error = mark_dead(
                    job_id,
                    points[i],
                    overrides[i],
                    {
                        "state": GONE,
                        "reason": f"unknown to squeue, scontrol and sacct for {LOST_CONTACT_S:.0f} s",
                        "exit_code": "",
                    },
                )
                results[i] = _failed_return(overrides[i], error)
                pending.discard(i)
        if on_task_states is not None:
            on_task_states(states)
        if pending:
            time.sleep(POLL_S)
    return [r for r in results if r is not None]
