"""Shared test helpers: compose configs in-process, run the real CLI in a subprocess, read run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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


def stored_trials(sweep_dir: Path) -> list:
    """The trials a search's Optuna journal in `sweep_dir` holds, read as a person's second process would (an existing
    study, no sampling or pruning of its own)."""
    from dpo_sweeps.search import settings, study

    return study.open_study(
        study.journal_path(None, Path(sweep_dir)),
        "dpo_sweeps",
        [],
        settings.sampler({"type": "random"}),
        settings.pruner({"type": "none"}),
        create=False,
    ).get_trials()


def start_sweep(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`python -m dpo_sweeps ARGS` in the background, its output collected: for tests that act on a running sweep
    (a signal, a kill, a scancel) and then read how it ended (`proc.communicate()`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_point(
    proc: subprocess.Popen,
    sweep: Path,
    ready: Callable[[Path], bool],
    why: str,
    pattern: str = "*/status.json",
    timeout: float = 300,
) -> Path:
    """The first point folder of `sweep` holding `pattern` for which `ready(folder)` holds, while the sweep runs;
    fails the test with `why` when the sweep ends or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, why
        found = [p.parent for p in sweep.glob(pattern)]
        if found and ready(found[0]):
            return found[0]
        time.sleep(0.1)


def trained_steps(n: int) -> Callable[[Path], bool]:
    """`wait_for_point`'s test: the run has logged training step `n` or later in its metrics.jsonl."""
    from dpo_sweeps.runs import folder as run_folder

    return lambda run_dir: any(r.get("step", 0) >= n for r in run_folder.read_history(run_dir))


def preempt_at_step(proc: subprocess.Popen, sweep: Path, cluster, step: int, timeout: float = 300) -> Path:
    """What a preemption delivers: USR2 to every step of the SLURM job of `sweep`'s first point, once it has logged
    training step `step` (the tests pick a step between two save points, so a checkpoint can only come from the
    signal); returns the point's folder."""
    run_dir = wait_for_point(
        proc, sweep, trained_steps(step), "job ended or stalled before the signal", "*/metrics.jsonl", timeout
    )
    cluster.run("scancel", "--signal=USR2", read_json(run_dir / "status.json")["slurm"]["job_id"])
    return run_dir
