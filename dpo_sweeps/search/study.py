"""The study on disk: a journal file in the sweep folder, what each trial's run folder says about it, and the files a
finished search leaves next to its points.

    <sweep>/optuna_journal.log        the study (Optuna's JournalStorage; the lock is an O_EXCL lock file, the variant
                                      Optuna provides for NFS, next to it while a process writes; names: files.py)
    <sweep>/optimization_results.yaml best trial (or the Pareto solutions), directions, trials per state
    <sweep>/trials.csv                every trial: number, state, its objective values, parameters, folder
    <sweep>/pareto_front.csv          multi-objective studies: the non-dominated completed trials

A trial's outcome is read from its run folder (status.json, metrics.json), not from the launcher's return value:
that works the same for every launcher, for jobs that outlived a killed driver, and for a driver started again.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import constraints as constraints_mod
from dpo_sweeps.search.compat import (
    JournalFileBackend,
    JournalFileOpenLock,
    JournalStorage,
    Trial,
    TrialState,
    optuna,
)
from dpo_sweeps.search.files import JOURNAL_FILE, PARETO_CSV, RESULTS_FILE, TRIALS_CSV  # noqa: F401  (study.<NAME>)
from dpo_sweeps.search.settings import Objective

# status.json state of a trial its pruner stopped.
PRUNED = run_folder.PRUNED
# Trial user attributes the driver sets when it asks for a trial (a driver started again reads them).
ATTR_OVERRIDES, ATTR_RUN_DIR = "overrides", "run_dir"
# The reason a trial failed, as a user attribute (Optuna keeps no message for a FAIL).
ATTR_ERROR = "error"
# False on a trial that failed on the user's config or data: retrying the same settings cannot help.
ATTR_RETRYABLE = "retryable"


def journal_path(storage: str | None, sweep_dir: Path) -> Path:
    """The study's journal: `hydra.sweeper.storage`, else <sweep folder>/optuna_journal.log (driver and jobs alike:
    a job's sweep folder is its run folder's parent)."""
    return (Path(storage) if storage else Path(sweep_dir) / JOURNAL_FILE).absolute()


class StudyMismatchError(ValueError):
    """The journal holds a study that cannot be continued with these settings."""


def storage(path: Path) -> JournalStorage:
    """The journal storage every process of a search opens the same way (driver and jobs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def open_study(path: Path, name: str, directions: list[str], sampler, pruner, create: bool = True) -> optuna.Study:
    """Create the study, or load the stored one (with this process's sampler and pruner: neither is stored)."""
    store = storage(path)
    if create:
        study = optuna.create_study(
            storage=store, study_name=name, directions=directions, sampler=sampler, pruner=pruner, load_if_exists=True
        )
    else:
        study = optuna.load_study(storage=store, study_name=name, sampler=sampler, pruner=pruner)
    stored = [d.name.lower() for d in study.directions]
    if create and stored != [d.lower() for d in directions]:
        raise StudyMismatchError(
            f"the study {name!r} in {path} optimises {stored} and these settings ask for {directions} (objective.mode "
            "/ objective.extra changed?). Continue it with its own objectives, or start another study: "
            "hydra.sweeper.study_name=<new name> or another sweep folder (name=<sweep name>)."
        )
    return study


# ------------------------------------------------------------------------------------------------ outcomes


@dataclass
class Outcome:
    state: TrialState | None  # None: not finished (still running, or died without recording its end)
    values: list[float] | None = None
    reason: str = ""
    run_state: str = ""  # what status.json says
    retryable: bool = True  # False: the run failed on the user's config or data (the same settings fail again)
    # A completed trial of a search under limits: the limits and what it measured (set on the trial by `tell`).
    constraints: tuple[constraints_mod.Constraint, ...] = ()
    measured: dict[str, float] | None = None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def outcome(
    run_dir: str | Path, objectives: list[Objective], constraints: list[constraints_mod.Constraint] = ()
) -> Outcome:
    """What a trial's run folder says: COMPLETE with its objective values (and the values of the limited metrics),
    PRUNED, FAIL with why, or unfinished."""
    status = run_folder.read_status(run_dir) or {}
    state = status.get("state") or "missing"
    if state == run_folder.COMPLETED:
        metrics = run_folder.read_json(Path(run_dir) / run_folder.METRICS_FILE) or {}
        values, missing = [], []
        for term in objectives:
            value = _finite(metrics.get(term.metric))
            values.append(value)
            if value is None:
                missing.append(f"{term.metric}={metrics.get(term.metric)!r}")
        # A limited metric that was not measured cannot show the trial within its limit: no result, not a feasible one.
        measured, unmeasured = constraints_mod.measured(metrics, list(constraints))
        missing += unmeasured
        if missing:
            return Outcome(
                TrialState.FAIL,
                reason=f"completed, but its metrics.json has no finite {', '.join(missing)}",
                run_state=state,
            )
        return Outcome(
            TrialState.COMPLETE, values=values, run_state=state, constraints=tuple(constraints), measured=measured
        )
    if state == PRUNED:
        pruned = status.get("pruned") or {}
        return Outcome(
            TrialState.PRUNED, reason=f"pruned at step {pruned.get('step')} ({pruned.get('value')})", run_state=state
        )
    if state in (run_folder.FAILED, run_folder.CANCELLED):  # a cancelled job is a failed trial (retry_failed reruns it)
        return Outcome(
            TrialState.FAIL,
            reason=str(status.get("error") or state),
            run_state=state,
            retryable=not status.get("user_error"),
        )
    return Outcome(None, reason=f"its run folder says {state}", run_state=state)


def settle_folder(run_dir: str | Path, result: Outcome) -> None:
    """A run that completed without a finite objective (its loss went NaN) is a failed trial: its folder says failed
    too, so status.json, `python -m dpo_sweeps.status`, the sweep summary and the report agree with the study."""
    if result.state == TrialState.FAIL and result.run_state == run_folder.COMPLETED:
        run_folder.update_status(
            run_dir, state=run_folder.FAILED, error=f"no finite objective: the run {result.reason}"
        )


def tell(study: optuna.Study, trial: Trial, result: Outcome) -> None:
    """Record a finished trial's outcome in the study (a FAIL keeps its reason as a user attribute)."""
    if result.state == TrialState.FAIL and result.reason:
        trial.set_user_attr(ATTR_ERROR, result.reason[:500])
    if result.state == TrialState.FAIL and not result.retryable:
        trial.set_user_attr(ATTR_RETRYABLE, False)  # search/retry.py leaves it failed
    if result.state == TrialState.COMPLETE and result.constraints and result.measured is not None:
        constraints_mod.set_on(trial, result.measured, list(result.constraints))
    study.tell(trial, values=result.values, state=result.state, skip_if_finished=True)


def attach(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> Trial:
    """A live handle on a trial this process did not ask for (a driver started again, or a job)."""
    return Trial(study, frozen._trial_id)


# ------------------------------------------------------------------------------------------------ result files


def _param_columns(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    cols: list[str] = []
    for t in trials:
        cols += [k for k in t.params if k not in cols]
    return cols


def _row(t: optuna.trial.FrozenTrial, objectives: list[Objective], params: list[str]) -> dict[str, Any]:
    # A pruned trial's value in Optuna is its last report, not a result: only complete trials have objective values.
    values = t.values if t.state == TrialState.COMPLETE and t.values else [None] * len(objectives)
    run_dir = t.user_attrs.get(ATTR_RUN_DIR, "")
    last_step = max(t.intermediate_values) if t.intermediate_values else None
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
    row.update({o.metric: ("" if v is None else repr(float(v))) for o, v in zip(objectives, values, strict=False)})
    row.update({p: t.params.get(p, "") for p in params})
    row.update(
        {
            "last_step": "" if last_step is None else last_step,
            "last_reported": "" if last_step is None else repr(float(t.intermediate_values[last_step])),
            "point": Path(run_dir).name if run_dir else "",
            "run_dir": run_dir,
            "error": t.user_attrs.get(ATTR_ERROR, ""),
        }
    )
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    run_folder.write_text_atomic(path, buffer.getvalue())


def write_trials_csv(sweep_dir: Path, study: optuna.Study, objectives: list[Objective], constraints: list = ()) -> Path:
    """Every trial; a search under limits adds each limited metric's value and `feasible` (yes / no, with what it
    exceeds; empty for a trial that did not complete)."""
    trials = study.get_trials(deepcopy=False)
    params = _param_columns(trials)
    limited = [c.metric for c in constraints if c.metric not in {o.metric for o in objectives}]
    columns = ["trial", "state", *[o.metric for o in objectives], *limited, *(["feasible"] if constraints else [])]
    columns += [*params, "last_step", "last_reported", "point", "run_dir", "error"]
    rows = []
    for t in trials:
        row = _row(t, objectives, params)
        if constraints and t.state == TrialState.COMPLETE:
            measured = t.user_attrs.get(constraints_mod.ATTR_MEASURED) or {}
            row.update({m: repr(float(measured[m])) for m in limited if m in measured})
            over = constraints_mod.over(t, list(constraints))
            row["feasible"] = "yes" if constraints_mod.feasible(t) else "no: " + "; ".join(over)
        rows.append(row)
    path = Path(sweep_dir) / TRIALS_CSV
    _write_csv(path, rows, columns)
    return path


def write_pareto_csv(sweep_dir: Path, study: optuna.Study, objectives: list[Objective]) -> Path | None:
    """The non-dominated COMPLETE trials (Optuna's `best_trials`), best on the first objective first."""
    path = Path(sweep_dir) / PARETO_CSV
    if len(objectives) < 2:
        path.unlink(missing_ok=True)
        return None
    best = list(study.best_trials)
    sign = -1.0 if objectives[0].mode == "max" else 1.0
    best.sort(key=lambda t: (sign * t.values[0], t.number))
    params = _param_columns(best)
    columns = ["trial", *[o.metric for o in objectives], *params, "point", "run_dir"]
    rows = [{k: v for k, v in _row(t, objectives, params).items() if k in columns} for t in best]
    _write_csv(path, rows, columns)
    return path


def results(study: optuna.Study, objectives: list[Objective], journal: Path, constraints: list = ()) -> dict[str, Any]:
    """optimization_results.yaml's content (`best_params`/`best_value` as Hydra's Optuna sweeper wrote them). Under
    limits the best is the best feasible trial (Optuna's own rule), the infeasible ones are listed with what they
    exceed, and a search with none feasible says so instead of naming a best."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    out: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "journal": str(journal),
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
        "n_trials": len(trials),
        "trials_by_state": counts,
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if constraints:
        out.update(_feasibility(complete, objectives, list(constraints)))
        if not any(constraints_mod.feasible(t) for t in complete):
            return out
    if not complete:
        return out
    if len(objectives) == 1:
        best = study.best_trial
        out.update(
            best_trial=best.number,
            best_params=dict(best.params),
            best_value=float(best.value),
            best_run_dir=best.user_attrs.get(ATTR_RUN_DIR, ""),
        )
    else:
        out["solutions"] = [
            {
                "trial": t.number,
                "params": dict(t.params),
                "values": {o.metric: float(v) for o, v in zip(objectives, t.values, strict=True)},
                "run_dir": t.user_attrs.get(ATTR_RUN_DIR, ""),
            }
            for t in study.best_trials
        ]
    return out


def _feasibility(complete: list, objectives: list[Objective], constraints: list) -> dict[str, Any]:
    """The limits, the infeasible trials with what each exceeds, the best trial over the limits (what the limits
    cost), and `no_feasible_trial` (why no best is named) when no completed trial is within them."""
    out: dict[str, Any] = {
        "constraints": [{"metric": c.metric, "at_most": c.limit, "set_by": c.key} for c in constraints],
        "feasible_trials": sum(constraints_mod.feasible(t) for t in complete),
        "infeasible_trials": [
            {"trial": t.number, "over": constraints_mod.over(t, constraints)}
            for t in complete
            if not constraints_mod.feasible(t)
        ],
    }
    infeasible = [t for t in complete if not constraints_mod.feasible(t)]
    if len(objectives) == 1 and infeasible:
        sign = 1.0 if objectives[0].mode == "max" else -1.0
        top = max(infeasible, key=lambda t: (sign * t.value, -t.number))
        if not any(constraints_mod.feasible(t) and sign * t.value >= sign * top.value for t in complete):
            out["best_over_limits"] = {
                "trial": top.number,
                "value": float(top.value),
                "over": constraints_mod.over(top, constraints),
            }
    if complete and not out["feasible_trials"]:
        closest = min(complete, key=lambda t: sum(max(0.0, v) for v in t.constraints.values()))
        out["best_trial"] = None
        out["no_feasible_trial"] = (
            f"no feasible trial: all {len(complete)} completed trial(s) exceed a limit "
            f"({'; '.join(c.describe() for c in constraints)}); the closest, trial {closest.number}, has "
            f"{'; '.join(constraints_mod.over(closest, constraints))}. Raise the limit, or search where the policy "
            "moves less (higher beta, lower learning rate, fewer steps)."
        )
    return out
