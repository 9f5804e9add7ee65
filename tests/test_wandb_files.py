"""The offline W&B reader, checked against files written by the real wandb client (offline, no server, no API key)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wandb_files import BLOCK_LEN, WandbFileError, find_offline_runs, iter_records, read_offline_run

pytest.importorskip("wandb")

N_STEPS = 300
LONG_TEXT = "dpo" * 30_000  # a 90 kB config value: one record split across first/middle/last fragments

WRITER = textwrap.dedent(
    """
    import math, sys, wandb

    n_steps, long_text = int(sys.argv[1]), sys.argv[2] * int(sys.argv[3])
    run = wandb.init(
        project="dpo-sweeps-test",
        group="beta-sweep",
        name="beta=0.1,lora=r16",
        job_type="train",
        tags=["dpo", "tiny_llama"],
        config={"beta": 0.1, "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
                "training": {"optim": {"lr": 5e-5}}, "long_text": long_text},
    )
    run.config.update({"added_later": "yes"})
    for step in range(n_steps):
        row = {"train/loss": 1.0 / (step + 1), "train/rewards/margins": step * 0.01, "plain": step}
        if step % 100 == 0:
            row["eval/loss"] = float("nan") if step == 100 else 0.5
        wandb.log(row, step=step)
    table = wandb.Table(columns=["prompt", "completion"], data=[["hi", "hello"], ["2+2", "4"]])
    wandb.log({"samples": table}, step=n_steps)
    run.summary["best_margin"] = 1.5
    print(run.id)
    run.finish()
    """
)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    wandb_dir = tmp_path_factory.mktemp("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    script = wandb_dir / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.run(
        [sys.executable, str(script), str(N_STEPS), "dpo", "30000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=wandb_dir,
    )
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    return wandb_dir, run_id


def test_find_offline_runs(offline_run):
    wandb_dir, run_id = offline_run
    runs = find_offline_runs(wandb_dir)
    assert len(runs) == 1
    assert runs[0].name.startswith("offline-run-") and runs[0].name.endswith(run_id)
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 2 * BLOCK_LEN  # several blocks: framing is exercised


def test_run_identity(offline_run):
    wandb_dir, run_id = offline_run
    run = read_offline_run(find_offline_runs(wandb_dir)[0])
    assert run.run_id == run_id
    assert run.project == "dpo-sweeps-test"
    assert run.group == "beta-sweep"
    assert run.name == "beta=0.1,lora=r16"
    assert run.job_type == "train"
    assert run.tags == ["dpo", "tiny_llama"]
    assert run.exit_code == 0


def test_config(offline_run):
    wandb_dir, run_id = offline_run
    run_file = find_offline_runs(wandb_dir)[0] / f"run-{run_id}.wandb"
    run = read_offline_run(run_file)  # the file itself works as well as its folder
    assert run.config == {
        "beta": 0.1,
        "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
        "training": {"optim": {"lr": 5e-5}},
        "long_text": LONG_TEXT,
        "added_later": "yes",
    }


def test_history(offline_run):
    wandb_dir, _ = offline_run
    run = read_offline_run(find_offline_runs(wandb_dir)[0])
    by_step = run.history_by_step()
    assert sorted(by_step) == list(range(N_STEPS + 1))
    assert [v for _, v in run.series("train/loss")] == pytest.approx([1.0 / (s + 1) for s in range(N_STEPS)])
    assert run.series("plain") == [(s, s) for s in range(N_STEPS)]
    assert by_step[57]["train/rewards/margins"] == pytest.approx(0.57)
    eval_loss = dict(run.series("eval/loss"))
    assert sorted(eval_loss) == [0, 100, 200]
    assert eval_loss[0] == 0.5 and math.isnan(eval_loss[100])
    table = by_step[N_STEPS]
    assert table["samples/_type"] == "table-file"
    assert table["samples/nrows"] == 2 and table["samples/ncols"] == 2
    assert (run.path.parent / "files" / table["samples/path"]).is_file()


def test_summary(offline_run):
    wandb_dir, _ = offline_run
    run = read_offline_run(find_offline_runs(wandb_dir)[0])
    assert run.summary["best_margin"] == 1.5
    assert run.summary["train/loss"] == pytest.approx(1.0 / N_STEPS)
    assert run.summary["_step"] == N_STEPS
    assert run.summary["samples/_type"] == "table-file"


def test_fragmented_record_is_reassembled(offline_run):
    wandb_dir, _ = offline_run
    records = list(iter_records(read_offline_run(find_offline_runs(wandb_dir)[0]).path))
    run_records = [r for r in records if r.WhichOneof("record_type") == "run"]
    assert run_records and run_records[0].ByteSize() > BLOCK_LEN


def test_corrupt_file_is_reported(offline_run, tmp_path):
    wandb_dir, run_id = offline_run
    data = bytearray((find_offline_runs(wandb_dir)[0] / f"run-{run_id}.wandb").read_bytes())
    data[200] ^= 0xFF
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="CRC mismatch"):
        read_offline_run(bad)
    (tmp_path / "not.wandb").write_bytes(b"hello world")
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        read_offline_run(tmp_path / "not.wandb")


def test_truncated_tail_is_tolerated(offline_run, tmp_path):
    """A run still being written (or killed) ends mid-record: everything before it is read."""
    wandb_dir, run_id = offline_run
    data = (find_offline_runs(wandb_dir)[0] / f"run-{run_id}.wandb").read_bytes()
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(data[: len(data) // 2 + 3])
    run = read_offline_run(cut)
    assert run.run_id == run_id and run.config["beta"] == 0.1
    assert 0 < len(run.history) < N_STEPS


def test_missing_run_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run-<id>.wandb"):
        read_offline_run(Path(tmp_path))
