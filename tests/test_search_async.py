"""Asynchronous trials (dpo_sweeps/search/inflight.py, the driver's loop): n_jobs trials in flight, the next one
started as soon as one ends, instead of a batch that waits for its slowest trial."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
import yaml
from helpers import CONF_DIR, read_json, run_cli, run_dirs
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import corners, settings, space, study

FAST = [
    "model=tiny_qwen",
    "dataset=toy",
    "training=smoke",
    "logger=none",
    "training.save_model=false",
    "training.sample_completions=0",
    "training.eval_before_training=false",
    "training.save_steps=1000",
    "eval.gen_prompts=0",
    "loss=sigmoid",
    "training.learning_rate=0.005",
]


def _at(status: dict, key: str) -> datetime:
    return datetime.fromisoformat(status[key])


@pytest.mark.slow
def test_a_trial_that_ends_early_is_followed_at_once_not_after_its_batch_mate(tmp_path):
    """n_jobs=2 on local_parallel. The random sampler (seed 3) draws 4 steps for trials 0 and 2 and 150 for trial 1:
    trial 2 must start as soon as trial 0 has ended, while trial 1 still trains (a batch would start it only after
    trial 1 ended)."""
    sweep_dir = tmp_path / "search"
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            "hydra/launcher=local_parallel",
            "hydra.launcher.max_parallel=2",
            *FAST,
            "beta=interval(0.1, 0.2)",
            "training.max_steps=choice(4, 150)",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.sampler.type=random",
            "hydra.sweeper.sampler.seed=3",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=900,
    )
    statuses = {}
    for point in run_dirs(sweep_dir):
        status = read_json(point / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.COMPLETED, status
        statuses[status["trial"]["number"]] = status
    assert sorted(statuses) == [0, 1, 2], proc.stdout[-3000:]
    steps = {
        n: read_json(sweep_dir / s["run_dir"] / run_folder.METRICS_FILE)["global_step"] for n, s in statuses.items()
    }
    assert steps == {0: 4, 1: 150, 2: 4}, steps
    short, long, next_ = statuses[0], statuses[1], statuses[2]
    assert _at(short, "ended_at") <= _at(next_, "started_at") < _at(long, "ended_at"), (short, long, next_)
    results = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())
    assert results["trials_by_state"] == {"complete": 3}
    # The submitting console's watcher (issue 26): trial n of n_trials, none of the driver's internal overrides.
    counters = re.findall(r"^\[\d+/(\d+)\] trial_\d{3}-beta=", proc.stdout, re.MULTILINE)
    assert counters and set(counters) == {"3"}, proc.stdout[-3000:]
    assert "DPO_SWEEPS_TRIAL" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ corner checks


def _corner_check(overrides: list[str], params: list[str]) -> corners.Report:
    """corners.check as the driver calls it: Hydra's real config loader, the search's own settings and space."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        s = settings.from_sweeper(dict(cfg.hydra.sweeper), cfg)
        return corners.check(cfg, GlobalHydra.instance().config_loader(), space.parse(s.params, params), s)


def test_memory_is_checked_at_the_hungriest_corner_not_the_base_config():
    """lora.r and the micro-batch searched on an 8B model, 24 GiB GPUs: the base config (r=16, batch 4) fits; the
    corner with the largest rank and batch does not, and is named with its overrides; the small-batch corner fits."""
    report = _corner_check(
        ["hparams_search=dpo_optuna", "hydra/launcher=slurm", "hydra.launcher.gpu_mem_gb=24", "model=llama3_1_8b",
         "lora=r16", "training.use_cpu=false", "training.per_device_train_batch_size=4"],
        ["lora.r=range(8, 1025, 8)", "training.per_device_train_batch_size=choice(1, 64)", "loss=sigmoid"],
    )  # fmt: skip
    text = "\n".join(report.lines)
    assert "Search space: 5 corner(s) composed and validated" in text, text
    assert "most memory-hungry value (beta=0.01 training.learning_rate=1e-07 lora.r=1024 " in text, text
    assert "training.per_device_train_batch_size=64)" in text, text
    hungriest = [p for p in report.problems if "lora.r=1024 training.per_device_train_batch_size=64" in p]
    assert hungriest and "Does not fit in GPU memory on 1 GPU of 24 GiB" in hungriest[0], report.problems
    assert not any("training.per_device_train_batch_size=1 " in p for p in report.problems), report.problems


def test_a_kl_objective_outside_the_kl_regime_is_refused_before_any_trial(tmp_path):
    """dpo_frontier minimises gen/kl_to_ref, measured only at eval.temperature=1: 0.7 (fixed, or one end of a
    choice) is refused naming the key and the fix, before any trial folder or journal entry exists."""
    for temperature, folder in (("eval.temperature=0.7", "fixed"), ("eval.temperature=choice(1.0, 0.7)", "searched")):
        sweep_dir = tmp_path / folder
        proc = run_cli(
            ["-m", "hparams_search=dpo_frontier", *FAST, "eval.gen_prompts=2", temperature,
             f"hydra.sweep.dir={sweep_dir}"],
            check=False,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "objective.extra[0].metric='gen/kl_to_ref' is measured only in the KL regime" in proc.stderr
        assert "Set eval.temperature=1" in proc.stderr
        assert "no trial was run" in proc.stderr
        assert not sweep_dir.exists() or not list(sweep_dir.rglob("status.json"))
        assert not (sweep_dir / study.JOURNAL_FILE).exists()
    assert "(with eval.temperature=0.7)" in proc.stderr, "the corner that cannot produce it is named"


def test_dry_run_of_a_search_prints_the_corners_it_checked(tmp_path):
    out = run_cli(
        ["-m", "hparams_search=dpo_optuna", *FAST, "lora=choice(none, r16)", "dry_run=true",
         f"hydra.sweep.dir={tmp_path / 'search'}"],
        timeout=300,
    ).stdout  # fmt: skip
    # FAST fixes the loss and the learning rate: beta and lora are searched.
    assert "Search space: 3 corner(s) composed and validated before the first trial" in out, out
    assert "  first values: beta=0.01 lora=none\n" in out, out
    assert "  lora=r16\n" in out and "  beta=1.0\n" in out, out
    assert "dry_run=true: nothing was run or submitted." in out
    assert not (tmp_path / "search" / study.JOURNAL_FILE).exists()
