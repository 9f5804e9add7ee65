"""The local cluster as a user meets it: `hydra/launcher=slurm_local` sweeps with no other overrides, accounting
(sacct) sees the jobs and submitit reads real states, and a profile that does not fit the cluster is refused before
sbatch runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import folder as run_folder
from tests.helpers import REPO, TINY, read_json, run_cli, run_dirs
from tests.slurm_support import QUEUE_WAIT_S, SlurmCluster, submitit_executor

pytestmark = pytest.mark.slurm

# What submitit prints on every poll of a cluster without accounting (issue 12).
NO_ACCOUNTING_LINES = ("accounting storage is disabled", "Bypassing sacct error", "status may be inaccurate")


def _sacct_until(cluster: SlurmCluster, job_id: str, done, timeout: float = 30.0) -> dict[str, str]:
    """sacct's {task id: state} for the job once `done(states)` holds; fails with what it saw at the deadline.
    The database lags slurmctld by a second or two."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = cluster.sacct_states(job_id)
        if states and done(states):
            return states
        time.sleep(0.3)
    pytest.fail(f"sacct -j {job_id} after {timeout:.0f}s: {states or 'nothing'}")


@pytest.mark.slow
def test_slurm_local_profile_sweeps_with_no_overrides_and_sacct_sees_every_task(
    slurm_cluster: SlurmCluster, tmp_path, tiny_model_paths
):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "hydra/launcher=slurm_local", "model=tiny_qwen", *TINY, "beta=0.1,0.3", f"hydra.sweep.dir={sweep}"],
        timeout=QUEUE_WAIT_S,
    )
    out = proc.stdout + proc.stderr
    for line in NO_ACCOUNTING_LINES:
        assert line not in out, f"submitit still has no accounting: {line!r} in the output"
    assert "Sweep summary: 2 completed" in out
    dirs = run_dirs(sweep)
    assert len(dirs) == 2
    slurm_ids = [read_json(d / run_folder.STATUS_FILE)["slurm"] for d in dirs]
    array_ids = {ids["array_job_id"] for ids in slurm_ids}
    assert len(array_ids) == 1, f"one array job for the sweep, got {slurm_ids}"
    (array_id,) = array_ids
    states = _sacct_until(slurm_cluster, array_id, lambda s: all(v == "COMPLETED" for v in s.values()))
    assert sorted(states) == [f"{array_id}_0", f"{array_id}_1"], states


def test_submitit_reads_a_cancelled_jobs_real_state_from_accounting(slurm_cluster: SlurmCluster, tmp_path):
    executor = submitit_executor(tmp_path / "submitit")
    job = executor.submit(time.sleep, 120)
    slurm_cluster.wait_for_state(job.job_id, "RUNNING", timeout=QUEUE_WAIT_S)
    slurm_cluster.run("scancel", job.job_id)
    # Without accounting submitit says UNKNOWN here for good; with it, SLURM's own state within seconds.
    deadline = time.monotonic() + 30
    while not job.state.startswith("CANCELLED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.state.startswith("CANCELLED"), job.state
    assert _sacct_until(slurm_cluster, job.job_id, lambda s: True) == {job.job_id: "CANCELLED by 0"}


def _jobs_under(cluster: SlurmCluster, folder: Path) -> list[str]:
    """Jobs slurmctld knows (queued, running, or ended within MinJobAge=300 s) whose batch script lies under `folder`:
    what this test submitted, whatever other tests submit to the cluster meanwhile."""
    out = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%o").stdout
    return [line for line in out.splitlines() if str(folder) in line]


def test_a_gpu_request_on_the_cpu_only_cluster_is_refused_before_sbatch_naming_the_key(
    slurm_cluster: SlurmCluster, tmp_path
):
    sweep = tmp_path / "sweep"
    # The project's `slurm` profile asks for 1 GPU, 8 CPUs and 64 GB: the local node has no GPU and 2 cores.
    proc = run_cli(
        ["-m", "hydra/launcher=slurm", "model=tiny_qwen", *TINY, "beta=0.1,0.3", f"hydra.sweep.dir={sweep}"],
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "the launcher does not fit the cluster; nothing was submitted" in out
    assert "hydra.launcher.gpus_per_node=1: partition debug (the default) has no GPUs" in out
    assert "hydra/launcher=slurm_local" in out, "the fix is named"
    assert "hydra.launcher.cpus_per_task=8" in out and "Set hydra.launcher.cpus_per_task=" in out
    assert "Traceback" not in out and "Invalid generic resource" not in out
    assert not (sweep / ".submitit").exists(), "submitit writes its folder before it calls sbatch"
    assert _jobs_under(slurm_cluster, tmp_path) == [], "nothing reached sbatch"


def test_an_unknown_partition_is_refused_with_the_ones_the_cluster_has(slurm_cluster: SlurmCluster, tmp_path):
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=slurm_local",
            "hydra.launcher.partition=gpu",
            "model=tiny_qwen",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert (
        "hydra.launcher.partition=gpu: the cluster has no partition gpu (sinfo lists: debug (default), low, high)"
        in proc.stdout + proc.stderr
    )


def test_under_ci_a_cluster_without_accounting_fails_the_slurm_tests_instead_of_skipping(
    slurm_cluster: SlurmCluster, tmp_path
):
    # The running cluster as a client configured without accounting sees it (as one from an older slurm-up.sh was):
    # sinfo answers, sacct says "accounting storage is disabled".
    state = tmp_path / "no_accounting"
    state.mkdir()
    conf = slurm_cluster.conf.read_text().replace("accounting_storage/slurmdbd", "accounting_storage/none")
    (state / "slurm.conf").write_text(conf)
    (state / "env.sh").write_text(f"export SLURM_CONF={state / 'slurm.conf'}\n")
    test = "tests/test_slurm_local.py::test_submitit_reads_a_cancelled_jobs_real_state_from_accounting"
    results = {}
    for ci in ("true", ""):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
            cwd=REPO,
            env={**os.environ, "CI": ci, "DPO_SWEEPS_SLURM_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        results[ci] = (proc.returncode, proc.stdout + proc.stderr)
    code, out = results["true"]
    assert code != 0 and "CI=true: SLURM tests must run, not skip" in out and "no job accounting" in out, out
    code, out = results[""]
    assert code == 0 and "1 skipped" in out and "no job accounting" in out, out
