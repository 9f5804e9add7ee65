"""`hydra/launcher=slurm`: hydra-submitit-launcher's SlurmLauncher, made to submit thousands of points in seconds,
in arrays that fit the site, and to come back with a result for every point even when a task dies without one.

What changes against the stock launcher (submitit still writes the pickles and batch scripts, and the job side,
`BaseSubmititLauncher.__call__` + `checkpoint`, is inherited unchanged, so requeue and resume work as before):
- No second composition at submission. Hydra's basic sweeper composes every job again before launching
  (`validate_batch_is_legal`, ~0.17 s a point: 3.5 min for 1200). The pre-launch check (`dpo_sweeps.sweep.preflight`)
  has already composed and validated every point, once per distinct set of group choices, and hands them over
  (`handoff.py`); the sweeper is handed a config loader that skips the points it checked (`_PrecheckedLoader`). The job itself still composes its config from its overrides, exactly
  as with the stock launcher.
- Completed points are skipped at submission (their status.json says completed and rerun=false): a rerun of a
  1200-point sweep with 1000 completed submits 200 array tasks. Each submitted point keeps its job number.
- The points are split into arrays that fit MaxArraySize, with `array_parallelism` kept for the whole sweep, and a
  sweep the site's job limits cannot take is refused before sbatch (`plan.py`, `site.py`).
- An sbatch error is one message naming the cause and what was and was not submitted (no traceback); arrays already
  submitted by this command are cancelled, so nothing runs half-submitted.
- Results are collected with `watch.collect`, which marks a task that ended without a result (scancel, OOM, node
  failure) failed in its point's status.json with SLURM's state and reason instead of waiting forever.

Timing of each phase (validate / prepare / sbatch) is logged. The class Hydra instantiates lives in
`hydra_plugins/dpo_sweeps_launcher/` (Hydra only loads launchers from that namespace package).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import pickle
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import attach, handoff, liveness, plan, replan, site, submitit_compat, watch

KILL_ON_BAD_EXIT = "--kill-on-bad-exit=1"
_SUBMITTING = threading.Lock()
log = logging.getLogger(__name__)

# Launcher keys only the pre-launch check reads (hydra_plugins/dpo_sweeps_launcher/slurm.py's schema): not sbatch's.
CHECK_ONLY_KEYS = ("gpu_mem_gb",)

# The submitit internals used below, checked now: a submitit that changed them fails here, naming both versions.
submitit_compat.check()


class SbatchError(RuntimeError):
    """sbatch refused (part of) the sweep."""


class _PrecheckedLoader:
    """The sweeper's config loader, except that composing a point preflight has already composed and validated
    returns at once (the sweeper only checks that it composes and discards the result)."""

    def __init__(self, real: Any, checked: set[tuple[str, ...]]):
        self._real, self._checked = real, checked

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if tuple(sweep_overrides) in self._checked:
            return master_config
        return self._real.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _objective(run_dir: str) -> float:
    value = (run_folder.read_json(Path(run_dir) / run_folder.METRICS_FILE) or {}).get("objective_value")
    return float(value) if isinstance(value, int | float) else math.nan


def _sbatch_cause(exc: BaseException) -> str:
    text = str(exc).strip()
    errors = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return "; ".join(errors[-2:]) or text.splitlines()[-1] if text else type(exc).__name__


class _PickledOnce(dict):
    """Hydra's global state (the stock launcher hands a copy to every job): pickled once, its bytes reused in every
    job's pickle, and unpickled in the job as the plain dict it was."""

    def __init__(self, state: dict):
        import cloudpickle

        super().__init__(state)
        self._blob = cloudpickle.dumps(dict(state))

    def __reduce__(self):
        return (pickle.loads, (self._blob,))


def _ids(jobs: list) -> str:
    """The array job ids, in submission order; a long list cut in the middle."""
    ids = list(dict.fromkeys(j.job_id.split("_")[0] for j in jobs))
    return ", ".join(ids) if len(ids) <= 6 else f"{', '.join(ids[:3])}, ..., {', '.join(ids[-2:])}"


