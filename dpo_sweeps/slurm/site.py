"""What the SLURM site allows, read before anything is submitted: `scontrol show config` (MaxArraySize,
MaxJobCount), the jobs slurmctld holds now (`squeue`), and per-user submit limits from `sacctmgr` where accounting
exists: MaxSubmitJobs on the association the sweep's jobs are charged to (the launcher's `account`, else the user's
default account) and MaxSubmitJobsPerUser on the one QOS they run under (the launcher's `qos`, else the
association's default QOS, as slurmctld picks it). A strict QOS or another account's association the sweep does not
use does not refuse it. Every command has a short timeout; a limit that cannot be read is left out (None), never
guessed.

Counting rule: each array task counts as one job towards MaxJobCount and MaxSubmitJobs (SLURM's slurm.conf and
sacctmgr pages), finished tasks too while slurmctld still holds them (MinJobAge).

Import-light: subprocess only (runs in the submitting process).
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 15.0
# SLURM's own defaults, used when `scontrol show config` cannot be read (the sbatch error then says why).
DEFAULT_MAX_ARRAY_SIZE = 1001


class SlurmCommandError(RuntimeError):
    """A SLURM client command failed or did not answer in time."""


def run(*args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """stdout of a SLURM client command; SlurmCommandError (with its stderr) when it fails, is missing or hangs."""
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmCommandError(f"`{args[0]}` is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"`{' '.join(args)}` did not answer within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise SlurmCommandError(f"`{' '.join(args)}` failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config` lines (`Key = value`) as a dict."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).split()[0])
    except (TypeError, ValueError, IndexError):
        return None


@dataclass
class SiteLimits:
    """The limits that bound one submission. None: not set or not readable here."""

    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_job_count: int | None = None
    jobs_in_system: int = 0
    # (limit, where it comes from) for per-user submit limits, e.g. (100, "MaxSubmitJobs of association root").
    user_submit_limits: list[tuple[int, str]] = field(default_factory=list)
    user_jobs: int = 0
    accounting: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def max_tasks_per_array(self) -> int:
        # Task ids run 0..MaxArraySize-1, so one array holds at most MaxArraySize tasks.
        return max(1, self.max_array_size)

    def free_slots(self) -> list[tuple[int, str]]:
        """How many more jobs each limit accepts now, with the reason in words."""
        free = []
        if self.max_job_count is not None:
            free.append(
                (
                    self.max_job_count - self.jobs_in_system,
                    f"MaxJobCount={self.max_job_count} (slurm.conf) with {self.jobs_in_system} job(s) already held "
                    "by slurmctld",
                )
            )
        for limit, source in self.user_submit_limits:
            free.append((limit - self.user_jobs, f"{source}={limit} with {self.user_jobs} of your job(s) queued"))
        return free

    def describe(self) -> str:
        parts = [f"MaxArraySize={self.max_array_size}"]
        if self.max_job_count is not None:
            parts.append(f"MaxJobCount={self.max_job_count} ({self.jobs_in_system} held now)")
        parts += [f"{source}={limit}" for limit, source in self.user_submit_limits]
        parts.append("accounting on" if self.accounting else "no accounting (sacctmgr limits not checked)")
        return ", ".join(parts)


def _count_lines(*args: str) -> int:
    return sum(1 for line in run(*args).splitlines() if line.strip())


def submit_identity(params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(qos, account) the launcher's parameters (hydra.launcher.*) ask sbatch for; None where they leave it to SLURM."""
    extra = params.get("additional_parameters") or {}
    qos = params.get("qos") or extra.get("qos")
    account = params.get("account") or extra.get("account")
    return (str(qos) if qos else None), (str(account) if account else None)


