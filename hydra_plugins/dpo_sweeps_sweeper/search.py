"""`_target_` of conf/hydra/sweeper/dpo_optuna.yaml. Hydra imports this module at every start (plugin discovery), so
it imports no Optuna: the search (dpo_sweeps/search/driver.py) is imported when the sweeper is built."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


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
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
