"""The training side of the console: `RunProgress`, the callback that replaces HF's console output, and progress.json.

Imported inside the job only (it needs transformers). The display itself lives in `console.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder


class RunProgress(TrainerCallback):
    """The run's progress display (console.RichDisplay on a terminal, console.PlainDisplay elsewhere) and its
    progress.json, written atomically at every logging step (cheap: a few hundred bytes) for `dpo_sweeps.status`."""

    def __init__(self, run_dir: Path | None, label: str = "", interactive: bool | None = None, display=None):
        self.run_dir = run_dir
        self.display = display or (
            console.RichDisplay(label)
            if (console.interactive() if interactive is None else interactive)
            else console.PlainDisplay(label)
        )
        self.max_steps = 0
        self.start_step = 0
        self.started_at: float | None = None
        self.loss = self.reward_accuracy = None
        self.training = False

    # -- progress.json
    def _write(self, step: int) -> None:
        if self.run_dir is None:
            return
        run_folder.write_json_atomic(
            self.run_dir / run_folder.PROGRESS_FILE,
            {
                "step": step,
                "max_steps": self.max_steps,
                "start_step": self.start_step,
                "loss": self.loss,
                "reward_accuracy": self.reward_accuracy,
                "started_at": self.started_at,
                "updated_at": time.time(),
            },
        )

    def _eta(self, step: int) -> float | None:
        done = step - self.start_step
        if not self.started_at or done <= 0:
            return None
        return (self.max_steps - step) * (time.time() - self.started_at) / done

    def _metrics_text(self) -> str:
        return f"loss {console.fmt(self.loss)}  reward acc {console.fmt(self.reward_accuracy, 3)}"

    def _line(self, step: int) -> str:
        elapsed = time.time() - self.started_at if self.started_at else None
        return (
            f"step {step}/{self.max_steps}  {self._metrics_text()}  "
            f"elapsed {console.duration(elapsed)}  eta {console.duration(self._eta(step))}"
        )

    # -- TrainerCallback events
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.max_steps, self.start_step, self.started_at = state.max_steps, state.global_step, time.time()
        self.training = True
        if self.start_step:
            self.display.print(f"resuming at step {self.start_step}/{self.max_steps}")
        self.display.start(self.max_steps)
        self._write(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._update(state.global_step)

    def _update(self, step: int, final: bool = False, logged: bool = False) -> None:
        self.display.update(step, line=self._line(step), metrics=self._metrics_text(), final=final, logged=logged)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs and isinstance(logs["loss"], int | float):
            self.loss = float(logs["loss"])
            acc = logs.get("rewards/accuracies")
            self.reward_accuracy = float(acc) if isinstance(acc, int | float) else self.reward_accuracy
            self._write(state.global_step)
            self._update(state.global_step, logged=True)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            self.display.print(console.eval_line(metrics, state.global_step, before_training=not state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.training:
            return
        self.training = False
        step = state.global_step
        self._update(step, final=True)
        self.display.stop()
        spent = time.time() - (self.started_at or time.time())
        rate = (step - self.start_step) / spent if spent > 0 else 0.0
        self.display.print(
            f"trained {step - self.start_step} step(s) to {step}/{self.max_steps} in {console.duration(spent)} "
            f"({rate:.2f} steps/s), last {self._metrics_text()}"
        )
        self._write(step)


def install(trainer, run_dir: Path | None, label: str = "") -> RunProgress:
    """Swap HF's console callbacks for ours on an already built trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    callback = RunProgress(run_dir if trainer.is_world_process_zero() else None, label=label)
    trainer.add_callback(callback)
    return callback
