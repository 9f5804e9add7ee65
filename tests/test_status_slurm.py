"""`python -m dpo_sweeps.status` on a real SLURM sweep (the local cluster): a running point with its step while the
sweep trains, every point completed when it is done, and the submitting console's one line per point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, TINY
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm

# The local cluster's profile: no GPU, one core per task, no memory request (conf/hydra/launcher/slurm_local.yaml).
LOCAL_SLURM = ["hydra/launcher=slurm_local"]
MAX_STEPS = 300


def _status(sweep, *extra) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", str(sweep), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_status_shows_a_running_slurm_point_with_its_step_then_every_point_completed(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model=tiny_qwen",
        *TINY,
        *LOCAL_SLURM,
        f"training.max_steps={MAX_STEPS}",
        "training.logging_steps=5",
        "training.save_steps=1000",
        "training.eval_before_training=false",
        "training.sample_completions=0",
        "training.save_model=false",
        "beta=0.1,0.3",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "sweep_console.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dpo_sweeps", *args], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        seen_states, running = set(), None
        deadline = time.monotonic() + QUEUE_WAIT_S
        while running is None and proc.poll() is None and time.monotonic() < deadline:
            out = _status(sweep, "--json")
            if out.returncode in (0, 1, 3) and out.stdout.strip():
                points = json.loads(out.stdout)
                seen_states |= {p["state"] for p in points}
                running = next((p for p in points if p["state"] == "running" and (p["step"] or 0) > 0), None)
            time.sleep(0.5)
        assert running is not None, f"no running point with a step seen (states {seen_states}); {_console(tmp_path)}"
        assert 0 < running["step"] <= MAX_STEPS and running["max_steps"] == MAX_STEPS
        assert running["loss"] is not None and running["attempts"] == 1
        assert re.fullmatch(r"\d+_[01]", running["job_id"]), running
        table = _status(sweep)
        assert table.returncode == 3, table.stdout + table.stderr  # in progress, nothing failed
        row = next(line for line in table.stdout.splitlines() if line.strip().startswith(running["name"]))
        assert f"/{MAX_STEPS}" in row and running["job_id"] in row

        assert proc.wait(timeout=600) == 0, _console(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    done = _status(sweep)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 point(s): 2 completed" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("beta=0.1", "completed", f"{MAX_STEPS}/{MAX_STEPS}"),
        ("beta=0.3", "completed", f"{MAX_STEPS}/{MAX_STEPS}"),
    ]
    # The submitting console: one line per point as it starts and as it ends, before the summary.
    console = _console(tmp_path)
    for i, beta in ((1, "0.1"), (2, "0.3")):
        assert re.search(rf"\[{i}/2\] beta={beta}: started \(SLURM job \d+_{i - 1}\)", console), console
        assert re.search(rf"\[{i}/2\] beta={beta}: completed in \d+:\d\d, eval reward acc \d", console), console
    assert console.index("completed in ") < console.index("Sweep summary: 2 completed")
    # Without accounting, submitit's sacct warning comes once (one record, printed by each of its handlers), not on
    # every poll.
    assert not re.search(r"Call #([2-9]|\d\d+) - Bypassing sacct error", console), console


def _console(tmp_path) -> str:
    return (tmp_path / "sweep_console.txt").read_text()[-6000:]


@pytest.mark.slow
def test_a_task_cancelled_outright_shows_as_cancelled_while_its_folder_still_says_running(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    # scancel without a checkpoint signal (an admin, an OOM kill): the job never records its end in status.json; the
    # status command must still tell it apart from a running point, from SLURM's record.
    sweep = tmp_path / "sweep"
    args = ["-m", "model=tiny_qwen", *TINY, *LOCAL_SLURM, "training.max_steps=5000", "training.logging_steps=5"]
    args += ["training.eval_before_training=false", "training.sample_completions=0", "beta=0.1,0.3"]
    log = (tmp_path / "sweep_console.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", *args, f"hydra.sweep.dir={sweep}"],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=log,
    )
    job_ids: list[str] = []
    try:
        deadline = time.monotonic() + QUEUE_WAIT_S  # both points at once: 2 of the cluster's CPUs
        points: list[dict] = []
        while time.monotonic() < deadline and proc.poll() is None:
            out = _status(sweep, "--json")
            points = json.loads(out.stdout) if out.stdout.strip() else []
            job_ids = [p["job_id"] for p in points if p["job_id"]]
            if len(points) == 2 and all(p["state"] == "running" and (p["step"] or 0) > 0 for p in points):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"both points never ran: {points}; {_console(tmp_path)}")
        victim = points[0]["job_id"]
        slurm_cluster.run("scancel", victim)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = _status(sweep, "--json")
            states = {p["name"]: p for p in json.loads(out.stdout)}
            if states["beta=0.1"]["state"] == "cancelled":
                break
            time.sleep(0.5)
        assert states["beta=0.1"]["state"] == "cancelled", states
        assert "CANCELLED" in states["beta=0.1"]["reason"]
        assert states["beta=0.3"]["state"] == "running"
        folder = json.loads((sweep / "beta=0.1" / "status.json").read_text())
        assert folder["state"] == "running", "the killed job could not record anything: SLURM is the only witness"
        table = _status(sweep)
        assert table.returncode == 1, table.stdout
        assert re.search(r"beta=0.1: SLURM: CANCELLED", table.stdout), table.stdout
    finally:
        for job in {j.split("_")[0] for j in job_ids}:
            slurm_cluster.run("scancel", job, check=False)
        proc.kill()
        proc.wait(timeout=30)
        log.close()
