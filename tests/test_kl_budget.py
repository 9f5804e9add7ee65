"""hparams_search=dpo_kl_budget: the best trial within a KL budget and a fluency limit (dpo_sweeps/search/constraints.py,
Optuna 5's `Trial.set_constraint`). The settings refused before any trial; infeasible trials recorded as such and never
the best; a budget no trial meets said plainly; on the tiny model, the constrained search's best is under the budget
while the unconstrained search's best (same seed, same trials) is over it; the report's frontier draws the budget."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from helpers import compose_config, read_json, run_cli

from dpo_sweeps.config.validation import find_problems
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import constraints, settings, study
from dpo_sweeps.search.compat import TrialState
from tests.test_hparams_search import FAST  # the same few, short trials


def _problems(*overrides: str) -> list[str]:
    cfg = compose_config(["hparams_search=dpo_kl_budget", *FAST, *overrides], return_hydra_config=True)
    return settings.problems(settings.from_sweeper(dict(cfg.hydra.sweeper), cfg), cfg)


# ------------------------------------------------------------------------------------------------ settings


def test_the_preset_limits_kl_and_fluency():
    cfg = compose_config(["hparams_search=dpo_kl_budget", *FAST, "objective.kl_budget=15"], return_hydra_config=True)
    s = settings.from_sweeper(dict(cfg.hydra.sweeper), cfg)
    assert [(c.metric, c.limit, c.key) for c in s.constraints] == [
        ("gen/kl_to_ref", 15.0, "objective.kl_budget"),
        ("gen/fluency_drop", 0.3, "eval.max_fluency_drop"),
    ]
    assert s.directions == ["maximize"] and settings.problems(s, cfg) == []
    # Without a budget, no limits: dpo_optuna and every other search are unchanged.
    plain = compose_config(["hparams_search=dpo_optuna", *FAST], return_hydra_config=True)
    assert settings.from_sweeper(dict(plain.hydra.sweeper), plain).constraints == []


def test_a_budget_outside_the_kl_regime_is_refused_naming_the_keys():
    (p,) = _problems()
    assert "hparams_search=dpo_kl_budget needs objective.kl_budget=<nats>" in p
    problems = _problems("objective.kl_budget=2", "eval.temperature=0.7")
    assert any(p.startswith("objective.kl_budget=2 limits each trial's gen/kl_to_ref") and "eval.temperature=1" in p
               for p in problems), problems  # fmt: skip
    problems = _problems("objective.kl_budget=2", "eval.gen_prompts=0", "objective.metric=eval_rewards/margins")
    assert len(problems) == 2, problems  # the KL and the fluency limit, each with its key
    assert problems[0].startswith("objective.kl_budget=2 ") and "eval.gen_prompts=8" in problems[0]
    assert problems[1].startswith("eval.max_fluency_drop=0.3 ") and "eval.gen_prompts=8" in problems[1]
    problems = _problems("objective.kl_budget=2", "lora=none", "objective.metric=eval_rewards/margins")
    assert any("objective.kl_budget=2" in p and "ref_cache.enabled=false" in p for p in problems), problems


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_a_non_positive_budget_is_refused_naming_the_key(budget):
    cfg = compose_config([*FAST, f"objective.kl_budget={budget}"])
    (p,) = [p for p in find_problems(cfg) if "kl_budget" in p]
    assert p.startswith(f"objective.kl_budget={float(budget)}:") and "> 0" in p


def test_a_non_positive_budget_is_refused_by_the_cli_in_one_line(tmp_path):
    proc = run_cli(
        ["-m", "hparams_search=dpo_kl_budget", *FAST, "objective.kl_budget=0", f"hydra.sweep.dir={tmp_path / 's'}"],
        check=False,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "objective.kl_budget=0.0: the most KL to the reference" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "s" / study.JOURNAL_FILE).exists()


# ------------------------------------------------------------------------------------------------ the study


def _finished_run(root: Path, name: str, **metrics: float) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    run_folder.update_status(run_dir, state=run_folder.COMPLETED)
    run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, metrics)
    return run_dir


def _search(tmp_path: Path, limits: list[constraints.Constraint], runs: list[dict]) -> dict:
    """A real study in a journal: each run folder's outcome read and told as the driver does; the results file's
    content and trials.csv back."""
    objectives = [settings.Objective("gen/score_after", "max")]
    s = study.open_study(
        tmp_path / study.JOURNAL_FILE,
        "s",
        ["maximize"],
        settings.sampler({"type": "tpe", "seed": 0}),
        settings.pruner({"type": "none"}),
    )
    from dpo_sweeps.search.compat import FloatDistribution

    for i, metrics in enumerate(runs):
        trial = s.ask({"beta": FloatDistribution(0.01, 1.0)})
        trial.set_user_attr(study.ATTR_RUN_DIR, str(tmp_path / f"p{i}"))
        result = study.outcome(_finished_run(tmp_path, f"p{i}", **metrics), objectives, limits)
        study.tell(s, trial, result)
    study.write_trials_csv(tmp_path, s, objectives, limits)
    with open(tmp_path / study.TRIALS_CSV) as f:
        rows = list(csv.DictReader(f))
    return {"results": study.results(s, objectives, tmp_path / study.JOURNAL_FILE, limits), "rows": rows, "study": s}


LIMITS = [
    constraints.Constraint("gen/kl_to_ref", 10.0, "objective.kl_budget", "kl_to_ref"),
    constraints.Constraint("gen/fluency_drop", 0.3, "eval.max_fluency_drop", "fluency_drop"),
]


def test_infeasible_trials_are_recorded_and_never_best(tmp_path):
    """The highest score is over the KL budget, the next over the fluency limit: the best is the third."""
    out = _search(
        tmp_path,
        LIMITS,
        [
            {"gen/score_after": 1.0, "gen/kl_to_ref": 25.0, "gen/fluency_drop": 0.1},
            {"gen/score_after": 0.9, "gen/kl_to_ref": 4.0, "gen/fluency_drop": 1.0},
            {"gen/score_after": 0.6, "gen/kl_to_ref": 9.5, "gen/fluency_drop": 0.2},
            {"gen/score_after": 0.3, "gen/kl_to_ref": 1.0, "gen/fluency_drop": 0.0},
        ],
    )
    r = out["results"]
    assert r["best_trial"] == 2 and r["best_value"] == 0.6 and r["best_run_dir"].endswith("p2")
    assert r["feasible_trials"] == 2 and "no_feasible_trial" not in r
    assert r["constraints"][0] == {"metric": "gen/kl_to_ref", "at_most": 10.0, "set_by": "objective.kl_budget"}
    assert r["infeasible_trials"] == [
        {"trial": 0, "over": ["gen/kl_to_ref=25 > 10 (objective.kl_budget)"]},
        {"trial": 1, "over": ["gen/fluency_drop=1 > 0.3 (eval.max_fluency_drop)"]},
    ]
    assert r["best_over_limits"]["trial"] == 0  # what the limits cost: the unconstrained best, named as such
    # Optuna itself holds the constraint values (value - limit) and leaves infeasible trials out of its best.
    trials = out["study"].get_trials()
    assert trials[0].constraints == {"kl_to_ref": 15.0, "fluency_drop": pytest.approx(-0.2)}
    assert out["study"].best_trial.number == 2
    assert [row["feasible"].split(":")[0] for row in out["rows"]] == ["no", "no", "yes", "yes"]
    assert out["rows"][0]["gen/kl_to_ref"] == "25.0" and "gen/kl_to_ref=25 > 10" in out["rows"][0]["feasible"]


def test_a_budget_no_trial_meets_says_so(tmp_path):
    out = _search(
        tmp_path,
        LIMITS,
        [
            {"gen/score_after": 1.0, "gen/kl_to_ref": 25.0, "gen/fluency_drop": 0.1},
            {"gen/score_after": 0.5, "gen/kl_to_ref": 12.0, "gen/fluency_drop": 0.1},
        ],
    )
    r = out["results"]
    assert r["best_trial"] is None and "best_value" not in r and "best_params" not in r
    assert r["no_feasible_trial"].startswith("no feasible trial: all 2 completed trial(s) exceed a limit")
    assert "the closest, trial 1, has gen/kl_to_ref=12 > 10 (objective.kl_budget)" in r["no_feasible_trial"]
    # Written as YAML and read back by a person: the sentence is there, no best.
    assert yaml.safe_load(yaml.safe_dump(r))["best_trial"] is None


def test_a_run_that_did_not_measure_a_limit_fails_rather_than_counting_as_feasible(tmp_path):
    run_dir = _finished_run(tmp_path, "p", **{"gen/score_after": 1.0, "gen/kl_to_ref": 1.0})
    result = study.outcome(run_dir, [settings.Objective("gen/score_after", "max")], LIMITS)
    assert result.state == TrialState.FAIL and "gen/fluency_drop=None" in result.reason


def test_a_study_continued_with_another_budget_is_refused():
    assert constraints.mismatch({"gen/kl_to_ref": 10.0, "gen/fluency_drop": 0.3}, LIMITS, 4) is None
    why = constraints.mismatch({"gen/kl_to_ref": 5.0, "gen/fluency_drop": 0.3}, LIMITS, 4)
    assert "judged against gen/kl_to_ref <= 5" in why and "gen/kl_to_ref <= 10 (objective.kl_budget)" in why
    assert constraints.mismatch(None, LIMITS, 0) is None  # a new study takes the limits


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_budget_search_on_the_tiny_model_returns_a_best_under_the_budget(tmp_path):
    """Three learning rates move the tiny model 0.02, 0.56 and 0.82 nats from the reference (measured, deterministic);
    the reward margin grows with them. Unconstrained, the best margin is the 0.82-nat point; with a 0.7-nat budget it
    is infeasible and the best is the 0.56-nat point. Same sampler seed and trials; the second study reuses the first
    one's run folders (same parameters, same sweep folder), so the tiny model trains three times in all."""
    sweep_dir = tmp_path / "search"
    common = [
        *FAST,
        "objective.metric=eval_rewards/margins",
        "beta=0.1",
        "training.learning_rate=choice(0.0001, 0.001, 0.01)",
        # Seed 9: the three random start-up trials are the three learning rates; the fourth is TPE's.
        "hydra.sweeper.sampler.seed=9",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    run_cli(["-m", "hparams_search=dpo_optuna", "loss=sigmoid", "hydra.sweeper.study_name=free", *common], timeout=900)
    free = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())
    proc = run_cli(
        ["-m", "hparams_search=dpo_kl_budget", "objective.kl_budget=0.7", "hydra.sweeper.study_name=budget", *common],
        timeout=900,
    )
    limited = yaml.safe_load((sweep_dir / study.RESULTS_FILE).read_text())

    kl = {Path(d).name: read_json(Path(d) / run_folder.METRICS_FILE)["gen/kl_to_ref"] for d in _points(sweep_dir)}
    assert len(kl) == 3, kl
    assert kl[Path(free["best_run_dir"]).name] > 0.7, (free, kl)
    assert kl[Path(limited["best_run_dir"]).name] <= 0.7, (limited, kl)
    assert limited["best_value"] < free["best_value"]
    assert limited["constraints"][0]["at_most"] == 0.7 and limited["feasible_trials"] >= 2
    over = {i["trial"] for i in limited["infeasible_trials"]}
    assert over and limited["best_trial"] not in over
    with open(sweep_dir / study.TRIALS_CSV) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert row["feasible"] == ("yes" if float(row["gen/kl_to_ref"]) <= 0.7 else row["feasible"])
        assert row["feasible"].startswith("yes" if float(row["gen/kl_to_ref"]) <= 0.7 else "no: gen/kl_to_ref=")
    assert "within the limits" in proc.stdout
    # The report's frontier: the budget line and the crossed-out points, from optimization_results.yaml.
    manifest = read_json(sweep_dir / "plots" / "plots.json")
    (frontier,) = [f for f in manifest["figures"] if f["kind"] == "frontier"]
    assert frontier["limits"]["gen/kl_to_ref"] == 0.7
    assert set(frontier["infeasible"]) == {name for name, v in kl.items() if v > 0.7}


def _points(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / run_folder.METRICS_FILE).exists())
