"""The search driver: keep `n_jobs` trials in flight (`inflight.py`: a process per trial with local_parallel, a SLURM
job per trial with ours); as soon as one ends (completes, is pruned, fails) read its outcome from its run folder, tell
the study, and ask for and start the next, until the study holds `n_trials` trials. No trial waits for another: a
pruned trial's slot is reused at once, not when the slowest trial of a batch ends.

Started again after it died (same command, same sweep folder), it continues the stored study instead of replaying it:
- trials told before (complete, pruned, failed) are kept and never launched again: their folders stay untouched;
- a trial it had asked for but not told yet is settled from its run folder when the job got to record its end (a
  SLURM job may well have finished after its driver died); a trial whose job still runs is waited for (the launcher
  attaches to that job: never a second job in one folder); one whose job is gone without recording an end is failed
  with the reason (`search/liveness.py`); one that was asked but never launched is launched;
- failed trials are retried with the same parameters (`hydra.sweeper.retry_failed`, `search/retry.py`) before new
  trials are asked for, until `n_trials` trials count (a retried failure is replaced by its retry).

A trial whose parameters equal an earlier trial's lands in the same run folder (`search/folders.py`): when
that folder is complete the trial is told its values without training again; when a trial is training in it, the new
trial waits for that one and is told the same outcome (the folder trains once).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from dpo_sweeps.config import naming
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.claim import describe as describe_holder
from dpo_sweeps.search import constraints as constraints_mod
from dpo_sweeps.search import corners, folders, inflight, options
from dpo_sweeps.search import liveness as trial_liveness
from dpo_sweeps.search import retry as retry_mod
from dpo_sweeps.search import settings as settings_mod
from dpo_sweeps.search import space as space_mod
from dpo_sweeps.search import study as study_mod
from dpo_sweeps.search.compat import Trial, TrialState
from dpo_sweeps.search.trial import ENV_TRIAL

log = logging.getLogger(__name__)

# "1": trials in batches of n_jobs, as before trials ran asynchronously (the benchmark's baseline, bench/search.py).
BATCHES_ENV = "DPO_SWEEPS_SEARCH_BATCHES"


@dataclass
class Entry:
    trial: Trial
    overrides: list[str]  # the point's overrides (the trial's parameters)
    run_dir: Path
    point_dir: str  # the run folder as sweep_points.json records it (relative to where the search started)
    subdir: str | None = None  # the folder's name, when the job must be told it (search/folders.py)
    declared: bool = True  # hydra.job.env_set declares ENV_TRIAL (conf/config.yaml): set without `++`

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def launch_overrides(self) -> list[str]:
        """The overrides plus, for the job, its trial number and its folder: `hydra.` overrides, which name no folder
        and which Hydra's launchers (and ours) leave off the lines they print."""
        trial = f"hydra.job.env_set.{ENV_TRIAL}={self.number}"
        extra = [trial if self.declared else f"++{trial}"]
        if self.subdir is not None:
            extra.append(folders.subdir_override(self.subdir))
        return [*self.overrides, *extra]


def _exit(message: str) -> SystemExit:
    # Hydra lets SystemExit through: the message, no traceback, exit status 1.
    return SystemExit(f"Error: {message}")


