"""Hydra callbacks: what happens around the jobs of a sweep (summary and sweep report at the end)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.config import naming
from dpo_sweeps.console import quiet_submitter
from dpo_sweeps.report.sweep_report import write_sweep_report
from dpo_sweeps.report.tables import not_drawn_lines
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading
from dpo_sweeps.search.files import TRIALS_CSV
from dpo_sweeps.slurm.handoff import CheckedSweep
from dpo_sweeps.sweep import racing
from dpo_sweeps.sweep.inputs import check_run
from dpo_sweeps.sweep.preflight import preflight
from dpo_sweeps.sweep.watcher import SweepWatcher
from dpo_sweeps.tracking.sweep_summary import log_sweep_summary

log = logging.getLogger(__name__)

# Outcomes in the order the summary lists them; anything else (running, missing) means the job died unrecorded.
ORDER = (
    run_folder.COMPLETED,
    run_folder.PRUNED,
    run_folder.SKIPPED_BY_RACING,
    run_folder.FAILED,
    run_folder.CANCELLED,
    run_folder.REQUEUED,
    run_folder.RUNNING,
    "missing",
)
# Finished, and not an error: a trial stopped by the search's pruner did what it was asked, and so did a seed that
# seed racing decided not to train (sweep/racing.py).
DONE = (run_folder.COMPLETED, run_folder.PRUNED, run_folder.SKIPPED_BY_RACING)


def collect(sweep_dir: Path) -> list[dict]:
    """One row per point of the sweep: its folder, state, error. Uses sweep_points.json (this invocation's points,
    written by the pre-launch check), else every folder with a status.json."""
    rows = []
    for d in reading.point_dirs(sweep_dir):
        if not (d / run_folder.STATUS_FILE).exists():
            rows.append({"run_dir": str(d), "state": "missing", "error": None})
            continue
        run = reading.read_run(d, history=False, objective=False)
        rows.append(
            {
                "run_dir": str(d),
                "state": run.status.get("state", "missing"),
                "error": run.error or None,
                "replans": reading.replan_notes(run.status),
            }
        )
    return rows


def format_summary(rows: list[dict]) -> str:
    counts = Counter(r["state"] for r in rows)
    head = ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]) or "no points"
    lines = [f"Sweep summary: {head}"]
    for state in ORDER:
        for r in rows:
            if r["state"] == state:
                err = f"  ({r['error']})" if r["error"] and state not in DONE else ""
                lines.append(f"  {state:<9} {r['run_dir']}{err}")
                lines += [f"  {'':<9} {note}" for note in r.get("replans") or []]
    return "\n".join(lines)


def _checked_or_exit(config: DictConfig) -> CheckedSweep:
    """The pre-launch check, or the end of the sweep with its reason. Hydra turns any Exception raised by a callback
    into a UserWarning and launches anyway: a check that crashed would silently switch off validation, the skipping of
    completed points and dry_run (a dry run would train every point; on SLURM, submit real jobs). Only SystemExit gets
    through Hydra's callback wrapper, so every other exception becomes one."""
    try:
        return preflight(config)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.debug("The pre-launch check failed", exc_info=True)
        raise SystemExit(
            f"Error: the pre-launch check could not run ({type(exc).__name__}: {first}); nothing was run or "
            "submitted. Fix the setting it names (hydra.verbose=dpo_sweeps.sweep.callbacks shows the traceback)."
        ) from None


