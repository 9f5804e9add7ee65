"""The launcher's wait (`slurm/watch.py`) on the local cluster: a point is marked dead only when scontrol or sacct
confirm that its task ended, and a cancelled task reads `cancelled`, not `failed`."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import watch
from tests.slurm_support import slurm_cluster, submitit_executor  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm


def _held_jobs(folder: Path, count: int) -> list:
    """Tasks that stay PENDING until cancelled (sbatch --hold): alive to SLURM, and never give a result."""
    executor = submitit_executor(folder, additional_parameters={"hold": True}, job_name=f"watch_{os.getpid()}")
    return [executor.submit(time.sleep, 0) for _ in range(count)]


def _collect_in_background(jobs: list, run_dirs: list[Path]) -> tuple[threading.Thread, list]:
    out: list = []
    points = [{"run_dir": str(d)} for d in run_dirs]
    thread = threading.Thread(
        target=lambda: out.append(watch.collect(jobs, points, [[f"x={i}"] for i in range(len(jobs))])), daemon=True
    )
    thread.start()
    return thread, out


def _state(run_dir: Path) -> str | None:
    return (run_folder.read_status(run_dir) or {}).get("state")


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def fast_watch(monkeypatch):
    monkeypatch.setattr(watch, "POLL_S", 0.2)
    monkeypatch.setattr(watch, "GRACE_S", 1.0)
    monkeypatch.setattr(watch, "CONFIRM_EVERY_S", 1.0, raising=False)


def test_an_empty_squeue_answer_marks_no_live_task_dead_and_a_cancelled_one_reads_cancelled(
    slurm_cluster,  # noqa: F811
    tmp_path,
    monkeypatch,
    fast_watch,
):
    alive, victim = _held_jobs(tmp_path / "jobs", 2)
    try:
        # squeue answers nothing at all (exit 0, no lines), as a controller hiccup can; scontrol and sacct are real.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "squeue").write_text("#!/bin/sh\nexit 0\n")
        (fake / "squeue").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
        dirs = [tmp_path / "alive", tmp_path / "victim"]
        thread, out = _collect_in_background([alive, victim], dirs)
        slurm_cluster.run("scancel", victim.job_id)
        _wait_for(lambda: _state(dirs[1]) is not None, 60, "the cancelled task to be recorded")
        status = run_folder.read_status(dirs[1])
        assert status["state"] == "cancelled", status
        assert status["slurm"]["state"] == "CANCELLED" and "cancelled" in status["error"], status
        # Several polls and grace periods later, the task squeue does not show but scontrol knows PENDING is alive.
        time.sleep(4)
        assert _state(dirs[0]) is None, run_folder.read_status(dirs[0])
        assert thread.is_alive(), "the wait ended while a task was still pending"
    finally:
        slurm_cluster.run("scancel", alive.job_id, victim.job_id, check=False)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert _state(dirs[0]) == "cancelled"
    assert len(out[0]) == 2


def test_an_id_squeue_calls_invalid_is_given_up_only_when_nobody_can_tell_for_the_lost_contact_time(
    slurm_cluster,  # noqa: F811
    tmp_path,
    monkeypatch,
    fast_watch,
):
    from submitit.slurm.slurm import SlurmJob

    monkeypatch.setattr(watch, "LOST_CONTACT_S", 6.0)
    (alive,) = _held_jobs(tmp_path / "jobs", 1)
    # An id slurmctld never had among a real one: squeue refuses the whole list ("Invalid job id"), client.py asks
    # array by array, and scontrol and sacct do not know it either.
    bogus = SlurmJob(folder=tmp_path / "jobs", job_id="987654321_0", tasks=[0])
    dirs = [tmp_path / "alive", tmp_path / "bogus"]
    try:
        thread, out = _collect_in_background([alive, bogus], dirs)
        started = time.monotonic()
        time.sleep(3.5)  # well past GRACE_S, well before LOST_CONTACT_S
        assert _state(dirs[1]) is None, "marked dead without scontrol or sacct confirming an end"
        _wait_for(lambda: _state(dirs[1]) is not None, 30, "the unknown task to be given up")
        assert time.monotonic() - started >= 6.0
        status = run_folder.read_status(dirs[1])
        assert status["state"] == run_folder.FAILED and "no longer known to SLURM" in status["error"], status
        assert _state(dirs[0]) is None and thread.is_alive(), "the real pending task must still be waited for"
    finally:
        slurm_cluster.run("scancel", alive.job_id, check=False)
    thread.join(timeout=60)
    assert not thread.is_alive() and _state(dirs[0]) == "cancelled"
