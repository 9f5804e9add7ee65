"""`hydra.sweeper.retry_failed=N` (default 1): a failed trial is run again with the same parameters, up to N times,
before any new trial is asked for, and what counts toward `n_trials`.

A retry is a new trial (Optuna's `study.enqueue_trial` with the failed trial's parameters; `ask()` takes enqueued
trials first) whose user attribute `retry_of` names the trial it retries. Its run folder is the failed trial's (a trial
with an earlier trial's parameters gets its folder: `folders.py`), so it resumes from the last complete checkpoint there.

Not retried: a trial whose run failed on the user's config or data (a ConfigError, a bad data row): the same
parameters fail the same way, and it counts toward `n_trials` as the result for its parameters.

Counting: `n_trials` counts parameter sets tried, not attempts. A failed trial that is retried (or is about to be)
does not count; its retry takes its place. So a study that ends with `n_trials` counted trials holds `n_trials` plus
the number of retries in its journal, and a failing trial can never eat the budget of new ones unseen: the dry run
and the driver's first line say this.
"""

from __future__ import annotations

from typing import Any

from dpo_sweeps.search.compat import TrialState, optuna
from dpo_sweeps.search.study import ATTR_RETRYABLE  # False: failed on the user's config or data (never retried)

ATTR_RETRY_OF = "retry_of"
DEFAULT = 1


def _retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    value = trial.user_attrs.get(ATTR_RETRY_OF)
    return int(value) if isinstance(value, int) else None


def _depth(trial: optuna.trial.FrozenTrial, by_number: dict[int, Any]) -> int:
    """How many retries led to this trial (0 for an original one)."""
    depth, parent = 0, _retry_of(trial)
    while parent is not None and parent in by_number and depth < 1000:
        depth += 1
        parent = _retry_of(by_number[parent])
    return depth


def _plan(trials: list) -> tuple[set[int], list]:
    """(numbers of retried trials, failed trials that may still be retried: `retry_failed` is applied by callers)."""
    retried = {n for t in trials if (n := _retry_of(t)) is not None}
    unretried = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    return retried, unretried


def eligible(trials: list, retry_failed: int) -> list:
    """Failed trials still to be retried, oldest first."""
    by_number = {t.number: t for t in trials}
    _, unretried = _plan(trials)
    return [
        t
        for t in unretried
        if t.params and t.user_attrs.get(ATTR_RETRYABLE) is not False and _depth(t, by_number) < retry_failed
    ]


def counted(trials: list, retry_failed: int) -> int:
    """Trials that count toward n_trials (see the module doc)."""
    retried, _ = _plan(trials)
    superseded = retried | {t.number for t in eligible(trials, retry_failed)}
    return sum(1 for t in trials if t.number not in superseded)


def enqueue_next(study: optuna.Study, retry_failed: int) -> int | None:
    """Enqueue a retry of the oldest failed trial that has retries left; its number, or None when there is none. The
    next `ask()` returns the retry."""
    trials = study.get_trials(deepcopy=False)
    waiting = {_retry_of(t) for t in trials if t.state == TrialState.WAITING}
    for failed in eligible(trials, retry_failed):
        if failed.number in waiting:
            return failed.number  # enqueued already (a driver that died right after enqueueing)
        study.enqueue_trial(dict(failed.params), user_attrs={ATTR_RETRY_OF: failed.number})
        return failed.number
    return None


def describe(retry_failed: int) -> str:
    """The dry run's and the driver's words on retries and the budget."""
    if retry_failed <= 0:
        return "failed trials are not retried (hydra.sweeper.retry_failed=0); each counts toward n_trials"
    return (
        f"a failed trial is retried with the same parameters up to {retry_failed} time(s) before new trials are asked "
        "for; n_trials counts parameter sets, so a retried failure does not use up the budget"
    )
