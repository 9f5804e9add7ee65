"""One live job per run folder (runs/claim.py, slurm/liveness.py): a job claims its folder, refuses one another live
job holds, takes over one whose holder is dead (pid gone, or reused by another process), and a requeue of the same
SLURM task resumes its own folder. Real processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY, run_cli, stored_trials

from dpo_sweeps.runs import claim
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import liveness


def _holder_of(proc: subprocess.Popen) -> dict:
    holder = claim.me()
    holder.update(pid=proc.pid, start_ticks=claim.start_ticks(proc.pid))
    return holder


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_process_keeps_its_folder_and_a_dead_one_is_taken_over(tmp_path, sleeper):
    run_dir = tmp_path / "beta=0.1"
    other = _holder_of(sleeper)
    assert claim.claim(run_dir, other, liveness.holder_alive) is None
    assert liveness.holder_alive(claim.read(run_dir)) is True
    with pytest.raises(claim.FolderBusyError, match=f"process {sleeper.pid} on"):
        liveness.claim_for_this_job(run_dir)
    assert claim.read(run_dir)["pid"] == sleeper.pid, "a refused claim leaves the holder's claim as it was"
    assert list(liveness.live_holders([run_dir])) == [str(run_dir)]

    sleeper.kill()
    sleeper.wait()
    assert liveness.holder_alive(claim.read(run_dir)) is False
    assert liveness.live_holders([run_dir]) == {}
    mine = liveness.claim_for_this_job(run_dir)
    assert claim.read(run_dir)["pid"] == os.getpid() == mine["pid"]
    claim.release(run_dir, mine)
    assert claim.read(run_dir) is None


def test_a_reused_pid_is_not_the_holder(tmp_path, sleeper):
    """The claim names a pid that now belongs to another process (another start time): the holder is dead."""
    run_dir = tmp_path / "p"
    reused = _holder_of(sleeper)
    reused["start_ticks"] -= 1
    claim.claim(run_dir, reused, liveness.holder_alive)
    assert liveness.holder_alive(reused) is False
    liveness.claim_for_this_job(run_dir)
    assert claim.read(run_dir)["pid"] == os.getpid()


def test_after_a_reboot_or_on_another_host(tmp_path):
    rebooted = {**claim.me(), "boot_id": "another-boot"}
    assert claim.local_alive(rebooted) is False
    elsewhere = {**claim.me(), "host": "some-other-node"}
    assert claim.local_alive(elsewhere) is None
    run_dir = tmp_path / "p"
    claim.claim(run_dir, elsewhere, liveness.holder_alive)
    with pytest.raises(claim.FolderBusyError, match="cannot be checked from here"):
        liveness.claim_for_this_job(run_dir)


def test_a_requeued_slurm_task_takes_its_own_claim_and_an_old_process_does_not_drop_it(tmp_path, monkeypatch):
    """Same task id (a requeue: restart count 1): the new attempt claims over the old one's claim without asking
    SLURM; the old attempt's release afterwards leaves the new claim in place."""
    run_dir = tmp_path / "p"
    old = {
        **claim.me(),
        "pid": 1,
        "start_ticks": 1,
        "slurm": {"task": "4242_3", "job_id": "4243", "restart_count": "0"},
    }
    claim.claim(run_dir, old, lambda h: pytest.fail("the same task must not be judged"))
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    new = claim.me()
    assert new["slurm"] == {"task": "4242_3", "job_id": "4243", "restart_count": "1"}
    assert claim.claim(run_dir, new, lambda h: pytest.fail("the same task must not be judged")) is None
    claim.release(run_dir, old)
    assert claim.read(run_dir)["slurm"]["restart_count"] == "1"


