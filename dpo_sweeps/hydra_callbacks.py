"""Hydra callbacks: what happens around the jobs of a sweep (summary and sweep report at the end)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dpo_sweeps import naming

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """After a multirun: print completed/failed points and write the sweep report into the sweep folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before any folder is resolved: every job names its folder after what varies across this sweep.
        naming.remember_sweep(config.get("name"), list(config.hydra.overrides.task))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # hydra.sweep.dir is relative to where the command started, which is our cwd (hydra.job.chdir=false).
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from dpo_sweeps.report import write_sweep_report

            report = write_sweep_report(sweep_dir)
        except Exception as exc:  # a report problem must never fail a finished sweep
            log.warning("Sweep report for %s failed: %s: %s", sweep_dir, type(exc).__name__, exc)
            return
        print(f"\n{report.table}\nSweep report: {report.markdown} (plots in {sweep_dir / 'plots'})", flush=True)
