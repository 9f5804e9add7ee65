"""One live job per run folder: the claim a job takes on its folder before it writes anything there.

    <run folder>/.claim.json   who holds the folder: SLURM task id (and restart count) for a SLURM job; for any job
                               host, boot id, pid namespace, pid and the process's start time (which beats pid reuse)
    <run folder>/.claim.lock   flock'ed for the moment a claim is read, judged and written (never held longer)

Two jobs writing one folder destroy each other's work (checkpoint rotation, history truncation, one W&B run), so a
job claims its folder first (`sweep/job.py`) and refuses to start when another live job holds it; a sweep or search
run again checks the claim before it starts anything (`slurm/liveness.py` asks SLURM whether a SLURM holder is
alive). A claim held by a dead job is taken over. The holder's own later attempts (a SLURM requeue: same task id,
higher restart count) take it over too, so a requeued job resumes its own folder.

Whether a local process is alive is read here (same host, same boot, same pid namespace: pid present with the same
start time); anything else (another machine, another namespace) this module cannot tell (`None`), and SLURM holders
are judged by SLURM, which this module does not ask (it imports nothing else of dpo_sweeps).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

CLAIM_FILE = ".claim.json"
LOCK_FILE = ".claim.lock"

# A holder's liveness: True (alive), False (dead), None (cannot tell: treated as alive, never taken over).
Alive = Callable[[dict], bool | None]


class FolderBusyError(RuntimeError):
    """Another live job holds the run folder."""

    def __init__(self, run_dir: Path, holder: dict, why: str = ""):
        self.run_dir, self.holder = Path(run_dir), holder
        super().__init__(
            f"{Path(run_dir).name} is held by {describe(holder)}{f' ({why})' if why else ''}: one live job per run "
            "folder, so this one does not start there. Wait for that job to end (or cancel it), then run again."
        )


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if there is no such
    process. A pid reused by another process has another start time."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])  # fields after "pid (comm)": state is field 3
    except (IndexError, ValueError):
        return None


def slurm_task() -> dict[str, str]:
    """This process's SLURM task: `task` is the id squeue and submitit use ("<array>_<index>" or the job id)."""
    ids = run_folder.slurm_ids()
    if "job_id" not in ids:
        return {}
    task = f"{ids['array_job_id']}_{ids['array_task_id']}" if "array_task_id" in ids else ids["job_id"]
    return {"task": task, "job_id": ids["job_id"], "restart_count": ids.get("restart_count", "0")}


def me() -> dict[str, Any]:
    """This process as a holder."""
    pid = os.getpid()
    holder: dict[str, Any] = {
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid_ns": pid_namespace(),
        "pid": pid,
        "start_ticks": start_ticks(pid),
        "claimed_at": run_folder.now_iso(),
    }
    slurm = slurm_task()
    if slurm:
        holder["slurm"] = slurm
    return holder


def describe(holder: dict) -> str:
    slurm = holder.get("slurm") or {}
    if slurm.get("task"):
        state = f", {holder['slurm_state']}" if holder.get("slurm_state") else ""
        return f"SLURM job {slurm['task']}{state}"
    return f"process {holder.get('pid')} on {holder.get('host')}"


def same_job(a: dict, b: dict) -> bool:
    """The same SLURM task (any attempt: a requeue keeps the task id), or the same process."""
    ta, tb = (a.get("slurm") or {}).get("task"), (b.get("slurm") or {}).get("task")
    if ta or tb:
        return ta == tb
    keys = ("host", "boot_id", "pid_ns", "pid", "start_ticks")
    return all(a.get(k) == b.get(k) for k in keys)


def local_alive(holder: dict) -> bool | None:
    """A local holder: alive when its process (same start time) still runs; dead after a reboot or when the pid is
    gone or reused; None for a process on another host or in another pid namespace."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and holder.get("boot_id") != boot_id():
        return False  # the machine rebooted since: every process of that boot is gone
    if holder.get("pid_ns") != pid_namespace():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return None
    ticks = start_ticks(pid)
    if ticks is None:
        return False
    return holder.get("start_ticks") is None or ticks == holder["start_ticks"]


def read(run_dir: str | os.PathLike) -> dict | None:
    try:
        data = json.loads((Path(run_dir) / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def claim(run_dir: str | os.PathLike, holder: dict, alive: Alive, keep_richer: bool = False) -> dict | None:
    """Take the folder for `holder`, atomically; returns the dead holder it was taken over from (None if free or
    already ours). Raises FolderBusyError when another holder is alive or cannot be judged.

    `keep_richer`: a submitter claiming for a task it just submitted leaves a claim the task itself already wrote
    (same task, with its process) as it is."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        current = read(run_dir)
        taken_over = None
        if current is not None and not same_job(current, holder):
            verdict = alive(current)
            if verdict is None:
                raise FolderBusyError(run_dir, current, "its liveness cannot be checked from here")
            if verdict:
                raise FolderBusyError(run_dir, current)
            taken_over = current
        if keep_richer and current is not None and same_job(current, holder) and "pid" in current:
            return None
        _write(run_dir / CLAIM_FILE, holder)
        return taken_over


def _write(path: Path, holder: dict) -> None:
    """Atomic (temp file + os.replace) but not fsync'ed: a claim need not survive a crash of the machine (its holder
    does not either), and a launcher claims every point it submits (an fsync each would cost seconds at 1000 points)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(holder, sort_keys=True) + "\n")
    os.replace(tmp, path)


def release(run_dir: str | os.PathLike, holder: dict) -> None:
    """Drop the claim if `holder` still holds it (a later attempt of the same SLURM task may have taken it over: an
    old process lingering after a requeue must not drop the new one's claim)."""
    run_dir = Path(run_dir)
    if not (run_dir / CLAIM_FILE).exists():
        return
    with _locked(run_dir):
        current = read(run_dir)
        if current is not None and all(current.get(k) == holder.get(k) for k in ("host", "pid", "start_ticks")):
            (run_dir / CLAIM_FILE).unlink(missing_ok=True)
