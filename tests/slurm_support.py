"""The local SLURM cluster (`make slurm-up`) as a pytest fixture, plus helpers for tests that submit real jobs.

conftest.py re-exports the fixture:

    from tests.slurm_support import slurm_cluster  # noqa: F401

Where no cluster runs, a test that uses `slurm_cluster` is skipped with "run `make slurm-up`", except under
CI=true, where it fails: CI starts the cluster, so a missing one there is a broken pipeline, not an optional test.

The cluster keeps job accounting (slurmdbd + MariaDB, started by slurm-up.sh): `sacct` works, so submitit reads real
job states (`job.state` == "CANCELLED by 0" after a scancel) and the fixture checks that it does: a cluster without
accounting (started by an older slurm-up.sh) is "not usable" like a missing one. `sacct_states` reads finished jobs
for good; `squeue_states` / `job_info` read slurmctld's view, which forgets a finished job after MinJobAge=300 s.
Wait for results with `job_result`, which has a deadline (submitit's own `job.result()` waits for a result pickle,
and with sacct gives up on a dead job only after its own timeout).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DEFAULT_STATE_DIR = "/tmp/dpo_sweeps_slurm"
# Deadlines of waits that include SLURM's queue: under pytest-xdist (`make test`) other tests' jobs may hold the
# cluster's CPUs for minutes before a test's job starts or its requeued job starts again. They only bound a failure.
QUEUE_WAIT_S = 600.0
# Job states after which a job will not run again by itself (a requeued job goes back to PENDING instead).
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


def state_dir() -> Path:
    """Where `make slurm-up` keeps config, logs and env.sh (same default as launch/slurm-up.sh)."""
    return Path(os.environ.get("DPO_SWEEPS_SLURM_DIR") or DEFAULT_STATE_DIR).absolute()


@dataclass
class SlurmCluster:
    """A running local cluster. `env` holds only the cluster's variables (SLURM_CONF, DPO_SWEEPS_SLURM_DIR);
    the `slurm_cluster` fixture also puts them into os.environ for the session, because submitit calls sbatch
    with the test process's environment."""

    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return Path(self.env["SLURM_CONF"])

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (sinfo, squeue, scontrol, scancel, sbatch) against this cluster."""
        return subprocess.run(
            list(args), env={**os.environ, **self.env}, capture_output=True, text=True, check=check, timeout=timeout
        )

    def squeue_states(self, job_id: str | int) -> list[str]:
        """States of the job (one per array task; e.g. ["RUNNING"]), finished ones included while slurmctld still
        remembers them (MinJobAge=300 s). [] when slurmctld does not know the id."""
        out = self.run("squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T", check=False)
        if out.returncode != 0:  # "Invalid job id specified" for a purged or unknown job
            return []
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def sacct_states(self, job_id: str | int) -> dict[str, str]:
        """{job id ("12_0" for an array task): state} from the accounting database (allocations only, no steps).
        {} while the database does not know the job yet (it lags slurmctld by a second or two)."""
        out = self.run("sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State", check=False)
        rows = (line.split("|") for line in out.stdout.splitlines() if "|" in line)
        return {jid: state for jid, state in rows} if out.returncode == 0 else {}

    def job_info(self, job_id: str | int) -> dict[str, str]:
        """`scontrol show job` as a flat dict (JobState, Restarts, Partition, ExitCode, StdOut, ...); {} if unknown."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if out.returncode != 0 or not out.stdout.strip():
            return {}
        first = out.stdout.splitlines()[0]  # -o: one line per job (array task); take the first
        info: dict[str, str] = {}
        for token in shlex.split(first):
            key, sep, value = token.partition("=")
            if sep:
                info[key] = value
        return info

    def wait_for_state(
        self, job_id: str | int, states: str | Iterable[str], timeout: float = 60.0, poll_s: float = 0.2
    ) -> str:
        """Wait until (every task of) the job is in one of `states`; returns the state reached.

        Fails the test with the states seen and the job's scontrol record when the deadline passes, or when the
        job ends in a terminal state that was not asked for (waiting further could not help)."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            current = self.squeue_states(job_id)
            if current and (not seen or seen[-1] != ",".join(current)):
                seen.append(",".join(current))
            if current and all(s in wanted for s in current):
                return current[0]
            finished_elsewhere = current and all(s in TERMINAL_STATES for s in current)
            if finished_elsewhere or time.monotonic() > deadline:
                why = f"ended in {current}" if finished_elsewhere else f"timed out after {timeout:.0f}s"
                pytest.fail(
                    f"job {job_id} never reached {sorted(wanted)}: {why}; states seen: {' -> '.join(seen) or 'none'}\n"
                    f"{self.job_info(job_id)}\nslurm logs: {self.log_dir}"
                )
            time.sleep(poll_s)


def _probe(env: dict[str, str]) -> str | None:
    """None if the cluster answers and its node can run jobs, else why not."""
    try:
        out = subprocess.run(
            # Every node, whatever its name: `localhost` on the one-node cluster, n1..nN with `make slurm-up NODES=N`.
            ["sinfo", "-h", "-N", "-o", "%T"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=15,
        )
    except FileNotFoundError:
        return "sinfo is not installed (bash launch/install-slurm.sh)"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not states:
        return f"sinfo failed: {(out.stderr or out.stdout).strip()}"
    down = [s for s in states if not s.startswith(("idle", "mixed", "alloc", "completing"))]
    if down:
        return f"a node is {down[0]}"
    try:
        acct = subprocess.run(
            ["sacct", "-n", "-X", "-o", "JobID"], env={**os.environ, **env}, capture_output=True, text=True, timeout=15
        )
    except FileNotFoundError:
        return "sacct is not installed (bash launch/install-slurm.sh)"
    except subprocess.TimeoutExpired:
        return "sacct did not answer within 15 s (is slurmdbd up?)"
    if acct.returncode != 0:
        why = (acct.stderr or acct.stdout).strip()[:200]
        return f"it has no job accounting (sacct: {why}); restart it: make slurm-down && make slurm-up"
    return None


def find_cluster() -> tuple[SlurmCluster | None, str]:
    """The running local cluster, or (None, why not)."""
    sdir = state_dir()
    env_file = sdir / "env.sh"
    conf = sdir / "slurm.conf"
    if not env_file.is_file() or not conf.is_file():
        return None, f"no local SLURM cluster ({env_file} not found)"
    env = {"SLURM_CONF": str(conf), "DPO_SWEEPS_SLURM_DIR": str(sdir)}
    problem = _probe(env)
    if problem:
        return None, f"the local SLURM cluster in {sdir} is not usable: {problem}"
    return SlurmCluster(state_dir=sdir, env=env), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local one-node cluster from `make slurm-up`, with SLURM_CONF exported into os.environ for the session.

    Skips when it is absent; under CI=true fails instead (CI must run the SLURM tests)."""
    cluster, why = find_cluster()
    if cluster is None:
        message = f"{why}; run `make slurm-up` (launch/slurm-up.sh) to start it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: SLURM tests must run, not skip: {message}", pytrace=False)
        pytest.skip(message)
    mp = pytest.MonkeyPatch()
    for key, value in cluster.env.items():
        mp.setenv(key, value)
    try:
        yield cluster
    finally:
        mp.undo()


