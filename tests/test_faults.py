"""Faults clusters have, each provoked on the local SLURM cluster (tests/faults.py): the run folder's filesystem full
while a checkpoint is written, a node lost mid-job, the controller stopped for a minute mid-sweep. Each test has
the cluster to itself (`slurm_exclusive`): two of them stop its daemons."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import disk as run_disk
from tests import faults
from tests.helpers import REPO, TINY, read_json, start_sweep, trained_steps, wait_for_point
from tests.hydra_apps import pause
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.slurm_exclusive]

# Short runs that checkpoint twice: the first save fits, the second is where each fault strikes.
POINT = [
    "model=tiny_qwen",
    *TINY,
    "hydra/launcher=slurm_local",
    "training.max_steps=30",
    "training.save_steps=10",
    "training.logging_steps=5",
    "training.eval_before_training=false",
    "training.save_model=false",
]


def _complete(run_dir: Path) -> list[str]:
    # Read with runs/disk's names, not train/checkpoints: that imports transformers into every xdist worker at
    # collection (~8 s of CPU each).
    root = run_dir / run_disk.CHECKPOINT_DIR
    done = [p for p in root.glob(f"{run_disk.CHECKPOINT_PREFIX}*") if (p / run_disk.COMPLETE_MARKER).exists()]
    return [p.name for p in sorted(done, key=lambda p: int(p.name.removeprefix(run_disk.CHECKPOINT_PREFIX)))]


# The full-disk and controller tests hold their runs at a step (tests/hydra_apps/pause.py) until they have struck: on
# a quiet machine the tiny model's steps take a fraction of a second, and a fault sent after polling for "past the
# first checkpoint" would race the run. (The node-lost tests do not: held there, a killed job went unnoticed by
# slurmctld for minutes on this machine; unheld, they passed the fresh-clone run.)
PAUSE_ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}


def _paused(run_dir: Path) -> bool:
    return (run_dir / pause.PAUSED_FILE).exists()


def _finish(proc, timeout: float = QUEUE_WAIT_S) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def test_a_full_disk_while_checkpointing_fails_the_point_saying_so_and_a_rerun_resumes(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    with faults.small_tmpfs(slurm_cluster, tmp_path / "disk", "8m") as disk:
        sweep = disk / "sweep"
        release = tmp_path / "release"  # outside the small disk: creating it needs no space there
        args = ["-m", *POINT, *pause.overrides(10, release), f"hydra.sweep.dir={sweep}"]
        proc = start_sweep(args, env=PAUSE_ENV)
        try:
            run_dir = wait_for_point(
                proc, sweep, _paused, "the run never reached step 10 before the disk filled", timeout=QUEUE_WAIT_S
            )
            # Room for the log lines of the next steps, not for the next checkpoint (the first one's size).
            first = run_dir / "checkpoints" / _complete(run_dir)[0]
            size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
            filler = faults.fill(disk, leave_bytes=size // 3)
            release.touch()
            out = _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, out[-4000:]
        status = read_json(run_dir / "status.json")
        assert status["state"] == "failed", status
        assert "no space left" in status["error"].lower(), status["error"]
        assert "Sweep summary" in out, out[-6000:]
        summary = out[out.index("Sweep summary") :]
        assert "no space left" in summary.lower(), summary
        assert _complete(run_dir) == ["checkpoint-10"], "the partial checkpoint must never count as complete"
        partial = run_dir / "checkpoints" / "checkpoint-20"
        assert not (partial / run_disk.COMPLETE_MARKER).exists()

        filler.unlink()  # space again: the same command resumes from the last complete checkpoint
        started = time.monotonic()
        proc = start_sweep(args, env=PAUSE_ENV)
        out = _finish(proc)
        assert proc.returncode == 0, out[-4000:]
        status = read_json(run_dir / "status.json")
        metrics = read_json(run_dir / "metrics.json")
        assert status["state"] == "completed" and status["attempts"] == 2, status
        assert metrics["resumed_from_step"] == 10 and metrics["global_step"] == 30, metrics
        print(f"rerun took {time.monotonic() - started:.0f} s")


OUTAGE_S = 60.0


def _running(sweep: Path, n: int):
    def ready(_run_dir: Path) -> bool:
        states = [read_json(p).get("state") for p in sweep.glob("*/status.json")]
        return states.count("running") >= n

    return ready


def test_the_controller_stopped_for_a_minute_mid_sweep_no_point_is_marked_dead_and_all_complete(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    sweep = tmp_path / "sweep"
    release = tmp_path / "release"
    # Two CPUs a point: one point per node runs, the third waits in the queue through the outage. The two running
    # points are held at step 20 until halfway through the outage, so that they end while the controller is down.
    proc = start_sweep(
        [
            "-m",
            *POINT,
            *pause.overrides(20, release),
            "training.max_steps=40",
            "beta=0.1,0.2,0.3",
            "hydra.launcher.cpus_per_task=2",
            f"hydra.sweep.dir={sweep}",
        ],
        env=PAUSE_ENV,
    )
    try:
        wait_for_point(proc, sweep, _running(sweep, 2), "two points never ran at once", timeout=QUEUE_WAIT_S)
        with faults.slurmctld_stopped(slurm_cluster, OUTAGE_S):
            down = slurm_cluster.run("squeue", "-h", check=False, timeout=60)
            assert down.returncode != 0, f"squeue still answers with slurmctld stopped: {down.stdout}"
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:
                if time.monotonic() > deadline - OUTAGE_S / 2:
                    release.touch()
                assert proc.poll() is None, "the sweep ended while the controller was down"
                states = {p.parent.name: read_json(p)["state"] for p in sweep.glob("*/status.json")}
                assert not {"failed", "cancelled"} & set(states.values()), states
                time.sleep(1)
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]
    statuses = [read_json(p) for p in sorted(sweep.glob("*/status.json"))]
    assert len(statuses) == 3 and all(s["state"] == "completed" for s in statuses), statuses
    assert all(s["attempts"] == 1 and s.get("error") is None for s in statuses), statuses
    for line in out.splitlines():
        assert not line.lstrip().startswith(("failed", "cancelled")), line
        assert ": failed" not in line and ": cancelled" not in line, line


def _past_first_checkpoint(run_dir: Path) -> bool:
    return bool(_complete(run_dir)) and trained_steps(12)(run_dir)


# SLURM requeues a batch job lost with its node (JobRequeue=1, the local cluster's and SLURM's default); a job
# submitted with --no-requeue (or on a site with JobRequeue=0) ends NODE_FAIL instead.
@pytest.mark.parametrize("requeue", [True, False], ids=["requeued_by_slurm", "no_requeue"])
def test_a_node_lost_mid_job_is_node_failure_and_the_point_resumes_from_its_last_complete_checkpoint(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
    requeue,
):
    sweep = tmp_path / "sweep"
    # Two CPUs: the point has its node to itself, so losing the node loses nothing else.
    args = ["-m", *POINT, "training.max_steps=40", "hydra.launcher.cpus_per_task=2", f"hydra.sweep.dir={sweep}"]
    if not requeue:
        args.append("+hydra.launcher.additional_parameters.no_requeue=true")
    proc = start_sweep(args)
    try:
        run_dir = wait_for_point(
            proc, sweep, _past_first_checkpoint, "no checkpoint before the node was lost", timeout=QUEUE_WAIT_S
        )
        job_id = read_json(run_dir / "status.json")["slurm"]["job_id"]
        node = slurm_cluster.job_info(job_id)["NodeList"]
        with faults.node_lost(slurm_cluster, node):
            time.sleep(5)  # a node that reboots
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    accounted = slurm_cluster.run("sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State").stdout.split()
    assert "NODE_FAIL" in accounted, f"sacct says {accounted}"
    status = read_json(run_dir / "status.json")
    if not requeue:  # failed, saying why, and a rerun resumes it
        assert proc.returncode == 1 and status["state"] == "failed", out[-6000:]
        assert "NODE_FAIL" in status["error"] and "lost with its node" in status["error"], status["error"]
        assert "lost with its node" in out[out.index("Sweep summary") :], out[-3000:]
        out = _finish(start_sweep(args))
        status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["attempts"] == 2, (status, out[-6000:])
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["resumed_from_step"] in (10, 20) and metrics["global_step"] == 40, metrics
    assert _complete(run_dir)[-1] == "checkpoint-40"


def test_a_search_submitting_its_next_trial_while_the_controller_is_down_waits_for_it(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    """One trial at a time: the first ends while slurmctld is stopped, so the next is submitted into the outage."""
    sweep = tmp_path / "search"
    proc = start_sweep(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *POINT,
            "training.max_steps=40",
            "training.sample_completions=0",
            "eval.gen_prompts=0",
            "objective.metric=eval_loss",
            "objective.mode=min",
            "loss=sigmoid",
            "beta=interval(0.1, 0.2)",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.sampler.type=random",
            "hydra.sweeper.pruner.type=none",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    try:
        wait_for_point(proc, sweep, trained_steps(35), "the first trial never got near its end", timeout=QUEUE_WAIT_S)
        with faults.slurmctld_stopped(slurm_cluster, OUTAGE_S):
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:
                assert proc.poll() is None, "the search ended while the controller was down"
                time.sleep(1)
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "SLURM does not answer" in out, "the next trial was not submitted during the outage:\n" + out[-4000:]
    assert proc.returncode == 0, out[-6000:]
    assert "Sweep summary: 2 completed" in out, out[-4000:]
