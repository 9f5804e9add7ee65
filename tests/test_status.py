"""`python -m dpo_sweeps.status`: states merged from run folders and SLURM, the table, exit codes, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dpo_sweeps import status
from dpo_sweeps.runs import folder as run_folder
from tests.helpers import REPO

NOW = float(int(time.time()))  # whole seconds, as status.json times are


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _point(sweep: Path, name: str, state: str | None, progress: dict | None = None, **fields) -> Path:
    d = sweep / name
    d.mkdir(parents=True)
    if state is not None:
        run_folder.write_json_atomic(d / "status.json", {"state": state, "attempts": 1, **fields})
    if progress is not None:
        run_folder.write_json_atomic(d / "progress.json", progress)
    return d


def _sweep(tmp_path: Path, names: list[str]) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # As sweep/preflight.py writes it: paths relative to where the sweep was started, not to where status runs.
    points = [{"overrides": [n], "run_dir": f"outputs/sweeps/sweep/{n}", "state": None, "skip": False} for n in names]
    run_folder.write_json_atomic(sweep / "sweep_points.json", points)
    return sweep


def test_states_steps_eta_and_errors_come_from_the_run_folders(tmp_path):
    sweep = _sweep(tmp_path, ["beta=0.1", "beta=0.2", "beta=0.3", "beta=0.4", "beta=0.5"])
    _point(
        sweep,
        "beta=0.1",
        "running",
        {
            "step": 20,
            "max_steps": 40,
            "start_step": 0,
            "loss": 0.5,
            "reward_accuracy": 0.75,
            "started_at": NOW - 100,
            "updated_at": NOW,
        },
        started_at=_iso(NOW - 130),
        attempts=2,
        slurm={"job_id": "101", "array_job_id": "100", "array_task_id": "0"},
    )
    _point(
        sweep,
        "beta=0.2",
        "completed",
        {"step": 40, "max_steps": 40, "loss": 0.3, "reward_accuracy": 1.0},
        started_at=_iso(NOW - 300),
        ended_at=_iso(NOW - 200),
    )
    _point(sweep, "beta=0.3", "failed", error="FloatingPointError: Training loss became nan at step 7")
    _point(sweep, "beta=0.4", "requeued")
    # beta=0.5 never started: no folder at all.
    points = {p.name: p for p in status.collect(sweep, now=NOW, query_slurm=False)}

    assert [points[n].state for n in sorted(points)] == ["running", "completed", "failed", "requeued", "pending"]
    running = points["beta=0.1"]
    assert (running.step, running.max_steps, running.loss, running.reward_accuracy) == (20, 40, 0.5, 0.75)
    assert running.eta_s == 100 and running.attempts == 2 and running.job_id == "100_0"
    assert 129 <= running.elapsed_s <= 131
    assert points["beta=0.2"].elapsed_s == 100
    assert status.exit_code(list(points.values())) == status.EXIT_FAILED

    table = status.format_table(sweep, list(points.values()))
    assert "5 point(s): 1 failed, 1 running, 1 requeued, 1 pending, 1 completed" in table
    row = next(line for line in table.splitlines() if line.strip().startswith("beta=0.1"))
    assert row.split() == ["beta=0.1", "running", "20/40", "0.5000", "0.750", "2:10", "1:40", "2", "100_0"]
    assert "beta=0.3: FloatingPointError: Training loss became nan at step 7" in table


def test_a_run_without_progress_json_reads_the_tail_of_metrics_jsonl(tmp_path):
    sweep = _sweep(tmp_path, ["a"])
    d = _point(sweep, "a", "running")
    for step in range(1, 2001):
        run_folder.append_history(d, {"step": step, "loss": 1 / step, "rewards/accuracies": 0.5})
    run_folder.append_history(d, {"step": 2000, "eval_loss": 0.1})
    (p,) = status.collect(sweep, query_slurm=False)
    assert (p.step, p.loss, p.reward_accuracy) == (2000, 1 / 2000, 0.5)


def test_slurm_states_tell_queued_requeued_cancelled_and_killed_points_apart():
    def merged(folder_state, slurm_state, reason=""):
        p = status.PointStatus(name="p", run_dir="p", state=folder_state)
        return status.merge_slurm(p, slurm_state, reason)

    assert merged("pending", "PENDING", "Resources").state == "queued"
    assert merged("pending", "RUNNING").state == "running"  # started, status.json not written yet
    assert merged("running", "PENDING", "BeginTime").state == "requeued"  # preempted, waiting to come back
    assert merged("requeued", "PENDING").state == "requeued"
    assert merged("requeued", "RUNNING").state == "running"  # back, before its job rewrote status.json
    assert merged("requeued", "CANCELLED").state == "cancelled"
    killed = merged("running", "CANCELLED by 0")
    assert killed.state == "cancelled" and "CANCELLED by 0" in killed.reason
    oom = merged("running", "OUT_OF_MEMORY")
    assert oom.state == "failed" and "OUT_OF_MEMORY" in oom.reason
    # What the run folder recorded as final wins over SLURM's view of the process.
    assert merged("completed", "CANCELLED").state == "completed"
    assert merged("failed", "COMPLETED").state == "failed"
    assert merged("running", None).state == "running"


def test_exit_codes_for_scripts():
    def code(*states):
        return status.exit_code([status.PointStatus(name=s, run_dir=s, state=s) for s in states])

    assert code("completed", "completed") == 0
    assert code("completed", "running", "pending") == 3
    assert code("completed", "running", "cancelled") == 1
    assert code("failed") == 1


def test_the_newest_submitit_arrays_map_onto_the_points_in_launch_order(tmp_path):
    sub = tmp_path / ".submitit"
    # An earlier invocation (array 10), then this one, in two batches (arrays 12 and 15).
    for name in ["10_0", "10_1", "10_2", "12_0", "12_1", "15_0", "not_a_task"]:
        (sub / name).mkdir(parents=True)
    assert status.submitted_tasks(tmp_path, 3) == {0: "12_0", 1: "12_1", 2: "15_0"}
    assert status.submitted_tasks(tmp_path, 4) == {}  # does not add up: better no job id than a wrong one


def test_a_1000_point_sweep_lists_what_needs_attention_and_counts_the_rest(tmp_path):
    states = ["failed"] * 3 + ["running"] * 5 + ["completed"] * 900 + ["pending"] * 92
    points = [status.PointStatus(name=f"seed={i}", run_dir=f"seed={i}", state=s) for i, s in enumerate(states)]
    points[5].reason = "OUT_OF_MEMORY"
    points.reverse()  # failures last in launch order: the table must still show them first
    table = status.format_table(tmp_path, points)
    lines = table.splitlines()
    assert len(lines) < 25, table
    assert lines[0].endswith("1000 point(s): 3 failed, 5 running, 92 pending, 900 completed")
    listed = [line.split()[1] for line in lines[2:10]]
    assert listed == ["failed"] * 3 + ["running"] * 5
    assert "not listed: 92 pending, 900 completed (--all lists every point)" in table
    assert len(status.format_table(tmp_path, points, limit=None).splitlines()) > 1000


def test_cli_on_a_64_point_sweep_imports_nothing_heavy_and_exits_3_while_running(tmp_path):
    names = [f"beta={i / 100}" for i in range(64)]
    sweep = _sweep(tmp_path, names)
    for i, n in enumerate(names):
        if i % 2:
            _point(sweep, n, "completed")
        else:
            _point(
                sweep,
                n,
                "running",
                {"step": i, "max_steps": 64, "loss": 0.4, "started_at": NOW - 60, "updated_at": NOW},
            )
    probe = (
        "import sys, time; from dpo_sweeps import status; t = time.perf_counter(); "
        f"code = status.main([{str(sweep)!r}, '--no-slurm']); "
        "print('SECONDS', time.perf_counter() - t); "
        "print('HEAVY', [m for m in ('torch', 'transformers', 'trl', 'hydra', 'datasets') if m in sys.modules]); "
        "sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == status.EXIT_IN_PROGRESS, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "64 point(s): 32 running, 32 completed" in proc.stdout
    assert proc.stdout.count(" running ") == 32


def test_cli_usage_errors_exit_2_with_a_message(tmp_path):
    for folder in (tmp_path / "nope", tmp_path):
        proc = subprocess.run(
            [sys.executable, "-m", "dpo_sweeps.status", str(folder)], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 2 and proc.stderr.startswith("Error: "), proc.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert "exit status:" in help_text and "3  nothing failed so far" in help_text


def test_json_output_has_one_object_per_point(tmp_path):
    sweep = _sweep(tmp_path, ["a", "b"])
    _point(sweep, "a", "completed")
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", str(sweep), "--json", "--no-slurm"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert [(p["name"], p["state"]) for p in json.loads(proc.stdout)] == [("a", "completed"), ("b", "pending")]
    assert proc.returncode == 3


def test_watch_returns_once_nothing_is_left_to_wait_for(tmp_path):
    import threading

    sweep = _sweep(tmp_path, ["a", "b"])
    _point(sweep, "a", "completed")
    _point(sweep, "b", "running", {"step": 3, "max_steps": 10, "started_at": NOW, "updated_at": NOW})
    finish = threading.Timer(1.0, lambda: run_folder.update_status(sweep / "b", state="failed", error="boom"))
    finish.start()
    t0 = time.monotonic()
    code = status.main([str(sweep), "--watch", "0.2", "--no-slurm"])
    finish.join()
    assert code == status.EXIT_FAILED and 0.9 < time.monotonic() - t0 < 10


def test_job_ids_recorded_in_sweep_points_json_win_over_the_submitit_folders(tmp_path):
    sweep = _sweep(tmp_path, ["a", "b"])
    points = json.loads((sweep / "sweep_points.json").read_text())
    points[0]["slurm_job_id"], points[1]["slurm_job_id"] = "77_0", "77_1"
    run_folder.write_json_atomic(sweep / "sweep_points.json", points)
    (sweep / ".submitit" / "5_0").mkdir(parents=True)
    (sweep / ".submitit" / "5_1").mkdir()
    assert [p.job_id for p in status.collect(sweep, query_slurm=False)] == ["77_0", "77_1"]


def test_a_point_the_launcher_recorded_cancelled_reads_cancelled_in_status_summary_and_report(tmp_path):
    from dpo_sweeps.report.sweep_report import write_sweep_report
    from dpo_sweeps.sweep.callbacks import collect, format_summary

    sweep = _sweep(tmp_path, ["beta=0.1", "beta=0.2"])
    done = _point(sweep, "beta=0.1", "completed")
    run_folder.write_json_atomic(done / "metrics.json", {"objective_value": 0.9, "eval_rewards/accuracies": 0.9})
    # As slurm/watch.py records a task scancelled before it wrote a result.
    error = "SLURM task 7_1 ended CANCELLED (reason None, exit code 0:15) without a result: cancelled (scancel by you)"
    _point(sweep, "beta=0.2", "cancelled", error=error, slurm={"state": "CANCELLED", "job_id_submitted": "7_1"})
    points = {p.name: p for p in status.collect(sweep, query_slurm=False)}
    assert points["beta=0.2"].state == "cancelled" and "CANCELLED" in points["beta=0.2"].reason
    assert status.exit_code(list(points.values())) == 1
    summary = format_summary(collect(sweep))
    assert summary.startswith("Sweep summary: 1 completed, 1 cancelled"), summary
    assert "cancelled" in summary.splitlines()[-1] and "scancel" in summary
    report = write_sweep_report(sweep)
    assert "cancelled" in report.table
