"""One live job per run folder and true final states, on the local SLURM cluster (`make slurm-up`): a search whose
driver is SIGKILLed while its trials run, rerun at once, waits for those jobs instead of starting them again; a grid
sweep run twice in parallel trains each point once; a scancelled trial is recorded cancelled, failed in the study,
and retried once with the same parameters."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import claim
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import study
from dpo_sweeps.search.compat import TrialState
from tests.helpers import REPO, read_json, run_cli, run_dirs, start_sweep, stored_trials, trained_steps, wait_for_point
from tests.slurm_support import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAST = [
    "hydra/launcher=slurm_local",
    "model=tiny_qwen",
    "dataset=toy",
    "training=smoke",
    "logger=none",
    "training.save_model=false",
    "training.sample_completions=0",
    "eval.gen_prompts=0",
]
SEARCH = [
    "-m",
    "hparams_search=dpo_optuna",
    *FAST,
    "loss=sigmoid",
    "hydra.sweeper.sampler.type=random",
    "hydra.sweeper.sampler.seed=3",
    "training.learning_rate=tag(log, interval(1e-3, 1e-2))",
]


def _task(status: dict) -> str:
    slurm = status["slurm"]
    return f"{slurm['array_job_id']}_{slurm['array_task_id']}" if "array_task_id" in slurm else slurm["job_id"]


def _submitted_tasks(sweep_dir: Path) -> set[str]:
    """Every SLURM task submitted for this sweep (submitit gives each its folder under .submitit/: <array>_<index>, or
    the job id of a single job; an array's own id folder holds only its submission files)."""
    names = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()}
    return names - {n.split("_")[0] for n in names if "_" in n}


def _trained_once(run_dir: Path, max_steps: int) -> None:
    """One job trained the folder: every step logged once, in order, up to max_steps, one attempt."""
    steps = [r["step"] for r in run_folder.read_history(run_dir) if "loss" in r and "eval_loss" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == max_steps, (run_dir.name, steps)
    assert read_json(run_dir / "status.json")["attempts"] == 1, run_dir.name


def _digest(folders: list[Path]) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for d in folders
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def _running(n: int):
    """wait_for_point's test on the sweep folder: n points have logged a training step."""
    return lambda sweep: sum(trained_steps(1)(d) for d in run_dirs(sweep)) >= n


def test_search_driver_killed_while_its_trials_run_is_continued_without_a_second_job(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    """n_jobs=2: the driver is SIGKILLed while both trials train in their SLURM jobs; the same command at once waits
    for those two jobs (it says so) and asks for the third trial. Exactly n_trials trials, each folder trained by one
    SLURM task, the .submitit folder holds exactly 3 tasks; a third run of the command touches no folder."""
    sweep_dir = tmp_path / "search"
    max_steps = 80
    args = [
        *SEARCH,
        f"training.max_steps={max_steps}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 400
            while not (sweep_dir.exists() and _running(2)(sweep_dir)):
                assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "both trials never trained at once"
                time.sleep(0.2)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    first = {d.name: read_json(d / "status.json") for d in run_dirs(sweep_dir)}
    assert all(s["state"] == "running" for s in first.values()), first

    proc = run_cli(args, timeout=900)
    said = proc.stdout + proc.stderr
    assert said.count("still runs it: waiting for it") == 2, said[-4000:]
    assert "held by SLURM job" in said, said[-4000:]
    trials = stored_trials(sweep_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    folders = run_dirs(sweep_dir)
    assert len(folders) == 3
    for d in folders:
        _trained_once(d, max_steps)
        status = read_json(d / "status.json")
        if d.name in first:  # the first invocation's job finished it: the same task, never a second one
            assert _task(status) == _task(first[d.name])
        assert slurm_cluster.sacct_states(_task(status)).get(_task(status)) == "COMPLETED"
        assert claim.read(d) is None, "a finished job lets go of its folder"
    assert _submitted_tasks(sweep_dir) == {_task(read_json(d / "status.json")) for d in folders}

    before = _digest(folders)
    again = run_cli(args, timeout=300)
    assert "Search: 3 trial(s)" in again.stdout, again.stdout[-2000:]
    assert _digest(folders) == before, "completed folders were touched"


def test_grid_sweep_run_twice_in_parallel_trains_each_point_once(slurm_cluster, tmp_path, tiny_model_paths):  # noqa: F811
    """The second invocation starts while the first one's tasks are queued or running: it submits nothing, waits for
    the first one's tasks, and both end with every point completed, each trained by one task."""
    sweep_dir = tmp_path / "grid"
    max_steps = 40
    args = ["-m", *FAST, f"training.max_steps={max_steps}", "beta=0.1,0.2", f"hydra.sweep.dir={sweep_dir}"]
    first = start_sweep(args)
    try:
        wait_for_point(
            first, sweep_dir, lambda d: True, "the first sweep never claimed a folder", f"*/{claim.CLAIM_FILE}"
        )
        second = start_sweep(args)
        out_second, _ = second.communicate(timeout=900)
        out_first, _ = first.communicate(timeout=900)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert first.returncode == 0, out_first[-3000:]
    assert second.returncode == 0, out_second[-3000:]
    assert out_second.count("held by SLURM job") == 2 and "Submitted" not in out_second, out_second[-3000:]
    assert "Sweep summary: 2 completed" in out_second, out_second[-3000:]
    folders = run_dirs(sweep_dir)
    assert len(folders) == 2
    for d in folders:
        _trained_once(d, max_steps)
    assert _submitted_tasks(sweep_dir) == {_task(read_json(d / "status.json")) for d in folders}


def test_a_scancelled_trial_is_cancelled_failed_and_retried_once(slurm_cluster, tmp_path, tiny_model_paths):  # noqa: F811
    """scancel of a running trial's task: its status.json says cancelled within a minute (SLURM's state recorded),
    the study fails the trial, and it is retried with the same parameters (retry_failed=1) in the same folder; the
    budget is not inflated: n_trials=2 counted, 3 trials in the journal. Running the command again adds nothing."""
    sweep_dir = tmp_path / "search"
    max_steps = 60
    args = [
        *SEARCH,
        f"training.max_steps={max_steps}",
        "training.save_steps=10",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = start_sweep(args)
    try:
        run_dir = wait_for_point(proc, sweep_dir, trained_steps(1), "no trial trained", "*/metrics.jsonl", 400)
        status = read_json(run_dir / "status.json")
        slurm_cluster.run("scancel", _task(status))
        cancelled_at = time.monotonic()
        while (cancelled := read_json(run_dir / "status.json"))["state"] != "cancelled":
            assert time.monotonic() - cancelled_at < 60, cancelled
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cancelled["slurm"]["state"].startswith("CANCELLED") and "cancelled" in cancelled["error"], cancelled
    assert proc.returncode == 0, out[-3000:]
    trials = stored_trials(sweep_dir)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE] or [
        t.state for t in trials
    ] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], [t.state for t in trials]
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert "CANCELLED" in failed.user_attrs[study.ATTR_ERROR]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == failed.number and retry.params == failed.params
    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["trial"]["number"] == 2 and status["attempts"] == 2

    again = run_cli(args, timeout=300)
    assert "Search: 3 trial(s)" in again.stdout and len(stored_trials(sweep_dir)) == 3, again.stdout[-2000:]
