"""hparams_search=dpo_optuna / dpo_frontier: our Optuna 5 sweeper (hydra_plugins/dpo_sweeps_sweeper,
dpo_sweeps/search/): the search space, the settings refused before any trial, a search that survives its driver,
the Pareto front. Pruning on the local SLURM cluster: tests/test_search_slurm.py."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, compose_config, read_json, run_cli, run_dirs, stored_trials

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import settings, space, study
from dpo_sweeps.search.compat import CategoricalDistribution, FloatDistribution, IntDistribution, TrialState

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
NO_GEN = ["eval.gen_prompts=0"]


# ------------------------------------------------------------------------------------------------ composing, space


def test_presets_compose_with_our_sweeper_and_their_objectives():
    cfg = compose_config(["hparams_search=dpo_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.dpo_sweeps_sweeper.search.OptunaSweeper"
    assert set(sweeper.params) == {"beta", "training.learning_rate", "loss"}
    assert sweeper.pruner.type == "none" and sweeper.sampler.seed == cfg.seed
    s = settings.from_sweeper(dict(sweeper), cfg)
    assert s.directions == ["maximize"] and settings.problems(s, cfg) == []

    frontier = compose_config(
        ["hparams_search=dpo_frontier", "model=tiny_qwen", "dataset=toy"], return_hydra_config=True
    )
    s = settings.from_sweeper(dict(frontier.hydra.sweeper), frontier)
    assert [(o.metric, o.mode) for o in s.objectives] == [("gen/score_after", "max"), ("gen/kl_to_ref", "min")]
    assert s.directions == ["maximize", "minimize"] and settings.problems(s, frontier) == []
    # Not selected: the basic sweeper, untouched.
    assert "BasicSweeper" in compose_config([], return_hydra_config=True).hydra.sweeper._target_


def test_search_space_follows_hydra_sweep_syntax():
    s = space.parse(
        {"beta": "tag(log, interval(0.01, 1.0))", "loss": "choice(sigmoid, ipo)", "lora.r": "range(8, 33, 8)"},
        ["model=tiny_qwen", "loss=ipo", "+x=range(1, 4)", "~logger", "training.learning_rate=interval(1e-4, 1e-3)"],
    )
    d = s.distributions
    assert d["beta"] == FloatDistribution(0.01, 1.0, log=True)
    assert d["lora.r"] == IntDistribution(8, 32, step=8), "Hydra's range excludes its stop: so does the search"
    assert d["+x"] == IntDistribution(1, 3)
    assert d["training.learning_rate"] == FloatDistribution(1e-4, 1e-3)
    assert "loss" not in d, "a command-line value replaces the config's search entry"
    assert s.fixed == ["model=tiny_qwen", "loss=ipo", "~logger"]
    assert s.overrides({"beta": 0.05, "lora.r": 16, "+x": 2, "training.learning_rate": 2e-4})[:4] == [
        "beta=0.05",
        "lora.r=16",
        "+x=2",
        "training.learning_rate=0.0002",
    ]
    assert space.parse({}, ["loss=choice(sigmoid, 'a b')"]).distributions["loss"] == CategoricalDistribution(
        ["sigmoid", "a b"]
    )
    assert space.encode("a b") == "'a b'" and space.encode(1e-05) == "1e-05"
    with pytest.raises(space.SearchSpaceError, match="low > 0"):
        space.parse({}, ["beta=tag(log, interval(0, 1))"])


def test_an_untested_optuna_is_refused_at_import_with_both_versions(monkeypatch):
    import importlib

    import optuna

    from dpo_sweeps.search import compat

    monkeypatch.setattr(optuna, "__version__", "6.1.0")
    # An ImportError (reloading defines the exception class anew): Hydra and the plugin treat it as "not installed".
    with pytest.raises(ImportError, match=r"optuna>=5,<6.*optuna 6.1.0 is installed"):
        importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)


# ------------------------------------------------------------------------------------------------ refused settings


def _problems(*overrides: str) -> list[str]:
    cfg = compose_config(["hparams_search=dpo_optuna", *FAST, *overrides], return_hydra_config=True)
    return settings.problems(settings.from_sweeper(dict(cfg.hydra.sweeper), cfg), cfg)


def test_bad_settings_are_named_with_their_fix():
    (p,) = _problems("hydra.sweeper.pruner.type=asha")
    assert "hydra.sweeper.pruner.type='asha'" in p and "successive_halving" in p
    (p,) = _problems("hydra.sweeper.pruner.type=successive_halving", "hydra.sweeper.pruner.n_warmup_steps=3")
    assert "pruner.n_warmup_steps=3 is a setting of median" in p
    (p,) = _problems("objective.metric=eval_reward/accuracies")
    assert "objective.metric='eval_reward/accuracies' is never logged" in p and "eval_rewards/accuracies" in p
    (p,) = _problems("hydra.sweeper.pruner.type=median")
    assert "training.eval_steps is null" in p
    (p,) = _problems("hydra.sweeper.pruner.type=median", "training.eval_steps=5", "objective.metric=gen/kl_to_ref")
    assert "measured once, after training" in p
    (p,) = _problems("objective.metric=gen/score_after", "eval.gen_prompts=0")
    assert "eval.gen_prompts=0" in p
    assert _problems("hydra.sweeper.pruner.type=hyperband", "training.eval_steps=5") == []


def test_bad_settings_are_refused_before_any_trial_runs(tmp_path):
    """Through the CLI: a multi-objective study with a pruner and an unknown metric; one message, all problems, no
    traceback, nothing run (no run folder, no journal)."""
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_frontier",
            *FAST,
            "hydra.sweeper.pruner.type=median",
            "training.eval_steps=5",
            "objective.extra=[{metric: gen/kl_to_reff, mode: min}]",
            f"hydra.sweep.dir={tmp_path / 'search'}",
        ],
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Optuna prunes single-objective studies only" in proc.stderr
    assert "hydra.sweeper.pruner.type=none" in proc.stderr
    assert "objective.extra[0].metric='gen/kl_to_reff' is never logged" in proc.stderr
    assert "did you mean 'gen/kl_to_ref'" in proc.stderr
    assert "Traceback" not in proc.stderr
    search = tmp_path / "search"
    assert not search.exists() or not list(search.glob("*/status.json")) and not (search / study.JOURNAL_FILE).exists()


def test_dry_run_of_a_search_says_what_it_will_search_and_runs_nothing(tmp_path):
    # A search has no grid before it runs: dry_run used to print "Sweep: 0 point(s)".
    out = run_cli(
        ["-m", "hparams_search=dpo_optuna", *FAST, "hydra.sweeper.n_trials=7", "hydra.sweeper.pruner.type=median",
         "training.eval_steps=5", "dry_run=true", f"hydra.sweep.dir={tmp_path / 'search'}"],
        timeout=120,
    ).stdout  # fmt: skip
    assert "Search: 7 trial(s), 1 at a time, pruner median; trials are proposed as the search runs" in out, out
    assert "  beta: tag(log, interval(0.01, 1.0))" in out and "  loss: choice(sigmoid, ipo, hinge)" in out
    assert "0 point(s)" not in out and "dry_run=true: nothing was run or submitted." in out
    assert not (tmp_path / "search" / study.JOURNAL_FILE).exists()


def test_a_search_space_that_does_not_compose_is_refused_before_any_trial(tmp_path):
    """A misspelt key and a group option that does not exist: found by composing every choice and both ends of every
    range before the first trial, instead of failing in every trial's job."""
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            "training.learning_rat=tag(log, interval(1e-3, 1e-2))",
            "loss=choice(sigmoid, ipoo)",
            f"hydra.sweep.dir={tmp_path / 'search'}",
        ],
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "training.learning_rat=0.001: unknown key, did you mean training.learning_rate?" in proc.stderr
    assert "training.learning_rat=0.01:" not in proc.stderr, "one line per bad key, not one per value tried"
    assert "Could not find 'loss/ipoo' (with loss=ipoo)" in proc.stderr
    assert not (tmp_path / "search" / study.JOURNAL_FILE).exists()


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_three_trial_search_finds_the_best_trial(tmp_path):
    sweep_dir = tmp_path / "search"
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            *NO_GEN,
            "hydra.sweeper.n_trials=3",
            # A range where the tiny model learns within 10 steps.
            "training.learning_rate=tag(log, interval(1e-3, 1e-2))",
            # Not saturated at 10 steps (reward accuracy is 1.0 for nearly every trial): a best trial to find.
            "objective.metric=eval_rewards/margins",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    points = run_dirs(sweep_dir)
    assert len(points) == 3 and len({p.name for p in points}) == 3
    objectives = []
    for point in points:
        status = read_json(point / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.COMPLETED and status["trial"]["number"] in (0, 1, 2)
        cfg = yaml.safe_load((point / run_folder.CONFIG_FILE).read_text())
        assert 0.01 <= cfg["beta"] <= 1.0 and 1e-3 <= cfg["training"]["learning_rate"] <= 1e-2
        assert cfg["loss"]["type"] in {"sigmoid", "ipo", "hinge"}
        objectives.append(read_json(point / run_folder.METRICS_FILE)["eval_rewards/margins"])
    results = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())
    assert results["best_value"] == max(objectives) and results["trials_by_state"] == {"complete": 3}
    best = [p for p in points if read_json(p / run_folder.STATUS_FILE)["trial"]["number"] == results["best_trial"]]
    assert len(best) == 1 and objectives[points.index(best[0])] == max(objectives)
    stored = stored_trials(sweep_dir)
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 3
    assert {Path(t.user_attrs["run_dir"]).name for t in stored} == {p.name for p in points}
    # What a person sees (issue 26): folders named by trial number and rounded values, trial n of n_trials on the
    # console, none of the driver's internal overrides.
    for t in stored:
        name = Path(t.user_attrs["run_dir"]).name
        beta, lr = (f"{t.params[k]:.3g}" for k in ("beta", "training.learning_rate"))
        assert name == f"trial_{t.number:03d}-beta={beta},loss={t.params['loss']},lr={lr}", name
    out = proc.stdout + proc.stderr
    counters = re.findall(r"^\[(\d+)/(\d+)\] trial_", proc.stdout, re.MULTILINE)
    assert sorted(set(counters)) == [("1", "3"), ("2", "3"), ("3", "3")], out[-3000:]
    assert "DPO_SWEEPS_TRIAL" not in out and "hydra.sweep.subdir" not in out, out[-3000:]


