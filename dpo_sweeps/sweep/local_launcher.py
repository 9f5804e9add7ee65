"""`hydra/launcher=local_parallel`: the points of a sweep as processes on this machine, several at once (and
`hydra/launcher=local`, Hydra's basic launcher under our name: one point after another in this process).

hydra-submitit-launcher's LocalLauncher starts every point of a sweep at once (submitit's local executor has no
limit), whatever their number and size. This subclass keeps `max_parallel` points running and starts the next as one
ends, and tells each point how many run at once (`DPO_SWEEPS_POINTS_AT_ONCE` in its environment), so that
`training.cpu_threads: null` gives each point its share of the cores (`train/cluster.py: cpu_threads`).

How many at once (`points_at_once`): `max_parallel` when set; else, when the profile says how much memory a point
needs (`mem_gb`), as many as this machine's available memory holds, at most twice its cores (one thread each: the OS
shares two cores between three single-threaded points with little loss, while two at a time would leave a core idle
for the third point's whole run); else one per core.

The job side (`BaseSubmititLauncher.__call__`) is inherited unchanged: each point runs `sweep/job.py` in its own
process, with its output in the sweep's `.submitit/` folder, and the submitting console gets one line per point from
the sweep's watcher (`sweep/watcher.py`). A point whose process dies without a result (killed, out of memory) is
recorded as failed in its status.json and the other points go on. Ctrl-C stops the running points, and so do a
`kill` (SIGTERM) and a closed terminal (SIGHUP): a point left running without the process that watches it would train
on unseen, and a rerun would find its folder busy.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import attach, handoff, liveness, replan
from dpo_sweeps.sweep import racing
from dpo_sweeps.train.cluster import POINTS_AT_ONCE_ENV, available_cores

log = logging.getLogger(__name__)

POLL_S = 0.5
# At most this many points per core at once when memory allows more (see the module doc).
MAX_POINTS_PER_CORE = 2


def available_memory_gb() -> float | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def points_at_once(
    n_points: int,
    max_parallel: int | None,
    mem_gb: float | None,
    cores: int | None = None,
    memory_gb: float | None = None,
) -> int:
    """How many of `n_points` run at once (see the module doc)."""
    if n_points <= 0:
        return 0
    if max_parallel:
        return max(1, min(n_points, int(max_parallel)))
    cores = cores or available_cores()
    if mem_gb:
        memory_gb = memory_gb if memory_gb is not None else available_memory_gb()
        if memory_gb is not None:
            fit = max(1, int(memory_gb // float(mem_gb)))
            return max(1, min(n_points, MAX_POINTS_PER_CORE * cores, fit))
    return max(1, min(n_points, cores))


def _stop_like_ctrl_c() -> dict[int, Any]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the points run (Python's default for them ends the process
    without running `finally`, leaving the points' processes training on); returns the handlers to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    stops = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script (`cmd &` ignores SIGINT): the points' processes would inherit the
        # ignored SIGINT, and SIGINT is how submitit stops them.
        stops.append(signal.SIGINT)
    return {sig: signal.signal(sig, interrupt) for sig in stops}


def _stop(jobs: Any, grace_s: float = 10.0) -> None:
    """Stop the points' processes: submitit's cancel (SIGINT to each point's controller, which stops its task and
    kills it a second later), then wait for them, so that the sweep's process ends after its points."""
    jobs = list(jobs)
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + grace_s
    while any(not job.done() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)  # still up after the grace: it was signalled, nothing more to do here


def _record_stopped(run_dir: str | None, why: str) -> None:
    """A point stopped with the sweep: `cancelled` (not a failure of the run; a rerun resumes it)."""
    if not run_dir:
        return
    if (run_folder.read_status(run_dir) or {}).get("state") in (run_folder.RUNNING, None):
        run_folder.update_status(
            run_dir,
            state=run_folder.CANCELLED,
            ended_at=run_folder.now_iso(),
            error=f"stopped with the sweep ({why} to its process); run the sweep again to resume it",
        )


def _folder_return(overrides: list[str], run_dir: str) -> JobReturn:
    """A point another invocation's job ran: its objective as its folder recorded it (NaN if none)."""
    value = (run_folder.read_json(Path(run_dir) / run_folder.METRICS_FILE) or {}).get("objective_value")
    value = float(value) if isinstance(value, int | float) else math.nan
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value)


def _failed_return(overrides: list[str], error: str) -> JobReturn:
    """NaN, not an exception, for a point without a result (Hydra's basic sweeper aborts the sweep on one, see
    sweep/job.py); its status.json says failed and why, which the search's driver reads (as slurm/watch.py does)."""
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=math.nan)


