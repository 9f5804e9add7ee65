"""The console a person reads: config and data errors without a traceback, sparse progress lines in a log file."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from dpo_sweeps import console
from tests.helpers import TINY, run_cli

# A user's shell: HYDRA_FULL_ERROR unset (run_cli sets it to 1 for the other tests' benefit).
USER_ENV = {"HYDRA_FULL_ERROR": ""}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("beta=0", "beta=0.0: DPO's beta must be > 0"),
        ("+lora.rr=4", "lora.rr=4: unknown key, did you mean lora.r?"),
    ],
)
def test_a_config_error_prints_the_problem_list_and_exits_1_without_traceback(tmp_path, override, expected):
    args = ["model=tiny_qwen", *TINY, override, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, env=USER_ENV, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert expected in proc.stderr and "config problem(s)" in proc.stderr
    assert "Traceback" not in out and 'File "' not in out, out
    # Checked before Hydra creates the run folder: a config mistake leaves nothing behind.
    assert not (tmp_path / "run").exists()


def test_a_data_error_names_the_row_without_traceback(tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    rows[7]["chosen"] = ""
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["model=tiny_qwen", *TINY, "dataset=local", f"dataset.path={data}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, env=USER_ENV, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    assert "prefs.jsonl row 7 (line 8), field 'chosen': empty text" in proc.stderr, proc.stderr


def _state(step: int, max_steps: int = 1000):
    return SimpleNamespace(is_world_process_zero=True, global_step=step, max_steps=max_steps, epoch=0.0)


def test_a_log_file_gets_about_ten_progress_lines_per_run_not_one_per_step(tmp_path):
    from dpo_sweeps.train.progress import RunProgress

    stream = io.StringIO()
    cb = RunProgress(tmp_path, display=console.PlainDisplay("", stream=stream))
    cb.on_train_begin(None, _state(0), None)
    for step in range(1, 1001):
        cb.on_step_end(None, _state(step), None)
        cb.on_log(None, _state(step), None, logs={"loss": 1.0 / step, "rewards/accuracies": 0.5})
    cb.on_train_end(None, _state(1000), None)
    lines = stream.getvalue().splitlines()
    progress_lines = [line for line in lines if line.startswith("step ")]
    assert 9 <= len(progress_lines) <= 11, lines
    assert progress_lines[0].startswith("step 100/1000  loss 0.0100  reward acc 0.500")
    assert progress_lines[-1].startswith("step 1000/1000") and "eta 0:00" in progress_lines[-1]
    assert lines[-1].startswith("trained 1000 step(s) to 1000/1000")
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert (progress["step"], progress["max_steps"], progress["loss"]) == (1000, 1000, 0.001)


def test_the_terminal_display_is_one_redrawn_bar_with_step_loss_and_eta(tmp_path):
    from rich.console import Console

    from dpo_sweeps.train.progress import RunProgress

    buffer = io.StringIO()
    term = Console(file=buffer, force_terminal=True, width=120)
    cb = RunProgress(tmp_path, display=console.RichDisplay("", console=term))
    cb.on_train_begin(None, _state(0, 40), None)
    for step in range(1, 41):
        cb.on_step_end(None, _state(step, 40), None)
        if step % 5 == 0:
            cb.on_log(None, _state(step, 40), None, logs={"loss": 0.5, "rewards/accuracies": 0.75})
    cb.on_evaluate(None, _state(40, 40), None, metrics={"eval_loss": 0.4, "eval_rewards/accuracies": 0.9})
    cb.on_train_end(None, _state(40, 40), None)
    out = buffer.getvalue()
    assert "40/40" in out and "loss 0.5000  reward acc 0.750" in out and "eta" in out
    assert "eval at step 40: loss 0.4000, reward acc 0.900" in out
    # Redrawn in place (carriage returns), not one printed line per step.
    assert out.count("\n") < 10, out
