"""What each sampler and pruner type of the search takes (`hydra.sweeper.sampler` / `pruner`): Optuna's argument
names, without importing Optuna, so that the pre-launch check (dpo_sweeps/sweep/preflight.py) can show a dry run the
settings in force."""

from __future__ import annotations

from typing import Any

# pruner.type -> the keys of hydra.sweeper.pruner it takes (Optuna's argument names; null = Optuna's default).
PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
}
SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "tpe": ("seed", "n_startup_trials", "multivariate", "constant_liar"),
    "random": ("seed",),
    "nsga2": ("seed", "population_size"),
}


def section(value: Any) -> dict[str, Any]:
    """`hydra.sweeper.pruner` / `sampler` as a dict: `pruner=median` (the shorthand on the command line) is
    `pruner.type=median`; a missing section is {} (the type's default)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {"type": value}  # a scalar: its type (an unknown one is named by search/settings.py `problems`)


def in_force(spec: Any, default_type: str, keys: dict[str, tuple[str, ...]], nulls: bool = True) -> str:
    """`tpe (seed=42, multivariate=True, ...)`: the type and the settings it takes, null ones as Optuna's default
    (or left out: `nulls=False`)."""
    spec = section(spec)
    kind = str(spec.get("type") or default_type)
    shown = [
        f"{k}={'null (Optuna default)' if spec.get(k) is None else spec[k]}"
        for k in keys.get(kind, ())
        if nulls or spec.get(k) is not None
    ]
    return kind + (f" ({', '.join(shown)})" if shown else "")
