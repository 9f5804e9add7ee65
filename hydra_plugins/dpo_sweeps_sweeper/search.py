"""`_target_` of conf/hydra/sweeper/dpo_optuna.yaml. Hydra imports this module at every start (plugin discovery), so
it imports no Optuna: the search (dpo_sweeps/search/driver.py) is imported when the sweeper is built."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# Keys of dpo_sweeps' config (conf/config.yaml) that the search reads: an app without them is not ours.
DPO_SWEEPS_KEYS = ("objective", "training", "eval")


class OptunaSweeper(Sweeper):
    """Hydra's face of `dpo_sweeps.search.driver.OptunaSearch` (see there)."""

    def __init__(self, **settings: Any) -> None:
        try:
            from dpo_sweeps.search.driver import OptunaSearch
        except ImportError as exc:  # no optuna, or one outside the tested range (compat.py says which)
            # Hydra would wrap an ImportError into "IS THE PLUGIN INSTALLED?" with a traceback: say what to do.
            raise SystemExit(f"Error: the search needs Optuna 5 (pip install -e '.[search]'): {exc}") from None
        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        missing = [key for key in DPO_SWEEPS_KEYS if key not in config]
        if missing:
            # Another Hydra app (it reached conf/ through hydra.searchpath): the search reads dpo_sweeps' objective and
            # run folders, and would fail deep inside with a traceback.
            raise SystemExit(
                f"Error: hydra/sweeper=dpo_optuna searches dpo_sweeps' DPO runs only; this app "
                f"({config.hydra.job.name}, config {config.hydra.job.config_name}) has no {', '.join(missing)}. Use "
                "Hydra's basic sweeper or hydra-optuna-sweeper for it."
            )
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