class SweepSlurmLauncher(SlurmLauncher):
    """See the module docstring."""

    # Each job's pickle holds this launcher (its config, config loader, task function: ~45 KB, ~8 ms to pickle, 10 s
    # for 1200 points). While submitting, the launcher is pickled once and those bytes go into every job's pickle; the
    # job unpickles the same launcher, without the cached bytes (a requeue from the job pickles it afresh).
    def __reduce_ex__(self, protocol):
        blob = self.__dict__.get("_pickled_once")
        if blob is not None:
            return (pickle.loads, (blob,))
        return super().__reduce_ex__(protocol)

    def _pickle_once(self) -> None:
        import cloudpickle

        self.__dict__.pop("_pickled_once", None)
        self._pickled_once = cloudpickle.dumps(self)

    def __getstate__(self) -> dict[str, Any]:
        # The handoff belongs to the submitting process (see handoff.py): the jobs get the launcher without it.
        return {k: v for k, v in self.__dict__.items() if k not in ("handoff", "_pickled_once")}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.handoff = handoff.find(hydra_context.callbacks)
        checked = {tuple(p["overrides"]) for p in self.handoff.points}
        # This launcher (pickled into every job) keeps the real loader: jobs compose their own config as before.
        super().setup(
            hydra_context=HydraContext(config_loader=hydra_context.config_loader, callbacks=hydra_context.callbacks),
            task_function=task_function,
            config=config,
        )
        if checked:
            # The sweeper shares `hydra_context` with us and reads its loader when it validates a batch.
            object.__setattr__(hydra_context, "config_loader", _PrecheckedLoader(hydra_context.config_loader, checked))

    def _executor(self, **changed: Any):
        """submitit's SlurmExecutor with this launcher's parameters (and a re-plan's `changed` ones), as stock."""
        import submitit

        params = {k: v for k, v in {**self.params, **changed}.items() if k not in CHECK_ONLY_KEYS}
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in baseparams else f"slurm_{k}": v for k, v in params.items()})
        # A task that dies (a killed or crashed rank) makes srun end the job's other tasks: without it they would wait
        # in a collective for the dead peer until the collective's timeout.
        executor.update_parameters(slurm_srun_args=[KILL_ON_BAD_EXIT])
        return executor._executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        tic = time.perf_counter()
        checked = getattr(self, "handoff", None) or handoff.CheckedSweep()
        known = {tuple(p["overrides"]): p for p in checked.points}
        entries = []  # (job number, overrides, preflight's point or None)
        returns: dict[int, JobReturn] = {}
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        for i, overrides in enumerate(job_overrides):
            point = attach.point_for(sweep_dir, list(overrides), known)
            if point.get("skip"):
                returns[i] = JobReturn(
                    overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=_objective(point["run_dir"])
                )
            else:
                entries.append((initial_job_idx + i, list(overrides), point))
        # A folder a live job of an earlier or parallel invocation holds: wait for that job, never start a second.
        entries, held = attach.split_live(entries, bool(self.config.get("rerun")))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        if held:
            entries_all = [*entries, *(e for e, _ in held)]
            for num, result in zip(
                [e[0] for e in entries_all], self._launch_and_wait(entries, held, sweep_dir, checked), strict=True
            ):
                returns[num - initial_job_idx] = result
            return [returns[i] for i in range(len(job_overrides))]
        if not entries:
            log.info("All %d point(s) already completed: nothing to submit.", len(job_overrides))
            return [returns[i] for i in range(len(job_overrides))]

        t_limits = time.perf_counter()
        # A search's later trials wait out a controller restart (watch.py waits as long for the jobs it watches).
        wait_s = watch.LOST_CONTACT_S if self.__dict__.get("_submitted") else 0.0
        limits = site.read_limits_or_exit(*site.submit_identity(self.params), wait_s=wait_s)
        t_limits = time.perf_counter() - t_limits
        parallelism = int(self.params.get("array_parallelism") or 1)
        try:
            plan.check_fits(len(entries), limits, total_points=len(job_overrides))
        except plan.SweepTooLargeError as err:
            raise SystemExit(f"Error: {err}") from None
        plans = plan.split(len(entries), limits.max_tasks_per_array, parallelism)
        log.info("%s", plan.describe(plans, limits, parallelism, skipped=len(returns)))
        jobs, timing = self._submit(entries, plans)
        self._submitted = True
        timing["limits"] += t_limits
        log.info(
            "Submitted %d point(s) in %d SLURM array job(s) (%s) in %.2f s: validate %.2f s (preflight), prepare "
            "%.2f s (limits %.2f s, pickles %.2f s), sbatch %.2f s; %d completed point(s) skipped.",
            len(entries),
            len(plans),
            _ids(jobs),
            checked.seconds + time.perf_counter() - tic,
            checked.seconds,
            timing["limits"] + timing["pickles"],
            timing["limits"],
            timing["pickles"],
            timing["sbatch"],
            len(returns),
        )
        collected = self._collect(entries, jobs, [], sweep_dir, checked)
        collected = replan.resubmit_until_settled(self, entries, jobs, collected, sweep_dir, checked)
        for (num, _, _), result in zip(entries, collected, strict=True):
            returns[num - initial_job_idx] = result
        return [returns[i] for i in range(len(job_overrides))]

    def _launch_and_wait(self, entries: list, held: list, sweep_dir: Path, checked: Any) -> list[JobReturn]:
        """Submit `entries` (if any), wait for them and for the live jobs that hold the `held` points' folders; the
        results in the order of `entries` then `held`."""
        jobs: list = []
        if entries:
            wait_s = watch.LOST_CONTACT_S if self.__dict__.get("_submitted") else 0.0
            limits = site.read_limits_or_exit(*site.submit_identity(self.params), wait_s=wait_s)
            parallelism = int(self.params.get("array_parallelism") or 1)
            plans = plan.split(len(entries), limits.max_tasks_per_array, parallelism)
            log.info("%s", plan.describe(plans, limits, parallelism, skipped=0))
            jobs, _ = self._submit(entries, plans)
            self._submitted = True
            log.info(
                "Submitted %d point(s) (%s); waiting for %d held by live jobs.", len(entries), _ids(jobs), len(held)
            )
        collected = self._collect(entries, jobs, held, sweep_dir, checked)
        ours = replan.resubmit_until_settled(self, entries, jobs, collected[: len(entries)], sweep_dir, checked)
        return [*ours, *collected[len(entries) :]]

    def _collect(self, entries: list, jobs: list, held: list, sweep_dir: Path, checked: Any) -> list[JobReturn]:
        """Claim the submitted points' folders, then wait for every task (ours, and the holders of `held` points);
        results in the order of `entries` then `held`."""
        held = list(held)
        lost = attach.claim_submitted(entries, jobs)
        order = [*entries, *(e for e, _ in held)]
        watched = [(e, j) for i, (e, j) in enumerate(zip(entries, jobs, strict=True)) if i not in lost]
        held += [(entries[i], h) for i, h in lost.items()]
        folder = self._executor().folder
        elsewhere = []  # held by a job that is not a SLURM task (a local process): wait until it lets go
        for entry, holder in held:
            job = attach.holder_job(folder, holder)
            if job is None:
                elsewhere.append(entry)
            else:
                watched.append((entry, job))
        _record_job_ids(sweep_dir, [e for e, _ in watched], [j for _, j in watched])
        collected = watch.collect(
            [j for _, j in watched],
            [e[2] for e, _ in watched],
            [e[1] for e, _ in watched],
            on_task_states=checked.on_task_states,
        )
        results = {id(e): r for (e, _), r in zip(watched, collected, strict=True)}
        # A task of ours that found its folder taken (it started no training there): wait for the job that holds it.
        late = [e for e, j in watched if liveness.other_live_holder(e[2]["run_dir"], j.job_id)]
        liveness.wait_released([e[2]["run_dir"] for e in [*elsewhere, *late]])
        for entry in [*elsewhere, *late]:
            results[id(entry)] = JobReturn(
                overrides=entry[1], status=JobStatus.COMPLETED, _return_value=_objective(entry[2]["run_dir"])
            )
        return [results[id(e)] for e in order]

    def _submit(self, entries: list, plans: list[plan.ArrayPlan], **changed: Any) -> tuple[list, dict[str, float]]:
        """One sbatch per planned array; on any error cancel what this call submitted and exit with one message.
        `changed`: launcher parameters of a re-plan (mem_gb)."""
        # One submission at a time: the search's driver launches each trial from a thread of its own
        # (search/inflight.py), and the launcher's pickled-once bytes are per submission.
        with _SUBMITTING:
            tic = time.perf_counter()
            base = self._executor(**changed)
            # One copy of Hydra's global state for every point (the stock launcher takes one per point; the same).
            state = _PickledOnce(Singleton.get_state())
            self._pickle_once()
            timing = {"limits": 0.0, "pickles": time.perf_counter() - tic, "sbatch": 0.0}
            try:
                return self._submit_arrays(entries, plans, base, state, timing)
            finally:
                self.__dict__.pop("_pickled_once", None)

    def _submit_arrays(
        self, entries: list, plans: list[plan.ArrayPlan], base: Any, state: dict, timing: dict[str, float]
    ) -> tuple[list, dict[str, float]]:
        from submitit.core import utils
        from submitit.slurm.slurm import SlurmExecutor, SlurmJob

        jobs: list = []
        array_ids: list[str] = []
        for index, p in enumerate(plans):
            chunk = entries[p.start : p.stop]
            executor = SlurmExecutor(base.folder, base.max_num_timeout, python=base.python)
            executor.update_parameters(**base.parameters)
            extra = dict(executor.parameters.get("additional_parameters") or {})
            if p.after is not None:
                extra["dependency"] = f"afterany:{array_ids[p.after]}"
            executor.parameters.update(additional_parameters=extra, array_parallelism=p.parallelism)
            t0 = time.perf_counter()
            submissions = []
            for num, overrides, _ in chunk:
                log.debug("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
                submissions.append(
                    utils.DelayedSubmission(self, overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", state)
                )
            folder = utils.JobPaths.get_first_id_independent_folder(executor.folder)
            folder.mkdir(parents=True, exist_ok=True)
            pickles = []
            for d in submissions:
                d.set_timeout(executor.parameters.get("time", 5), executor.max_num_timeout)
                path = folder / f"{os.urandom(16).hex()}.pkl"
                d.dump(path)
                pickles.append(path)
            timing["pickles"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we report it once
                    if len(chunk) == 1 and len(plans) == 1:
                        # One point: a plain job, as the stock launcher submits it.
                        new = SlurmExecutor._internal_process_submissions(executor, submissions)
                        pickles[0].unlink(missing_ok=True)
                    else:
                        executor.parameters["map_count"] = len(chunk)
                        first = executor._submit_command(executor._submitit_command_str)
                        tasks = list(range(first.num_tasks))
                        new = [
                            SlurmJob(folder=executor.folder, job_id=f"{first.job_id}_{a}", tasks=tasks)
                            for a in range(len(chunk))
                        ]
                        for job, path in zip(new, pickles, strict=True):
                            job.paths.move_temporary_file(path, "submitted_pickle")
            except Exception as exc:
                for path in pickles:
                    path.unlink(missing_ok=True)
                raise SystemExit(self._sbatch_failure(exc, index, plans, entries, array_ids)) from None
            timing["sbatch"] += time.perf_counter() - t0
            array_ids.append(new[0].job_id.split("_")[0])
            jobs.extend(new)
        return jobs, timing

    @staticmethod
    def _sbatch_failure(exc: BaseException, index: int, plans: list, entries: list, array_ids: list[str]) -> str:
        p = plans[index]
        first, last = entries[p.start][0], entries[p.stop - 1][0]
        lines = [
            f"Error: sbatch refused array job {index + 1} of {len(plans)} (sweep points #{first}..#{last}, {p.size} "
            f"task(s)): {_sbatch_cause(exc)}"
        ]
        if array_ids:
            cancelled = subprocess.run(
                ["scancel", *array_ids], capture_output=True, text=True, timeout=site.COMMAND_TIMEOUT_S, check=False
            )
            done = "cancelled" if cancelled.returncode == 0 else f"could NOT be cancelled ({cancelled.stderr.strip()})"
            lines.append(
                f"The {len(array_ids)} array job(s) this command had already submitted ({', '.join(array_ids)}, "
                f"{p.start} point(s)) were {done}, so nothing of this sweep runs."
            )
        left = len(entries) - p.start
        lines.append(
            f"{'The other' if array_ids else 'Nothing was submitted:'} {left} point(s) {'were ' if array_ids else ''}"
            "not submitted. Fix the cause above and run the same command again (completed points are skipped)."
        )
        return "\n".join(lines)


def _record_job_ids(sweep_dir: Path, entries: list, jobs: list) -> None:
    """Each submitted point's SLURM task id ("<array>_<task>") into sweep_points.json, for `dpo_sweeps.status`:
    with a sweep split into several arrays, or a rerun that submits only some points, submitit's folder names alone
    cannot say which task is which point."""

    def change(points: list[dict] | None) -> list[dict] | None:
        if not points:
            return None
        by_overrides = {tuple(p["overrides"]): p for p in points}
        for (_, overrides, _), job in zip(entries, jobs, strict=True):
            point = by_overrides.get(tuple(overrides))
            if point is not None:
                point["slurm_job_id"] = job.job_id
        return points

    run_folder.update_sweep_points(sweep_dir, change)
