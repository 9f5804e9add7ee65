"""Before a launcher starts a point: is its run folder held by a live job of an earlier or parallel invocation (a
search whose driver died while its trials ran, a grid sweep run twice)? Then that job is waited for and its result
collected, never a second job started (two jobs in one folder destroy each other's checkpoints and history), and the
console says so. `rerun=true` refuses such a folder, naming the job.

The SLURM launcher also claims each folder for the task it has just submitted (`runs/claim.py`), so that a parallel
invocation sees the folder taken while the task still waits in the queue; where a parallel invocation got there
first, the task just submitted is cancelled and the other one waited for. Used by `slurm/launcher.py` and
`sweep/local_launcher.py`.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from dpo_sweeps.config import naming
from dpo_sweeps.runs import claim as claim_mod
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import liveness, site

log = logging.getLogger(__name__)


def point_for(sweep_dir: Path, overrides: list[str], known: dict[tuple[str, ...], dict]) -> dict:
    """The pre-launch check's point, or (a search's trials: their points do not exist before it runs) one with the
    run folder the job will use."""
    point = known.get(tuple(overrides))
    if point is not None:
        return point
    return {"overrides": list(overrides), "run_dir": str(sweep_dir / naming.sweep_subdirname(list(overrides)))}


def split_live(entries: list, rerun: bool) -> tuple[list, list[tuple[Any, dict]]]:
    """(entries to start, [(entry, holder)] to wait for); entries are tuples whose last item is the point (or None).
    With `rerun` a held folder ends the command with one message naming the job(s)."""
    dirs = [e[-1]["run_dir"] for e in entries if e[-1] is not None]
    live = liveness.live_holders(dirs) if dirs else {}
    if not live:
        return entries, []
    if rerun:
        held = "\n".join(f"  - {Path(d).name}: {claim_mod.describe(h)}" for d, h in live.items())
        raise SystemExit(
            f"Error: rerun=true, but {len(live)} point(s) are being run by a live job right now:\n{held}\n"
            "Nothing was started. Wait for those jobs to end (or cancel them: scancel <job id>), then run again."
        )
    start, wait = [], []
    for entry in entries:
        holder = live.get(entry[-1]["run_dir"]) if entry[-1] is not None else None
        if holder is None:
            start.append(entry)
        else:
            wait.append((entry, holder))
            say_waiting(entry[-1]["run_dir"], holder)
    return start, wait


def say_waiting(run_dir: str, holder: dict) -> None:
    log.warning(
        "Point %s is held by %s (started by an earlier or parallel invocation): waiting for it and collecting its "
        "result instead of starting it again.",
        Path(run_dir).name,
        claim_mod.describe(holder),
    )


def claim_submitted(entries: list, jobs: list) -> dict[int, dict]:
    """Claim each submitted point's folder for its task; {index: holder} where a live job of another invocation got
    there first (those tasks are cancelled here: they would only refuse to start)."""
    lost: dict[int, dict] = {}
    for i, (entry, job) in enumerate(zip(entries, jobs, strict=True)):
        point = entry[-1]
        if point is None:
            continue
        holder = {"slurm": {"task": job.job_id}, "submitted_at": run_folder.now_iso(), "submitted_by": claim_mod.me()}
        try:
            claim_mod.claim(point["run_dir"], holder, liveness.holder_alive, keep_richer=True)
        except claim_mod.FolderBusyError as busy:
            lost[i] = busy.holder
            say_waiting(point["run_dir"], busy.holder)
    if lost:
        tasks = [jobs[i].job_id for i in lost]
        subprocess.run(["scancel", *tasks], capture_output=True, text=True, timeout=site.COMMAND_TIMEOUT_S, check=False)
        log.info("Cancelled %s: their folders are another invocation's.", ", ".join(tasks))
    return lost


def holder_job(folder: Path, holder: dict) -> Any | None:
    """A submitit handle on a SLURM holder's task (its result pickle is in the same sweep's .submitit folder), or
    None for a holder that is not a SLURM task."""
    task = (holder.get("slurm") or {}).get("task")
    if not task:
        return None
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=folder, job_id=task, tasks=[0])
