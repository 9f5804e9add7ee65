"""A local sweep uses the whole machine: points as parallel processes (`hydra/launcher=local_parallel`), each with its
share of the cores (`training.cpu_threads: null`), and the same results as one point after another."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime

import pytest

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.sweep.local_launcher import points_at_once
from dpo_sweeps.train import cluster
from tests.helpers import (
    REPO,
    TINY,
    compose_config,
    read_json,
    run_cli,
    run_dirs,
    start_sweep,
    trained_steps,
    wait_for_point,
)

FINANCE = REPO / "tests" / "fixtures" / "datasets" / "finance" / "finance_prefs.jsonl"


def late_error_file(folder):
    """A data file whose first rows parse (the pre-launch check reads those) and whose last line does not: the point
    starts and fails loading its data, as a point does at run time."""
    path = folder / "late_error.jsonl"
    path.write_text(FINANCE.read_text() + "{not json\n")
    return path


def test_points_at_once_follows_max_parallel_then_memory_then_cores():
    assert points_at_once(3, max_parallel=2, mem_gb=None, cores=8) == 2
    assert points_at_once(3, max_parallel=9, mem_gb=None, cores=1) == 3  # never more than the points
    # No memory figure: one point per core.
    assert points_at_once(3, max_parallel=None, mem_gb=None, cores=2) == 2
    assert points_at_once(1, max_parallel=None, mem_gb=None, cores=2) == 1
    # With one: as many as the available memory holds, at most two per core.
    assert points_at_once(3, max_parallel=None, mem_gb=2, cores=2, memory_gb=20) == 3
    assert points_at_once(12, max_parallel=None, mem_gb=2, cores=2, memory_gb=20) == 4
    assert points_at_once(12, max_parallel=None, mem_gb=8, cores=16, memory_gb=20) == 2
    assert points_at_once(3, max_parallel=None, mem_gb=64, cores=2, memory_gb=20) == 1


def test_auto_threads_share_the_cores_between_points_and_ranks(monkeypatch):
    cores = cluster.available_cores()
    monkeypatch.delenv(cluster.POINTS_AT_ONCE_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cluster.cpu_threads(None) == cores  # alone: every core
    assert cluster.cpu_threads(3) == 3  # an explicit setting wins
    monkeypatch.setenv(cluster.POINTS_AT_ONCE_ENV, "2")
    assert cluster.cpu_threads(None) == max(1, cores // 2)
    monkeypatch.setenv(cluster.POINTS_AT_ONCE_ENV, str(4 * cores))
    assert cluster.cpu_threads(None) == 1  # never zero
    monkeypatch.setenv(cluster.POINTS_AT_ONCE_ENV, "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cluster.cpu_threads(None) == max(1, cores // 2)


def test_demo_presets_run_their_points_in_parallel_and_still_compose_sequentially():
    for preset in ("demo", "smollm2_demo"):
        cfg = compose_config([f"experiment={preset}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("dpo_sweeps_launcher.local.LocalLauncher")
        assert cfg.training.cpu_threads is None
        # A preset's launcher keys are accepted by the one-at-a-time launcher too.
        seq = compose_config([f"experiment={preset}", "hydra/launcher=local"], return_hydra_config=True)
        assert seq.hydra.launcher._target_.endswith("SequentialLauncher")
    # Without a preset a sweep still runs in this process, one point after another.
    assert compose_config([], return_hydra_config=True).hydra.launcher._target_.endswith("BasicLauncher")


def test_bad_thread_count_is_refused_with_the_fix():
    from dpo_sweeps.config.validation import find_problems

    problems = find_problems(compose_config(["model=tiny_qwen", *TINY, "training.cpu_threads=0"]))
    assert any("training.cpu_threads=0: must be >= 1" in p and "training.cpu_threads=null" in p for p in problems)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r}


def _interval(run_dir) -> tuple[datetime, datetime]:
    status = read_json(run_dir / "status.json")
    return datetime.fromisoformat(status["started_at"]), datetime.fromisoformat(status["ended_at"])


@pytest.mark.slow
def test_parallel_points_overlap_share_the_cores_match_sequential_and_a_failure_is_summarised(
    tmp_path, tiny_model_paths
):
    """Four points at once (two train, two fail on a data file broken past its first rows), each in its own process with one share of
    the cores; the summary names all four and the exit status is 1; the completed points logged the same losses as
    the same seeds run one after another in one process."""
    common = [
        "-m",
        "model=tiny_qwen",
        *TINY,
        "dataset=local",
        "dataset.to_conversational=true",
        "training.max_steps=6",
        "training.logging_steps=1",
        "training.save_model=false",
        "training.sample_completions=0",
        "eval.gen_prompts=0",
        "seed=1,2",
    ]
    sweep = tmp_path / "parallel"
    proc = run_cli(
        [
            *common,
            f"dataset.path={FINANCE},{late_error_file(tmp_path)}",
            "hydra/launcher=local_parallel",
            "hydra.launcher.max_parallel=4",
            # Fresh caches: the points must share them among themselves, not find them from an earlier run.
            f"ref_cache.dir={tmp_path / 'ref_cache'}",
            f"data_cache.dir={tmp_path / 'data_cache'}",
            "training.cpu_threads=null",
            f"hydra.sweep.dir={sweep}",
        ],
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Sweep summary: 2 completed, 2 failed" in out, out[-3000:]
    good = sorted(d for d in sweep.iterdir() if "finance_prefs" in d.name)
    bad = sorted(d for d in sweep.iterdir() if "late_error.jsonl" in d.name)
    assert len(good) == 2 and len(bad) == 2
    for d in bad:
        status = read_json(d / "status.json")
        assert status["state"] == "failed" and "late_error.jsonl" in status["error"]
        assert re.search(rf"\[\d/4\] {re.escape(d.name)}: failed ", out), out
    for d in good:
        assert re.search(rf"\[\d/4\] {re.escape(d.name)}: completed in ", out), out

    statuses = [read_json(d / "status.json") for d in [*good, *bad]]
    pids = {s["pid"] for s in statuses}
    assert len(pids) == 4 and os.getpid() not in pids, "each point runs in a process of its own"
    expected_threads = max(1, cluster.available_cores() // 4)
    for d in good:
        metrics = read_json(d / "metrics.json")
        assert metrics["cpu_threads"] == expected_threads
        assert metrics["peak_rss_gb"] > 0
    # They started together and share the reference log-probs: one computed them, the other waited on the lock.
    assert sorted(read_json(d / "metrics.json")["ref_cache"] for d in good) == ["computed", "hit"]
    (start_a, end_a), (start_b, end_b) = (_interval(d) for d in good)
    assert start_a < end_b and start_b < end_a, "the two training points must have run at the same time"

    seq = tmp_path / "sequential"
    run_cli(
        [
            *common,
            f"dataset.path={FINANCE}",
            "hydra/launcher=local",
            f"training.cpu_threads={expected_threads}",
            f"hydra.sweep.dir={seq}",
        ]
    )
    seq_dirs = sorted(d for d in seq.iterdir() if d.is_dir() and (d / "status.json").exists())
    assert len(seq_dirs) == 2
    assert len({read_json(d / "status.json")["pid"] for d in seq_dirs}) == 1, "one process, one point after another"

    def seed(run_dir) -> str:
        return next(o for o in read_json(run_dir / "status.json")["overrides"] if o.startswith("seed="))

    sequential = {seed(d): d for d in seq_dirs}
    for d in good:
        parallel_losses, sequential_losses = _losses(d), _losses(sequential[seed(d)])
        assert sorted(parallel_losses) == list(range(1, 7)), parallel_losses
        # The same seed and thread count: the same numbers, whichever launcher ran the point.
        assert parallel_losses == pytest.approx(sequential_losses, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_killed_sweep_stops_its_points_and_records_them_cancelled(tmp_path, sig):
    # `kill` or a closed terminal once ended the sweep's process without a word while its points trained on, unseen,
    # in their own processes (here: for 100000 steps), and a rerun found their folders busy.
    sweep = tmp_path / "sweep"
    proc = start_sweep(
        ["-m", "hydra/launcher=local_parallel", "model=tiny_qwen", *TINY, "training.max_steps=100000",
         "training.sample_completions=0", "eval.gen_prompts=0", "beta=0.1,0.2", f"hydra.sweep.dir={sweep}"]
    )  # fmt: skip
    wait_for_point(proc, sweep, trained_steps(1), "the points never started training")
    deadline = time.monotonic() + 300
    while len([p for p in run_dirs(sweep) if run_folder.read_history(p)]) < 2:  # both points training
        assert proc.poll() is None and time.monotonic() < deadline, "the second point never started training"
        time.sleep(0.2)
    pids = [read_json(p / run_folder.STATUS_FILE)["pid"] for p in run_dirs(sweep)]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert f"Stopped ({sig.name}): 2 running point(s) stopped and recorded as cancelled" in out, out
    assert "Run the same command again to go on" in out
    for pid in pids:  # no point process outlives the sweep's
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in _proc_state(pid), f"point process {pid} still runs"
    for point in run_dirs(sweep):
        status = read_json(point / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.CANCELLED, status
        assert f"{sig.name} to its process" in status["error"]


def _proc_state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().split("State:")[1].splitlines()[0].lower()
    except (OSError, IndexError):
        return "zombie"
