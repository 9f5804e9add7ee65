"""Hydra callbacks: what happens around the jobs of a sweep (summary and sweep report at the end)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dpo_sweeps.config import naming
from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

# The submitting process's SweepWatcher (status.py), if any. Not an attribute of the callback: submitit pickles the
# launcher with Hydra's callbacks for every job, and a thread does not pickle.
_watcher = None

# Outcomes in the order the summary lists them; anything else (running, missing) means the job died unrecorded.
ORDER = (run_folder.COMPLETED, run_folder.FAILED, run_folder.REQUEUED, run_folder.RUNNING, "missing")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per point of the sweep: its folder, state, error. Uses sweep_points.json (this invocation's points,
    written by the sweeper), else every folder with a status.json."""
    from dpo_sweeps.sweep.preflight import load_points

    points = load_points(sweep_dir)
    dirs = (
        [Path(p["run_dir"]) for p in points]
        if points is not None
        else sorted(p.parent for p in Path(sweep_dir).glob("*/" + run_folder.STATUS_FILE))
    )
    rows = []
    for d in dirs:
        status = run_folder.read_status(d) or {}
        rows.append({"run_dir": str(d), "state": status.get("state", "missing"), "error": status.get("error")})
    return rows


def format_summary(rows: list[dict]) -> str:
    counts = Counter(r["state"] for r in rows)
    head = ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]) or "no points"
    lines = [f"Sweep summary: {head}"]
    for state in ORDER:
        for r in rows:
            if r["state"] == state:
                err = f"  ({r['error']})" if r["error"] and state != run_folder.COMPLETED else ""
                lines.append(f"  {state:<9} {r['run_dir']}{err}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Before a multirun: validate every point (dry_run=true: print the grid, stop). After it: print
    completed/failed/requeued points with their folders, write the sweep report, and exit non-zero if any point did
    not complete (so a CI step or a `&&` chain notices)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # First, before any folder is resolved: every job names its folder after what varies across this sweep.
        naming.remember_sweep(config.get("name"), list(config.hydra.overrides.task))
        from dpo_sweeps.sweep.preflight import preflight

        preflight(config)
        # Points running in other processes (submitit, SLURM) print their lines into their own logs: the submitting
        # console gets one line per point as it starts and ends from the watcher. The in-process launcher's job prints
        # its own (job.py).
        if not str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher"):
            from dpo_sweeps.console import quiet_submitter
            from dpo_sweeps.status import SweepWatcher

            quiet_submitter()
            global _watcher
            _watcher = SweepWatcher(Path(str(config.hydra.sweep.dir))).start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            return
        if _watcher is not None:
            _watcher.stop()
        # Relative to where the command started, which is the current directory here (hydra.job.chdir=false).
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        print(format_summary(rows), flush=True)

        try:
            from dpo_sweeps.report.sweep_report import write_sweep_report

            report = write_sweep_report(sweep_dir)
            print(f"\n{report.table}\nSweep report: {report.markdown} (plots in {sweep_dir / 'plots'})", flush=True)
        except Exception as exc:  # a broken report must not hide the summary or change the exit status
            log.error("Sweep report for %s failed: %s: %s", sweep_dir, type(exc).__name__, exc)
            report = None
        if report is not None and config.logger.backend == "wandb":
            try:
                from dpo_sweeps.tracking.wandb_run import log_sweep_summary

                log_sweep_summary(config, sweep_dir, report.csv)
            except Exception as exc:  # W&B trouble must not fail a finished sweep either
                log.warning("Logging the sweep summary to W&B failed: %s: %s", type(exc).__name__, exc)

        not_done = [r for r in rows if r["state"] != run_folder.COMPLETED]
        if not_done:
            # Hydra lets SystemExit through: the command's exit status is 1.
            raise SystemExit(1)