def test_a_job_does_not_start_in_a_folder_a_live_job_holds(tmp_path, sleeper, tiny_model_paths):
    """The real CLI, a single run whose folder a live process holds: refused with one line naming the holder; the
    folder gets no status.json and the claim stays the holder's."""
    run_dir = tmp_path / "run"
    claim.claim(run_dir, _holder_of(sleeper), liveness.holder_alive)
    proc = run_cli(["model=tiny_llama", *TINY, f"hydra.run.dir={run_dir}"], check=False, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"is held by process {sleeper.pid}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (run_dir / "status.json").exists()
    assert json.loads((run_dir / claim.CLAIM_FILE).read_text())["pid"] == sleeper.pid


# ------------------------------------------------------------------------------------------------ retry_failed


def test_failed_trials_are_retried_with_their_parameters_before_new_ones_and_do_not_eat_the_budget():
    """A real Optuna study: trial 0 fails (a killed job), trial 1 fails on the user's config (not retryable). With
    retry_failed=1 the next ask is trial 0's retry (same parameters, retry_of=0); a failing retry is not retried again;
    n_trials counts parameter sets."""
    from dpo_sweeps.search import retry, study
    from dpo_sweeps.search.compat import FloatDistribution, TrialState, optuna

    space = {"beta": FloatDistribution(0.01, 1.0)}
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    killed = s.ask(space)
    study.tell(s, killed, study.Outcome(TrialState.FAIL, reason="SLURM task 7_0 ended OUT_OF_MEMORY"))
    bad = s.ask(space)
    study.tell(s, bad, study.Outcome(TrialState.FAIL, reason="ConfigError: beta", retryable=False))
    trials = s.get_trials(deepcopy=False)
    assert [t.number for t in retry.eligible(trials, 1)] == [0]
    assert retry.counted(trials, 1) == 1, "the failure about to be retried does not count; the config error does"
    assert retry.counted(trials, 0) == 2

    assert retry.enqueue_next(s, 1) == 0
    again = s.ask(space)
    assert again.params == killed.params and again.user_attrs["retry_of"] == 0
    assert retry.enqueue_next(s, 1) is None, "one retry at a time, and none for the config error"
    study.tell(s, again, study.Outcome(TrialState.FAIL, reason="killed again"))
    trials = s.get_trials(deepcopy=False)
    assert retry.eligible(trials, 1) == [] and [t.number for t in retry.eligible(trials, 2)] == [2]
    assert retry.counted(trials, 1) == 2, "trial 0 is replaced by its retry"
    assert "does not use up the budget" in retry.describe(1) and "not retried" in retry.describe(0)


# ------------------------------------------------------------------------------------------------ launchers


def _hold(run_dir, proc: subprocess.Popen) -> None:
    """What a live job of another invocation leaves: its claim and a running status.json."""
    claim.claim(run_dir, _holder_of(proc), liveness.holder_alive)
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": proc.pid}))


def test_rerun_true_refuses_a_folder_a_live_job_holds_naming_the_job(tmp_path, sleeper):
    sweep = tmp_path / "sweep"
    _hold(sweep / "beta=0.2", sleeper)
    proc = run_cli(
        ["-m", "model=tiny_qwen", *TINY, "beta=0.1,0.2", "rerun=true", f"hydra.sweep.dir={sweep}"],
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rerun=true, but 1 point(s) are being run by a live job right now" in proc.stderr, proc.stderr[-2000:]
    assert f"beta=0.2: process {sleeper.pid} on" in proc.stderr and "Traceback" not in proc.stderr
    assert not (sweep / "beta=0.1" / "status.json").exists(), "nothing was started"


def test_a_parallel_sweep_waits_for_the_live_job_that_holds_a_point_and_never_trains_there(
    tmp_path, sleeper, tiny_model_paths
):
    """local_parallel, two points, one held by a live process of another invocation: the sweep trains the free
    point, says it waits for the held one, and trains nothing there; when the holder dies without recording an end,
    the sweep reports that point as it is (running: exit 1), and the next run takes the folder over and trains it."""
    sweep = tmp_path / "sweep"
    held = sweep / "beta=0.2"
    _hold(held, sleeper)
    args = ["-m", "hydra/launcher=local_parallel", "model=tiny_qwen", *TINY, "eval.gen_prompts=0", "beta=0.1,0.2",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 400
            while not ((sweep / "beta=0.1" / "status.json").exists() and _state(sweep / "beta=0.1") == "completed"):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            time.sleep(2)
            assert proc.poll() is None, "the sweep must wait for the held point's job"
            sleeper.kill()
            sleeper.wait()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log_path.read_text()
    assert f"Point beta=0.2 is held by process {sleeper.pid}" in out and "waiting for it" in out, out[-3000:]
    assert proc.returncode == 1 and not (held / "metrics.jsonl").exists(), out[-3000:]
    assert _state(held) == "running", "the holder's folder is reported as it left it"

    run_cli(args, timeout=400)
    assert _state(held) == "completed" and (held / "metrics.jsonl").exists()


def _state(run_dir) -> str | None:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def test_hydras_basic_launcher_waits_in_the_point_then_takes_the_folder_over(tmp_path, sleeper, tiny_model_paths):
    """The default launcher runs points in the sweep's process: the point itself waits while a live process holds
    its folder (it says so, trains nothing), and once the holder is gone without an end it takes the folder over."""
    sweep = tmp_path / "sweep"
    held = sweep / "default"  # a one-point sweep: nothing varies in its folder's name
    _hold(held, sleeper)
    args = ["-m", "model=tiny_qwen", *TINY, "eval.gen_prompts=0", "beta=0.2", f"hydra.sweep.dir={sweep}"]
    log_path = tmp_path / "out.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while "waiting (held by process" not in log_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            time.sleep(liveness.WAIT_POLL_S + 1)
            assert proc.poll() is None and not (held / "metrics.jsonl").exists(), "it must wait, not train"
            sleeper.kill()
            sleeper.wait()
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert _state(held) == "completed" and (held / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_search_stopped_with_ctrl_c_leaves_no_running_trial_and_a_rerun_retries_it(tmp_path, tiny_model_paths):
    """SIGINT to a search whose trial trains in its process: the trial's folder says cancelled, its Optuna trial is
    failed (not RUNNING forever), and the same command again retries it once with the same parameters."""
    from dpo_sweeps.search import study
    from dpo_sweeps.search.compat import TrialState

    sweep = tmp_path / "search"
    args = ["-m", "hparams_search=dpo_optuna", "model=tiny_qwen", *TINY, "eval.gen_prompts=0", "loss=sigmoid",
            "training.max_steps=60", "training.save_model=false", "training.sample_completions=0",
            "hydra.sweeper.n_trials=1", "training.learning_rate=tag(log, interval(1e-3, 1e-2))",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not any(run_folder.read_history(d) for d in sweep.glob("*/") if (d / "status.json").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]

    (stopped,) = stored_trials(sweep)
    (run_dir,) = [d for d in sweep.glob("*/") if (d / "status.json").exists()]
    assert _state(run_dir) == "cancelled" and stopped.state == TrialState.FAIL, (_state(run_dir), stopped.state)
    assert "stopped (Ctrl-C)" in stopped.user_attrs[study.ATTR_ERROR]

    run_cli(args, timeout=400)
    first, retry = stored_trials(sweep)
    assert retry.state == TrialState.COMPLETE and retry.params == first.params and retry.user_attrs["retry_of"] == 0
    assert _state(run_dir) == "completed"
