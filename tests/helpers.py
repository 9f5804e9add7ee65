"""Shared test helpers: compose configs in-process, run the real CLI in a subprocess, read run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dpo_sweeps.cli import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
# The fast CPU shape every end-to-end test starts from.
TINY = ["dataset=toy", "training=smoke", "logger=none"]
# The environment that makes a run with training.fsdp set train sharded on CPU ranks (tests/force_fsdp/: test code
# only; accelerate enables FSDP only on GPUs). It reaches SLURM jobs through sbatch's environment.
FORCE_FSDP = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "force_fsdp"), os.environ.get("PYTHONPATH")])),
    "DPO_SWEEPS_TEST_FORCE_FSDP": "1",
}


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """Compose like the CLI does (same primary config, same schema), without running anything."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def run_cli(
    args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict | None = None, check: bool = True
):
    """`python -m dpo_sweeps ARGS` in a subprocess, exactly as a user types it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dpo_sweeps {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The point folders of a sweep folder (those with a status.json)."""
    return sorted(p for p in Path(sweep_dir).iterdir() if (p / "status.json").exists())
