"""Sweeps that survive bad points, failures, kills and preemption signals (without SLURM; see test_slurm_sweeps.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.train import checkpoints, cluster
from tests.helpers import REPO, TINY, compose_config, read_json, run_cli

POINT = ["model=tiny_qwen", *TINY]
FINANCE = REPO / "tests" / "fixtures" / "datasets" / "finance" / "finance_prefs.jsonl"


def late_error_file(folder):
    """A data file whose first rows parse (the pre-launch check reads those) and whose last line does not: the point
    starts and fails loading its data, as a point does at run time."""
    path = folder / "late_error.jsonl"
    path.write_text(FINANCE.read_text() + "{not json\n")
    return path


def test_bad_point_stops_the_sweep_before_anything_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *POINT, "beta=0.1,0", "loss.label_smoothing=0.0,0.7", f"hydra.sweep.dir={sweep}"], check=False
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert "3 of 4 sweep point(s) have config problems" in err
    # Each bad point is named by its overrides, with its own problems.
    assert "beta=0 loss.label_smoothing=0.0]" in err and "beta=0 loss.label_smoothing=0.7]" in err
    assert "beta=0.1 loss.label_smoothing=0.7]" in err and "beta=0.1 loss.label_smoothing=0.0]" not in err
    assert "loss.label_smoothing=0.7: must be in [0, 0.5]" in err
    assert not sweep.exists(), "nothing may run when a point is invalid"


def test_dry_run_prints_the_slurm_job_grid_and_submits_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=slurm",
            *POINT,
            "beta=0.1,0.3",
            "hydra.launcher.partition=gpu",
            "dry_run=true",
            f"hydra.sweep.dir={sweep}",
        ],
        env={"SLURM_CONF": "/nonexistent/slurm.conf"},  # proves no SLURM command is needed
    )
    out = proc.stdout
    assert "Sweep: 2 point(s), launcher SlurmLauncher" in out
    assert "partition=gpu" in out and "timeout_min=240" in out and "signal_delay_s=300" in out
    for beta in ("0.1", "0.3"):
        assert f"beta={beta}" in out
        # A point's folder is named by what varies across the sweep; the shared overrides name the sweep folder.
        assert f"-> {sweep}/beta={beta}\n" in out
    assert "nothing was run or submitted" in out
    assert not sweep.exists()


def test_each_value_of_a_swept_list_gets_its_own_folder(tmp_path):
    # A sweep over list values (`[1.0,2.0],[1.0,4.0]`) once named both points after the other keys only: two runs in
    # one folder, the second skipping or overwriting the first.
    sweep = tmp_path / "sweep"
    out = run_cli(
        ["-m", *POINT, "loss=sigmoid", "loss.extra_types=[sft]", "loss.weights=[1.0,2.0],[1.0,4.0]",
         "dry_run=true", f"hydra.sweep.dir={sweep}"]
    ).stdout  # fmt: skip
    assert f"-> {sweep}/loss.weights=[1.0,2.0]\n" in out and f"-> {sweep}/loss.weights=[1.0,4.0]\n" in out, out


def test_points_that_would_share_a_folder_are_refused(tmp_path):
    # logger.* does not name a run folder (it does not change what is computed): sweeping it would put two runs in
    # one folder, so the sweep is refused before anything runs, naming both points and the folder.
    proc = run_cli(["-m", *POINT, "logger.project=a,b", f"hydra.sweep.dir={tmp_path / 'sweep'}"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = proc.stderr + proc.stdout
    assert "logger.project=b" in err and "would run in the same folder as point [" in err and "logger.project=a" in err
    assert not (tmp_path / "sweep").exists()


def test_slurm_launcher_config_overrides_submitit_defaults_that_break_requeue():
    cfg = compose_config(["hydra/launcher=slurm", "resume.max_requeues=5"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout == 5  # tied to resume.max_requeues (submitit's default 0 never requeues)
    assert launcher.signal_delay_s > 120
    assert launcher.timeout_min > 10  # else every preemption counts as a time-out
    local = compose_config(["hydra/launcher=submitit_local"], return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher")


def test_fsdp_rules():
    cfg = compose_config(["model=tiny_qwen", *TINY, "lora=none", "training.fsdp.enabled=true"])
    from dpo_sweeps.config.validation import find_problems

    assert any("training.fsdp.enabled=true with training.use_cpu=true" in p for p in find_problems(cfg))


# --- checkpoints -------------------------------------------------------------------------------------------------


def _fake_checkpoint(root: Path, step: int, complete: bool, state: str = "{}") -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(state)
    if complete:
        (path / checkpoints.COMPLETE_MARKER).write_text(f"{step}\n")
    return path


def test_only_committed_checkpoints_are_resumed_from_and_rotation_deletes_marker_first(tmp_path):
    _fake_checkpoint(tmp_path, 10, complete=True)
    _fake_checkpoint(tmp_path, 20, complete=True)
    _fake_checkpoint(tmp_path, 30, complete=False)  # killed while saving: trainer_state.json there, no marker
    _fake_checkpoint(tmp_path, 40, complete=True, state='{"global_st')  # marker but truncated state: not trusted
    assert checkpoints.last_complete(tmp_path) == str(tmp_path / "checkpoint-20")
    checkpoints.prune(tmp_path, keep=1)
    # 10: an older complete one beyond the limit; 30/40 are newer than the newest complete one (maybe being written).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]
    assert checkpoints.last_complete(tmp_path) == str(tmp_path / "checkpoint-20")


# --- preemption guard (the signal part runs for real; submitit's handler is replaced by a recorder) ---------------


def test_preemption_is_deferred_to_a_step_boundary_then_requeued(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    calls = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # stands in for submitit's handler
    guard = cluster.PreemptionGuard(tmp_path, max_requeues=3, signum=signal.SIGUSR2)
    guard.install()
    try:
        guard.deferring = True  # inside the training loop
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert guard.requested and calls == [], "the signal only raises a flag while training"
        guard.hand_over()  # what after_train() does once the checkpoint is saved
        assert calls == [signal.SIGUSR2]
        status = run_folder.read_status(tmp_path)
        assert status["state"] == "requeued" and status["requeues"] == 2
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_requeues_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    guard = cluster.PreemptionGuard(tmp_path, max_requeues=2, signum=signal.SIGUSR2)
    guard.original = lambda *a: pytest.fail("must not requeue once resume.max_requeues is spent")
    with pytest.raises(cluster.RequeueLimitReached, match=r"after 2 requeue\(s\): resume.max_requeues=2 is spent"):
        guard.hand_over()


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_failing_point_is_recorded_others_finish_summary_and_rerun_skips_completed(tmp_path, tiny_model_paths):
    """One point fails (a data file broken past the first rows the pre-launch check reads); the other completes, under the submitit launcher (each point a
    process of its own). The summary names both and the exit status is 1. A rerun of the same sweep (basic launcher)
    skips the completed point without touching its files and fails the bad one again."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *POINT,
        "training.max_steps=6",
        "training.save_model=false",
        "dataset=local",
        "dataset.to_conversational=true",
        f"dataset.path={FINANCE},{late_error_file(tmp_path)}",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_cli([*args, "hydra/launcher=submitit_local"], check=False)
    assert first.returncode == 1, first.stderr[-3000:]
    (good,) = sweep.glob("dataset.path=*finance_prefs.jsonl")
    (bad,) = sweep.glob("dataset.path=*late_error.jsonl")
    assert read_json(good / "status.json")["state"] == "completed"
    bad_status = read_json(bad / "status.json")
    assert bad_status["state"] == "failed" and "late_error.jsonl" in bad_status["error"]
    assert "Traceback" in bad_status["traceback"]
    assert "Sweep summary: 1 completed, 1 failed" in first.stdout
    assert f"completed {good}" in first.stdout and f"failed    {bad}" in first.stdout
    # The submitting console follows the points (each runs in its own process): one line as each ends, and no
    # Hydra schema-matching notice for the shadowed submitit_local schema.
    assert re.search(rf"\[\d/2\] {re.escape(bad.name)}: failed .*late_error\.jsonl", first.stdout), first.stdout
    assert re.search(rf"\[\d/2\] {re.escape(good.name)}: completed in ", first.stdout), first.stdout
    assert "ConfigStore schema with the same name" not in first.stderr

    metrics_before = (good / "metrics.json").read_bytes()
    mtime_before = (good / "metrics.json").stat().st_mtime_ns
    second = run_cli(args, check=False)
    assert second.returncode == 1
    assert "already completed" in second.stdout + second.stderr
    assert f"{good.name}: skipped (already completed" in second.stdout
    assert "1 completed point(s) skipped (rerun=true trains them again)" in second.stdout
    assert (good / "metrics.json").read_bytes() == metrics_before
    assert (good / "metrics.json").stat().st_mtime_ns == mtime_before
    assert read_json(bad / "status.json")["attempts"] == 2


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r}


