"""Hydra callbacks: what happens around the jobs of a sweep (summary and sweep report at the end)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    """After a multirun: print completed/failed points and write the sweep report into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        pass