def _sacctmgr_limits(user: str, qos: str | None = None, account: str | None = None) -> list[tuple[int, str]]:
    """MaxSubmitJobs of the association the jobs are charged to and MaxSubmitJobsPerUser of the QOS they run under
    (see the module doc); both readable without privileges."""
    limits = []
    if account is None:
        default = run("sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount", timeout=10).split()
        account = default[0] if default else None
    rows = []
    assoc = run(
        "sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=Account,MaxSubmit,DefaultQOS,QOS", timeout=10
    )
    for line in assoc.splitlines():
        fields = [*line.split("|"), "", "", ""][:4]
        if fields[0] and (account is None or fields[0] == account):
            rows.append(fields)
    for acct, value, _, _ in rows:
        if (n := _int(value)) is not None:
            limits.append((n, f"MaxSubmitJobs of association {user}/{acct}"))
    why = "the launcher's qos"
    if qos is None:
        # slurmctld's choice for a job without --qos: the association's DefaultQOS; else its only allowed QOS; else
        # "normal".
        defaults = {r[2] for r in rows if r[2]}
        allowed = {q for r in rows for q in r[3].split(",") if q}
        qos = next(iter(defaults)) if len(defaults) == 1 else next(iter(allowed)) if len(allowed) == 1 else "normal"
        why = f"the default QOS of association {user}/{account}" if account else "the default QOS"
    out = run("sacctmgr", "-n", "-P", "show", "qos", qos, "format=Name,MaxSubmitPU", timeout=10)
    for line in out.splitlines():
        name, _, value = line.partition("|")
        if name == qos and (n := _int(value)) is not None:
            limits.append((n, f"MaxSubmitJobsPerUser of QOS {name} ({why})"))
    return limits


def read_limits(qos: str | None = None, account: str | None = None) -> SiteLimits:
    """Read the site's limits for jobs submitted with `qos` and `account` (None: SLURM's defaults for the user);
    raises SlurmCommandError only when `scontrol show config` itself fails."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        # SLURM would fall back to a DNS lookup for its controller, which can hang for a long time without network.
        raise SlurmCommandError(f"SLURM_CONF={conf} does not exist")
    config = parse_config(run("scontrol", "show", "config"))
    limits = SiteLimits(
        max_array_size=_int(config.get("MaxArraySize")) or DEFAULT_MAX_ARRAY_SIZE,
        max_job_count=_int(config.get("MaxJobCount")),
        accounting="slurmdbd" in config.get("AccountingStorageType", ""),
    )
    user = getpass.getuser()
    try:
        # -r: one line per array task (each counts as a job); -t all: finished ones slurmctld still holds count too.
        limits.jobs_in_system = _count_lines("squeue", "-h", "-r", "-t", "all", "-o", "%i")
        limits.user_jobs = _count_lines("squeue", "-h", "-r", "-u", user, "-t", "PENDING,RUNNING,SUSPENDED", "-o", "%i")
    except SlurmCommandError as exc:
        limits.notes.append(f"could not count queued jobs: {exc}")
    if limits.accounting:
        try:
            limits.user_submit_limits = _sacctmgr_limits(user, qos, account)
        except SlurmCommandError as exc:  # accounting configured but slurmdbd unreachable: sbatch will say more
            limits.notes.append(f"per-user limits not read: {exc}")
    return limits


def read_limits_or_exit(qos: str | None = None, account: str | None = None, wait_s: float = 0.0) -> SiteLimits:
    """The site's limits, or the end of the command with why. `wait_s`: how long a controller that does not answer is
    waited for first (a search submitting its next trial while slurmctld restarts waits it out, see launcher.py)."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            limits = read_limits(qos, account)
            break
        except SlurmCommandError as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"Error: cannot read the SLURM cluster's configuration: {exc}. Nothing was submitted. Check that "
                    "SLURM's client commands work here (`sinfo`; SLURM_CONF for a non-default cluster)."
                ) from None
            if not said:
                log.warning("SLURM does not answer (%s): waiting up to %.0f s before submitting.", exc, wait_s)
                said = True
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    for note in limits.notes:
        log.warning("SLURM limits: %s", note)
    return limits