def submitit_executor(folder: str | Path, **parameters: Any):
    """A submitit SlurmExecutor for the local cluster with settings that make requeue work and tests fast.

    - timeout_min=60: submitit treats a signal after min(0.8*T, T-10 min) as a *timeout*, so with T <= 10 min
      (its default is 5) every preemption counts as a timeout and eats into max_num_timeout.
    - signal_delay_s=30: the USR2-before-time-limit margin; irrelevant for manual signals, kept short.
    - python: the interpreter running the tests (the venv), also the submitit default; jobs inherit the
      submitting environment (sbatch --export=ALL), SLURM_CONF included.
    """
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=parameters.pop("max_num_timeout", 3))
    defaults: dict[str, Any] = {
        "partition": "debug",
        "time": 60,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 1,
        "signal_delay_s": 30,
        "job_name": "dpo_sweeps_test",
    }
    executor.update_parameters(**{**defaults, **parameters})
    return executor


def job_result(job: Any, cluster: SlurmCluster, timeout: float = 60.0, poll_s: float = 0.2) -> Any:
    """`job.result()` with a deadline. Without sacct, submitit only learns that a job ended from its result
    pickle; a job killed before writing it would make `job.result()` hang. Fails the test with the job's state
    and the tail of its stderr instead."""
    deadline = time.monotonic() + timeout
    gone_since: float | None = None
    while not job.paths.result_pickle.exists():
        states = cluster.squeue_states(job.job_id)
        ended = not states or all(s in TERMINAL_STATES for s in states)
        now = time.monotonic()
        # A finished job's pickle may land a moment after slurmctld marks it done (shared filesystem lag).
        gone_since = (gone_since or now) if ended else None
        if (gone_since is not None and now - gone_since > 5) or now > deadline:
            stderr = job.paths.stderr
            tail = stderr.read_text()[-3000:] if stderr.exists() else "(no stderr file)"
            pytest.fail(
                f"submitit job {job.job_id} gave no result within {timeout:.0f}s (states {states}).\n"
                f"scontrol: {cluster.job_info(job.job_id)}\nstderr tail:\n{tail}"
            )
        time.sleep(poll_s)
    return job.result()
