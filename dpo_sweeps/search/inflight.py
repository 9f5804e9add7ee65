"""Trials in flight: up to `n_jobs` trials run at once, and as soon as one ends the driver is told and may start the
next, instead of `launch()` waiting for a whole batch (a pruned trial's slot would stay idle until the slowest trial
of its batch ended).

`run(launcher, at_most, next_point, on_result)` drives any Hydra launcher this way:
- `next_point()` gives the next trial to start as (overrides, job number, key, run folder), or None for "nothing to
  start now" (the study is full, or the search stopped); `on_result(key, JobReturn)` is called, in this thread, as each
  trial ends, and `next_point` is asked again at once. It returns when nothing runs and nothing is to start.
- `local_parallel` (our `ParallelLocalLauncher`): its own `launch_stream`, a process per trial, in this thread; Ctrl-C,
  SIGTERM and SIGHUP stop the running trials and record them cancelled, as for a grid sweep.
- Hydra's in-process launchers (`local`): one trial after another in this process, whatever n_jobs says.
- any other launcher (our SLURM launcher, submitit_local, another make): each trial is one `launch([overrides])` in a
  thread of its own (with ours: one SLURM job per trial, a task that dies without a result recorded as for a grid);
  each thread polls its job (squeue every 2 s with ours), so keep n_jobs modest (tens, not thousands). The study is
  only asked and told in the driver's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn

log = logging.getLogger(__name__)

# (overrides, job number, key, run folder or None)
Point = tuple[list[str], int, Any, str | None]
NextPoint = Callable[[], Point | None]
OnResult = Callable[[Any, JobReturn], None]

# How often the waiting thread wakes up (so that Ctrl-C reaches it while no trial ends).
WAKE_S = 0.5


def in_process(launcher: Any) -> bool:
    """A launcher that runs its points in this process (one at a time: two trainings cannot share it)."""
    return isinstance(launcher, BasicLauncher)


def run(launcher: Any, at_most: int, next_point: NextPoint, on_result: OnResult) -> None:
    """See the module doc."""
    stream = getattr(launcher, "launch_stream", None)
    if stream is not None:
        stream(next_point, on_result, at_most)
    elif in_process(launcher):
        _one_at_a_time(launcher, next_point, on_result)
    else:
        _threaded(lambda p: p, lambda p: launcher.launch([p[0]], p[1])[0], at_most, next_point, on_result)


def _one_at_a_time(launcher: Any, next_point: NextPoint, on_result: OnResult) -> None:
    while (point := next_point()) is not None:
        overrides, num, key, _ = point
        on_result(key, launcher.launch([overrides], initial_job_idx=num)[0])


def _threaded(
    submit: Callable[[Point], Any],
    wait: Callable[[Any], JobReturn],
    at_most: int,
    next_point: NextPoint,
    on_result: OnResult,
) -> None:
    """`submit` in this thread, `wait` in a daemon thread per trial; results come back here through a queue. A wait
    that raises is raised here. On Ctrl-C the waiting threads die with the process; the jobs themselves keep running
    on the cluster (as for a grid sweep), and running the command again picks them up."""
    ended: queue.Queue = queue.Queue()
    running = 0
    exhausted = False

    def waiter(key: Any, handle: Any) -> None:
        try:
            ended.put((key, wait(handle), None))
        except BaseException as exc:  # noqa: BLE001  (handed to the driver's thread, raised there)
            ended.put((key, None, exc))

    while True:
        while not exhausted and running < at_most:
            point = next_point()
            if point is None:
                exhausted = True
                break
            handle = submit(point)
            threading.Thread(target=waiter, args=(point[2], handle), name=f"trial-{point[1]}", daemon=True).start()
            running += 1
        if not running:
            return
        try:
            key, result, error = ended.get(timeout=WAKE_S)
        except queue.Empty:
            continue
        running -= 1
        if error is not None:
            raise error
        on_result(key, result)
        exhausted = False  # a trial ended: the driver may have another one now
