"""Real jobs on the local one-node SLURM cluster (`make slurm-up`): submitit results, USR2 checkpoint + requeue,
and partition preemption. Each test takes seconds; the cluster's requeue settings make that possible."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

# The `slurm_cluster` fixture comes from tests/slurm_support.py, which conftest.py loads for the whole suite
# (standalone: python -m pytest -p tests.slurm_support tests/test_slurm_cluster.py).
from tests.slurm_support import QUEUE_WAIT_S, SlurmCluster, job_result, submitit_executor

pytestmark = pytest.mark.slurm

# The job functions below are shipped by value: a job's Python cannot import this test module by name
# (pytest put tests/ on sys.path of this process only).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add_and_report(a: int, b: int) -> dict:
    """A job: returns the sum and where it ran."""
    return {
        "sum": a + b,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "python": sys.executable,
        "slurm_conf": os.environ.get("SLURM_CONF"),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CountUntilPreempted(submitit.helpers.Checkpointable):
    """A job that counts until it is signalled. `checkpoint` saves the count; the requeued run resumes from it
    and returns at once, reporting the count it resumed from and SLURM_RESTART_COUNT."""

    def __init__(self, workdir: str, give_up_s: float = 90.0) -> None:
        self.workdir = workdir
        self.give_up_s = give_up_s
        self.count = 0

    def __call__(self, resume_from: int | None = None) -> dict:
        workdir = Path(self.workdir)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        _write_atomic(workdir / f"started_{restarts}", str(resume_from))
        if resume_from is not None:
            return {"resumed_from": resume_from, "restart_count": restarts, "job_id": os.environ["SLURM_JOB_ID"]}
        deadline = time.time() + self.give_up_s
        while time.time() < deadline:
            self.count += 1
            time.sleep(0.05)
        # Never signalled: the test that expects a requeue fails on this value.
        return {"resumed_from": None, "restart_count": restarts, "job_id": os.environ["SLURM_JOB_ID"]}

    def checkpoint(self, resume_from: int | None = None) -> submitit.helpers.DelayedSubmission:
        _write_atomic(Path(self.workdir) / "checkpointed", str(self.count))
        return submitit.helpers.DelayedSubmission(self, resume_from=self.count)


def _wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.1)
    return path.read_text()


def _assert_preempted_not_timed_out(job: submitit.Job) -> None:
    # submitit counts a signal as a timeout when the job's time limit is <= 10 min (STACK_NOTES); then the
    # hydra launcher's max_num_timeout=0 would refuse to requeue. Our executors ask for 60 min.
    log = job.paths.stderr.read_text()
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log, log[-2000:]
    assert "timed-out" not in log, log[-2000:]


def test_submitit_job_runs_and_returns_its_result(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = submitit_executor(tmp_path / "submitit")
    job = executor.submit(add_and_report, 2, 40)

    result = job_result(job, slurm_cluster, timeout=QUEUE_WAIT_S)

    assert result["sum"] == 42
    assert result["job_id"] == str(job.job_id)
    assert result["partition"] == "debug"
    # The job runs the submitting interpreter (the venv) and sees this cluster's config through sbatch's env.
    assert result["python"] == sys.executable
    assert result["slurm_conf"] == slurm_cluster.env["SLURM_CONF"]
    slurm_cluster.wait_for_state(job.job_id, "COMPLETED", timeout=30)


def test_usr2_checkpoints_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    executor = submitit_executor(tmp_path / "submitit")
    job = executor.submit(CountUntilPreempted(str(workdir)))

    slurm_cluster.wait_for_state(job.job_id, "RUNNING", timeout=QUEUE_WAIT_S)
    _wait_for_file(workdir / "started_0", timeout=30)
    time.sleep(0.5)  # let it count
    # What a preemption or an approaching time limit delivers to the job steps; submitit checkpoints + requeues.
    slurm_cluster.run("scancel", "--signal=USR2", str(job.job_id))

    result = job_result(job, slurm_cluster, timeout=QUEUE_WAIT_S)  # the requeued job queues again

    checkpointed = int((workdir / "checkpointed").read_text())
    assert checkpointed > 0
    assert result == {"resumed_from": checkpointed, "restart_count": 1, "job_id": str(job.job_id)}
    assert slurm_cluster.job_info(job.job_id)["Restarts"] == "1"
    _assert_preempted_not_timed_out(job)
    slurm_cluster.wait_for_state(job.job_id, "COMPLETED", timeout=30)


# Both jobs need the whole first node, and a low-partition job waits behind every debug job: alone on the cluster.
@pytest.mark.slurm_exclusive
def test_high_partition_preempts_low_and_the_low_job_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    node, cpus = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N %c").stdout.split()[:2]
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Both jobs want the whole of the same node (the first, on a cluster of several), so the high-priority one can
    # only start by preempting the low one.
    pin = {"additional_parameters": {"nodelist": node}}
    low = submitit_executor(tmp_path / "low", partition="low", cpus_per_task=int(cpus), **pin)
    high = submitit_executor(tmp_path / "high", partition="high", cpus_per_task=int(cpus), **pin)
    low_job = low.submit(CountUntilPreempted(str(workdir)))
    slurm_cluster.wait_for_state(low_job.job_id, "RUNNING", timeout=QUEUE_WAIT_S)  # the last test's jobs may end
    _wait_for_file(workdir / "started_0", timeout=30)

    high_job = high.submit(add_and_report, 1, 2)

    assert job_result(high_job, slurm_cluster, timeout=60)["sum"] == 3
    low_result = job_result(low_job, slurm_cluster, timeout=90)
    checkpointed = int((workdir / "checkpointed").read_text())
    assert low_result == {"resumed_from": checkpointed, "restart_count": 1, "job_id": str(low_job.job_id)}
    assert slurm_cluster.job_info(low_job.job_id)["Restarts"] == "1"
    # The low job got its signal from the preemption itself (preempt_send_user_signal), not from a test.
    _assert_preempted_not_timed_out(low_job)
