"""One client for SLURM's job queries (`squeue`, `sacct`, `scontrol`) and one map from SLURM's job states to a
point's. `python -m dpo_sweeps.status`, the submitting console's lines and the launcher's wait for results all ask
through it, so they agree on what a state means.

The map (SLURM state -> the point's state):
- waiting to start (PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, ...): `queued` before the point ever ran, else
  `requeued` (preempted or timed out, waiting to resume);
- running (RUNNING, COMPLETING, SUSPENDED, STAGE_OUT, ...): `running`;
- CANCELLED (also "CANCELLED by <uid>"): `cancelled`;
- COMPLETED: `completed` (the run folder has the last word on whether the run itself succeeded);
- every other final state (FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, ...): `failed`.
  PREEMPTED is final: a job SLURM requeues after preemption shows as waiting again, not as PREEMPTED.

It also reads what the site has (`sinfo`, `scontrol show config`, `sacctmgr`) for the site profile (`profile`).

Every command has a timeout; a controller that cannot be asked raises `SlurmCommandError` (callers decide whether
that is silence or an error). Import-light: subprocess only.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from dpo_sweeps.slurm.site import SlurmCommandError, run

QUERY_TIMEOUT_S = 10.0
QUEUED, RUNNING, REQUEUED, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "running",
    "requeued",
    "completed",
    "failed",
    "cancelled",
)
WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
ACTIVE = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"})
FINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
        "PREEMPTED",
    }
)
# slurmctld no longer knows the task (purged after MinJobAge) and accounting cannot tell.
GONE = "GONE"


def base_state(slurm_state: str) -> str:
    """ "CANCELLED by 0" -> "CANCELLED"."""
    return slurm_state.split()[0] if slurm_state.strip() else ""


def is_final(slurm_state: str) -> bool:
    return base_state(slurm_state) in FINAL


def point_state(slurm_state: str, ran_before: bool) -> str | None:
    """The point's state for a SLURM state (see the module doc); None for a state this map does not know."""
    base = base_state(slurm_state)
    if base in WAITING:
        return REQUEUED if ran_before else QUEUED
    if base in ACTIVE:
        return RUNNING
    if base == "CANCELLED":
        return CANCELLED
    if base == "COMPLETED":
        return COMPLETED
    if base in FINAL:
        return FAILED
    return None


def _parse_queue(out: str) -> dict[str, tuple[str, str]]:
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], "" if parts[2] in ("None", "(null)") else parts[2])
    return states


def queue_states(job_ids: Iterable[str], timeout: float = QUERY_TIMEOUT_S) -> dict[str, tuple[str, str]]:
    """{task id: (state, reason)} for every task slurmctld still holds (finished ones included, for MinJobAge), from
    one `squeue` call over their array jobs whatever the sweep's size. A task slurmctld has forgotten is absent.

    One purged id makes squeue refuse the whole list ("Invalid job id"): then each array is asked alone, and only
    the ones squeue does not know are left out. Raises SlurmCommandError when the controller cannot be asked."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}

    def ask(ids: list[str]) -> str:
        return run("squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r", timeout=timeout)

    try:
        return _parse_queue(ask(arrays))
    except SlurmCommandError as exc:
        if "Invalid job id" not in str(exc):
            raise
    states: dict[str, tuple[str, str]] = {}
    for array in arrays:
        try:
            states.update(_parse_queue(ask([array])))
        except SlurmCommandError as exc:
            if "Invalid job id" not in str(exc):
                raise
    return states


def accounting_states(task_ids: list[str], timeout: float = QUERY_TIMEOUT_S) -> dict[str, tuple[str, str]]:
    """{task id: (state, "exit code X:Y")} from `sacct`; {} where accounting is off or does not answer."""
    if not task_ids:
        return {}
    try:
        out = run("sacct", "-n", "-P", "-X", "-j", ",".join(task_ids), "-o", "JobID,State,ExitCode", timeout=timeout)
    except SlurmCommandError:
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], f"exit code {parts[2]}")
    return states


def task_details(job_id: str, timeout: float = QUERY_TIMEOUT_S) -> dict[str, str]:
    """State, reason and exit code of one task: `scontrol` while slurmctld holds it, else `sacct` (accounting);
    state GONE when neither knows it."""
    try:
        out = run("scontrol", "show", "job", "-o", job_id, timeout=timeout)
        info = {}
        for token in shlex.split(out.splitlines()[0]) if out.strip() else []:
            key, sep, value = token.partition("=")
            if sep:
                info[key] = value
        if info:
            return {
                "state": info.get("JobState", "?"),
                "reason": info.get("Reason", ""),
                "exit_code": info.get("ExitCode", ""),
            }
    except SlurmCommandError:
        pass
    try:
        out = run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,Reason,ExitCode", timeout=timeout)
        line = out.strip().splitlines()[0] if out.strip() else ""
        state, reason, exit_code = ([*line.split("|"), "", ""])[:3]
        if state:
            return {"state": base_state(state), "reason": reason, "exit_code": exit_code}
    except SlurmCommandError:
        pass
    return {"state": GONE, "reason": "", "exit_code": ""}


# ------------------------------------------------------------------ what the site has (python -m ...slurm.profile)

# One line per partition and group of identical nodes: partition (default marked *), CPUs, memory (MB), gres, time
# limit, node count, features. The first six fields are the pre-launch check's (resources.SINFO_FORMAT).
NODES_FORMAT = "%P|%c|%m|%G|%l|%D|%f"


def site_nodes(timeout: float = QUERY_TIMEOUT_S) -> str:
    """`sinfo` in NODES_FORMAT (-e: exact values, not "8+")."""
    return run("sinfo", "--noheader", "--exact", "--format", NODES_FORMAT, timeout=timeout)


def site_config(timeout: float = QUERY_TIMEOUT_S) -> str:
    """`scontrol show config`: MaxArraySize, SelectTypeParameters, AccountingStorageType, ..."""
    return run("scontrol", "show", "config", timeout=timeout)


def user_accounting(user: str, timeout: float = QUERY_TIMEOUT_S) -> tuple[str, str]:
    """(`sacctmgr show user` DefaultAccount, `sacctmgr show assoc` Account|Partition|DefaultQOS|QOS lines) of a user;
    only meaningful where accounting runs (slurmdbd)."""
    default = run("sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount", timeout=timeout)
    assoc = run(
        "sacctmgr",
        "-n",
        "-P",
        "show",
        "assoc",
        f"user={user}",
        "format=Account,Partition,DefaultQOS,QOS",
        timeout=timeout,
    )
    return default, assoc