class SequentialLauncher(BasicLauncher):
    """`hydra/launcher=local`: Hydra's basic launcher (every point in this process, one after another). Takes the
    parallel launcher's keys and ignores them, so that a preset written for `local_parallel` (experiment=demo) also
    runs here."""

    def __init__(self, max_parallel: int | None = None, mem_gb: float | None = None) -> None:
        super().__init__()
        self.handoff: handoff.CheckedSweep | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.handoff = handoff.find(hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # With racing, the seeds in waves, each launched as a sweep of its own (sweep/racing.py).
        return racing.launch(self, job_overrides, initial_job_idx, self._launch_batch)

    def _launch_batch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """As Hydra's, except that a point whose folder a live job of another invocation holds is waited for and
        its result taken from its folder, not run a second time here (the job would refuse the folder), and a point
        that died of memory runs again with a plan that fits (slurm/replan.py)."""
        results = list(self._launch(job_overrides, initial_job_idx))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        known = {tuple(p["overrides"]): p for p in (self.handoff.points if self.handoff else [])}
        todo = list(range(len(job_overrides)))
        while todo:
            todo = [
                i
                for i in todo
                if replan.decide(
                    attach.point_for(sweep_dir, list(job_overrides[i]), known)["run_dir"], None, self.config
                )
            ]
            for i in todo:
                results[i] = super().launch([job_overrides[i]], initial_job_idx + i)[0]
        return results

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        known = {tuple(p["overrides"]): p for p in (self.handoff.points if self.handoff else [])}
        points = [attach.point_for(sweep_dir, list(o), known) for o in job_overrides]
        start, held = attach.split_live(list(enumerate(points)), bool(self.config.get("rerun")))
        if not held:
            return super().launch(job_overrides, initial_job_idx)
        liveness.wait_released([point["run_dir"] for (_, point), _ in held])
        results: dict[int, JobReturn] = {
            i: _folder_return(list(job_overrides[i]), point["run_dir"]) for (i, point), _ in held
        }
        for i, _ in start:  # one at a time, each with its own job number
            results[i] = super().launch([job_overrides[i]], initial_job_idx + i)[0]
        return [results[i] for i in range(len(job_overrides))]


class ParallelLocalLauncher(LocalLauncher):
    """See the module doc."""

    def __init__(self, max_parallel: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        if max_parallel is not None and int(max_parallel) < 1:
            raise SystemExit(
                f"Error: hydra.launcher.max_parallel={max_parallel}: must be >= 1, or null for as many points as "
                "the cores (and hydra.launcher.mem_gb, when set) allow."
            )
        self.max_parallel = max_parallel
        self.handoff: handoff.CheckedSweep | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The pre-launch check's result belongs to the submitting process (slurm/handoff.py).
        return {k: v for k, v in self.__dict__.items() if k != "handoff"}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.handoff = handoff.find(hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _executor(self):
        """submitit's LocalExecutor with this launcher's parameters, mapped as the stock launcher maps them."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="local",
            folder=params.pop("submitit_folder"),
            local_max_num_timeout=params.pop("max_num_timeout", 3),
        )
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in baseparams else f"local_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # With racing, the seeds in waves, each launched as a sweep of its own (sweep/racing.py).
        return racing.launch(self, job_overrides, initial_job_idx, self._launch_batch)

    def _launch_batch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Completed points (the pre-launch check read their status.json) start no process: their result is known.
        done = {tuple(p["overrides"]): p["run_dir"] for p in (self.handoff.points if self.handoff else []) if p["skip"]}
        results: list[JobReturn | None] = [
            _folder_return(list(o), done[tuple(o)]) if tuple(o) in done else None for o in job_overrides
        ]
        waiting = [(list(o), initial_job_idx + i, i, None) for i, o in enumerate(job_overrides) if tuple(o) not in done]

        def on_result(i: int, result: JobReturn) -> None:
            results[i] = result

        self.launch_stream(
            lambda: waiting.pop(0) if waiting else None,
            on_result,
            max(1, len(waiting)),
            not_started=lambda: len(waiting),
        )
        return [r for r in results if r is not None]

    def launch_stream(
        self,
        next_point: Callable[[], tuple[list[str], int, Any, str | None] | None],
        on_result: Callable[[Any, JobReturn], None],
        at_most: int,
        not_started: Callable[[], int] | None = None,
    ) -> None:
        """Keep up to `at_most` points running (fewer when `points_at_once` says so): `next_point()` gives the next
        (overrides, job number, key, run folder or None = the pre-launch check's), None for "nothing to start now";
        `on_result(key, JobReturn)` is called as each point ends, and `next_point` is asked again at once. Returns when
        nothing runs and nothing is to start. A sweep passes its whole list (`launch`); the search's driver asks and
        tells its trials through it (search/inflight.py)."""
        assert self.config is not None
        at_once = points_at_once(at_most, self.max_parallel, self.params.get("mem_gb"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(
            "Running %s point(s) as local processes, %d at once on %d core(s) (logs: %s)",
            at_most if not_started is not None else "the",
            at_once,
            available_cores(),
            sweep_dir / ".submitit",
        )
        known = {tuple(p["overrides"]): p for p in (self.handoff.points if self.handoff else [])}
        rerun = bool(self.config.get("rerun"))
        executor = self._executor()
        state = Singleton.get_state()
        running: dict[Any, tuple[Any, list[str], str]] = {}  # key -> (submitit job, overrides, run folder)
        nums: dict[Any, int] = {}  # key -> job number
        exhausted = False
        stop_signals = _stop_like_ctrl_c()
        previous = os.environ.get(POINTS_AT_ONCE_ENV)
        # The points' processes inherit this process's environment when they start (submitit's start_controller).
        os.environ[POINTS_AT_ONCE_ENV] = str(at_once)
        try:
            while True:
                while not exhausted and len(running) < at_once:
                    point = next_point()
                    if point is None:
                        exhausted = True
                        break
                    overrides, num, key, run_dir = point
                    found = attach.point_for(sweep_dir, overrides, known)
                    found = {**found, "run_dir": run_dir} if run_dir else found
                    # A folder a live job of an earlier or parallel invocation holds: waited for, never started twice.
                    if attach.split_live([(key, found)], rerun)[1]:
                        liveness.wait_released([found["run_dir"]])
                        on_result(key, _folder_return(overrides, found["run_dir"]))
                        continue
                    log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
                    job = executor.submit(self, list(overrides), "hydra.sweep.dir", num, "", state)
                    running[key] = (job, overrides, found["run_dir"])
                    nums[key] = num
                if not running:
                    break
                ended = [key for key, (job, _, _) in running.items() if job.done()]
                for key in ended:
                    job, overrides, run_dir = running.pop(key)
                    if liveness.other_live_holder(run_dir) is not None:
                        # It found its folder taken by a job started meanwhile (it did not start there): wait for that.
                        liveness.wait_released([run_dir])
                        on_result(key, _folder_return(overrides, run_dir))
                    elif replan.decide(run_dir, job.paths.stderr, self.config):
                        # It died of memory: again, into its own folder, with the plan that fits (slurm/replan.py).
                        job = executor.submit(self, list(overrides), "hydra.sweep.dir", nums[key], "", state)
                        running[key] = (job, overrides, run_dir)
                    else:
                        on_result(key, self._result(job, overrides, run_dir))
                    exhausted = False  # a point ended: the caller may have another one now
                if not ended:
                    time.sleep(POLL_S)
        except KeyboardInterrupt as stop:
            # Hydra would print a traceback: stop the points, record them, say how to go on.
            stopped = [run_dir for _, _, run_dir in running.values()]
            _stop(job for job, _, _ in running.values())
            running.clear()
            for run_dir in stopped:
                _record_stopped(run_dir, str(stop) or "SIGINT")
            left = f", {not_started()} not started" if not_started is not None else ""
            print(
                f"Stopped ({stop or 'Ctrl-C'}): {len(stopped)} running point(s) stopped and recorded as cancelled"
                f"{left}. Run the same command again to go on (completed points are skipped, stopped ones resume from "
                "their last checkpoint, if they saved one).",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        finally:
            _stop(job for job, _, _ in running.values())  # an error here: no point keeps running unwatched
            for sig, handler in stop_signals.items():
                signal.signal(sig, handler)
            if previous is None:
                os.environ.pop(POINTS_AT_ONCE_ENV, None)
            else:
                os.environ[POINTS_AT_ONCE_ENV] = previous

    @staticmethod
    def _result(job: Any, overrides: list[str], run_dir: str | None) -> JobReturn:
        """The JobReturn the point's process pickled; a process that died without one is a failed point."""
        try:
            return job.results()[0]
        except Exception as exc:
            return _died(job, exc, overrides, run_dir)


def _died(job: Any, exc: Exception, overrides: list[str], run_dir: str | None) -> JobReturn:
    """A point whose process ended without its result (killed, out of memory, `os._exit` in a library or a callback
    after our task function returned): failed, as stock submitit_local fails the sweep (exit 1), even when the run had
    recorded `completed` (what happened after that point is unknown; its files are kept)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    error = (
        f"the point's process (local job {job.job_id}) ended without a result ({first}). Killed outright, out of "
        f"memory, or a crash outside the training code? Its log: the sweep's .submitit/{job.job_id}/ folder."
    )
    state = (run_folder.read_status(run_dir) or {}).get("state") if run_dir else None
    # A failure the job recorded itself says more: kept. A folder another live job holds is that job's to record.
    if run_dir and state != run_folder.FAILED and liveness.other_live_holder(run_dir) is None:
        if state == run_folder.COMPLETED:
            error += " Its run had recorded completed before the process died; run the sweep again to train it again."
        run_folder.update_status(run_dir, state=run_folder.FAILED, ended_at=run_folder.now_iso(), error=error)
    log.error("Point %s: %s", run_dir or " ".join(overrides), error)
    return _failed_return(overrides, error)
