"""Cluster glue inside a job: torch.distributed ranks from SLURM (or submitit's local executor), and preemption.

Ranks: a SLURM job with `tasks_per_node = GPUs` (and `nodes = N`) starts one task per GPU; `setup_distributed()`
exports torch.distributed's env:// variables from SLURM's before the trainer is built, so HF Trainer/accelerate run
DDP (or FSDP): RANK = SLURM_PROCID, node rank = SLURM_NODEID (not the task's global rank), MASTER_ADDR = the NodeAddr
of the first host of `scontrol show hostnames $SLURM_JOB_NODELIST` (an unexpanded "n[1-2]" is no address), and
MASTER_PORT derived from the job id, moved by rank 0 if something on its node holds it, and read by the other ranks
from the job's folder (`agree_port`). submitit's local executor gives ranks from SUBMITIT_LOCAL_*. A shell's RANK,
WORLD_SIZE, MASTER_PORT, ... (inherited through sbatch --export=ALL) are dropped in every job. Only
rank 0 writes the run folder and talks to W&B (`is_main_process()`). A dead peer ends the job: collectives time out
after `training.dist_timeout_min` (trainer.py), NCCL turns errors into exceptions, and the launcher runs srun with
--kill-on-bad-exit, so a rank that dies takes its job down rather than leaving the others waiting.

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
import socket
import sys
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

# Known secrets: their *names* (never values) are recorded in status.json so a user can see what reached the job.
SECRET_ENV_VARS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class RequeueLimitReached(RuntimeError):
    """Preempted or timed out once more than `resume.max_requeues` allows."""


# How many points of a sweep run at once on this machine: set by the local parallel launcher
# (dpo_sweeps/sweep/local_launcher.py) for the processes it starts; absent = this point has the machine to itself.
POINTS_AT_ONCE_ENV = "DPO_SWEEPS_POINTS_AT_ONCE"


def available_cores() -> int:
    """The cores this process may run on (a SLURM task's or taskset's share, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_threads(configured: int | None) -> int:
    """Torch threads for this process: `training.cpu_threads` when set, else (null = auto) this machine's cores shared
    between the points running at once and the ranks of this job on this node, at least one. Oversubscribing cores with
    threads makes every thread wait at torch's barriers for the slowest one, so a share is faster than all cores each."""
    if configured:
        return int(configured)
    points = max(1, int(os.environ.get(POINTS_AT_ONCE_ENV) or 1))
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    cores = available_cores()
    if _bound_to_the_task(cores, ranks):
        ranks = 1  # the affinity is already this task's share: dividing it again would starve every rank
    return max(1, cores // (points * ranks))


def _bound_to_the_task(cores: int, ranks: int) -> bool:
    """Whether SLURM bound this task to its own CPUs (task/affinity or cgroup): then sched_getaffinity is the task's
    share, and the node's tasks together hold no more than the job's CPUs on this node (SLURM_CPUS_ON_NODE)."""
    on_node = os.environ.get("SLURM_CPUS_ON_NODE")
    return bool(on_node) and "SLURM_PROCID" in os.environ and cores * ranks <= int(on_node)


def in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ


# MASTER_PORT = RDZV_PORT_BASE + job id % RDZV_PORT_SPAN: clear of the well-known ports and of Linux's ephemeral
# range (32768+), so consecutive jobs sharing a node never collide.
RDZV_PORT_BASE, RDZV_PORT_SPAN = 12000, 20000
SCONTROL_TIMEOUT_S = 30.0


def rendezvous_port(job_id: str | int) -> int:
    """The job's rendezvous port, the same on every rank without any exchange (`MASTER_PORT` overrides it)."""
    return RDZV_PORT_BASE + int(job_id) % RDZV_PORT_SPAN


def _scontrol(*args: str) -> str:
    import subprocess

    cmd = ["scontrol", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=SCONTROL_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed inside the job ({detail}): a multi-task job needs scontrol to find its master "
            "address. Fix: run the job where SLURM's commands are on PATH (and SLURM_CONF is set, if the site needs it)."
        ) from None


def job_hostnames(nodelist: str) -> list[str]:
    """The job's hosts in SLURM's order, from the compressed nodelist ("n[1-2],gpu7" -> n1, n2, gpu7)."""
    return _scontrol("show", "hostnames", nodelist).split()


def node_address(host: str) -> str:
    """The host's NodeAddr in slurm.conf (what its peers can reach; the node name may not resolve)."""
    for field in _scontrol("show", "node", host, "--oneliner").split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    raise RuntimeError(f"`scontrol show node {host}` printed no NodeAddr: is {host} a node of this cluster?")


def slurm_rendezvous(env: dict[str, str] | None = None) -> dict[str, Any]:
    """torch.distributed's env:// variables for this SLURM task (one task per rank), and the job's nodes."""
    env = dict(os.environ if env is None else env)
    world = int(env["SLURM_NTASKS"])
    nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    nodes = job_hostnames(env["SLURM_JOB_NODELIST"])
    return {
        "MASTER_ADDR": node_address(nodes[0]),
        # Derived from the job id; setup_distributed lets rank 0 move it when something on the node holds it.
        "MASTER_PORT": str(rendezvous_port(env["SLURM_JOB_ID"])),
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": str(world // nnodes),
        # The node's rank is SLURM_NODEID: SLURM_PROCID is the task's global rank (equal only on one node).
        "GROUP_RANK": env["SLURM_NODEID"],
        "NODE_RANK": env["SLURM_NODEID"],
        # NCCL: a failed or timed-out collective raises in every rank instead of blocking (no effect with gloo).
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        "_nodes": nodes,
    }


def local_rendezvous(env: dict[str, str] | None = None) -> dict[str, Any]:
    """torch.distributed's env:// variables for a task of submitit's local executor (hydra/launcher=submitit_local
    with tasks_per_node > 1): its SUBMITIT_LOCAL_* variables, one node, this machine."""
    env = dict(os.environ if env is None else env)
    world = env["SUBMITIT_LOCAL_NTASKS"]
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(rendezvous_port(env["SUBMITIT_LOCAL_JOB_ID"])),
        "RANK": env["SUBMITIT_LOCAL_GLOBALID"],
        "WORLD_SIZE": world,
        "LOCAL_RANK": env["SUBMITIT_LOCAL_LOCALID"],
        "LOCAL_WORLD_SIZE": world,
        "GROUP_RANK": "0",
        "NODE_RANK": "0",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        "_nodes": [socket.gethostname()],
    }


def _local_executor() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "local"


def job_tasks() -> int:
    """The tasks (= ranks) of this submitit job: SLURM's, or submitit's local executor's."""
    return int(os.environ.get("SUBMITIT_LOCAL_NTASKS" if _local_executor() else "SLURM_NTASKS") or 1)


def setup_distributed() -> dict[str, Any]:
    """Export torch.distributed's env:// variables when this submitit job (SLURM or local) has several tasks; return
    what status.json records: rank, world size, and (several tasks) the nodes and the master address. In a job, the
    variables a submitting shell exported (sbatch --export=ALL) are dropped first: the job's own tasks decide."""
    info: dict[str, Any] = {}
    if not in_submitit_job():
        return {"rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    inherited = sorted(k for k in TORCH_DIST_VARS if k in os.environ)
    for key in inherited:
        del os.environ[key]
    if inherited:
        log.info("Ignored %s from the submitting shell: this job's tasks set the ranks.", ", ".join(inherited))
    if job_tasks() > 1:
        rdzv = local_rendezvous() if _local_executor() else slurm_rendezvous()
        rdzv["MASTER_PORT"] = str(agree_port(int(rdzv["MASTER_PORT"]), int(rdzv["RANK"])))
        nodes = rdzv.pop("_nodes")
        from dpo_sweeps.console import RANKS_START_MARKER

        print(
            f"{RANKS_START_MARKER} (rank {rdzv['RANK']} on {nodes[int(rdzv['NODE_RANK'])]})",
            file=sys.stderr,
            flush=True,
        )
        os.environ.update(rdzv)
        info = {"nodes": nodes, "master": f"{rdzv['MASTER_ADDR']}:{rdzv['MASTER_PORT']}"}
        log.info(
            "torch.distributed from the job's tasks: rank %s/%s (node %s of %s: %s), master %s",
            rdzv["RANK"],
            rdzv["WORLD_SIZE"],
            rdzv["NODE_RANK"],
            len(nodes),
            ",".join(nodes),
            info["master"],
        )
    return {"rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1")), **info}


