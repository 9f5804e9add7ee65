"""A run folder whose filesystem is full: telling it from other failures, and the one thing to do about it.

A checkpoint that runs out of space stops half-written (safetensors says "No space left on device (os error 28)",
torch.save only "file write failed"). It never gets its COMPLETE marker (train/checkpoints.py), so no resume picks it
up, but it holds what space there was: the failure could not even be recorded in status.json, nor the job's result
written beside it. So the failing job removes its incomplete checkpoints first, then records why in words a person
acts on: which filesystem, how much is free, the checkpoint a rerun resumes from.

Imports nothing heavy (the job's failure path runs it).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
# Written last, atomically, once every rank has saved its part (train/checkpoints.py).
COMPLETE_MARKER = "COMPLETE"
# Below this many free bytes, a failed write on the run folder's filesystem counts as "out of space" even when the
# library's error lost the errno (torch.save: "PytorchStreamWriter failed writing file ...: file write failed").
NEARLY_FULL_BYTES = 1 << 20
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_WORDS = ("no space left on device", "disk quota exceeded", "file write failed")


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of `path` (None if it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def out_of_space(exc: BaseException, run_dir: str | os.PathLike) -> bool:
    """Whether `exc` is a write that found the filesystem full (or the user's quota spent)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            return True
        text = str(e).lower()
        if any(words in text for words in _NO_SPACE_WORDS[:2]):
            return True
        if _NO_SPACE_WORDS[2] in text:
            free = free_bytes(run_dir)
            return free is not None and free < NEARLY_FULL_BYTES
    return False


def _step(path: Path) -> int:
    try:
        return int(path.name[len(CHECKPOINT_PREFIX) :])
    except ValueError:
        return -1


def drop_incomplete_checkpoints(run_dir: str | os.PathLike) -> tuple[list[str], str | None]:
    """Remove the checkpoints of `run_dir` that never got their COMPLETE marker (no resume would use them); returns
    (their names, the newest complete checkpoint's name or None)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    found = sorted((p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and _step(p) >= 0), key=_step)
    complete = [p for p in found if (p / COMPLETE_MARKER).is_file()]
    dropped = [p for p in found if p not in complete]
    for path in dropped:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in dropped], complete[-1].name if complete else None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def no_space_error(exc: BaseException, run_dir: str | os.PathLike) -> str:
    """Frees what the failed job can (its incomplete checkpoints) and says what happened and what to do."""
    free_before = free_bytes(run_dir)
    dropped, last = drop_incomplete_checkpoints(run_dir)
    removed = f"; removed the incomplete {', '.join(dropped)} (no resume would use it)" if dropped else ""
    resume = f"it resumes from {last}" if last else "it starts over (no complete checkpoint)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"no space left on device: the filesystem of {run_dir} is full ({_size(free_before)} free){removed}. "
        f"Free space there and run the same command again: {resume}. "
        f"({type(exc).__name__}: {first})"
    )