class SweepSummary(Callback):
    """Before a multirun: validate every point (dry_run=true: print the grid, stop). After it: print
    completed/pruned/failed/requeued points with their folders, write the sweep report, and exit non-zero if any point
    did not complete or get pruned (so a CI step or a `&&` chain notices)."""

    def __init__(self) -> None:
        # The submitting process's state: the pre-launch check's result, which the SLURM launcher finds here
        # (slurm/handoff.py), and the console watcher. Neither travels into the jobs (see __getstate__).
        self.handoff: CheckedSweep | None = None
        self.watcher: SweepWatcher | None = None

    def __getstate__(self) -> dict[str, Any]:
        # submitit pickles the launcher, with Hydra's callbacks, into every job: a thread does not pickle, and the
        # point list of a big sweep would be copied into every job's pickle.
        return {**self.__dict__, "handoff": None, "watcher": None}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A single run: checked before Hydra creates its folder, so a mistake leaves nothing behind.
        check_run(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # First, before any folder is resolved: every job names its folder after what varies across this sweep.
        naming.remember_sweep(config.get("name"), list(config.hydra.overrides.task))
        racing.check(config)  # a racing sweep that cannot race is refused before anything is composed or run
        self.handoff = _checked_or_exit(config)
        skipped = sum(1 for p in self.handoff.points if p["skip"])
        if skipped:
            # Said once, up front: the launchers start no job for them (the basic launcher's lines say it per point).
            print(f"{skipped} completed point(s) skipped (rerun=true trains them again)", flush=True)
        # Points running in other processes (submitit, SLURM) print their lines into their own logs: the submitting
        # console gets one line per point as it starts and ends from the watcher. The in-process launcher's job prints
        # its own (sweep/job.py).
        target = str(config.hydra.launcher.get("_target_", ""))
        if not target.endswith(("BasicLauncher", "SequentialLauncher")):
            quiet_submitter()
            # Our SLURM launcher polls squeue anyway and hands each answer over; a SLURM launcher of another make
            # leaves the asking to the watcher; a local one has no SLURM to ask.
            ours = target.startswith("hydra_plugins.dpo_sweeps_launcher.slurm")
            self.watcher = SweepWatcher(
                Path(str(config.hydra.sweep.dir)),
                fed=ours,
                query_slurm=not ours and "Slurm" in target,
                expected=OmegaConf.select(config, "hydra.sweeper.n_trials", default=None),  # a search's trials
            ).start()
            if ours:
                self.handoff.on_task_states = self.watcher.feed

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            return
        if self.watcher is not None:
            self.watcher.stop()
        # Relative to where the command started, which is the current directory here (with hydra.job.chdir=true too:
        # Hydra changes back after each job it runs in this process).
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _drop_empty_job_id_folder(sweep_dir)
        rows = collect(sweep_dir)
        print(format_summary(rows), flush=True)
        if _anything_ran(rows):
            _report(config, sweep_dir)
        else:
            # No metrics anywhere: a report of empty tables and plots, and a W&B run of nothing, would only mislead.
            print("Nothing ran as far as a metric: no sweep report and no W&B summary written.", flush=True)

        not_done = [r for r in rows if r["state"] not in DONE]
        if not_done:
            # Hydra lets SystemExit through: the command's exit status is 1.
            raise SystemExit(1)


def _report(config: DictConfig, sweep_dir: Path) -> None:
    """The sweep report (tables, plots) and, with W&B, the sweep-summary run; neither may change the exit status."""
    try:
        report = write_sweep_report(sweep_dir)
        print(f"\n{report.table}\nSweep report: {report.markdown} (plots in {sweep_dir / 'plots'})", flush=True)
        for line in not_drawn_lines(report.not_drawn):  # a figure that would show nothing: why it is not there
            print(line, flush=True)
    except Exception as exc:  # a broken report must not hide the summary or change the exit status
        log.error("Sweep report for %s failed: %s: %s", sweep_dir, type(exc).__name__, exc)
        return
    if config.logger.backend == "wandb":
        try:
            study_table = sweep_dir / TRIALS_CSV  # a search's every trial, pruned and failed included
            log_sweep_summary(config, sweep_dir, report.csv, {"study": study_table} if study_table.exists() else None)
        except Exception as exc:  # W&B trouble must not fail a finished sweep either
            log.warning("Logging the sweep summary to W&B failed: %s: %s", type(exc).__name__, exc)


def _anything_ran(rows: list[dict]) -> bool:
    """Whether any point finished or logged a metric (a failed point that trained a while still has a history)."""
    return any(r["state"] in DONE or (Path(r["run_dir"]) / run_folder.HISTORY_FILE).exists() for r in rows)


def _drop_empty_job_id_folder(sweep_dir: Path) -> None:
    """submitit's local controller creates its folder pattern literally (`.submitit/%j`, empty) besides the real
    per-job folders: removed when empty, so the sweep folder holds only what a person can read."""
    with contextlib.suppress(OSError):  # absent, or not empty: leave it
        (sweep_dir / ".submitit" / "%j").rmdir()
