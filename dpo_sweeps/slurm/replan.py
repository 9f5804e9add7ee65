"""Re-planning a point that died of memory: what to change, recorded in its status.json, and applied by its next job.

A point dies of memory in one of two ways, and each has its own fix that keeps the run the same run:
- GPU memory: the job raised `torch.OutOfMemoryError` (`sweep/job.py` records `memory_error: "gpu"`). The micro-batch
  (`training.per_device_train_batch_size`) is divided by its smallest factor k >= 2 and gradient accumulation
  multiplied by k: the effective batch, and so the optimisation, stays the same. At a micro-batch of 1, gradient
  checkpointing is turned on instead. Failing both, there is nothing left to trade here.
- Host memory: SLURM killed the job over its `--mem` (state OUT_OF_MEMORY under cgroups; without cgroups,
  jobacct_gather's OverMemoryKill ends the step as FAILED and slurmstepd writes "exceeded memory limit" into the job's
  log). `hydra.launcher.mem_gb` is doubled, up to what a node of the job's partition holds (sinfo, as the site profile
  reads it); a job that already asked for that much cannot be helped by asking for more.

The launcher that collected the dead point calls `decide` and, for a plan, resubmits the point into the same run
folder (so its checkpoints and history stay); the job reads `replan_overrides` from status.json and applies them to
its config before it validates and trains (`apply`), so config.yaml says what really ran. `resume.max_replans`
(default 1) bounds how often one point is re-planned; every plan is listed in status.json `replans` with the cause,
the error, what changed (from, to) and why. A point that cannot be re-planned keeps its failure, with the fix added.
Import-light: runs/, `client` (subprocess) and the site profile's sinfo parser, no torch. Used by the launchers
(local and SLURM) and the job (sweep/job.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_sweeps import console
from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

GPU, HOST = "gpu", "host"
MEM_GB_KEY = "hydra.launcher.mem_gb"
# slurmstepd's words in the job's log when jobacct_gather (OverMemoryKill) ends a step over its memory request.
HOST_KILL_MARKERS = ("exceeded memory limit", "Exceeded job memory limit", "oom-kill event")
DEFAULT_MAX_REPLANS = 1


@dataclass
class Plan:
    """What a re-plan changes: {key: (from, to)}; `why` is the sentence status.json and the console show."""

    cause: str
    error: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    why: str = ""

    @property
    def mem_gb(self) -> float | None:
        return self.changes[MEM_GB_KEY][1] if MEM_GB_KEY in self.changes else None

    def describe(self) -> str:
        parts = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in self.changes.items())
        return f"{parts} ({self.why})"


class CannotReplan(Exception):
    """A memory death with nothing left to change: the message is the fix."""


def is_gpu_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (also as torch.cuda.OutOfMemoryError), recognised without importing torch."""
    return any(c.__name__ == "OutOfMemoryError" and c.__module__.startswith("torch") for c in type(exc).__mro__)


def _log_tail(log_path: str | Path | None) -> str:
    """The job's log from its latest attempt on (the log is appended to across requeues)."""
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    return text[max(text.rfind(console.RANKS_START_MARKER), 0) :]


def kill_line(log_path: str | Path | None) -> str | None:
    """slurmstepd's line saying the job went over its memory request (with the bytes), if the log has one."""
    lines = _log_tail(log_path).splitlines()
    return next((line.strip() for line in lines if any(m in line for m in HOST_KILL_MARKERS)), None)


def memory_cause(status: dict, log_path: str | Path | None = None) -> str | None:
    """GPU, HOST or None: did this failed point die of memory?"""
    if status.get("state") != run_folder.FAILED:
        return None
    if status.get("memory_error") == GPU:
        return GPU
    slurm_state = str((status.get("slurm") or {}).get("state") or "")
    if slurm_state.startswith("OUT_OF_MEMORY"):
        return HOST
    if slurm_state and kill_line(log_path):
        return HOST
    return None


def _smallest_factor(n: int) -> int:
    return next(k for k in range(2, n + 1) if n % k == 0)


