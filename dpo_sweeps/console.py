"""What a person sees while a run trains: one progress display, one line per evaluation, no log dumps.

- `quiet_libraries()` (before the heavy imports): no tokenizer/datasets/download progress bars, FutureWarnings from
  the libraries filtered (they address library authors, not users), bitsandbytes' CPU-kernel notice dropped.
- `install(trainer, run_dir)`: HF's PrinterCallback (a raw dict per logging step) and tqdm ProgressCallback go;
  `RunProgress` takes their place. On a terminal it draws one rich progress bar (step/max, loss, reward accuracy,
  ETA); elsewhere (a SLURM log file, CI) it prints a plain line every 10% of the steps or every 5 minutes, whichever
  comes first, so a log file holds a readable history rather than a redraw storm. Either way it keeps the run folder's
  progress.json current at every logging step (read by `python -m dpo_sweeps.status`).
- `user_error_message(exc)`: config and data errors are the user's to fix: the CLI prints their problem list and exits 1
  without a Python traceback (HYDRA_FULL_ERROR=1 still shows it).
- `point_line(...)`: the one line a sweep prints per point as it starts and as it ends.

Importing this module is cheap; the callback base class comes from transformers, which the job has loaded anyway.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

from dpo_sweeps.runs import folder as run_folder

# Non-interactive progress lines: at each tenth of the run, and at least this often on a long one.
# Printed to stderr by every rank of a multi-task job as it starts (train/cluster.py). Task 0's stderr is also the
# job's own log, where srun reports a task that died: the watcher reads the lines after the latest marker, i.e. the
# latest attempt (the log is appended to across requeues).
RANKS_START_MARKER = "dpo_sweeps: torch.distributed ranks starting"
PLAIN_LINE_FRACTION = 0.1
PLAIN_LINE_EVERY_S = 300.0


def quiet_libraries() -> None:
    """Call before importing torch/transformers/datasets/trl: most switches are read at import time."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" follows the hub's
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # TRL's tokenizing/filtering maps
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Deprecation notices aimed at library authors (transformers 5 renames, TRL's own): nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # "Failed to load CPU gemm_4bit_forward from kernels-community": bitsandbytes falls back to its own CPU kernels.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class _OncePerMessage(logging.Filter):
    """Lets the first record of each message through, drops repeats ("Call #N - " counters ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"Call #\d+ - ", "", record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_submitter() -> None:
    """In the process that submits and waits on a sweep: submitit repeats "Bypassing sacct error ... status may be
    inaccurate" on every poll where SLURM has no accounting (logged twice per poll: its own handler and Hydra's). Say
    it once; the points' own lines and `dpo_sweeps.status` carry the news."""
    submitit_log = logging.getLogger("submitit")
    if not any(isinstance(f, _OncePerMessage) for f in submitit_log.filters):
        submitit_log.addFilter(_OncePerMessage())


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eval_line(metrics: dict, step: int, before_training: bool) -> str:
    """One line for an evaluation, whatever prefix HF gave the keys (eval_)."""

    def get(name):
        value = metrics.get(f"eval_{name}")
        return value if isinstance(value, int | float) else None

    when = "before training" if before_training else f"at step {step}"
    return (
        f"eval {when}: loss {fmt(get('loss'))}, reward acc {fmt(get('rewards/accuracies'), 3)}, "
        f"margin {fmt(get('rewards/margins'))}"
    )


class PlainDisplay:
    """Sparse lines for a log file: at a logging step once a tenth of the run has passed since the last line, at any
    step once PLAIN_LINE_EVERY_S has, and at the end."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stdout
        self.last_line_at, self.last_step, self.next_step, self.every = 0.0, None, 0, 1

    def start(self, max_steps: int) -> None:
        self.every = max(1, round(max_steps * PLAIN_LINE_FRACTION))
        self.last_line_at, self.next_step = time.time(), self.every

    def update(self, step: int, line: str, metrics: str = "", final: bool = False, logged: bool = False) -> None:
        now = time.time()
        due = (logged and step >= self.next_step) or now - self.last_line_at >= PLAIN_LINE_EVERY_S
        if step == self.last_step or not (due or final):
            return
        self.next_step = (step // self.every + 1) * self.every
        self.last_line_at, self.last_step = now, step
        self.print(line)

    def print(self, text: str) -> None:
        print(f"{self.label}{text}", file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class RichDisplay:
    """One live progress bar on a terminal; eval lines print above it."""

    def __init__(self, label: str, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.label = label
        self.console = console or Console()
        self.progress = Progress(
            TextColumn(f"{label}training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None

    def start(self, max_steps: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=max_steps, metrics="")

    def update(self, step: int, line: str = "", metrics: str = "", final: bool = False, logged: bool = False) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, metrics=metrics)

    def print(self, text: str) -> None:
        self.console.print(f"{self.label}{text}", highlight=False, markup=False)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None


def interactive() -> bool:
    forced = os.environ.get("DPO_SWEEPS_CONSOLE")  # rich or plain, for the odd terminal that lies about itself
    if forced in ("rich", "plain"):
        return forced == "rich"
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return sys.stdout.isatty()


def data_lines(stats: dict, sizes: dict[str, int]) -> list[str]:
    """One line per split: pairs kept, and rows dropped or truncated by the data checks."""
    lines = []
    for split, n in sizes.items():
        extra = []
        for what in ("dropped", "truncated"):
            k = stats.get(f"{split}_rows_{what}")
            if k:
                extra.append(f"{k} {what}")
        checked = stats.get(f"{split}_rows_checked")
        detail = f" of {checked} checked" if checked is not None else ""
        lines.append(f"data {split}: {n} pairs{detail}" + (f" ({', '.join(extra)})" if extra else ""))
    return lines


# ----------------------------------------------------------------------------------------------------- user errors


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (what is wrong, which key/file/row, the fix)."""
    from dpo_sweeps.config.validation import ConfigError

    types: list[type[BaseException]] = [ConfigError]
    try:
        from dpo_sweeps.data.sources import DataFileError, DatasetUnavailableError
        from dpo_sweeps.data.validation import InvalidDataError

        types += [DataFileError, DatasetUnavailableError, InvalidDataError]
    except ImportError:  # pragma: no cover - the data package moved
        pass
    return tuple(types)


def user_error_message(exc: BaseException, run_dir: Path | None = None) -> str | None:
    """The text to print instead of a traceback, or None when `exc` is a bug (traceback wanted) or the user asked for
    full errors."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or not isinstance(exc, user_error_types()):
        return None
    where = (
        f"\n(recorded in {run_dir / run_folder.STATUS_FILE}; HYDRA_FULL_ERROR=1 shows the traceback)" if run_dir else ""
    )
    return f"Error: {exc}{where}"


# --------------------------------------------------------------------------------------------------- sweep points


def point_line(index: int | None, total: int | None, name: str, event: str, detail: str = "") -> str:
    where = f"[{index + 1}/{total}]" if index is not None and total else "[point]"
    return f"{where} {name}: {event}" + (f" {detail}" if detail else "")
