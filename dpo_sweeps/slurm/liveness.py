"""Is the job that holds a run folder alive? SLURM's word for a SLURM holder (pending, requeued or running in squeue;
scontrol / sacct for one squeue has forgotten), the process table for a local one (`runs/claim.py`).

What uses it: the job claiming its folder (`sweep/job.py`: it refuses one another live job holds), the launchers
before they start a point (a point held by a live job of an earlier or parallel invocation is waited for and its
result collected, never started twice; `rerun=true` refuses it), and whatever records a dead job's end (never into a
folder another live job holds). Import-light: `client` (subprocess) and `runs` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from dpo_sweeps.runs import claim as claim_mod
from dpo_sweeps.slurm import client

log = logging.getLogger(__name__)

WAIT_POLL_S = 5.0


def _task(holder: dict) -> str | None:
    return (holder.get("slurm") or {}).get("task")


def _judge(holder: dict, states: dict[str, tuple[str, str]]) -> bool | None:
    task = _task(holder)
    if not task:
        return claim_mod.local_alive(holder)
    if task in states:
        state = states[task][0]
    else:  # squeue has forgotten it (or never listed it): scontrol / sacct
        state = client.task_details(task)["state"]
        if state == client.GONE:
            return False
    holder["slurm_state"] = client.base_state(state)
    return not client.is_final(state)


def holder_alive(holder: dict) -> bool | None:
    """True while the holder's job can still run (pending, requeued, running), False once it ended; None when SLURM
    cannot be asked (or a local process lives on another host): then it counts as alive."""
    task = _task(holder)
    try:
        return _judge(holder, client.queue_states([task]) if task else {})
    except client.SlurmCommandError:
        return None


def live_holders(run_dirs: Iterable[str | Path]) -> dict[str, dict]:
    """{run folder: its holder} for the folders a live job (or one whose liveness cannot be told) holds; one squeue
    call for all their SLURM holders."""
    claims = {str(d): c for d in run_dirs if (c := claim_mod.read(d)) is not None}
    if not claims:
        return {}
    tasks = [t for c in claims.values() if (t := _task(c))]
    try:
        states = client.queue_states(tasks) if tasks else {}
    except client.SlurmCommandError:
        return {d: c for d, c in claims.items() if _task(c) or claim_mod.local_alive(c) is not False}
    # Tasks slurmctld has forgotten (MinJobAge): one sacct call for all of them, scontrol/sacct one by one only for
    # what accounting does not know either.
    forgotten = [t for t in tasks if t not in states]
    states.update({t: (s, "") for t, (s, _) in client.accounting_states(forgotten).items() if client.is_final(s)})
    out = {}
    for run_dir, holder in claims.items():
        try:
            verdict = _judge(holder, states)
        except client.SlurmCommandError:
            verdict = None
        if verdict is not False:
            out[run_dir] = holder
    return out


def claim_for_this_job(run_dir: str | Path) -> dict:
    """Claim the folder for this process (see runs/claim.py); returns the holder written. Raises
    claim.FolderBusyError when another live job holds it."""
    holder = claim_mod.me()
    taken = claim_mod.claim(run_dir, holder, holder_alive)
    if taken is not None:
        log.info("%s: taken over from %s, which has ended.", Path(run_dir).name, claim_mod.describe(taken))
    return holder


def other_live_holder(run_dir: str | Path, task: str | None = None) -> dict | None:
    """The folder's holder when it is alive and not SLURM task `task`: a dead task's end is then not this folder's
    end (another job trains there), and nothing may be recorded into it."""
    holder = claim_mod.read(run_dir)
    if holder is None or (task is not None and _task(holder) == task):
        return None
    return holder if holder_alive(holder) is not False else None


def wait_released(run_dirs: Iterable[str | Path], poll_s: float = WAIT_POLL_S, timeout_s: float | None = None) -> None:
    """Wait until no live job holds any of `run_dirs` (their holders started elsewhere: an earlier or parallel
    invocation). Returns early at `timeout_s`."""
    pending = [str(d) for d in run_dirs]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        pending = list(live_holders(pending))
        if not pending or (deadline is not None and time.monotonic() > deadline):
            return
        time.sleep(poll_s)
