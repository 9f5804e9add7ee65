"""The SLURM side of the pre-launch check (called from sweep/preflight.py for `hydra/launcher=slurm`): refuse a sweep the
site's job limits cannot take before its points are composed, and show the split into arrays for dry_run=true."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dpo_sweeps.config import naming
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import plan, site


def _to_submit(config: DictConfig, all_points: list[list[str]]) -> int:
    """Points whose folder does not say completed (what the launcher will submit), without composing them."""
    if config.get("rerun"):
        return len(all_points)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    done = sum(
        (run_folder.read_status(sweep_dir / naming.sweep_subdirname(o)) or {}).get("state") == run_folder.COMPLETED
        for o in all_points
    )
    return len(all_points) - done


def refuse_if_too_large(config: DictConfig, all_points: list[list[str]]) -> None:
    try:
        limits = site.read_limits_or_exit(*site.submit_identity(config.hydra.launcher))
        plan.check_fits(_to_submit(config, all_points), limits, total_points=len(all_points))
    except plan.SweepTooLargeError as err:
        raise SystemExit(f"Error: {err}") from None


def describe_split(config: DictConfig, points: list[dict]) -> str:
    """dry_run=true: the arrays this sweep would be submitted as, or why it would be refused."""
    submit = [p for p in points if not p["skip"]]
    parallelism = int(config.hydra.launcher.get("array_parallelism") or 1)
    try:
        limits = site.read_limits(*site.submit_identity(config.hydra.launcher))
    except site.SlurmCommandError as exc:
        return f"SLURM: the cluster's limits cannot be read here ({exc}); the split is decided at submission."
    text = plan.describe(
        plan.split(len(submit), limits.max_tasks_per_array, parallelism), limits, parallelism, len(points) - len(submit)
    )
    try:
        plan.check_fits(len(submit), limits, total_points=len(points))
    except plan.SweepTooLargeError as err:
        text += f"\nThis sweep would be REFUSED: {err}"
    return text
