"""The end of a multirun with logger=wandb: the sweep report's table as one more run of the sweep's group."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from omegaconf import DictConfig

from dpo_sweeps.tracking.identity import DEFAULT_PROJECT, RunIdentity, git_commit, global_rank, stable_run_id
from dpo_sweeps.tracking.wandb_run import Tracker, open_run, requested_mode


def log_sweep_summary(
    config: DictConfig, sweep_dir: Path, summary_csv: Path, tables: dict[str, Path] | None = None
) -> Tracker | None:
    """End of a multirun with logger=wandb: the sweep report's table as one more run of the sweep's group (job type
    `sweep-summary`), so the dashboard shows every point of the sweep, failed ones included, in one table. Its id is
    kept in the sweep folder, so a rerun of the sweep updates the same summary run. `tables`: more CSV files to log
    as tables of the same run (a search's trials.csv as `study`)."""
    if config.logger.backend != "wandb" or global_rank() != 0:
        return None
    mode = requested_mode(config)
    if mode == "disabled":
        return None
    with open(summary_csv, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return None
    identity = RunIdentity(
        run_id=stable_run_id(sweep_dir),
        project=config.logger.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=config.logger.entity or os.environ.get("WANDB_ENTITY") or None,
        group=str(config.name) if config.get("name") else sweep_dir.name,
        name="sweep-summary",
        job_type="sweep-summary",
        tags=["sweep-summary"],
        config={"sweep_dir": str(sweep_dir), "overrides": list(config.hydra.overrides.task), **git_commit()},
    )
    tracker = open_run(identity, mode, sweep_dir, float(config.logger.init_timeout_s))
    if tracker.run is not None:
        import wandb

        logged = {"sweep_summary": wandb.Table(columns=rows[0], data=rows[1:])}
        for key, path in (tables or {}).items():
            with open(path, newline="") as f:
                extra = list(csv.reader(f))
            if len(extra) > 1:
                logged[key] = wandb.Table(columns=extra[0], data=extra[1:])
        tracker._guard("sweep summary log", tracker.run.log, logged)
        tracker.finish({"points": len(rows) - 1})
    return tracker
