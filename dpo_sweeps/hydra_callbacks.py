"""Hydra callbacks: what happens around the jobs of a sweep (summary and sweep report at the end)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dpo_sweeps import naming


class SweepSummary(Callback):
    """After a multirun: print completed/failed points and write the sweep report into the sweep folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before any folder is resolved: every job names its folder after what varies across this sweep.
        naming.remember_sweep(config.get("name"), list(config.hydra.overrides.task))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        pass
