"""Hyperparameter search with Hydra's Optuna sweeper (`hparams_search=dpo_optuna`): the glue it needs from us.

- `optuna_direction` resolver: objective.mode (max/min) -> the sweeper's direction (maximize/minimize), so that
  one key says what "better" means for the sweep report and for the search alike.
- A failed trial must reach Optuna as an exception, not as NaN: hydra-optuna-sweeper 1.3.0 tells optuna 2.10 a NaN
  value as COMPLETE, optuna rejects it, and the sweeper's own fallback (`tell(FAIL, values=[nan])`) raises again,
  which ends the whole search whatever `max_failure_rate` says. An exception is recorded as a FAIL trial and counted
  against `max_failure_rate`. The basic sweeper, in contrast, aborts on any exception, so there NaN is returned.

Imports nothing heavy: the resolver is registered on the compose/submit path.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

DIRECTIONS = {"max": "maximize", "min": "minimize"}


def optuna_direction(mode: str) -> str:
    if mode not in DIRECTIONS:
        raise ValueError(f"objective.mode={mode!r}: must be one of {sorted(DIRECTIONS)} (max or min).")
    return DIRECTIONS[mode]


class TrialFailed(RuntimeError):
    """A sweep point that has no objective value to give the Optuna sweeper."""


def sweeper_takes_exceptions() -> bool:
    """True when the running multirun's sweeper records a raising job as a failed trial (Optuna) instead of
    aborting the sweep (Hydra's basic sweeper)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    target = OmegaConf.select(HydraConfig.get(), "sweeper._target_", default="") or ""
    return "optuna" in target.lower()


def objective_for_sweeper(value: float, metric: str) -> float:
    """The value the task function returns: NaN under Optuna becomes a failed trial with a reason."""
    if math.isnan(value) and sweeper_takes_exceptions():
        raise TrialFailed(
            f"objective.metric={metric!r} is missing or NaN in this point's metrics.json: Optuna records the trial "
            "as failed. Pick a metric the run reports (see metrics.json) or check the point's status.json."
        )
    return value


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("optuna_direction"):
        OmegaConf.register_new_resolver("optuna_direction", optuna_direction)


register_resolvers()
