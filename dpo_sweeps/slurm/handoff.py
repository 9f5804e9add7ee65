"""What the pre-launch check hands the SLURM launcher, as an explicit object rather than a module global.

Hydra runs the `on_multirun_start` callbacks before it creates the sweeper and its launcher, and gives the launcher
the same callback objects (`hydra_context.callbacks`). The sweep's callback (`dpo_sweeps.sweep.callbacks`) keeps the
check's result in its `handoff` attribute; the launcher finds it there:

- `points`: every point composed and validated, with its run folder and whether it is skipped (already completed), so
  the launcher neither composes the sweep a second time nor submits completed points;
- `seconds`: how long the check took (the launcher's timing line);
- `on_task_states`: where the launcher's one `squeue` poll per interval is also delivered (the submitting console's
  per-point lines), so a submitting process runs one poller, not two.

Neither the callback's handoff nor the launcher's copy is pickled into the jobs: it belongs to the submitting process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# {task id: (SLURM state, reason)} as `client.queue_states` returns it.
TaskStates = dict[str, tuple[str, str]]


@dataclass
class CheckedSweep:
    points: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    on_task_states: Callable[[TaskStates], None] | None = None


def find(callbacks: Any) -> CheckedSweep:
    """The handoff among Hydra's callbacks (a `hydra._internal.callbacks.Callbacks`), or an empty one: a launcher used
    without our callback (or a sweeper that creates no points up front) submits every point it is given."""
    for callback in getattr(callbacks, "callbacks", None) or []:
        handoff = getattr(callback, "handoff", None)
        if isinstance(handoff, CheckedSweep):
            return handoff
    return CheckedSweep()
