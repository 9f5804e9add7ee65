"""A Hydra callback that holds a point's training at a step until the test says go (test code only), so that a fault
strikes at a chosen moment whatever the machine's speed: on a quiet machine the tiny model's 30 steps take seconds,
and a test that polls for "past the first checkpoint" and then fills the disk or kills the node would race the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

PAUSED_FILE = "paused_at_step"
MAX_PAUSE_S = 900.0


class PauseAtStep(Callback):
    """The first training step at optimizer step `step` or later waits until the file `release` exists (once per
    process: a resumed run past `release` does not wait); while it waits, the run folder holds `paused_at_step` with the
    step, so a test knows the run is there (every checkpoint before `step` is complete by then)."""

    def __init__(self, step: int, release: str) -> None:
        self.step, self.release = int(step), Path(release)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        import trl

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        original = trl.DPOTrainer.training_step
        step, release = self.step, self.release
        waited = []

        def training_step(trainer, *args, **kwargs):
            if not waited and trainer.state.global_step >= step:
                waited.append(True)
                (run_dir / PAUSED_FILE).write_text(str(trainer.state.global_step))
                deadline = time.monotonic() + MAX_PAUSE_S
                while not release.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
            return original(trainer, *args, **kwargs)

        trl.DPOTrainer.training_step = training_step


def overrides(step: int, release: Path) -> list[str]:
    """The command-line overrides that install the pause."""
    return [
        "+hydra.callbacks.pause._target_=hydra_apps.pause.PauseAtStep",
        f"+hydra.callbacks.pause.step={step}",
        f"+hydra.callbacks.pause.release={release}",
    ]
