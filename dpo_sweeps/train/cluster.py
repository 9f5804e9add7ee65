"""Cluster glue inside a job: torch.distributed ranks from SLURM, and preemption/time-limit handling.

Ranks: a SLURM job with `tasks_per_node = GPUs` starts one task per GPU; `setup_distributed()` exports RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the SLURM environment (through submitit) before the trainer
is built, so HF Trainer/accelerate run DDP (or FSDP). Only rank 0 writes the run folder (`is_main_process()`).

Preemption: submitit installs a handler for SLURM's USR2 (sent `signal_delay_s` before the time limit, or on
preemption) that calls the launcher's `checkpoint`, requeues the job and exits on the spot. Saving the model from
inside that handler is unsafe: the signal can land in the middle of an optimizer step (weights half updated) or a
collective (FSDP/DDP ranks would deadlock). `PreemptionGuard` therefore wraps submitit's handler: while the training
loop runs it only raises a flag; `PreemptionCallback` sees the flag at the next step boundary (agreed on by all ranks),
makes the Trainer save a checkpoint and stop; then `after_train()` records `requeued` in status.json and hands over
to submitit's own handler, which requeues. Outside the training loop (loading, evaluation) the last checkpoint on
disk is the resume point, so the signal is handed over at once. After `resume.max_requeues` requeues the run is
not requeued again but marked failed with the reason (the checkpoint stays for a manual rerun).

Imported in the job only; nothing heavy at module level (torch is imported inside functions).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

# Known secrets: their *names* (never values) are recorded in status.json so a user can see what reached the job.
SECRET_ENV_VARS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class RequeueLimitReached(RuntimeError):
    """Preempted or timed out once more than `resume.max_requeues` allows."""


def in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ


def setup_distributed() -> dict[str, int]:
    """Export torch.distributed's env:// variables when this SLURM job has several tasks; return rank/world_size.

    `set_cuda_visible_devices=False`: every task keeps seeing all GPUs of the node and HF/accelerate pick
    `cuda:LOCAL_RANK`, which is what they expect from torchrun as well.
    """
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if in_submitit_job() and ntasks > 1 and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        log.info(
            "torch.distributed from SLURM: rank %d/%d (local %d), master %s:%d",
            env.rank,
            env.world_size,
            env.local_rank,
            env.master_addr,
            env.master_port,
        )
    return {"rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 writes outputs, status, model cards and tracking; other ranks only compute."""
    return rank() == 0


def secrets_present() -> list[str]:
    return [name for name in SECRET_ENV_VARS if os.environ.get(name)]


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first start, also outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


class PreemptionGuard:
    """Defers submitit's USR2 handler to the next training step boundary (see the module docstring)."""

    def __init__(self, run_dir: Path, max_requeues: int, signum: int):
        self.run_dir = Path(run_dir)
        self.max_requeues = max_requeues
        self.signum = signum
        self.original: Any = None
        self.requested = False
        self.deferring = False

    def install(self) -> None:
        self.original = signal.getsignal(self.signum)
        signal.signal(self.signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("Caught %s: a checkpoint is saved at the next step boundary.", signal.Signals(signum).name)
        self.requested = True
        if not self.deferring:
            self.hand_over()

    def hand_over(self) -> None:
        """Record the outcome in status.json and let submitit requeue (or fail the run when requeues are spent)."""
        self.deferring = False
        done = restart_count()
        if done >= self.max_requeues:
            raise RequeueLimitReached(
                f"Preempted or timed out after {done} requeue(s): resume.max_requeues={self.max_requeues} is spent. "
                f"The last checkpoint under {self.run_dir / 'checkpoints'} is kept: rerun the sweep to resume from it, "
                "or raise resume.max_requeues / hydra.launcher.timeout_min."
            )
        if is_main_process():
            run_folder.update_status(
                self.run_dir,
                state=run_folder.REQUEUED,
                requeued_at=run_folder.now_iso(),
                requeues=done + 1,
                slurm=run_folder.slurm_ids(),
            )
            if callable(self.original):
                self.original(self.signum, None)  # submitit: checkpoint() + scontrol requeue + sys.exit
            else:  # not under submitit (a plain signal): stop so that a rerun resumes
                sys.exit(-1)
        else:
            # The job is requeued by rank 0 (which kills this task too); leaving early could make srun kill rank 0
            # before it requeued.
            log.info("Rank %d: stopped for preemption; rank 0 requeues the job.", rank())
            signal.pause()


_GUARD: PreemptionGuard | None = None


def install_preemption_handler(run_dir: Path, max_requeues: int) -> PreemptionGuard | None:
    """In a submitit job, wrap its preemption handler; elsewhere do nothing (a local Ctrl-C just stops)."""
    global _GUARD
    _GUARD = None
    if not in_submitit_job():
        return None
    from submitit.core.job_environment import JobEnvironment

    signum = JobEnvironment._usr_sig()
    _GUARD = PreemptionGuard(run_dir, max_requeues, signum)
    _GUARD.install()
    return _GUARD


def current_guard() -> PreemptionGuard | None:
    return _GUARD


def training_callbacks(save_total_limit: int | None) -> list:
    """Callbacks `train.run_training` adds to the Trainer: checkpoint commit + rotation, preemption at step ends."""
    from dpo_sweeps.train.checkpoints import CheckpointCommit, PreemptionCallback

    callbacks: list = [CheckpointCommit(save_total_limit)]
    if _GUARD is not None:
        callbacks.append(PreemptionCallback(_GUARD))
    return callbacks


def after_train() -> None:
    """Called right after `trainer.train()`: if the loop stopped for a preemption, requeue now (does not return)."""
    if _GUARD is not None and _GUARD.requested:
        _GUARD.hand_over()