# torch.distributed's variables a submitting shell may export (an earlier torchrun, a notebook): inherited by every
# job through sbatch --export=ALL, they would give all jobs one port and skip (RANK) or falsify the job's own ranks.
TORCH_DIST_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
)
PORT_FILE_WAIT_S = 300.0


def port_is_free(port: int) -> bool:
    import socket as _socket

    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port(preferred: int, tries: int = 64) -> int:
    """`preferred` (the job's derived port) if nothing on this node listens on it, else the next free one within the
    span, else one the kernel picks: two jobs (or a job and any other server) on one node never share a port."""
    for offset in range(tries):
        port = RDZV_PORT_BASE + (preferred - RDZV_PORT_BASE + offset) % RDZV_PORT_SPAN
        if port_is_free(port):
            return port
    import socket as _socket

    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def agree_port(derived: int, task_rank: int) -> int:
    """The rendezvous port, chosen on the master node by rank 0 (which runs there) and read by the other ranks from
    the job's submitit folder (shared by all its tasks, like the run folder); keyed by job id and restart count so that
    a requeued job never reads its previous attempt's port."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "job"
    path = Path(os.environ["SUBMITIT_FOLDER"]) / f".rendezvous_port.{job}.{restart_count()}"
    if task_rank == 0:
        port = free_port(derived)
        run_folder.write_text_atomic(path, str(port))
        return port
    import time

    deadline = time.monotonic() + PORT_FILE_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Rank {task_rank}: rank 0 did not publish the rendezvous port in {path} within {PORT_FILE_WAIT_S:.0f} "
                "s. Is the job folder (hydra.launcher.submitit_folder) on a filesystem every node of the job sees?"
            )
        time.sleep(0.2)
    return int(path.read_text())


def init_cpu_process_group(timeout_min: float) -> None:
    """gloo's process group with `training.dist_timeout_min`, for CPU ranks. transformers 5 passes `ddp_timeout` to
    accelerate only for GPU backends (TrainingArguments._setup_devices), so CPU ranks whose peer hangs would wait
    torch's default 30 minutes; accelerate uses a process group that already exists."""
    import datetime

    import torch.distributed as dist

    if distributed() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_min))


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
