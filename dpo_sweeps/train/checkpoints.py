"""Checkpoints a resumed run can trust, and the Trainer side of preemption.

HF's Trainer writes `trainer_state.json` last, but not atomically, and its `save_total_limit` rotation deletes old
checkpoints file by file (in directory order): a job killed at the wrong moment leaves a folder that looks complete
and is not. So a checkpoint counts only once it has a `COMPLETE` marker, written atomically by `CheckpointCommit`
after the Trainer's `on_save` (all ranks done: a barrier first). Rotation is ours too: an old checkpoint loses its
marker first and is deleted after, so no half-deleted folder is ever picked up.

Imported inside the job only (transformers).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from dpo_sweeps.runs import disk
from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

# One spelling for this module and the failure path of a full disk (runs/disk.py), which must not import transformers.
COMPLETE_MARKER = disk.COMPLETE_MARKER
PREFIX = disk.CHECKPOINT_PREFIX


def _step(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX) :])
    except ValueError:
        return -1


def is_complete(path: Path) -> bool:
    if not (path / COMPLETE_MARKER).is_file():
        return False
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints under `ckpt_root`, oldest first."""
    if not Path(ckpt_root).is_dir():
        return []
    found = [p for p in Path(ckpt_root).glob(f"{PREFIX}*") if p.is_dir() and _step(p) >= 0 and is_complete(p)]
    return sorted(found, key=_step)


def last_complete(ckpt_root: Path) -> str | None:
    done = complete_checkpoints(ckpt_root)
    return str(done[-1]) if done else None


def prune(ckpt_root: Path, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints; delete older ones and incomplete leftovers older than the newest."""
    done = complete_checkpoints(ckpt_root)
    if not done:
        return
    newest = _step(done[-1])
    doomed = done[:-keep] if keep else []
    doomed += [p for p in Path(ckpt_root).glob(f"{PREFIX}*") if p.is_dir() and not is_complete(p) and _step(p) < newest]
    for path in doomed:
        # Marker first: if we are killed mid-delete, the folder is already not a resume candidate.
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class CheckpointCommit(TrainerCallback):
    """Marks a checkpoint complete once every rank has written its part, then applies `save_total_limit`."""

    def __init__(self, keep: int | None):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # rank 1's RNG state is part of the checkpoint too
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            if (path / "trainer_state.json").is_file():
                run_folder.write_text_atomic(path / COMPLETE_MARKER, f"{state.global_step}\n")
                prune(Path(args.output_dir), self.keep)
        return control


def _any_rank(flag: bool, device) -> bool:
    """True if any rank has the flag: all ranks must save and stop at the same step, or collectives deadlock."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class PreemptionCallback(TrainerCallback):
    """Turns the guard's flag (set by the signal) into "save now, then stop" at a step boundary."""

    def __init__(self, guard):
        self.guard = guard

    def on_train_begin(self, args, state, control, **kwargs):
        self.guard.deferring = True

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.guard.requested, args.device):
            self.guard.requested = True
            log.warning("Preemption: saving a checkpoint at step %d, then requeueing.", state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.guard.deferring = False