@pytest.mark.slow
def test_a_failed_trial_does_not_end_the_search(tmp_path):
    """One trial fails at run time (a learning rate of 1e30 makes its eval loss NaN: no finite objective; a bad value
    that validation can see, like beta=-1, is refused before any trial by the corner checks): the study records it as
    failed with why, the search goes on to its second trial. Its run folder says failed too (the run did finish, but
    a trial without a finite objective is a failed one: status.json and the sweep summary agree with the study)."""
    sweep_dir = tmp_path / "search"
    proc = run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *FAST,
            *NO_GEN,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.retry_failed=0",
            "hydra.sweeper.sampler.type=random",
            # Seed 0: the random sampler draws both values in two trials.
            "training.learning_rate=choice(1e30, 0.005)",
            "loss=sigmoid",
            "beta=0.1",
            "objective.metric=eval_loss",
            "objective.mode=min",
            "hydra.sweeper.sampler.seed=0",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert "Trial 1 fail (completed, but its metrics.json has no finite eval_loss='nan')" in out, out[-3000:]
    assert "Trial 0 complete" in out, out[-3000:]
    results = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())
    assert results["best_params"]["training.learning_rate"] == 0.005, results
    assert results["trials_by_state"] == {"complete": 1, "fail": 1}
    (fail,) = [t for t in stored_trials(sweep_dir) if t.state == TrialState.FAIL]
    assert fail.params["training.learning_rate"] == 1e30 and "eval_loss" in fail.user_attrs[study.ATTR_ERROR]
    status = read_json(Path(fail.user_attrs[study.ATTR_RUN_DIR]) / "status.json")
    assert status["state"] == "failed" and "no finite objective" in status["error"], status
    assert re.search(r"^\s+failed\s+\S+\s+\(no finite objective", out, re.M), out[-3000:]


