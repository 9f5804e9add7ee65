"""Fetch once, run offline, on the local SLURM cluster: a sweep whose models and datasets are all in the cache runs
its SLURM jobs with HF_HUB_OFFLINE=1 (the pre-launch check sets it in the submitting process; sbatch exports it into
every job), so a compute node without internet makes no hub request. The in-process case:
tests/test_fetch_offline.py."""

from __future__ import annotations

import json

import pytest

from dpo_sweeps.runs import folder as run_folder
from tests.helpers import REPO, read_json, run_cli, run_dirs
from tests.hydra_apps.env_probe import PROBE_FILE
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)
from tests.test_fetch_offline import HUB_MODEL, SMALL, hub, hub_env, run_module  # noqa: F401  (hub: a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def test_a_fetched_sweep_runs_its_slurm_jobs_with_the_hub_off(slurm_cluster, tmp_path, hub):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    env = {**hub_env(tmp_path, hub.url), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    sweep_dir = tmp_path / "sweep"
    sweep = [*HUB_MODEL, "dataset=orca_dpo_pairs", *SMALL, "training.max_steps=2", "beta=0.1,0.2", "-m"]
    fetched = run_module("dpo_sweeps.fetch", sweep, cwd=work, env=env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr

    hub.stop()  # the compute nodes have no hub: everything must come from the cache
    probe = [
        "+hydra.callbacks.env_probe._target_=hydra_apps.env_probe.RecordEnv",
        f"+hydra.callbacks.env_probe.names='{':'.join(OFFLINE)}'",
    ]
    proc = run_cli(
        [*sweep[:-1], "hydra/launcher=slurm_local", *probe, f"hydra.sweep.dir={sweep_dir}", "-m"],
        cwd=work,
        env=env,
        check=False,
        timeout=QUEUE_WAIT_S + 600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "run with HF_HUB_OFFLINE=1" in out and "Sweep summary: 2 completed" in out, out[-4000:]
    points = run_dirs(sweep_dir)
    assert len(points) == 2
    for point in points:
        status = read_json(point / run_folder.STATUS_FILE)
        assert status["state"] == run_folder.COMPLETED and status.get("slurm"), status  # a SLURM job ran it
        seen = json.loads((point / PROBE_FILE).read_text())
        assert seen == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, (point.name, seen)
    assert "Retry" not in out and "couldn't connect" not in out.lower()