def gpu_plan(training: dict, error: str) -> Plan:
    """Halve the micro-batch (keep the effective batch), else gradient checkpointing on; CannotReplan otherwise."""
    batch = int(training.get("per_device_train_batch_size") or 1)
    accum = int(training.get("gradient_accumulation_steps") or 1)
    plan = Plan(GPU, error)
    if batch > 1:
        k = _smallest_factor(batch)
        plan.changes["training.per_device_train_batch_size"] = (batch, batch // k)
        plan.changes["training.gradient_accumulation_steps"] = (accum, accum * k)
        eval_batch = int(training.get("per_device_eval_batch_size") or 1)
        if eval_batch > batch // k:  # evaluation holds activations too; its batch changes no result
            plan.changes["training.per_device_eval_batch_size"] = (eval_batch, max(1, eval_batch // k))
        plan.why = (
            f"GPU out of memory: micro-batch / {k}, gradient accumulation x {k}: the same effective batch "
            f"({batch * accum} per device and optimizer step)"
        )
        return plan
    if not training.get("gradient_checkpointing"):
        plan.changes["training.gradient_checkpointing"] = (False, True)
        plan.why = (
            "GPU out of memory at a micro-batch of 1: activations recomputed in the backward pass instead of kept"
        )
        return plan
    raise CannotReplan(
        "GPU out of memory at a micro-batch of 1 with gradient checkpointing on: nothing left to trade in this "
        "plan. Fix: more GPUs per point with training.fsdp.enabled=true (shards weights, gradients and optimizer "
        "state), LoRA instead of full fine-tuning (lora=r16), 4-bit weights (quantization=nf4), or a shorter "
        "dataset.max_length; the pre-launch check's estimate per GPU: `python -m dpo_sweeps <same overrides> "
        "dry_run=true`"
    )


def host_plan(mem_gb: float | None, node_gb: float | None, error: str) -> Plan:
    """Double the job's memory request, up to what a node of its partition holds; CannotReplan otherwise."""
    if node_gb is None:
        raise CannotReplan(
            "killed over its memory request, and the partition's node memory cannot be read (sinfo): set "
            "hydra.launcher.mem_gb higher by hand (the pre-launch check's host estimate: dry_run=true)"
        )
    new = int(node_gb) if mem_gb is None else min(int(node_gb), int(max(2 * float(mem_gb), float(mem_gb) + 1)))
    if mem_gb is not None and new <= float(mem_gb):
        raise CannotReplan(
            f"killed over its memory request of {mem_gb} GB, already what a node of its partition holds "
            f"({node_gb:.0f} GB usable): asking for more cannot help. Fix: a partition with bigger nodes "
            "(hydra.launcher.partition=...), fewer ranks per node (hydra.launcher.tasks_per_node), FSDP with "
            "training.fsdp.cpu_ram_efficient_loading=true and SHARDED_STATE_DICT checkpoints, or LoRA (lora=r16); "
            "the pre-launch check's host estimate: `python -m dpo_sweeps <same overrides> dry_run=true`"
        )
    return Plan(
        HOST,
        error,
        {MEM_GB_KEY: (mem_gb, new)},
        f"SLURM killed the job over its host memory request: asked for {new} GB (a node of the partition holds "
        f"{node_gb:.0f} GB usable)",
    )


def partition_node_gb(partition: str | None) -> float | None:
    """GiB a job may ask for on one node of `partition` (the default partition when None): the smallest node's
    memory times the site profile's share (slurm/profile.py). None when sinfo cannot say."""
    from dpo_sweeps.slurm import client, profile

    try:
        rows = profile.parse_nodes(client.site_nodes())
    except client.SlurmCommandError:
        return None
    rows = [r for r in rows if (r.partition == partition if partition else r.default) and r.memory_mb > 0]
    return min(r.memory_mb for r in rows) / 1024 * profile.MEM_SHARE if rows else None


def _training(run_dir: Path, fallback: Any) -> dict:
    """The training settings the dead job ran with: its config.yaml (replans applied), else the sweep's."""
    from omegaconf import OmegaConf

    path = run_dir / run_folder.CONFIG_FILE
    cfg = OmegaConf.load(path) if path.exists() else fallback
    return {
        "training": dict(OmegaConf.to_container(cfg.training, resolve=True)) if cfg is not None else {},
        "max_replans": int(OmegaConf.select(cfg, "resume.max_replans", default=DEFAULT_MAX_REPLANS)),
    }


def decide(
    run_dir: str | Path,
    log_path: str | Path | None,
    sweep_cfg: Any,
    mem_gb: float | None = None,
    node_gb: Any = None,
) -> Plan | None:
    """The plan for a point that died of memory and may be re-planned (recorded in its status.json, so the next job
    applies it); None for every other point. A memory death that cannot be re-planned, or has used its
    `resume.max_replans`, keeps its failure with the fix added. `node_gb`: a function of no arguments (asked only
    for a host death)."""
    run_dir = Path(run_dir)
    status = run_folder.read_status(run_dir) or {}
    cause = memory_cause(status, log_path)
    if cause is None:
        return None
    settings = _training(run_dir, sweep_cfg)
    done = status.get("replans") or []
    error = status.get("error") or "died of memory"
    said = kill_line(log_path) if cause == HOST else None
    if said and said not in error:  # SLURM's own words, with the bytes used and asked for
        error = f"{error} The job's log: {said}"
    if len(done) >= settings["max_replans"]:
        _refuse(
            run_dir, error, f"re-planned {len(done)} time(s) already (resume.max_replans={settings['max_replans']})"
        )
        return None
    mem_gb = (status.get("replan_overrides") or {}).get(MEM_GB_KEY, mem_gb)
    try:
        if cause == GPU:
            plan = gpu_plan(settings["training"], error)
        else:
            plan = host_plan(mem_gb, node_gb() if callable(node_gb) else node_gb, error)
    except CannotReplan as why:
        _refuse(run_dir, error, str(why))
        return None
    overrides = {**(status.get("replan_overrides") or {}), **{k: new for k, (_, new) in plan.changes.items()}}
    entry = {
        "at": run_folder.now_iso(),
        "after_attempt": status.get("attempts"),
        "slurm_job": (status.get("slurm") or {}).get("job_id_submitted") or (status.get("slurm") or {}).get("job_id"),
        "cause": cause,
        "error": error,
        "changes": {k: {"from": old, "to": new} for k, (old, new) in plan.changes.items()},
        "why": plan.why,
    }
    run_folder.update_status(run_dir, replans=[*done, entry], replan_overrides=overrides)
    log.warning("Point %s died of %s memory; re-planned and resubmitted: %s", run_dir.name, cause, plan.describe())
    return plan


def _refuse(run_dir: Path, error: str, why: str) -> None:
    if "Not re-planned" not in error:
        run_folder.update_status(run_dir, error=f"{error} Not re-planned: {why}.")
    log.error("Point %s died of memory and is not re-planned: %s", run_dir.name, why)


def apply(cfg: Any, status: dict) -> dict:
    """In the job: set the re-planned training settings (status.json `replan_overrides`) on the point's config
    before it is validated and saved. Launcher keys (mem_gb) took effect at submission. Returns what was set."""
    from omegaconf import OmegaConf

    applied = {}
    for key, value in (status.get("replan_overrides") or {}).items():
        if key.startswith("hydra."):
            continue
        OmegaConf.update(cfg, key, value, merge=False)
        applied[key] = value
    if applied:
        log.warning("Re-planned after running out of memory (status.json 'replans'): %s", applied)
    return applied


def resubmit_until_settled(
    launcher: Any, entries: list, jobs: list, results: list, sweep_dir: Path, checked: Any
) -> list:
    """The SLURM launcher's side (slurm/launcher.py): `entries` (job number, overrides, point) ran as `jobs` with
    `results`; each that died of memory and may be re-planned is resubmitted (grouped by the memory it now asks for)
    and collected again, until none is left. Returns the results, re-planned ones replaced."""
    from dpo_sweeps.slurm import plan, site, watch

    results, jobs = list(results), list(jobs)
    params = launcher.params
    mem_gb = params.get("mem_gb")
    todo = list(range(len(entries)))

    def node_gb() -> float | None:
        return partition_node_gb(params.get("partition"))

    while todo:
        plans = [
            i for i in todo if decide(entries[i][2]["run_dir"], jobs[i].paths.stderr, launcher.config, mem_gb, node_gb)
        ]
        groups: dict[Any, list[int]] = {}
        for i in plans:  # the memory each point asks for now (a host re-plan raised it; GPU ones keep theirs)
            status = run_folder.read_status(entries[i][2]["run_dir"]) or {}
            groups.setdefault((status.get("replan_overrides") or {}).get(MEM_GB_KEY, mem_gb), []).append(i)
        for mem, group in groups.items():
            sub = [entries[i] for i in group]
            # A resubmission waits out a controller restart, as the watcher does for the jobs it watches.
            limits = site.read_limits_or_exit(*site.submit_identity(params), wait_s=watch.LOST_CONTACT_S)
            parallelism = int(params.get("array_parallelism") or 1)
            new, _ = launcher._submit(sub, plan.split(len(sub), limits.max_tasks_per_array, parallelism), mem_gb=mem)
            for i, job, result in zip(group, new, launcher._collect(sub, new, [], sweep_dir, checked), strict=True):
                jobs[i], results[i] = job, result
        todo = plans
    return results
