"""Re-plan on memory, on a SLURM cluster that enforces memory (issue 27): a point whose job asks for too little
`mem_gb` is killed by SLURM, re-planned with more memory, resubmitted into its own folder, and completes.

The shared test cluster does not count memory (SelectTypeParameters=CR_Core, no cgroups), so this test starts a
second, private one-node cluster with `DPO_SWEEPS_SLURM_ENFORCE_MEMORY=1` (launch/slurm-up.sh: memory consumable,
jobacct_gather's OverMemoryKill polled every second) on ports and a state folder of its own, and stops it after.
Measured there (2026-12-08): a step over its --mem is killed within ~1 s; sacct then shows the job FAILED (9:0), its
step CANCELLED, and slurmstepd's "exceeded memory limit" in the job's log (OUT_OF_MEMORY needs task/cgroup)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, TINY, read_json, run_cli

from dpo_sweeps.runs import folder as run_folder

PORTS = {  # not the shared cluster's 16817-16820
    "DPO_SWEEPS_SLURMCTLD_PORT": "17917",
    "DPO_SWEEPS_SLURMD_PORT": "17918",
    "DPO_SWEEPS_SLURMDBD_PORT": "17919",
    "DPO_SWEEPS_MARIADB_PORT": "17920",
}


@pytest.fixture(scope="module")
def memory_cluster():
    if shutil.which("slurmctld") is None and not os.environ.get("CI"):
        pytest.skip("no SLURM installed (launch/install-slurm.sh)")
    # Not under pytest's tmp folder (mode 700): MariaDB runs as the mysql user and must reach its data folder.
    state = Path(tempfile.mkdtemp(prefix="dpo_sweeps_memory_cluster_", dir="/tmp"))
    state.chmod(0o755)
    env = {**os.environ, **PORTS, "DPO_SWEEPS_SLURM_DIR": str(state), "DPO_SWEEPS_SLURM_ENFORCE_MEMORY": "1"}
    env.pop("SLURM_CONF", None)
    up = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm-up.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield state
    finally:
        subprocess.run(
            ["bash", str(REPO / "launch" / "slurm-down.sh")], env=env, capture_output=True, text=True, timeout=300
        )
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
def test_a_job_killed_over_its_memory_request_is_replanned_with_more_and_completes(tmp_path, memory_cluster):
    conf = Path(memory_cluster) / "slurm.conf"
    assert "OverMemoryKill" in conf.read_text() and "CR_Core_Memory" in conf.read_text()
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "model=tiny_llama",
            *TINY,
            "training.max_steps=2",
            "eval.gen_prompts=0",
            "training.save_model=false",
            "beta=0.1",
            "hydra/launcher=slurm_local",
            "hydra.launcher.mem_gb=1",
            # The job's load peak: 1.5 GiB held for 4 s as it starts (more than 1 GB, less than 2).
            "+hydra.callbacks.peak._target_=hydra_apps.memory_faults.HostMemoryPeak",
            "+hydra.callbacks.peak.gb=1.5",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={
            "PYTHONPATH": f"{REPO}:{REPO / 'tests'}",
            "SLURM_CONF": str(conf),
            # The pre-launch host-memory check would refuse mem_gb=1 outright (its estimate is ~3 GiB a process):
            # this is the point whose estimate was wrong.
            "DPO_SWEEPS_MEMORY_CHECK": "0",
        },
        timeout=1200,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    (run_dir,) = [p.parent for p in sweep.glob(f"*/{run_folder.STATUS_FILE}")]
    status = read_json(run_dir / run_folder.STATUS_FILE)
    assert status["state"] == run_folder.COMPLETED, status
    (plan,) = status["replans"]
    assert plan["cause"] == "host" and plan["changes"] == {"hydra.launcher.mem_gb": {"from": 1, "to": 2}}
    assert "SLURM killed the job over its host memory request" in plan["why"]
    # The first job's end as SLURM and its log told it: FAILED, and slurmstepd's line with the bytes.
    assert "ended FAILED" in plan["error"] and "exceeded memory limit" in plan["error"]
    assert plan["slurm_job"] != status["slurm"]["job_id"]  # the job that completed is the resubmitted one
    assert status["replan_overrides"] == {"hydra.launcher.mem_gb": 2}
    # The second job really asked SLURM for 2 GB: its id is in status.json, sacct has its request.
    job = status["slurm"]["job_id"]
    deadline, req = time.monotonic() + 60, []
    while time.monotonic() < deadline:  # accounting records the job's end a moment after the job ends
        req = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job, "-o", "ReqMem,State"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        if req and req[0].endswith("|COMPLETED"):
            break
        time.sleep(2)
    assert req and req[0].startswith("2G|COMPLETED"), req
    assert "re-planned: hydra.launcher.mem_gb 1 -> 2" in out  # the sweep's console summary
