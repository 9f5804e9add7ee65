"""The Optuna we run on: version range checked at import, with the internal API the job side relies on.

A job re-attaches to the trial its driver asked for with `optuna.trial.Trial(study, trial_id)`: a constructor Optuna
uses internally (ask() calls it) but does not document; the id comes from a FrozenTrial's private `_trial_id`. It has kept this signature through Optuna 3-5; we pin the
range we test and refuse to run on another with a message that names both versions, rather than fail inside a job
hours later.
"""

from __future__ import annotations

import inspect

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, Trial, TrialState

# The range tested (pyproject's `optuna>=5,<6`).
TESTED = (5, 6)
INTERNAL_API = "optuna.trial.Trial(study, trial_id)"


class OptunaVersionError(ImportError):
    """The installed Optuna is outside the tested range, or its internal API changed."""


def _check() -> None:
    version = optuna.__version__
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if not TESTED[0] <= major < TESTED[1]:
        raise OptunaVersionError(
            f"dpo_sweeps' search is tested with optuna>={TESTED[0]},<{TESTED[1]}; optuna {version} is installed. "
            f"Install a tested one: pip install 'optuna>={TESTED[0]},<{TESTED[1]}'."
        )
    # study.py reads a FrozenTrial's private `_trial_id` (the id Trial(study, trial_id) takes): set in its __init__.
    if "_trial_id" not in getattr(getattr(FrozenTrial.__init__, "__code__", None), "co_names", ()):
        raise OptunaVersionError(
            f"optuna {version}: FrozenTrial no longer sets `_trial_id` (read by dpo_sweeps/search/study.py to attach a "
            f"job to its trial). dpo_sweeps' search is tested with optuna>={TESTED[0]},<{TESTED[1]} (5.0.0, 5.1.0): "
            "install that."
        )
    params = list(inspect.signature(Trial.__init__).parameters)
    if params[:3] != ["self", "study", "trial_id"]:
        raise OptunaVersionError(
            f"optuna {version}: {INTERNAL_API} (the internal constructor a job uses to report into its trial) now "
            f"takes {params[1:]}. dpo_sweeps' search is tested with optuna>={TESTED[0]},<{TESTED[1]}: install that."
        )


_check()

__all__ = [
    "BaseDistribution",
    "CategoricalDistribution",
    "FloatDistribution",
    "IntDistribution",
    "JournalFileBackend",
    "JournalFileOpenLock",
    "JournalStorage",
    "Trial",
    "TrialState",
    "optuna",
]
