"""Hydra's own sweep settings, honoured: `hydra.sweep.subdir` with `${hydra.job.num}` or
`${hydra.job.override_dirname}`, `hydra.job.chdir=true`, a custom task name (`hydra.job.name`), in sweeps, dry runs,
status, report and searches; and a pre-launch check that cannot run ends the sweep instead of switching itself off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, TINY, read_json, run_cli, run_dirs

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import study

# Short points: the folders are under test, not the training.
FAST = ["model=tiny_qwen", *TINY, "training.max_steps=4", "eval.gen_prompts=0", "training.save_model=false"]
ENV = {"PYTHONPATH": str(REPO)}  # the worktree's package when the command runs from a test's own folder


def _cli(args: list[str], cwd, check: bool = True):
    return run_cli(args, cwd=cwd, env=ENV, check=check)


def test_dry_run_with_a_job_number_subdir_runs_nothing(tmp_path):
    """Hydra resolved `p_${hydra.job.num}` in the pre-launch check without a job number: the check raised, Hydra
    turned that into a warning, and the dry run trained every point."""
    sweep = tmp_path / "sweep"
    out = _cli(
        [
            "-m",
            *FAST,
            "beta=0.1,0.3",
            "hydra.sweep.subdir=p_${hydra.job.num}",
            f"hydra.sweep.dir={sweep}",
            "dry_run=true",
        ],
        cwd=tmp_path,
    ).stdout
    assert "dry_run=true: nothing was run or submitted." in out
    assert f"-> {sweep}/p_0" in out and f"-> {sweep}/p_1" in out
    assert not sweep.exists()
    assert not (tmp_path / "outputs").exists()  # no data prepared, nothing trained


def test_a_subdir_only_a_running_job_knows_is_refused_in_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(
        ["-m", *FAST, "beta=0.1,0.3", "hydra.sweep.subdir=${hydra.job.id}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "hydra.sweep.subdir='${hydra.job.id}' cannot be resolved before the jobs run" in proc.stderr
    assert "${hydra.job.num}" in proc.stderr and not sweep.exists()


def test_a_pre_launch_check_that_cannot_run_ends_the_sweep_with_its_reason(tmp_path):
    """The check raises (here: a launcher setting that does not resolve); Hydra would warn and launch without it."""
    sweep = tmp_path / "sweep"
    proc = _cli(
        [
            "-m",
            *FAST,
            "beta=0.1,0.3",
            "hydra/launcher=local_parallel",
            "hydra.launcher.mem_gb=${oc.env:DPO_SWEEPS_TEST_NOT_SET}",
            f"hydra.sweep.dir={sweep}",
            "dry_run=true",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Error: the pre-launch check could not run" in proc.stderr
    assert "DPO_SWEEPS_TEST_NOT_SET" in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_override_dirname_subdir_sweeps_two_betas_into_two_folders(tmp_path):
    """Was refused as "same folder": the pre-launch check named every beta's folder after the first one's."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *FAST,
        "beta=0.1,0.3",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        "hydra.job.config.override_dirname.exclude_keys=[model,dataset,training,logger,eval.gen_prompts,"
        "training.max_steps,training.save_model]",
        f"hydra.sweep.dir={sweep}",
    ]
    _cli(args, cwd=tmp_path)
    points = run_dirs(sweep)
    assert [p.name for p in points] == ["beta=0.1", "beta=0.3"]
    for point, beta in zip(points, (0.1, 0.3), strict=True):
        assert read_json(point / run_folder.STATUS_FILE)["state"] == run_folder.COMPLETED
        assert yaml.safe_load((point / run_folder.CONFIG_FILE).read_text())["beta"] == beta
    recorded = [p["run_dir"] for p in json.loads((sweep / run_folder.SWEEP_POINTS_FILE).read_text())]
    assert recorded == [str(p) for p in points]
    # Run again: both points are found completed in their folders and skipped.
    before = [(p / run_folder.METRICS_FILE).stat().st_mtime_ns for p in points]
    again = _cli(args, cwd=tmp_path)
    assert again.stdout.count("skipped (already completed") == 2, again.stdout
    assert [(p / run_folder.METRICS_FILE).stat().st_mtime_ns for p in points] == before


