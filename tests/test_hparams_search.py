"""hparams_search=dpo_optuna: Hydra's Optuna sweeper over beta, learning rate and loss type."""

from __future__ import annotations

import math

import pytest
import yaml
from helpers import compose_config, read_json, run_cli, run_dirs

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import objective as search

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

# Few, short trials: the search machinery is under test, not the model.
FAST = [
    "model=tiny_qwen",
    "dataset=toy",
    "training=smoke",
    "logger=none",
    "training.max_steps=10",
    "training.save_model=false",
    "training.sample_completions=0",
]


def test_search_composes_with_direction_from_objective_mode():
    cfg = compose_config(["hparams_search=dpo_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"beta", "training.learning_rate", "loss"}
    assert sweeper.params.beta.startswith("tag(log")
    minimize = compose_config(["hparams_search=dpo_optuna", "objective.mode=min"], return_hydra_config=True)
    assert minimize.hydra.sweeper.direction == "minimize"
    # Not selected: the basic sweeper, untouched.
    assert "optuna" not in compose_config([], return_hydra_config=True).hydra.sweeper._target_


def test_bad_objective_mode_is_named():
    with pytest.raises(ValueError, match="objective.mode='best'"):
        search.optuna_direction("best")


def test_nan_objective_stays_nan_outside_optuna():
    assert math.isnan(search.objective_for_sweeper(math.nan, "eval_rewards/accuracies"))


@pytest.mark.slow
def test_three_trial_search_finds_the_best_trial(tmp_path):
    sweep_dir = tmp_path / "search"
    run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            "hydra.sweeper.n_trials=3",
            # A range where the tiny model learns within 10 steps.
            "training.learning_rate=tag(log, interval(1e-3, 1e-2))",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    points = run_dirs(sweep_dir)
    assert len(points) == 3 and len({p.name for p in points}) == 3
    objectives = []
    for point in points:
        assert read_json(point / run_folder.STATUS_FILE)["state"] == run_folder.COMPLETED
        cfg = yaml.safe_load((point / run_folder.CONFIG_FILE).read_text())
        assert 0.01 <= cfg["beta"] <= 1.0 and 1e-3 <= cfg["training"]["learning_rate"] <= 1e-2
        assert cfg["loss"]["type"] in {"sigmoid", "ipo", "hinge"}
        metrics = read_json(point / run_folder.METRICS_FILE)
        assert metrics["objective_metric"] == "eval_rewards/accuracies"
        objectives.append(metrics["objective_value"])
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(objectives)
    # The reported best parameters are those of a trial that reached the best value (ties are common here).
    best = [p for p in points if f"beta={results['best_params']['beta']}," in p.name]
    assert len(best) == 1 and objectives[points.index(best[0])] == max(objectives)


@pytest.mark.slow
def test_a_failed_trial_does_not_end_the_search(tmp_path):
    """One trial fails validation (beta=-1): Optuna records it as failed and the search completes with the other;
    like any sweep with a failed point, the command then exits 1 after its summary."""
    sweep_dir = tmp_path / "search"
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            # The seeded TPE sampler (random for its first trials) draws both values in two trials.
            "hydra.sweeper.n_trials=2",
            "beta=choice(-1.0, 0.1)",
            "loss=sigmoid",
            "training.learning_rate=0.005",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        check=False,
    )
    assert proc.returncode == 1 and "Sweep summary: 1 completed, 1 failed" in proc.stdout
    states = {p.name: read_json(p / run_folder.STATUS_FILE) for p in run_dirs(sweep_dir)}
    failed = [s for name, s in states.items() if "beta=-1.0" in name]
    assert len(states) == 2 and failed[0]["state"] == run_folder.FAILED and "beta=-1.0" in failed[0]["error"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_params"]["beta"] == 0.1
