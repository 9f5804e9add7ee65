"""Weights & Biases tracking: one W&B run per sweep point, grouped by sweep, never in the way of training.

    run      = the sweep point; its id is stored in the run folder (`wandb_run_id`), so a requeued or resumed job
               continues the same W&B run (resume="allow"); `rerun=true` moves the file aside and starts a new one.
    group    = the sweep (config `name`, else the sweep folder; a single run is its own group)
    name     = the run folder's name: the point's overrides that vary across its sweep (`beta=0.1`)
    job_type = dpo-lora / dpo-qlora / dpo-full;  tags = the chosen group options (model:..., loss:..., ...)
    config   = the resolved config + overrides, group choices, package versions, git commit

Only global rank 0 talks to W&B. Without an API key the run is logged offline (sync later with `wandb sync`). If
W&B is unreachable or fails, at init or mid-run, training goes on: tracking falls back to offline, or off, within
`logger.init_timeout_s`, with a warning. metrics.jsonl in the run folder is written independently of all this.

HF's own WandbCallback is not used (`report_to=[]`): it owns wandb.init, and we need the id, group, fallback and
rank handling above. `wandb` is imported only when a run starts (it costs ~1 s), never on the submit path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.tracking.identity import RunIdentity, global_rank, run_identity

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
# wandb's own end-of-run upload wait is unbounded by default; a dead network must not hold a GPU job hostage.
FINISH_TIMEOUT_S = 120


@dataclass
class Tracker:
    """The live W&B run of this process (or a record of why there is none)."""

    mode: str  # online, offline, or off
    identity: RunIdentity | None = None
    run: Any = None
    sync_dir: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def url(self) -> str | None:
        return getattr(self.run, "url", None) if self.mode == "online" else None

    def info(self) -> dict[str, Any]:
        """What metrics.json and the model card record about tracking."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.identity:
            out.update(run_id=self.identity.run_id, project=self.identity.project, group=self.identity.group)
        if self.url:
            out["url"] = self.url
        if self.sync_dir:
            out["sync_dir"] = self.sync_dir
            out["sync_command"] = f"wandb sync {self.sync_dir}"
        return out

    def _guard(self, what: str, fn, *args, **kwargs) -> Any:
        """A W&B call that fails mid-run turns tracking off with a warning; training and metrics.jsonl go on."""
        if self.run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any client failure, by design)
            msg = f"W&B {what} failed ({type(exc).__name__}: {exc}); W&B tracking is off for the rest of this run."
            log.warning("%s The run folder's metrics.jsonl is complete regardless.", msg)
            self.warnings.append(msg)
            self.run = None
            self.mode = "off"
            return None

    def log_metrics(self, logs: dict[str, Any], global_step: int) -> None:
        row = {_wandb_key(k): v for k, v in logs.items() if isinstance(v, int | float)}
        row["train/global_step"] = global_step
        self._guard("log", self.run.log if self.run else None, row)

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        if not rows or self.run is None:
            return
        import wandb

        columns = ["prompt", "reference", "policy"]
        table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self._guard("table log", self.run.log, {"samples": table})

    def finish(self, metrics: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        global _ACTIVE
        if self.run is not None:
            if metrics:
                flat = {
                    k: v
                    for k, v in metrics.items()
                    # search/state: a search trial's outcome (complete, pruned, failed), a string
                    if (isinstance(v, int | float) and not isinstance(v, bool)) or k.startswith("search/")
                }
                self._guard("summary update", self.run.summary.update, flat)
            self._guard("finish", self.run.finish, exit_code=exit_code)
            # finish() returns before wandb's service has closed the run file; teardown waits for it, so the file is
            # complete when the job ends (or the next point of the sweep starts its own run).
            _teardown()
            if self.mode == "offline" and self.sync_dir:
                log.info(
                    "W&B run %s logged offline. Upload it with: wandb sync %s", self.identity.run_id, self.sync_dir
                )
        self.run = None
        if _ACTIVE is self:
            _ACTIVE = None


# The tracker of the sweep point running in this process, so that a failure path can close it (sweep/job.py).
_ACTIVE: Tracker | None = None


def _wandb_key(key: str) -> str:
    """HF Trainer's log keys -> W&B sections, as HF's WandbCallback does: eval_x -> eval/x, x -> train/x."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if key.startswith("initial_eval_"):
        return "initial_eval/" + key[len("initial_eval_") :]
    if key.startswith("gen/"):  # the generation eval's section (dpo_sweeps/eval/)
        return key
    return "train/" + key


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_api_key() -> bool:
    """An API key from the environment or ~/.netrc (what `wandb login` writes) for the configured host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth  # wandb-internal; absent in other versions

        return bool(read_netrc_auth(host=_base_url()))
    except Exception:  # noqa: BLE001
        return False


def requested_mode(cfg: DictConfig) -> str:
    """online / offline / disabled: logger.mode, else WANDB_MODE, else online with an API key and offline without."""
    mode = cfg.logger.mode or os.environ.get("WANDB_MODE")
    if mode in ("dryrun",):
        return "offline"
    if mode:
        return mode
    return "online" if has_api_key() else "offline"


def _reachable(timeout_s: float) -> str | None:
    """None if the W&B host accepts a TCP connection within `timeout_s`, else why not. A refused or black-holed
    address is known in at most `timeout_s`, where wandb.init itself retries for tens of seconds."""
    url = urllib.parse.urlparse(_base_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{url.hostname}:{port} unreachable ({exc})"


def _init(identity: RunIdentity, mode: str, wandb_dir: str | None, timeout_s: float):
    """wandb.init in a daemon thread, abandoned after `timeout_s`: its own init_timeout does not cover every retry
    (measured: ~13 s against a refused port with init_timeout=5)."""
    import wandb

    result: dict[str, Any] = {}

    def target():
        try:
            result["run"] = wandb.init(
                project=identity.project,
                entity=identity.entity,
                group=identity.group,
                name=identity.name,
                job_type=identity.job_type,
                tags=identity.tags,
                config=identity.config,
                id=identity.run_id,
                resume="allow",
                mode=mode,
                dir=wandb_dir,
                settings=wandb.Settings(
                    init_timeout=timeout_s,
                    finish_timeout=FINISH_TIMEOUT_S,
                    # A basic-launcher sweep runs its points in one process: close the previous point's run.
                    reinit="finish_previous",
                    # Our logging already goes to the job's log file; W&B's console capture would double it.
                    console="off",
                    silent=True,
                ),
            )
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=target, name="wandb-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"wandb.init did not return within logger.init_timeout_s={timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result["run"]


def _sync_dir(run) -> str | None:
    path = getattr(getattr(run, "settings", None), "sync_dir", None)
    return str(path) if path else None


def open_run(identity: RunIdentity, mode: str, folder: Path, timeout_s: float) -> Tracker:
    """Open `identity`'s run: online if asked and reachable within `timeout_s`, else offline, else off; each fallback
    logged. Offline files go into `folder` unless WANDB_DIR says otherwise."""
    wandb_dir = None if os.environ.get("WANDB_DIR") else str(folder)
    tracker = Tracker(mode=mode, identity=identity)
    if mode == "online":
        problem = _reachable(min(timeout_s, 10.0))
        if problem is None:
            try:
                tracker.run = _init(identity, "online", wandb_dir, timeout_s)
            except BaseException as exc:  # noqa: BLE001
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            msg = f"W&B online init failed: {problem}. Logging offline instead."
            log.warning(msg)
            tracker.warnings.append(msg)
            tracker.mode = "offline"
            _teardown()
    if tracker.mode == "offline":
        try:
            tracker.run = _init(identity, "offline", wandb_dir, timeout_s)
        except BaseException as exc:  # noqa: BLE001
            msg = f"W&B offline init failed too ({type(exc).__name__}: {exc}); W&B tracking is off for this run."
            log.warning(msg)
            tracker.warnings.append(msg)
            tracker.mode = "off"
            return tracker
        tracker.sync_dir = _sync_dir(tracker.run)
        log.info(
            "W&B run %s (group %s) is logged offline; upload it later with: wandb sync %s",
            identity.run_id,
            identity.group,
            tracker.sync_dir,
        )
    else:
        tracker.sync_dir = _sync_dir(tracker.run)
        log.info("W&B run: %s", tracker.url)
    return tracker


def start(cfg: DictConfig, run_dir: Path) -> Tracker:
    """Start this sweep point's W&B run (rank 0 only); always returns a Tracker, whose mode may be "off"."""
    global _ACTIVE
    if cfg.logger.backend != "wandb":
        return Tracker(mode="off")
    if global_rank() != 0:
        return Tracker(mode="off")
    mode = requested_mode(cfg)
    if mode == "disabled":
        log.info("W&B disabled (logger.mode / WANDB_MODE); metrics are in %s", Path(run_dir) / run_folder.HISTORY_FILE)
        return Tracker(mode="off")
    identity = run_identity(cfg, run_dir)
    # Offline files go into the run folder unless WANDB_DIR says otherwise: the run folder stays self-contained.
    tracker = open_run(identity, mode, run_dir, float(cfg.logger.init_timeout_s))
    if tracker.run is None:
        log.warning("Metrics are in %s", Path(run_dir) / run_folder.HISTORY_FILE)
        return tracker
    # Trainer steps, not wandb's own counter, are the x-axis: a resumed run re-logs steps after its checkpoint.
    tracker._guard("define_metric", tracker.run.define_metric, "train/global_step")
    tracker._guard("define_metric", tracker.run.define_metric, "*", step_metric="train/global_step", step_sync=True)
    _ACTIVE = tracker
    return tracker


def _teardown() -> None:
    """Drop the failed online run from wandb's service, so the same id can be opened offline."""
    try:
        import wandb

        wandb.teardown()
    except Exception:  # noqa: BLE001
        pass


def finish_active(exit_code: int = 1, summary: dict[str, Any] | None = None) -> None:
    """Close this process's W&B run, if one is open, after a failure outside the trainer (sweep/job.py's except path);
    `summary`: keys for the run's summary (a search trial's state)."""
    if _ACTIVE is not None:
        _ACTIVE.finish(summary, exit_code=exit_code)


def model_card_links(metrics: dict[str, Any]) -> dict[str, str | None]:
    """Keyword arguments for `model_card.write_model_card`: the run's URL, or how to find and sync an offline run."""
    info = metrics.get("tracking") or {}
    if info.get("url"):
        return {"wandb_url": info["url"], "tracking_note": None}
    if info.get("mode") == "offline" and info.get("run_id"):
        return {
            "wandb_url": None,
            "tracking_note": f"W&B: offline run `{info['run_id']}` (group `{info.get('group')}`); upload it with "
            f"`{info.get('sync_command', 'wandb sync <run folder>/wandb/offline-run-*')}`.",
        }
    return {"wandb_url": None, "tracking_note": None}


def make_callback(tracker: Tracker):
    """A TrainerCallback that sends every Trainer log event to the tracker (rank 0 only)."""
    from transformers import TrainerCallback

    class WandbLogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                tracker.log_metrics(logs, state.global_step)

    return WandbLogCallback()
