"""The life of one sweep point: validate, skip if already completed, run, record the outcome in status.json.

A point that fails is recorded (error and traceback in status.json) and, inside a multirun, does not sink the other
points: Hydra's basic sweeper aborts the whole sweep on the first exception, so the exception stops here and the
sweep's exit status is decided at the end (`hydra_callbacks.SweepSummary`). A single run re-raises.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpo_sweeps import console
from dpo_sweeps.config import naming
from dpo_sweeps.config.validation import validate
from dpo_sweeps.runs import claim as claim_mod
from dpo_sweeps.runs import disk
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import trial as trial_job
from dpo_sweeps.slurm import liveness, replan
from dpo_sweeps.tracking import wandb_run as tracking
from dpo_sweeps.train import cluster

log = logging.getLogger(__name__)


def _objective(metrics: dict | None) -> float:
    value = (metrics or {}).get("objective_value")
    return float(value) if isinstance(value, int | float) else math.nan


def _move_previous_attempt(run_dir: Path) -> Path:
    """`rerun=true` on a completed point: keep the old results under .previous/<time>/ rather than overwrite them."""
    dest = run_dir / ".previous" / run_folder.now_iso().replace(":", "-")
    dest.mkdir(parents=True)
    for item in run_dir.iterdir():
        keep = (".hydra", ".previous", claim_mod.CLAIM_FILE, claim_mod.LOCK_FILE)  # the claim is this attempt's
        if item.name not in keep and not item.name.endswith(".log"):
            shutil.move(str(item), dest / item.name)
    return dest


def _announce(multirun: bool, hydra_cfg, run_dir: Path, event: str, detail: str = "") -> None:
    """A sweep's one line per point as it starts and ends (in the job's own output: the console with the in-process
    launcher, the point's log otherwise)."""
    if multirun and cluster.is_main_process():
        points = run_folder.read_sweep_points(run_dir.parent) or []
        num, total = trial_job.counter(run_dir, points, hydra_cfg.job.get("num"))
        print(console.point_line(num, total, run_dir.name, event, detail), flush=True)


PEER_DEATH_GRACE_S = 10.0


def _end_the_job(exc: Exception) -> None:
    """A failed rank of a multi-task job exits non-zero at once, so that srun (--kill-on-bad-exit) ends the other
    ranks: one whose peer hangs would otherwise wait in a collective, and a clean exit of this one would leave the job
    to its time limit. The failure is already in status.json; the sweep's watcher collects it when the job ends."""
    log.error("Rank %d failed (%s: %s): ending the job's other ranks.", cluster.rank(), type(exc).__name__, exc)
    # When a peer died (the usual cause of a failed collective), srun notices it within moments and ends this rank:
    # its log then names the peer as the task that ended first, which the sweep's watcher reports.
    time.sleep(PEER_DEATH_GRACE_S)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # not sys.exit: atexit handlers may wait on the collective that failed


def _claim(run_dir: Path, multirun: bool, hydra_cfg) -> dict | None:
    """Claim the run folder for this job (rank 0; see runs/claim.py): the holder, or None when another live job holds
    it (said, and nothing written). Other ranks follow rank 0: a rank 0 that refuses ends a multi-task job."""
    if not cluster.is_main_process():
        return {}
    try:
        return liveness.claim_for_this_job(run_dir)
    except claim_mod.FolderBusyError as busy:
        if multirun and not cluster.in_submitit_job():
            # Hydra's basic launcher runs the sweep's points in the sweep's own process, where no launcher of ours
            # waits for the holder: wait here (never train beside it), then take the folder as it left it.
            log.warning("%s Waiting for it here.", busy)
            _announce(multirun, hydra_cfg, run_dir, "waiting", f"(held by {claim_mod.describe(busy.holder)})")
            liveness.wait_released([run_dir])
            return _claim(run_dir, multirun, hydra_cfg)
        log.error("%s", busy)
        _announce(multirun, hydra_cfg, run_dir, "not started", f"(held by {claim_mod.describe(busy.holder)})")
        if cluster.distributed():
            logging.shutdown()
            os._exit(1)  # srun (--kill-on-bad-exit) ends the other ranks, which wait for this one
        if not multirun:
            raise SystemExit(f"Error: {busy}") from None
        return None


def _release(run_dir: Path, holder: dict) -> None:
    """The run recorded its end: the folder is free (a later attempt of the same SLURM task may hold it by now)."""
    if holder:
        claim_mod.release(run_dir, holder)


