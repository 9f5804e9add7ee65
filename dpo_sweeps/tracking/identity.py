"""Who a run is on the W&B dashboard, computed without wandb so it can be tested and shown on its own: a stable run id
kept in the run folder (a requeued job continues the same run), the sweep as its group, the folder name as its name,
tags from the chosen group options, and the resolved config with overrides, package versions and the git commit."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.report.model_card import framework_versions
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import trial

RUN_ID_FILE = "wandb_run_id"
DEFAULT_PROJECT = "dpo_sweeps"
TAG_GROUPS = ("model", "dataset", "loss", "lora", "quantization", "experiment", "training")
# W&B rejects tags longer than 64 characters.
MAX_TAG_CHARS = 64
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunIdentity:
    """Who this run is on the dashboard; computed without wandb so it can be tested and shown on its own."""

    run_id: str
    project: str
    entity: str | None
    group: str
    name: str
    job_type: str
    tags: list[str]
    config: dict[str, Any]


def global_rank() -> int:
    """torch.distributed's RANK (set by torchrun and by our SLURM glue); 0 outside distributed runs."""
    return int(os.environ.get("RANK", "0") or 0)


def stable_run_id(run_dir: Path) -> str:
    """The W&B run id of this sweep point: read from the run folder, or created and stored there on first use."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.exists():
        stored = path.read_text().strip()
        if stored:
            return stored
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    run_folder.write_text_atomic(path, run_id + "\n")
    return run_id


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit of the code that ran (and whether it had local changes); {} outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def _hydra_context() -> tuple[bool, list[str], dict[str, Any]]:
    """(multirun?, task overrides, group choices) of the running Hydra job; empty outside Hydra (direct calls)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, [], {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")}
    return hc.mode == RunMode.MULTIRUN, list(hc.overrides.task), choices


def job_type(cfg: DictConfig) -> str:
    if not cfg.lora.enabled:
        return "dpo-full"
    quantized = cfg.quantization.mode != "none" or cfg.model.prequantized
    return "dpo-qlora" if quantized else "dpo-lora"


def run_identity(cfg: DictConfig, run_dir: Path, run_id: str | None = None) -> RunIdentity:
    run_dir = Path(run_dir)
    multirun, overrides, choices = _hydra_context()
    if cfg.name:
        group = str(cfg.name)
    elif multirun:
        group = run_dir.parent.name
    else:
        group = run_dir.name
    tags = [f"{g}:{choices[g]}"[:MAX_TAG_CHARS] for g in TAG_GROUPS if choices.get(g) not in (None, "null")]
    tags += [str(t)[:MAX_TAG_CHARS] for t in cfg.logger.tags]
    # A search trial: its number and study (W&B's parallel-coordinates view of the group is then the search).
    search, search_tags = trial.wandb_identity()
    tags += search_tags
    config = OmegaConf.to_container(cfg, resolve=True)
    if search:
        config["search"] = search
    if cfg.model.gguf:
        from dpo_sweeps.models.gguf import source_description

        config["base_model_source"] = source_description(cfg.model.gguf)
    config["run"] = {
        "overrides": overrides,
        "choices": choices,
        "run_dir": str(run_dir),
        "versions": framework_versions(),
        **git_commit(),
        **({"slurm": run_folder.slurm_ids()} if run_folder.slurm_ids() else {}),
    }
    return RunIdentity(
        run_id=run_id or stable_run_id(run_dir),
        project=cfg.logger.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=cfg.logger.entity or os.environ.get("WANDB_ENTITY") or None,
        group=group,
        # The run folder's name: the point's overrides that vary across its sweep (all of them for a single run).
        name=run_dir.name,
        job_type=job_type(cfg),
        tags=list(dict.fromkeys(tags)),
        config=config,
    )
