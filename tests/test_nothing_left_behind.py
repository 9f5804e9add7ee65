"""Every input checked before anything starts: a config or file mistake exits 1 with one message naming the key, and
leaves no file or folder anywhere (no run folder, no sweep folder, no data-cache entry, no W&B run), for a single run,
a sweep, and a dry run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY, run_cli

USER_ENV = {"HYDRA_FULL_ERROR": ""}

MISTAKES = {
    "negative beta": (["beta=-1"], "beta=-1.0: DPO's beta must be > 0"),
    "nf4 without lora": (["lora=none", "quantization=nf4"], "quantization=nf4 with lora=none"),
    "typo without +": (
        ["lora.rank=8"],
        "lora.rank=8: unknown key, did you mean lora.r? valid keys of lora: enabled, r",
    ),
    "typo with +": (["+lora.rank=8"], "lora.rank=8: unknown key, did you mean lora.r?"),
    "missing dataset.path": (["dataset=local", "dataset.path=no/such/prefs.jsonl"], "dataset.path=no/such/prefs.jsonl"),
}
MODES = {"run": [], "sweep": ["seed=1,2", "-m"], "dry run": ["seed=1,2", "dry_run=true", "-m"]}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_exits_1_with_its_message_and_leaves_nothing(tmp_path, mistake, mode):
    overrides, message = MISTAKES[mistake]
    # Relative paths resolve against the working directory: outputs/, outputs/.data_cache, wandb/ all land here.
    (tmp_path / "keep.txt").write_text("a file of the user's\n")
    before = tree(tmp_path)
    env = {**USER_ENV, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    proc = run_cli(["model=tiny_llama", *TINY, *overrides, *MODES[mode]], cwd=tmp_path, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert message in proc.stderr, out
    assert "Traceback" not in out and 'File "' not in out, out
    assert "To append to your config" not in out, out
    assert tree(tmp_path) == before, sorted(tree(tmp_path) - before)


def test_a_bad_row_in_the_first_rows_is_named_before_any_point_starts(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n{not json\n")
    before = tree(tmp_path)
    env = {**USER_ENV, "PYTHONPATH": str(REPO)}
    args = ["model=tiny_llama", *TINY, "dataset=local", f"dataset.path={data}", "seed=1,2", "-m"]
    proc = run_cli(args, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{data} line 2: not valid JSON" in proc.stderr
    assert tree(tmp_path) == before
    # Checked once for the sweep, not once per point.
    assert proc.stderr.count("line 2: not valid JSON") == 2  # one line per point in the problem list...
    assert "2 of 2 sweep point(s)" in proc.stderr


def test_the_first_rows_are_read_not_the_whole_file(tmp_path):
    from dpo_sweeps.data.sources import DataFileError, first_rows

    good = tmp_path / "big.jsonl"
    # A broken line far down is the full read's to find; the pre-launch check reads the first rows only.
    good.write_text("".join(json.dumps({"prompt": str(i), "chosen": "a", "rejected": "b"}) + "\n" for i in range(50)))
    with good.open("a") as f:
        f.write("{broken\n")
    assert first_rows(good) == 5
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataFileError, match="no rows"):
        first_rows(empty)
    with pytest.raises(DataFileError, match="not a valid parquet file"):
        (tmp_path / "bad.parquet").write_bytes(b"not parquet")
        first_rows(tmp_path / "bad.parquet")
    assert os.listdir(tmp_path)  # nothing else to say: no cache written


def test_a_failure_reason_is_the_line_that_names_the_cause():
    from dpo_sweeps.report.points import one_line

    hub = (
        "OSError: We couldn't connect to 'https://huggingface.co' to load the files.\n"
        "Check your internet connection or see how to run the library in offline mode at 'https://...'."
    )
    assert one_line(hub).startswith("OSError: We couldn't connect")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: bad beta'
    assert one_line(trace) == "ValueError: bad beta"


def test_a_rerun_with_parallel_points_starts_no_process_for_completed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "model=tiny_llama",
        *TINY,
        "training.max_steps=2",
        "training.save_model=false",
        "eval.gen_prompts=0",
        "seed=1",
        "hydra/launcher=local_parallel",
        f"hydra.sweep.dir={sweep}",
        "-m",
    ]
    env = {"PYTHONPATH": str(REPO)}
    first = run_cli(args, cwd=tmp_path, env=env, timeout=900)
    (point,) = [d for d in sweep.iterdir() if (d / "status.json").exists()]
    status = json.loads((point / "status.json").read_text())
    assert status["state"] == "completed"
    assert not (sweep / ".submitit" / "%j").exists(), "no folder named after submitit's job-id pattern"
    jobs_before = sorted(p.name for p in (sweep / ".submitit").iterdir())

    again = run_cli(args, cwd=tmp_path, env=env, timeout=900)
    assert "1 completed point(s) skipped (rerun=true trains them again)" in again.stdout, again.stdout
    assert "Sweep summary: 1 completed" in again.stdout
    # No process was started for it: no new submitit job folder, its status untouched.
    assert sorted(p.name for p in (sweep / ".submitit").iterdir()) == jobs_before
    assert json.loads((point / "status.json").read_text()) == status
    assert first.returncode == again.returncode == 0


def test_a_sweep_where_nothing_ran_writes_no_report_and_no_wandb_summary(tmp_path):
    data = tmp_path / "late_error.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(8)]
    # The first rows parse (the pre-launch check passes); the last line breaks when each point loads its data.
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    sweep = tmp_path / "sweep"
    args = ["model=tiny_llama", "dataset=local", f"dataset.path={data}", "training=smoke", "logger=wandb"]
    args += ["logger.mode=offline", "seed=1,2", f"hydra.sweep.dir={sweep}", "-m"]
    # Offline W&B files go into the sweep folder (the summary run) and the run folders (WANDB_DIR unset).
    env = {"PYTHONPATH": str(REPO), "WANDB_DIR": ""}
    proc = run_cli(args, cwd=tmp_path, env=env, check=False, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Sweep summary: 2 failed" in out and "line 9: not valid JSON" in out, out
    assert "no sweep report and no W&B summary written" in out, out
    assert not (sweep / "summary.md").exists() and not (sweep / "plots").exists()
    assert not list(tmp_path.rglob("wandb")), sorted(tree(tmp_path))