@pytest.mark.slow
def test_a_search_started_with_folders_named_by_overrides_keeps_finding_them(tmp_path):
    """A study on disk from before trial folders were numbered (issue 26): its trial 0 failed in `beta=0.1/`. Run
    again, its retry (same parameters) resumes in that folder, not in a new `trial_...` one, and the driver says why
    the names stay as they were."""
    sweep_dir = tmp_path / "search"
    args = ["-m", "hparams_search=dpo_optuna", *FAST, *NO_GEN, "hydra.sweeper.n_trials=1", "beta=choice(0.1, 0.3)"]
    args += ["loss=sigmoid", "training.learning_rate=0.005", f"hydra.sweep.dir={sweep_dir}"]
    params = compose_config(["hparams_search=dpo_optuna"], return_hydra_config=True).hydra.sweeper.params
    searched = space.parse(dict(params), args[-4:-1])
    old = study.open_study(
        study.journal_path(None, sweep_dir), "dpo_sweeps", ["maximize"], settings.sampler({"type": "random"}), None
    )
    old.enqueue_trial({"beta": 0.1})
    trial = old.ask(searched.distributions)
    old_dir = sweep_dir / "beta=0.1"
    trial.set_user_attr(study.ATTR_OVERRIDES, searched.overrides(trial.params))
    trial.set_user_attr(study.ATTR_RUN_DIR, str(old_dir))
    old_dir.mkdir(parents=True)
    run_folder.write_json_atomic(old_dir / run_folder.STATUS_FILE, {"state": "failed", "error": "OSError: disk"})
    study.tell(old, trial, study.Outcome(TrialState.FAIL, reason="OSError: disk"))

    proc = run_cli(args)
    out = proc.stdout + proc.stderr
    assert "Trial folders: named by their overrides, as this study's first trials were" in out, out[-3000:]
    assert "Trial 1 retries failed trial 0 with the same parameters" in out, out[-3000:]
    assert [p.name for p in run_dirs(sweep_dir)] == ["beta=0.1"]
    status = read_json(old_dir / run_folder.STATUS_FILE)
    assert status["state"] == run_folder.COMPLETED and status["trial"]["number"] == 1
    assert [Path(t.user_attrs["run_dir"]).name for t in stored_trials(sweep_dir)] == ["beta=0.1", "beta=0.1"]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _states(sweep_dir: Path) -> dict[str, str]:
    if not sweep_dir.exists():
        return {}
    return {p.name: (read_json(p / "status.json") or {}).get("state") for p in run_dirs(sweep_dir)}