@pytest.mark.slow
def test_job_number_subdir_chdir_and_task_name_in_a_parallel_sweep(tmp_path):
    """local_parallel, `p_${hydra.job.num}`, `hydra.job.chdir=true`, `hydra.job.name=mytask`: each point in its
    folder, the caches shared where the command started (not one per run folder), status and report read it."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *FAST,
        "beta=0.1,0.3",
        "hydra/launcher=local_parallel",
        "hydra.sweep.subdir=p_${hydra.job.num}",
        "hydra.job.chdir=true",
        "hydra.job.name=mytask",
        f"hydra.sweep.dir={sweep}",
    ]
    _cli(args, cwd=tmp_path)
    points = run_dirs(sweep)
    assert [p.name for p in points] == ["p_0", "p_1"]
    for point, beta in zip(points, (0.1, 0.3), strict=True):
        status = read_json(point / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.COMPLETED and f"beta={beta}" in status["overrides"]
        assert (point / "mytask.log").exists()
        assert not (point / "outputs").exists()  # relative cache folders kept their meaning
    assert (tmp_path / "outputs" / ".data_cache").is_dir()

    status = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", str(sweep), "--no-slurm", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**ENV},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert [(p["name"], p["state"]) for p in json.loads(status.stdout)] == [("p_0", "completed"), ("p_1", "completed")]
    report = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.report", str(sweep)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all("completed" in r for r in rows[1:])

    again = _cli(args, cwd=tmp_path)
    assert "2 completed" in again.stdout
    assert all(read_json(p / run_folder.STATUS_FILE)["attempts"] == 1 for p in points)


@pytest.mark.slow
def test_search_with_a_custom_subdir_finds_its_completed_trials(tmp_path):
    """The driver looked for a trial's results under its own folder name and recorded completed trials as failed."""
    sweep = tmp_path / "search"
    out = _cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            "hydra.sweeper.n_trials=2",
            "hydra.sweep.subdir=trial_${hydra.job.num}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    # The sampler in force is in the search's log, not only in a dry run's.
    assert (
        "Sampler: tpe (seed=42, n_startup_trials=5, multivariate=True, constant_liar=True)" in out.stdout + out.stderr
    )
    assert [p.name for p in run_dirs(sweep)] == ["trial_0", "trial_1"]
    for number in (0, 1):
        status = read_json(sweep / f"trial_{number}" / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.COMPLETED and status["trial"]["number"] == number
    results = yaml.safe_load((sweep / study.RESULTS_FILE).read_text())
    assert results["trials_by_state"] == {"complete": 2}


def test_pruner_and_sampler_shorthands_read_as_their_type():
    from dpo_sweeps.search import settings
    from dpo_sweeps.search.options import section

    assert section("median") == {"type": "median"} and section(None) == {}
    assert type(settings.pruner("median")).__name__ == "MedianPruner"
    assert type(settings.sampler("random")).__name__ == "RandomSampler"


def test_a_search_dry_run_takes_the_pruner_shorthand_and_shows_the_sampler_in_force(tmp_path):
    """`hydra.sweeper.pruner=median` ended in a raw ValueError traceback; the TPE settings were Optuna's defaults,
    which Optuna 5 changed, and nothing showed them."""
    out = _cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            "hydra.sweeper.pruner=median",
            "training.eval_steps=2",
            f"hydra.sweep.dir={tmp_path / 'search'}",
            "dry_run=true",
        ],
        cwd=tmp_path,
    ).stdout
    assert "pruner median;" in out
    assert "Sampler: tpe (seed=42, n_startup_trials=5, multivariate=True, constant_liar=True)" in out
    assert not (tmp_path / "search").exists()


def test_a_misspelt_pruner_shorthand_is_named_with_the_choices(tmp_path):
    proc = _cli(
        ["-m", "hparams_search=dpo_optuna", *FAST, "hydra.sweeper.pruner=medain", f"hydra.sweep.dir={tmp_path / 's'}"],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "hydra.sweeper.pruner.type='medain' is not a pruner: use one of none, median" in proc.stderr


def test_the_pinned_sampler_settings_reach_optuna():
    """Our values, not Optuna's defaults of the day (Optuna 5 changed multivariate and constant_liar)."""
    from helpers import compose_config

    from dpo_sweeps.search import settings

    cfg = compose_config(["hparams_search=dpo_optuna"], return_hydra_config=True)
    tpe = settings.sampler(settings.from_sweeper(dict(cfg.hydra.sweeper), cfg).sampler)
    assert tpe._multivariate is True and tpe._constant_liar is True
    assert tpe._n_startup_trials == 5  # the preset's quarter of its 20 trials (the sweeper's own: Optuna's 10)
    plain = compose_config(["hydra/sweeper=dpo_optuna"], return_hydra_config=True).hydra.sweeper.sampler
    assert (plain.n_startup_trials, plain.multivariate, plain.constant_liar) == (10, True, True)
