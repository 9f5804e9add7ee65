"""hydra/launcher=local_parallel: a point whose process dies outside our task function (here `os._exit` in a Hydra
callback after the run recorded completed) fails the sweep, as stock submitit_local does (exit 1), and is recorded
failed with the reason; the other point is unaffected."""

from __future__ import annotations

import pytest
from helpers import REPO, TINY, read_json, run_cli

from dpo_sweeps.runs import folder as run_folder


@pytest.mark.slow
def test_a_point_whose_process_dies_after_its_run_fails_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "model=tiny_qwen",
            *TINY,
            "training.max_steps=2",
            "eval.gen_prompts=0",
            "training.save_model=false",
            "beta=0.1,0.3",
            "hydra/launcher=local_parallel",
            "+hydra.callbacks.die._target_=hydra_apps.dying_callback.ExitAfterJob",
            "+hydra.callbacks.die.only='beta=0.3'",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
        check=False,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    dead = read_json(sweep / "beta=0.3" / run_folder.STATUS_FILE)
    assert dead["state"] == run_folder.FAILED
    assert "ended without a result" in dead["error"] and "recorded completed" in dead["error"]
    assert read_json(sweep / "beta=0.1" / run_folder.STATUS_FILE)["state"] == run_folder.COMPLETED
    assert "1 completed, 1 failed" in proc.stdout
