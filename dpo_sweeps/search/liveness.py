"""A search started again after its driver died: what became of the trials the journal still calls RUNNING.

Optuna's journal storage has no heartbeat (optuna issue 6615): a RUNNING trial whose driver died stays RUNNING until
someone tells it. For each such trial the run folder and the job that holds it decide (`slurm/liveness.py`):
- its job still runs (SLURM: pending, requeued or running; local: the process lives): the trial is waited for (the
  launcher attaches to that job and collects its result), never launched a second time;
- its job is gone and the folder never recorded an end (killed with the driver, out of memory, scancelled, lost with
  its node): the folder gets its true final state (SLURM's state and reason, as for a grid point) and the trial is
  failed with that reason (`hydra.sweeper.retry_failed` then runs it again with the same parameters);
- the folder has no end of this trial and no job ever claimed it for this trial (asked, never launched): launched.
"""

from __future__ import annotations

from pathlib import Path

from dpo_sweeps.runs import claim as claim_mod
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import client, handoff, watch
from dpo_sweeps.slurm import liveness as job_liveness

LIVE, GONE, UNLAUNCHED = "live", "gone", "unlaunched"


def job_state(run_dir: Path, number: int) -> tuple[str, dict | None]:
    """(LIVE, holder), (GONE, status.json) or (UNLAUNCHED, None) for trial `number` in `run_dir` (see the module)."""
    holder = claim_mod.read(run_dir)
    if holder is not None and job_liveness.holder_alive(holder) is not False:
        return LIVE, holder
    status = run_folder.read_status(run_dir) or {}
    if (status.get("trial") or {}).get("number") != number:
        return UNLAUNCHED, None
    return GONE, status


def _task(slurm: dict) -> str | None:
    if slurm.get("array_job_id") and slurm.get("array_task_id") is not None:
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")


def record_dead(run_dir: Path, status: dict) -> str:
    """Write the true end of a trial whose job is gone into its folder (unless the folder holds one); the reason."""
    state = status.get("state")
    if state in (run_folder.FAILED, run_folder.CANCELLED):
        return str(status.get("error") or state)
    task = _task(status.get("slurm") or {})
    if task:
        details = client.task_details(task)
        if not client.is_final(details["state"]):  # forgotten (GONE), or squeue lags: nobody runs it any more
            details = {"state": client.GONE, "reason": details.get("reason", ""), "exit_code": ""}
        point = {"run_dir": str(run_dir)}
        return watch.mark_dead(task, point, status.get("overrides"), details)
    error = (
        f"its process (pid {status.get('pid')} on {status.get('host')}) ended without recording an end while no "
        "search driver watched it (killed together with the driver, or out of memory)"
    )
    run_folder.update_status(run_dir, state=run_folder.FAILED, ended_at=run_folder.now_iso(), error=error)
    return error


def hand_over_points(callbacks, entries: list) -> None:
    """Tell the launcher each trial's run folder (as the pre-launch check does for a grid), so that it records a
    trial whose job dies like a grid point and waits for a live job that holds a trial's folder. Entries: the
    driver's (`launch_overrides`, `run_dir`)."""
    checked = handoff.find(callbacks)
    checked.points = [{"overrides": e.launch_overrides, "run_dir": str(e.run_dir), "skip": False} for e in entries]


def fail_stopped(study, entries: list, objectives: list, constraints: list = ()) -> None:
    """The search is being stopped (Ctrl-C, kill) while `entries` run: tell each trial what its folder says, and a
    trial whose job recorded no end (its launcher stopped it) FAIL, so the journal holds no RUNNING trial and the next
    run retries it (hydra.sweeper.retry_failed). A trial whose job still runs (SLURM) is left RUNNING: the next run
    waits for that job."""
    from dpo_sweeps.search import study as study_mod
    from dpo_sweeps.search.compat import TrialState

    for entry in entries:
        result = study_mod.outcome(entry.run_dir, objectives, constraints)
        if result.state is None:
            holder = claim_mod.read(entry.run_dir)
            if holder is not None and job_liveness.holder_alive(holder) is not False:
                continue
            result = study_mod.Outcome(TrialState.FAIL, reason=f"stopped with the search ({result.reason})")
        study_mod.tell(study, entry.trial, result)