@pytest.mark.slow
def test_search_killed_after_two_trials_continues_its_study(tmp_path):
    """The driver is SIGKILLed while its third trial trains in its process (two completed). The same command again:
    the interrupted trial, whose job is gone, is failed with the reason (Optuna's journal would keep it RUNNING
    forever), retried once with the same parameters (hydra.sweeper.retry_failed=1), resuming from its folder's
    checkpoint; the study goes on to n_trials counted trials (the retried failure is replaced by its retry), and the
    two completed trials are not retrained (their folders byte-identical)."""
    sweep_dir = tmp_path / "search"
    args = [
        "-m",
        "hparams_search=dpo_optuna",
        *FAST,
        *NO_GEN,
        "hydra.sweeper.n_trials=4",
        "training.learning_rate=tag(log, interval(1e-3, 1e-2))",
        # Long enough that the kill lands mid-training (tiny steps take ~0.1 s), with a checkpoint to resume from.
        "training.max_steps=60",
        "training.save_steps=10",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        try:
            while True:
                states = _states(sweep_dir)
                running = [sweep_dir / name for name, state in states.items() if state == "running"]
                saved = running and list(running[0].glob("checkpoints/checkpoint-*/COMPLETE"))
                if list(states.values()).count("completed") == 2 and saved:
                    break
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the search never reached its third trial"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    states = _states(sweep_dir)
    completed = {name: _tree_digest(sweep_dir / name) for name, state in states.items() if state == "completed"}
    (interrupted,) = [sweep_dir / name for name, state in states.items() if state == "running"]
    assert len(completed) == 2

    proc = run_cli(args, timeout=600)
    said = proc.stderr + proc.stdout
    assert "Trial 2 failed while no driver ran: its process (pid" in said, said[-3000:]
    assert "Trial 3 retries failed trial 2 with the same parameters" in said, said[-3000:]
    trials = stored_trials(sweep_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[3].params == trials[2].params and trials[3].user_attrs["retry_of"] == 2
    assert "ended without recording an end" in trials[2].user_attrs[study.ATTR_ERROR]
    for name, digest in completed.items():
        assert _tree_digest(sweep_dir / name) == digest, f"{name} was touched by the second run"
    status = read_json(interrupted / "status.json")
    assert status["state"] == "completed" and status["trial"]["number"] == 3 and status["attempts"] == 2
    assert read_json(interrupted / "metrics.json")["resumed_from_step"] >= 10, "resumed from its checkpoint"
    assert len(run_dirs(sweep_dir)) == 4


def _dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    better = [(x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes, strict=True)]
    worse = [(x < y) if m == "max" else (x > y) for x, y, m in zip(a, b, modes, strict=True)]
    return any(better) and not any(worse)


@pytest.mark.slow
def test_frontier_search_writes_the_pareto_front(tmp_path):
    """dpo_frontier with the reward margin (which the tiny model moves) against the KL to the reference: every row of
    pareto_front.csv is non-dominated among the completed trials, and every non-dominated trial is a row."""
    sweep_dir = tmp_path / "search"
    run_cli(
        [
            "-m",
            "hparams_search=dpo_frontier",
            *FAST,
            "hydra.sweeper.n_trials=6",
            "hydra.sweeper.sampler.n_startup_trials=4",
            "objective.metric=eval_rewards/margins",
            "training.learning_rate=tag(log, interval(1e-4, 1e-2))",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=600,
    )
    metrics = ["eval_rewards/margins", "gen/kl_to_ref"]
    modes = ["max", "min"]
    values = {}
    for point in run_dirs(sweep_dir):
        m = read_json(point / run_folder.METRICS_FILE)
        values[point.name] = [float(m[k]) for k in metrics]
    assert len(values) == 6
    with open(sweep_dir / study.PARETO_CSV) as f:
        import csv

        rows = list(csv.DictReader(f))
    front = {r["point"] for r in rows}
    for r in rows:
        assert [float(r[k]) for k in metrics] == values[r["point"]]
        assert r["beta"] and r["training.learning_rate"]
    non_dominated = {
        name for name, v in values.items() if not any(_dominates(w, v, modes) for o, w in values.items() if o != name)
    }
    assert front == non_dominated and front
    results = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())
    assert len(results["solutions"]) == len(rows)
    manifest = read_json(sweep_dir / "plots" / "plots.json")
    (frontier,) = [f for f in manifest["figures"] if f["kind"] == "frontier"]
    assert set(frontier["panels"][0]["pareto"]) == front


@pytest.mark.slow
def test_trials_say_their_number_and_state_on_wandb(tmp_path):
    """logger=wandb offline: each trial's run carries its number (config and tag) and how it ended in its summary; the
    sweep-summary run logs the study as a table. Seeded random sampler over lr choice(5e-3, 1e-7): trials 0 (1e-7)
    and 1 (5e-3) complete, trial 2 (1e-7) is worse than their median at its first evaluation and is pruned."""
    from wandb_files import find_offline_runs, read_offline_run

    pytest.importorskip("wandb")
    sweep_dir, wandb_dir = tmp_path / "search", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {k: "" for k in os.environ if k.startswith("WANDB_")}
    env.update(WANDB_DIR=str(wandb_dir), WANDB_MODE="offline", WANDB_SILENT="true")
    run_cli(
        [
            "-m",
            "hparams_search=dpo_optuna",
            *[a for a in FAST if a != "logger=none"],
            *NO_GEN,
            "logger=wandb",
            "training.max_steps=20",
            "training.eval_steps=5",
            "objective.metric=eval_loss",
            "objective.mode=min",
            "loss=sigmoid",
            "training.learning_rate=choice(0.005, 1e-7)",
            "beta=interval(0.1, 0.2)",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.type=random",
            "hydra.sweeper.sampler.seed=1",
            "hydra.sweeper.pruner.type=median",
            "hydra.sweeper.pruner.n_startup_trials=1",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        env=env,
    )
    runs = [read_offline_run(p) for p in find_offline_runs(wandb_dir)]
    trials = {r.config["search"]["trial"]: r for r in runs if r.job_type != "sweep-summary"}
    assert sorted(trials) == [0, 1, 2]
    for number, run in trials.items():
        assert f"trial:{number}" in run.tags and run.config["search"]["study"] == "dpo_sweeps"
        assert run.summary["search/trial"] == number
    assert [trials[n].summary["search/state"] for n in (0, 1, 2)] == ["complete", "complete", "pruned"]
    (summary_run,) = [r for r in runs if r.job_type == "sweep-summary"]
    assert summary_run.summary["study/nrows"] == 3 and summary_run.summary["sweep_summary/nrows"] == 3
