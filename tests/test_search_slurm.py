"""A search with a pruner on the local SLURM cluster (`make slurm-up`): trials run as SLURM array tasks, report into the
study from inside their jobs, and the pruner stops the hopeless ones there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search.compat import TrialState
from tests.helpers import REPO, read_json, run_cli, run_dirs, stored_trials
from tests.slurm_support import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MAX_STEPS = 30


def test_median_pruner_stops_a_hopeless_trial_inside_its_slurm_job(slurm_cluster, tmp_path, tiny_model_paths):  # noqa: F811
    """Four trials, two in flight (a SLURM job each, the next submitted as one ends). The random sampler (seed 1)
    draws the learning rates 1e-7, 5e-3, 1e-7, 5e-3: at 1e-7 the eval loss stays at ln 2. The pruner waits for two
    completed trials (n_startup_trials=2): trials 0 and 1 both complete whichever ends first (the next trial starts
    when the first ends and cannot complete before the second does); then trial 2 at 1e-7 is worse than their
    median and stops; trial 3 completes."""
    sweep_dir = tmp_path / "search"
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            "hydra/launcher=slurm_local",
            "model=tiny_qwen",
            "dataset=toy",
            "training=smoke",
            "logger=none",
            f"training.max_steps={MAX_STEPS}",
            "training.eval_steps=5",
            "training.save_model=false",
            "training.sample_completions=0",
            "eval.gen_prompts=0",
            "objective.metric=eval_loss",
            "objective.mode=min",
            "loss=sigmoid",
            "training.learning_rate=choice(0.005, 1e-7)",
            "beta=interval(0.1, 0.2)",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.sampler.type=random",
            "hydra.sweeper.sampler.seed=1",
            "hydra.sweeper.pruner.type=median",
            "hydra.sweeper.pruner.n_startup_trials=2",
            "hydra.sweeper.pruner.n_warmup_steps=0",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=900,
    )
    assert "Sweep summary: 3 completed, 1 pruned" in proc.stdout, proc.stdout[-3000:]

    stored = stored_trials(sweep_dir)
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE]
    pruned = stored[2]
    assert pruned.params["training.learning_rate"] == 1e-7
    run_dir = sweep_dir / pruned.user_attrs["run_dir"].rsplit("/", 1)[-1]
    status = read_json(run_dir / run_folder.STATUS_FILE)
    assert status["state"] == "pruned" and status["trial"]["number"] == 2
    step = status["pruned"]["step"]
    assert step < MAX_STEPS and status["pruned"]["metric"] == "eval_loss"
    # Reported from inside its SLURM job: the study holds the value the job saw at that step.
    assert status["slurm"]["job_id"] and status["host"]
    assert max(pruned.intermediate_values) == step
    assert pruned.intermediate_values[step] == pytest.approx(status["pruned"]["value"])
    metrics = read_json(run_dir / run_folder.METRICS_FILE)
    assert metrics["global_step"] == step and metrics["pruned_at_step"] == step
    assert "eval_rewards/accuracies" not in metrics, "a pruned run skips its final evaluation"
    for t in stored:
        if t.state == TrialState.COMPLETE:
            done = read_json(sweep_dir / t.user_attrs["run_dir"].rsplit("/", 1)[-1] / run_folder.METRICS_FILE)
            assert done["global_step"] == MAX_STEPS

    # The status command lists every trial, the pruned one as pruned, and counts the sweep as finished (exit 0).
    shown = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.status", str(sweep_dir), "--no-slurm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "4 point(s): 3 completed, 1 pruned" in shown.stdout and "#2 " in shown.stdout
    assert len(run_dirs(sweep_dir)) == 4
