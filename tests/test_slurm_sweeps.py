"""Sweeps on the local SLURM cluster through `hydra/launcher=slurm_local` (the `slurm` launcher with the local
cluster's resources): DDP ranks, secrets, preemption and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_sweeps.runs import folder as run_folder
from tests.helpers import REPO, TINY, preempt_at_step, read_json, run_cli
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm

# The local cluster's profile: default partition, no GPUs, one core per task, timeout_min 60 (> 10, see slurm.yaml).
LOCAL_SLURM = ["hydra/launcher=slurm_local"]
SECRET = "sk-test-3f9a-do-not-leak"


def _files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_two_task_job_trains_with_ddp_writes_one_set_of_outputs_and_leaks_no_secret(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "model=tiny_qwen",
            *TINY,
            *LOCAL_SLURM,
            "hydra.launcher.tasks_per_node=2",
            "training.max_steps=6",
            "training.logging_steps=1",
            f"hydra.sweep.dir={sweep}",
        ],
        env={"WANDB_API_KEY": SECRET},
        timeout=QUEUE_WAIT_S,
    )
    (run_dir,) = [p.parent for p in sweep.glob("*/status.json")]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["world_size"] == 2
    assert status["secrets_present"] == ["WANDB_API_KEY"], "the token reaches the job through the environment"
    assert read_json(run_dir / "metrics.json")["global_step"] == 6
    steps = [r["step"] for r in run_folder.read_history(run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6], "only rank 0 logs: each step exactly once"
    assert len(list(run_dir.glob("adapter/adapter_model.safetensors"))) == 1
    assert (sweep / ".submitit").is_dir() and any((sweep / ".submitit").rglob("*.sh"))
    assert _files_containing(sweep, SECRET) == [], "no file of the sweep (sbatch script, pickles, logs) holds the token"


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r}


@pytest.mark.slow
def test_usr2_mid_training_saves_requeues_resumes_and_matches_an_uninterrupted_run(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    common = [
        "model=tiny_qwen",
        *TINY,
        "training.max_steps=80",
        "training.save_steps=40",
        "training.logging_steps=5",
        "training.eval_before_training=false",
        "training.save_model=false",
    ]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", "-m", *common, *LOCAL_SLURM, f"hydra.sweep.dir={sweep}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ref_dir = tmp_path / "ref"
    try:
        # Signal between two save points (save_steps=40), so the checkpoint can only come from the signal.
        run_dir = preempt_at_step(proc, sweep, slurm_cluster, 10, timeout=QUEUE_WAIT_S)
        # Meanwhile, the uninterrupted reference run of the same config, in this machine's other core.
        run_cli([*common, f"hydra.run.dir={ref_dir}"])
        out, _ = proc.communicate(timeout=QUEUE_WAIT_S)  # the requeued job queues again
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["requeues"] == 1 and status["attempts"] == 2
    assert status["slurm"]["restart_count"] == "1"
    metrics = read_json(run_dir / "metrics.json")
    assert 10 <= metrics["resumed_from_step"] < 40, "resumed from the checkpoint saved on the signal"
    assert metrics["global_step"] == 80
    ref, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(5, 81, 5))
    resumed = metrics["resumed_from_step"]
    # HF logs the mean loss since the previous log; the first log after a mid-interval resume averages fewer steps.
    partial = resumed - resumed % 5 + 5 if resumed % 5 else None
    for step in ref:
        if step != partial:
            assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-6), step
    assert metrics["eval_loss"] == pytest.approx(read_json(ref_dir / "metrics.json")["eval_loss"], rel=1e-4)
