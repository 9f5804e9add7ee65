"""Seed racing on the local SLURM cluster (`hydra/launcher=slurm_local`): each wave is submitted as one array, the
sweep waits for it, then decides; a raced-out configuration's remaining seed is never submitted."""

from __future__ import annotations

import pytest

from dpo_sweeps.runs import folder as run_folder
from tests.helpers import read_json, run_cli
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)
from tests.test_racing import BAD, FAST, GOOD

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_waves_are_arrays_and_the_clearly_worse_configuration_is_raced_out_on_slurm(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *FAST,
            "hydra/launcher=slurm_local",
            f"training.learning_rate={GOOD},{BAD}",
            "seed=1,2,3,4",
            "racing.enabled=true",
            "racing.min_seeds=3",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=3 * QUEUE_WAIT_S,
    )
    assert "raced out after wave 3" in proc.stdout + proc.stderr
    points = {
        next(o for o in p["overrides"] if o.startswith("training.learning_rate=")).split("=")[1]
        + "/"
        + next(o for o in p["overrides"] if o.startswith("seed=")).split("=")[1]: p
        for p in run_folder.read_sweep_points(sweep)
    }
    # Waves 1-3: one array of two tasks each, submitted one after another (the next only after the sweep decided).
    arrays = []
    for seed in (1, 2, 3):
        ids = {points[f"{lr}/{seed}"]["slurm_job_id"] for lr in (GOOD, BAD)}
        assert len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids), (seed, ids)
        arrays.append(int(next(iter(ids)).split("_")[0]))
    assert arrays == sorted(set(arrays)), "one array per wave, in wave order"
    assert points[f"{GOOD}/4"]["slurm_job_id"] and int(points[f"{GOOD}/4"]["slurm_job_id"].split("_")[0]) > arrays[-1]
    assert not points[f"{BAD}/4"].get("slurm_job_id"), "the skipped seed was never submitted"

    for key, p in points.items():
        state = read_json(p["run_dir"] + "/status.json")["state"]
        assert state == ("skipped_by_racing" if key == f"{BAD}/4" else "completed"), key
    skipped = read_json(points[f"{BAD}/4"]["run_dir"] + "/status.json")
    assert skipped["racing"]["wave"] == 3 and skipped["racing"]["best"]["config"] == f"training.learning_rate={GOOD}"