@pytest.mark.slow
def test_killed_local_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path, tiny_model_paths):
    common = [
        *POINT,
        "training.max_steps=60",
        "training.save_steps=10",
        "training.logging_steps=5",
        "training.eval_before_training=false",
        "training.save_model=false",
    ]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run_cli([*common, f"hydra.run.dir={ref_dir}"])

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", *common, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while checkpoints.last_complete(run_dir / "checkpoints") is None:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no chance to clean up, like a node failure
    finally:
        proc.wait()
    killed_at = max(_losses(run_dir), default=0)
    assert killed_at < 60 and read_json(run_dir / "status.json")["state"] == "running"

    resumed = run_cli([*common, f"hydra.run.dir={run_dir}"])
    metrics = read_json(run_dir / "metrics.json")
    assert 10 <= metrics["resumed_from_step"] < 60, "must resume from the checkpoint, not from step 0"
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert metrics["global_step"] == 60
    ref, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(5, 61, 5))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-6), step
    assert metrics["eval_loss"] == pytest.approx(read_json(ref_dir / "metrics.json")["eval_loss"], rel=1e-4)
    assert read_json(run_dir / "status.json")["attempts"] == 2
    # The generation eval: the first attempt's "before" answers were kept (gen_before.json), the "after" ones match.
    ref_metrics = read_json(ref_dir / "metrics.json")
    for key in ("gen/score_before", "gen/finished_before", "gen/score_after", "gen/win_rate_vs_ref"):
        assert metrics[key] == ref_metrics[key], key
    assert metrics["gen/kl_to_ref"] == pytest.approx(ref_metrics["gen/kl_to_ref"], rel=1e-3, abs=1e-3)
