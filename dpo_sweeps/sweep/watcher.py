"""The submitting console's one line per point as it starts and ends, for launchers whose points run in other
processes (submitit local, SLURM). States come from `dpo_sweeps.status.collect`: the run folders, merged with SLURM's
word through `slurm.client`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.status import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PRUNED,
    REQUEUED,
    RUNNING,
    SLURM_CALL_TIMEOUT_S,
    PointStatus,
    collect,
)


class SweepWatcher:
    """For launchers that run points in other processes (submitit local, SLURM): prints a point's line when it starts
    and when it ends, from the submitting process.

    Two ways to learn what changed, never both: `fed=True` (our SLURM launcher) takes the SLURM states the launcher's
    own `squeue` poll hands over (`feed`), so the submitting process runs one poller; otherwise a daemon thread reads
    the run folders every `interval_s` (and asks squeue itself when `query_slurm`, for a SLURM launcher of another
    make)."""

    def __init__(
        self,
        sweep_dir: Path,
        interval_s: float = 5.0,
        stream=None,
        fed: bool = False,
        query_slurm: bool = False,
        expected: int | None = None,
    ):
        self.sweep_dir, self.interval_s, self.stream = sweep_dir, interval_s, stream or sys.stdout
        self.fed, self.query_slurm = fed, query_slurm
        # A search's n_trials: its folders appear one trial at a time, so their count would say [2/2], [3/3].
        self.expected = expected or 0
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="dpo-sweeps-watcher", daemon=True)

    def start(self) -> SweepWatcher:
        # What the folders hold before this invocation (a previous attempt's failure) is not news.
        self.seen = {p.name: p.state for p in collect(self.sweep_dir, query_slurm=False)}
        if not self.fed:
            self._thread.start()
        return self

    def feed(self, task_states: dict[str, tuple[str, str]]) -> None:
        """The launcher's poll: SLURM's states of the sweep's tasks, as `slurm.client.queue_states` gives them."""
        try:
            self.poll(task_states)
        except Exception as exc:  # a status glitch must never take the sweep down
            print(f"(sweep status unavailable: {type(exc).__name__}: {exc})", file=self.stream, flush=True)

    def stop(self) -> None:
        """Stop polling and print what changed since the last poll (the sweep is over: no more lines after this)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + SLURM_CALL_TIMEOUT_S * 2)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # a status glitch must never take the sweep down
                print(f"(sweep status unavailable: {type(exc).__name__}: {exc})", file=self.stream, flush=True)

    def poll(self, task_states: dict[str, tuple[str, str]] | None = None) -> None:
        points = collect(self.sweep_dir, query_slurm=self.query_slurm, task_states=task_states)
        with self._lock:  # the final poll (stop) and a late feed must not print a line twice
            for i, p in enumerate(points):
                before = self.seen.get(p.name)
                if before == p.state:
                    continue
                self.seen[p.name] = p.state
                line = self.transition(before, p)
                if line:
                    total = max(len(points), self.expected)
                    print(console.point_line(i, total, p.name, *line), file=self.stream, flush=True)

    @staticmethod
    def transition(before: str | None, p: PointStatus) -> tuple[str, str] | None:
        job = f"SLURM job {p.job_id}" if p.job_id else ""
        if p.state == RUNNING and before != RUNNING:
            return ("started", f"({job})" if job else "")
        if p.state == REQUEUED:
            return ("requeued", p.reason or "")
        if p.state == COMPLETED and before is not None:
            final = run_folder.read_json(Path(p.run_dir) / run_folder.METRICS_FILE) or {}
            acc = final.get("eval_rewards/accuracies")
            acc = f", eval reward acc {acc:.3f}" if isinstance(acc, int | float) else ""
            return ("completed", f"in {console.duration(p.elapsed_s)}{acc}")
        if p.state in (FAILED, CANCELLED):
            return (p.state, (p.reason or "").splitlines()[0][:200] if p.reason else "")
        if p.state == PRUNED and before is not None:  # a search trial its pruner stopped: "at step N (metric=v)"
            return (p.state, (p.reason or "").removeprefix("pruned "))
        return None