def run_sweep_point(cfg: DictConfig) -> float:
    console.quiet_libraries()  # before anything imports transformers/datasets
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.job.chdir:  # the job runs inside its run folder: relative paths keep meaning where it was started
        naming.anchor_paths(cfg, hydra_cfg.runtime.cwd)
    # Several SLURM tasks = torch.distributed ranks; only rank 0 writes the run folder.
    dist = cluster.setup_distributed()
    update_status = run_folder.update_status if cluster.is_main_process() else (lambda *a, **k: {})
    cluster.install_preemption_handler(run_dir, cfg.resume.max_requeues)
    # A search trial (the search driver put its identity in the environment): its number goes into status.json.
    trial_job.from_environment(run_dir, cfg.objective.metric)

    status = run_folder.read_status(run_dir) or {}
    if status.get("state") == run_folder.COMPLETED and not cfg.rerun:
        log.info("%s already completed (status.json); skipping. Pass rerun=true to train it again.", run_dir)
        _announce(multirun, hydra_cfg, run_dir, "skipped", "(already completed; rerun=true trains it again)")
        metrics = run_folder.read_json(run_dir / run_folder.METRICS_FILE)
        return _objective(metrics)
    holder = _claim(run_dir, multirun, hydra_cfg)
    if holder is None:  # another live job holds the folder: nothing of it was touched
        return math.nan
    status = run_folder.read_status(run_dir) or {}  # as the claim found it (a dead holder's last word)
    if status.get("state") == run_folder.COMPLETED and not cfg.rerun:  # the holder we waited for completed it
        _release(run_dir, holder)
        _announce(multirun, hydra_cfg, run_dir, "skipped", "(completed by the job that held it)")
        return _objective(run_folder.read_json(run_dir / run_folder.METRICS_FILE))
    if status.get("state") == run_folder.COMPLETED:
        log.info("rerun=true: previous results of %s moved to %s", run_dir, _move_previous_attempt(run_dir))
        status = {}
    # A point that died of memory was re-planned by its launcher (slurm/replan.py): run it with the plan that fits.
    replanned = replan.apply(cfg, status)

    update_status(
        run_dir,
        state=run_folder.RUNNING,
        world_size=dist["world_size"],
        # Several tasks: the job's hosts in node-rank order and the rendezvous address.
        **{k: dist[k] for k in ("nodes", "master") if k in dist},
        # Names only, never values: shows which tokens reached the job through the environment.
        secrets_present=cluster.secrets_present(),
        started_at=run_folder.now_iso(),
        ended_at=None,
        host=run_folder.host(),
        # Which process ran it (a parallel local sweep runs each point in its own).
        pid=os.getpid(),
        overrides=overrides,
        run_dir=str(run_dir),
        slurm=run_folder.slurm_ids(),
        attempts=status.get("attempts", 0) + 1,
        error=None,
        traceback=None,
        dead_rank=None,
        # A seed an earlier racing sweep skipped, trained now (rerun=true, racing.enabled=false): no stale decision.
        racing=None,
        reason=None,
        # What ranks the points, where readers find it without parsing config.yaml (runs/reading.py).
        objective={"metric": cfg.objective.metric, "mode": cfg.objective.mode},
        memory_error=None,
        **trial_job.status_fields(),
    )
    detail = f"; re-planned: {', '.join(f'{k}={v}' for k, v in replanned.items())}" if replanned else ""
    _announce(multirun, hydra_cfg, run_dir, "started", f"(attempt {status.get('attempts', 0) + 1}{detail})")
    started = time.time()
    try:
        validate(cfg)
        if cluster.is_main_process():
            run_folder.write_text_atomic(run_dir / run_folder.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        from dpo_sweeps.train.trainer import run_training

        metrics = run_training(cfg, run_dir)
        if cluster.is_main_process():
            run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, metrics)
            from dpo_sweeps.report.model_card import write_model_card

            write_model_card(cfg, run_dir, metrics, **tracking.model_card_links(metrics))
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM/SIGHUP turned into it)
        if cluster.in_submitit_job():
            raise  # a point process its launcher stopped: the launcher records why (local_launcher._record_stopped)
        tracking.finish_active(exit_code=1, summary=trial_job.wandb_summary("cancelled"))
        update_status(
            run_dir,
            state=run_folder.CANCELLED,
            ended_at=run_folder.now_iso(),
            error="stopped (Ctrl-C) while it ran; run the same command again to resume it from its last checkpoint",
        )
        _release(run_dir, holder)
        raise
    except trial_job.TrialPruned as pruned:  # the search's pruner stopped it: finished, not an error
        if cluster.is_main_process():
            trial_job.record_pruned(run_dir, pruned, update_status)
        _release(run_dir, holder)
        step, value = pruned.metrics.get("pruned_at_step"), pruned.metrics.get("pruned_value")
        _announce(multirun, hydra_cfg, run_dir, "pruned", f"at step {step} ({cfg.objective.metric}={value:.4g})")
        return math.nan
    except Exception as exc:
        tracking.finish_active(exit_code=1, summary=trial_job.wandb_summary("failed"))
        error = f"{type(exc).__name__}: {exc}"
        if cluster.is_main_process() and disk.out_of_space(exc, run_dir):
            # A full disk: free what the half-written checkpoint holds first, or not even the failure gets recorded.
            error = disk.no_space_error(exc, run_dir)
        try:
            update_status(
                run_dir,
                state=run_folder.FAILED,
                ended_at=run_folder.now_iso(),
                error=error,
                traceback=traceback.format_exc(),
                # The user's config or data: the same settings fail the same way, so a search does not retry them.
                user_error=isinstance(exc, console.user_error_types()),
                # torch.OutOfMemoryError: the launcher re-plans the point (slurm/replan.py) within resume.max_replans.
                memory_error=replan.GPU if replan.is_gpu_oom(exc) else None,
            )
        except OSError as write_error:  # the disk is still full: the sweep's watcher records what SLURM saw
            log.error("Point %s failed (%s) and status.json could not be written: %s", run_dir, error, write_error)
        _announce(multirun, hydra_cfg, run_dir, "failed", f"after {console.duration(time.time() - started)}: {error}")
        _release(run_dir, holder)
        if cluster.distributed():
            _end_the_job(exc)
        message = None if multirun else console.user_error_message(exc, run_dir)
        if message:  # the user's config or data: the problem list is the whole story, a traceback only hides it
            raise SystemExit(message) from None
        if not multirun:
            raise
        log.error("Point %s failed: %s (traceback in %s)", run_dir.name, error, run_dir)
        return math.nan
    update_status(run_dir, state=run_folder.COMPLETED, ended_at=run_folder.now_iso())
    _release(run_dir, holder)
    acc = metrics.get("eval_rewards/accuracies")
    result = f", eval reward acc {acc:.3f}" if isinstance(acc, int | float) else ""
    _announce(multirun, hydra_cfg, run_dir, "completed", f"in {console.duration(time.time() - started)}{result}")
    return _objective(metrics)
