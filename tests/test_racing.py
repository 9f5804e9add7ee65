"""Seed racing (`racing.enabled=true`, dpo_sweeps/sweep/racing.py): seeds run in waves, a clearly worse configuration
stops after `racing.min_seeds`, its remaining seeds are recorded `skipped_by_racing` and never trained.

'Clearly worse' is real on the tiny model: with objective.metric=eval_rewards/margins, learning rate 1e-6 leaves the
eval margin at ~3e-4 for every seed, while 5e-3 and 4e-3 reach ~0.3-0.5 (checked over 3 seeds each before writing
this test); 5e-3 and 4e-3 are close (their intervals overlap)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from dpo_sweeps.report.seeds import _T95
from dpo_sweeps.sweep import racing
from tests.helpers import REPO, TINY, compose_config, read_json, run_cli

# 10 steps, no generation: a point trains in a few seconds.
FAST = [
    "model=tiny_llama",
    *TINY,
    "training.max_steps=10",
    "eval.gen_prompts=0",
    "training.sample_completions=0",
    "objective.metric=eval_rewards/margins",
]
GOOD, CLOSE, BAD = "0.005", "0.004", "1e-06"


def _by_config(sweep) -> dict[str, dict]:
    with open(sweep / "summary_by_config.csv") as f:
        return {row["training.learning_rate"]: row for row in csv.DictReader(f)}


def _point(sweep, lr: str, seed: int):
    return sweep / f"seed={seed},training.learning_rate={lr}"


# ------------------------------------------------------------------------------------------------ fast, no training


def test_t_quantile_matches_the_reports_table_and_other_confidences():
    for df, expected in enumerate(_T95, start=1):
        assert racing.t_quantile(0.95, df) == pytest.approx(expected, abs=2e-3)
    assert racing.t_quantile(0.90, 10) == pytest.approx(1.812, abs=2e-3)
    assert racing.t_quantile(0.99, 4) == pytest.approx(4.604, abs=2e-3)


def test_worse_needs_the_whole_interval_on_the_wrong_side():
    best = racing.Interval(1.0, 0.1, 3)  # [0.9, 1.1]
    assert racing.worse(racing.Interval(0.5, 0.3, 3), best, "max")  # [0.2, 0.8]
    assert not racing.worse(racing.Interval(0.7, 0.25, 3), best, "max")  # [0.45, 0.95] overlaps
    assert not racing.worse(racing.Interval(0.5, None, 1), best, "max"), "one seed: no interval, no decision"
    assert racing.worse(racing.Interval(1.5, 0.1, 3), best, "min") and not racing.worse(
        racing.Interval(0.5, 0.3, 3), best, "min"
    )


def test_racing_is_typed_in_the_schema():
    cfg = compose_config(["racing.enabled=true"])
    assert cfg.racing.enabled is True and cfg.racing.min_seeds == 2 and cfg.racing.confidence == 0.95
    with pytest.raises(Exception, match="racing.min_seeds"):
        compose_config(["racing.min_seeds=two"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["training.learning_rate=5e-3,1e-6"], "racing.enabled=true needs `seed` swept in the grid"),
        (["seed=1,2", "racing.min_seeds=1"], "racing.min_seeds=1: must be >= 2"),
        (["seed=1,2", "hydra/launcher=submitit_local"], "racing.enabled=true runs on hydra/launcher=local"),
    ],
)
def test_a_sweep_that_cannot_race_is_refused_in_one_line_before_anything_runs(tmp_path, args, expected):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *FAST, *args, "racing.enabled=true", f"hydra.sweep.dir={sweep}"],
        check=False,
        env={"HYDRA_FULL_ERROR": "0"},
    )
    assert proc.returncode != 0
    assert expected in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not sweep.exists(), "nothing was run or written"


# ------------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_clearly_worse_configuration_is_raced_out_the_close_one_kept_and_a_rerun_keeps_the_decision(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *FAST,
        f"training.learning_rate={GOOD},{CLOSE},{BAD}",
        "seed=1,2,3,4",
        "racing.enabled=true",
        "racing.min_seeds=3",
        f"hydra.sweep.dir={sweep}",
    ]
    # W&B offline, so that "never trained" also means "no W&B run".
    env = {"WANDB_MODE": "offline"}
    proc = run_cli([*args, "logger=wandb"], env=env)
    out = proc.stdout + proc.stderr
    assert "Racing: wave 4 of 4, 2 point(s)" in out, "wave 4 ran only the two configurations still in the race"
    assert "raced out after wave 3" in out

    for lr in (GOOD, CLOSE):
        for seed in (1, 2, 3, 4):
            assert read_json(_point(sweep, lr, seed) / "status.json")["state"] == "completed", (lr, seed)
    for seed in (1, 2, 3):
        assert read_json(_point(sweep, BAD, seed) / "status.json")["state"] == "completed"
    skipped = _point(sweep, BAD, 4)
    status = read_json(skipped / "status.json")
    assert status["state"] == "skipped_by_racing"
    decision = status["racing"]
    assert decision["wave"] == 3 and decision["seeds_run"] == ["1", "2", "3"] and decision["n"] == 3
    assert decision["interval"][1] < decision["best"]["interval"][0], "its interval lies below the best's"
    assert decision["best"]["config"] in (f"training.learning_rate={GOOD}", f"training.learning_rate={CLOSE}")
    assert "raced out after wave 3" in status["reason"] and "eval_rewards/margins" in status["reason"]
    # Never trained: its folder holds the status file and nothing else (no config, checkpoint, adapter, W&B run).
    assert sorted(p.name for p in skipped.iterdir()) == ["status.json"]
    assert (_point(sweep, BAD, 3) / "wandb").is_dir(), "the seeds that ran did log to W&B"

    rows = _by_config(sweep)
    assert rows[BAD]["raced_out"].startswith("raced out after wave 3")
    assert (rows[BAD]["seeds_skipped_by_racing"], rows[BAD]["n"], rows[BAD]["seeds_unfinished"]) == ("4", "3", "")
    for lr in (GOOD, CLOSE):
        assert (rows[lr]["raced_out"], rows[lr]["seeds_skipped_by_racing"], rows[lr]["n"]) == ("", "", "4")
    assert "(raced out after wave 3)" in (sweep / "summary.md").read_text()

    status_cmd = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", str(sweep)], cwd=REPO, capture_output=True, text=True
    )
    assert status_cmd.returncode == 0, status_cmd.stdout + status_cmd.stderr  # skipped: neither failed nor pending
    assert "skipped_by_racing" in status_cmd.stdout

    # The same command again: nothing trains, the decision stands, the skipped seed's folder is untouched.
    again = run_cli([*args, "logger=none"])
    assert "stay skipped" in again.stdout + again.stderr
    assert read_json(skipped / "status.json") == status
    assert sorted(p.name for p in skipped.iterdir()) == ["status.json"]

    # racing.enabled=false trains it.
    run_cli([*args[:-3], "racing.enabled=false", f"hydra.sweep.dir={sweep}", "logger=none"])
    assert read_json(skipped / "status.json")["state"] == "completed"
    assert _by_config(sweep)[BAD]["raced_out"] == ""


@pytest.mark.slow
def test_racing_on_local_parallel_runs_each_wave_as_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *FAST,
            "hydra/launcher=local_parallel",
            "hydra.launcher.max_parallel=2",
            f"training.learning_rate={GOOD},{BAD}",
            "seed=1,2,3,4",
            "racing.enabled=true",
            "racing.min_seeds=3",
            f"hydra.sweep.dir={sweep}",
        ],
        # Every point is a process of its own that imports the stack (~2 min a wave at load 20 on 2 cores).
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert "Racing: wave 4 of 4, 1 point(s)" in out and "raced out after wave 3" in out
    pids = {
        seed: {read_json(_point(sweep, lr, seed) / "status.json")["pid"] for lr in (GOOD, BAD)} for seed in (1, 2, 3)
    }
    assert all(len(p) == 2 for p in pids.values()), "each wave's two points ran in processes of their own"
    assert read_json(_point(sweep, GOOD, 4) / "status.json")["state"] == "completed"
    assert read_json(_point(sweep, BAD, 4) / "status.json")["state"] == "skipped_by_racing"
    assert sorted(p.name for p in _point(sweep, BAD, 4).iterdir()) == ["status.json"]
