"""A search under limits (`hparams_search=dpo_kl_budget objective.kl_budget=<nats>`): the objective is maximised
over the trials whose KL to the reference stays within the budget and whose answers stay fluent.

    gen/kl_to_ref    <= objective.kl_budget       how far the policy moved (nats, on its own sampled answers)
    gen/fluency_drop <= eval.max_fluency_drop     how much less likely, per token, the reference finds its answers

Both are measured once, after training, by the generation eval. Each completed trial gets Optuna's constraint values
(`Trial.set_constraint(name, value - limit)`, Optuna 5's replacement of the deprecated `constraints_func`; stored as
the `constraints:<name>` system attributes of the trial in the journal): a value > 0 makes the trial infeasible.
Optuna then leaves infeasible trials out of `best_trial` / `best_trials`, and TPE and NSGA-II model them as the worst
(c-TPE; constrained domination). The raw measured values are kept too (user attribute `constrained`), for
trials.csv and optimization_results.yaml.

The limits are stored in the study (user attribute `constraint_limits`): a study continued with another budget would
mix trials judged against two limits, so it is refused (like a study continued with other directions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

KL_METRIC = "gen/kl_to_ref"
FLUENCY_METRIC = "gen/fluency_drop"
# Trial user attribute: {metric: measured value} of each limited metric; study user attribute: {metric: limit}.
ATTR_MEASURED = "constrained"
ATTR_LIMITS = "constraint_limits"


@dataclass(frozen=True)
class Constraint:
    metric: str  # the metrics.json key that is limited
    limit: float  # feasible when metric <= limit
    key: str  # the setting the limit comes from (named in every message)
    name: str  # the constraint's name in the study (`constraints:<name>`)

    def describe(self) -> str:
        return f"{self.metric} <= {self.limit:g} ({self.key})"


def from_config(cfg: DictConfig) -> list[Constraint]:
    """The limits a search keeps: none without `objective.kl_budget`; with it, the KL budget and the fluency limit."""
    budget = cfg.objective.get("kl_budget")
    if budget is None:
        return []
    return [
        Constraint(KL_METRIC, float(budget), "objective.kl_budget", "kl_to_ref"),
        Constraint(FLUENCY_METRIC, float(cfg.eval.max_fluency_drop), "eval.max_fluency_drop", "fluency_drop"),
    ]


def limits(constraints: list[Constraint]) -> dict[str, float]:
    return {c.metric: c.limit for c in constraints}


def measured(metrics: dict[str, Any], constraints: list[Constraint]) -> tuple[dict[str, float], list[str]]:
    """({metric: value} for the limited metrics a run's metrics.json has, finite; [the ones it lacks])."""
    found, missing = {}, []
    for c in constraints:
        value = metrics.get(c.metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[c.metric] = float(value)
        else:
            missing.append(f"{c.metric}={value!r}")
    return found, missing


def set_on(trial: Any, values: dict[str, float], constraints: list[Constraint]) -> None:
    """Record a finished trial's constraint values in the study, before it is told (Optuna reads them from then on)."""
    for c in constraints:
        if c.metric in values:
            trial.set_constraint(c.name, values[c.metric] - c.limit)
    trial.set_user_attr(ATTR_MEASURED, values)


def feasible(frozen: Any) -> bool:
    """Optuna's rule: every constraint value <= 0 (a trial without any counts as feasible)."""
    return all(v <= 0.0 for v in frozen.constraints.values())


def over(frozen: Any, constraints: list[Constraint]) -> list[str]:
    """What a trial exceeds, in words: ['gen/kl_to_ref=21.3 > 15 (objective.kl_budget)', ...]."""
    values = frozen.user_attrs.get(ATTR_MEASURED) or {}
    return [
        f"{c.metric}={values[c.metric]:.4g} > {c.limit:g} ({c.key})"
        for c in constraints
        if c.metric in values and values[c.metric] > c.limit
    ]


def mismatch(stored: dict[str, float] | None, constraints: list[Constraint], n_trials: int) -> str | None:
    """Why a stored study cannot be continued with these limits (None: it can)."""
    current = limits(constraints)
    if n_trials == 0 or (stored or {}) == current:
        return None
    was = ", ".join(f"{m} <= {v:g}" for m, v in (stored or {}).items()) or "no limits"
    now = ", ".join(c.describe() for c in constraints) or "no limits"
    return (
        f"its {n_trials} trial(s) were judged against {was}, and these settings ask for {now}: the stored feasibility "
        "would be wrong. Keep the limits, or start another study: hydra.sweeper.study_name=<new name> or another "
        "sweep folder (name=<sweep name>)."
    )