class OptunaSearch:
    """What `hydra_plugins.dpo_sweeps_sweeper.search.OptunaSweeper` runs."""

    def __init__(self, **sweeper: Any):
        unknown = sorted(set(sweeper) - set(settings_mod.SWEEPER_KEYS))
        if unknown:
            raise _exit(
                f"hydra.sweeper.{unknown[0]} is not a setting of the search (it takes "
                f"{', '.join(settings_mod.SWEEPER_KEYS)}; the directions come from objective.mode / objective.extra)."
            )
        self.sweeper = sweeper
        self.config: DictConfig | None = None
        self.launcher = None
        self.entries: dict[int, Entry] = {}  # the trials this driver started or told, by number

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.settings = settings_mod.from_sweeper(self.sweeper, config)
        problems = settings_mod.problems(self.settings, config)
        if problems:
            raise _exit(str(settings_mod.SweeperSettingsError(problems)))
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ---------------------------------------------------------------------------------------------- the loop

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        s = self.settings
        try:
            self.space = space_mod.parse(s.params, arguments)
        except (space_mod.SearchSpaceError, ValueError) as exc:
            raise _exit(f"hydra.sweeper.params / the command line: {exc}") from None
        if not self.space.distributions:
            raise _exit(
                "the search has nothing to search: no choice(...), range(...) or interval(...) in hydra.sweeper.params "
                "or on the command line. For a grid, leave hparams_search out: `beta=0.1,0.3 -m`."
            )
        self._check_space()
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.journal = study_mod.journal_path(s.storage, self.sweep_dir)
        try:
            self.study = study_mod.open_study(
                self.journal,
                s.study_name,
                s.directions,
                settings_mod.sampler(s.sampler),
                settings_mod.pruner(s.pruner),
            )
        except study_mod.StudyMismatchError as exc:
            raise _exit(str(exc)) from None
        stored = self.study.get_trials(deepcopy=False)
        limits_problem = constraints_mod.mismatch(
            self.study.user_attrs.get(constraints_mod.ATTR_LIMITS), s.constraints, len(stored)
        )
        if limits_problem:
            raise _exit(f"the study {s.study_name!r} in {self.journal} cannot be continued: {limits_problem}")
        if s.constraints:
            self.study.set_user_attr(constraints_mod.ATTR_LIMITS, constraints_mod.limits(s.constraints))
        if stored and s.sampler.get("seed") is not None:
            # A continued study must not replay: the seeded sampler, started afresh, would propose this run's first
            # trials all over again (its random start-up draws). Seeded by the trials already stored, it stays
            # reproducible and proposes new ones.
            self.study.sampler = settings_mod.sampler({**s.sampler, "seed": int(s.sampler["seed"]) + len(stored)})
        log.info(
            "Search: study %r in %s (%s; pruner %s): %d of %d trial(s) stored, %d at a time",
            s.study_name,
            self.journal,
            ", ".join(f"{o.mode} {o.metric}" for o in s.objectives),
            s.pruner.get("type") or "none",
            len(stored),
            s.n_trials,
            s.n_jobs,
        )
        log.info("Retries: %s.", retry_mod.describe(s.retry_failed))
        if s.constraints:
            log.info(
                "Limits: %s; a trial over either is infeasible, never the best.",
                "; ".join(c.describe() for c in s.constraints),
            )
        # Pinned in conf/hydra/sweeper/dpo_optuna.yaml (Optuna 5 changed TPE's defaults): the log says what ran.
        log.info("Sampler: %s", options.in_force(s.sampler, "tpe", options.SAMPLER_KEYS))
        ignored = settings_mod.ignored_sampler_settings(s.sampler)
        if ignored:
            log.warning(
                "hydra.sweeper.sampler.type=%s ignores %s (settings of another sampler).",
                s.sampler.get("type") or "tpe",
                ", ".join(ignored),
            )
        self.folder_scheme = folders.scheme(self.study)
        if self.folder_scheme == folders.BY_OVERRIDES and not naming.custom_subdir(self.config):
            log.info(
                "Trial folders: named by their overrides, as this study's first trials were (it was started before "
                "trial folders were named %s<number>-<parameters>).",
                folders.PREFIX,
            )
        pending = self._reconcile(stored)
        self._run_trials(pending)
        self._write_results()

    def _check_space(self) -> None:
        """Every corner of the space that matters composed, validated, its objectives and (on SLURM) its memory
        checked before the study is opened: a problem is refused now, not in every trial's job (`corners.py`)."""
        report = corners.check(self.config, self.hydra_context.config_loader, self.space, self.settings)
        if report.problems:
            raise _exit(corners.refusal(report))
        for line in report.lines:
            log.debug("%s", line)

    def _entry(self, trial: Trial, overrides: list[str], recorded: str | None = None) -> Entry:
        """The trial's folder: `recorded` (its run_dir in the study, for a trial asked before), else named now."""
        declared = ENV_TRIAL in (self.config.hydra.job.get("env_set") or {})
        if naming.custom_subdir(self.config):
            # hydra.sweep.subdir=p_${hydra.job.num}, ${hydra.job.override_dirname}, ...: named as the trial's job will
            # name it (its job number is its trial number, see _run_trials).
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            point_dir = naming.point_run_dir(self.config, cfg, trial.number)
            return Entry(trial, overrides, Path(point_dir).absolute(), point_dir, declared=declared)
        subdir = None
        if recorded:
            name = Path(recorded).name
            subdir = name if self.folder_scheme == folders.NUMBERED else None
        elif self.folder_scheme == folders.NUMBERED:
            trials = self.study.get_trials(deepcopy=False)
            name = subdir = folders.new_folder(self.sweep_dir, trials, trial.number, overrides)
        else:  # a study started before trial folders were numbered: as its first trials were named
            name = naming.sweep_subdirname(overrides)
        return Entry(trial, overrides, (self.sweep_dir / name).absolute(), str(self.sweep_dir / name), subdir, declared)

    def _ask(self) -> Entry:
        retried = retry_mod.enqueue_next(self.study, self.settings.retry_failed)  # failed trials first
        trial = self.study.ask(self.space.distributions)
        if retried is not None:
            log.info("Trial %d retries failed trial %d with the same parameters", trial.number, retried)
        entry = self._entry(trial, self.space.overrides(trial.params))
        trial.set_user_attr(study_mod.ATTR_OVERRIDES, entry.overrides)
        trial.set_user_attr(study_mod.ATTR_RUN_DIR, str(entry.run_dir))
        return entry

    def _reconcile(self, stored: list) -> list[Entry]:
        """Trials a previous driver asked for and never told: settle the finished ones, return the others."""
        pending = []
        for frozen in stored:
            if frozen.state not in (TrialState.RUNNING, TrialState.WAITING):
                continue
            trial = study_mod.attach(self.study, frozen)
            overrides = frozen.user_attrs.get(study_mod.ATTR_OVERRIDES)
            if overrides is None:  # asked but never launched (the driver died in between): it has no folder
                overrides = self.space.overrides({k: frozen.params[k] for k in self.space.distributions})
                trial.set_user_attr(study_mod.ATTR_OVERRIDES, overrides)
            entry = self._entry(trial, list(overrides), frozen.user_attrs.get(study_mod.ATTR_RUN_DIR))
            trial.set_user_attr(study_mod.ATTR_RUN_DIR, str(entry.run_dir))
            result = study_mod.outcome(entry.run_dir, self.settings.objectives, self.settings.constraints)
            mine = ((run_folder.read_status(entry.run_dir) or {}).get("trial") or {}).get("number") == frozen.number
            if result.state is not None and (result.state == TrialState.COMPLETE or mine):
                study_mod.settle_folder(entry.run_dir, result)
                study_mod.tell(self.study, trial, result)
                log.info("Trial %d: %s while no driver ran (%s)", frozen.number, result.run_state, entry.run_dir.name)
                continue
            how, holder = trial_liveness.job_state(entry.run_dir, frozen.number)
            if how == trial_liveness.LIVE:  # the launcher attaches to that job: never a second one in the folder
                log.info("Trial %d: %s still runs it: waiting for it", frozen.number, describe_holder(holder))
                pending.append(entry)
            elif how == trial_liveness.GONE:
                reason = trial_liveness.record_dead(entry.run_dir, holder)
                study_mod.tell(self.study, trial, study_mod.Outcome(TrialState.FAIL, reason=reason))
                log.info("Trial %d failed while no driver ran: %s", frozen.number, reason)
            else:
                log.info("Trial %d was never launched (%s): launching it", frozen.number, result.reason)
                pending.append(entry)
        return pending

    def _run_trials(self, pending: list[Entry]) -> None:
        """The loop: the interrupted trials first, then new ones, `n_jobs` in flight (see the module doc)."""
        s = self.settings
        at_most = s.n_jobs
        if inflight.in_process(self.launcher) and s.n_jobs > 1:
            at_most = 1
            log.info("hydra.sweeper.n_jobs=%d: this launcher runs trials in this process, one at a time.", s.n_jobs)
        training: dict[Path, Entry] = {}  # run folder -> the trial training in it
        waiting: dict[Path, list[Entry]] = {}  # run folder -> trials with the same parameters, told when it ends
        # Whether each of the last n_jobs trials to end failed (the "batch" max_failure_rate is a share of).
        recent: deque[bool] = deque(maxlen=s.n_jobs)
        self.stopped = False
        # The old behaviour, for `make bench-search` only: a batch of n_jobs trials, the next asked once all ended.
        batches = os.environ.get(BATCHES_ENV) == "1"
        started = 0

        def finish(entry: Entry) -> None:
            result = study_mod.outcome(entry.run_dir, s.objectives, s.constraints)
            if result.state is None:
                result = study_mod.Outcome(
                    TrialState.FAIL, reason=f"the job ended without recording its outcome ({result.reason})"
                )
            study_mod.settle_folder(entry.run_dir, result)
            study_mod.tell(self.study, entry.trial, result)
            self._log_trial(entry, result)
            recent.append(result.state == TrialState.FAIL)
            failures = sum(recent)
            if not self.stopped and failures and failures / s.n_jobs > s.max_failure_rate:
                self.stopped = True
                log.error(
                    "%d of the last %d trial(s) failed (hydra.sweeper.max_failure_rate=%s): stopping the search (the "
                    "trials still running are waited for).",
                    failures,
                    s.n_jobs,
                    s.max_failure_rate,
                )

        def next_point() -> inflight.Point | None:
            nonlocal started
            if batches and started >= at_most:
                if training:
                    return None
                started = 0
            while not self.stopped:
                if pending:
                    entry = pending.pop(0)
                # n_trials counts parameter sets: a failed trial about to be retried is replaced by its retry (retry.py).
                elif retry_mod.counted(self.study.get_trials(deepcopy=False), s.retry_failed) < s.n_trials:
                    entry = self._ask()
                else:
                    return None
                self.entries[entry.number] = entry
                if entry.run_dir in training:  # same parameters as a trial in flight: that folder trains once
                    waiting.setdefault(entry.run_dir, []).append(entry)
                    self._write_points()
                    continue
                if study_mod.outcome(entry.run_dir, s.objectives).state == TrialState.COMPLETE:
                    finish(entry)  # an earlier trial with the same parameters completed this folder
                    self._write_points()
                    continue
                training[entry.run_dir] = entry
                started += 1
                self._write_points()  # before the launcher submits: ours records the job id in it
                # The launchers learn each trial's folder as a grid's points (every trial in flight: a launcher's
                # thread may read it after the next trial was handed over).
                trial_liveness.hand_over_points(self.hydra_context.callbacks, list(training.values()))
                return entry.launch_overrides, entry.number, entry.run_dir, str(entry.run_dir)
            return None

        def on_result(run_dir: Path, _: Any) -> None:
            for entry in [training.pop(run_dir), *waiting.pop(run_dir, [])]:
                finish(entry)
            self._write_points()

        try:
            inflight.run(self.launcher, at_most, next_point, on_result)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, kill: the trials in flight must not stay RUNNING
            stopped = [*training.values(), *(e for same in waiting.values() for e in same)]
            trial_liveness.fail_stopped(self.study, stopped, s.objectives, s.constraints)
            raise

    def _log_trial(self, entry: Entry, result: study_mod.Outcome) -> None:
        state = result.state.name.lower() if result.state is not None else "unfinished"
        values = ", ".join(
            f"{o.metric}={v:.4g}" for o, v in zip(self.settings.objectives, result.values or [], strict=False)
        )
        log.info("Trial %d %s%s: %s", entry.number, state, f" ({values or result.reason})", entry.run_dir.name)

    # ---------------------------------------------------------------------------------------------- files

    def _write_points(self) -> None:
        """sweep_points.json: every trial of the study in number order (what `dpo_sweeps.status` and the end-of-sweep
        summary list), each SLURM task id the launcher recorded kept."""
        # Under the file's lock: the launcher's threads record task ids in it meanwhile (runs/folder.py).
        run_folder.update_sweep_points(self.sweep_dir, self._points)

    def _points(self, stored: list[dict] | None) -> list[dict]:
        previous = {p.get("trial"): p for p in stored or []}
        current = self.entries
        points = []
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(retry_mod.ATTR_RETRY_OF) for t in trials}  # their retry stands for them
        for frozen in trials:
            run_dir = frozen.user_attrs.get(study_mod.ATTR_RUN_DIR)
            if not run_dir or frozen.number in retried:
                continue
            entry = current.get(frozen.number)
            point = dict(previous.get(frozen.number) or {})
            point.update(
                trial=frozen.number,
                trial_state=frozen.state.name.lower(),
                run_dir=str(self.sweep_dir / Path(run_dir).name),
                skip=False,
            )
            if entry is not None:
                point["overrides"] = entry.launch_overrides
            point.setdefault("overrides", list(frozen.user_attrs.get(study_mod.ATTR_OVERRIDES) or []))
            point["state"] = (run_folder.read_status(run_dir) or {}).get("state")
            points.append(point)
        return points

    def _write_results(self) -> None:
        import yaml

        objectives = self.settings.objectives
        constraints = self.settings.constraints
        results = study_mod.results(self.study, objectives, self.journal, constraints)
        run_folder.write_text_atomic(self.sweep_dir / study_mod.RESULTS_FILE, yaml.safe_dump(results, sort_keys=False))
        study_mod.write_trials_csv(self.sweep_dir, self.study, objectives, constraints)
        pareto = study_mod.write_pareto_csv(self.sweep_dir, self.study, objectives)
        counts = ", ".join(f"{n} {state}" for state, n in results["trials_by_state"].items())
        best = ""
        if results.get("no_feasible_trial"):
            best = f"; {results['no_feasible_trial']}"
        elif "best_value" in results:
            within = " within the limits" if constraints else ""
            best = f"; best {objectives[0].metric}={results['best_value']:.4g} (trial {results['best_trial']}{within})"
        elif "solutions" in results:
            best = f"; {len(results['solutions'])} Pareto-optimal trial(s) in {pareto}"
        print(
            f"Search: {results['n_trials']} trial(s) ({counts}){best}. Results: {self.sweep_dir / study_mod.RESULTS_FILE}",
            flush=True,
        )
