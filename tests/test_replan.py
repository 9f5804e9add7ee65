"""Re-plan on memory (issue 27): a point that dies of memory is resubmitted with a plan that fits, into its own folder,
and status.json says what changed and why. The GPU path is provoked for real: a Hydra callback (tests/hydra_apps/
memory_faults.py) raises torch.OutOfMemoryError in a training step whose micro-batch is too big, in the job's own
process; the SLURM host-memory path is in tests/test_replan_slurm.py."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, TINY, read_json, run_cli
from omegaconf import OmegaConf

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm import replan

OOM = [
    "+hydra.callbacks.oom._target_=hydra_apps.memory_faults.OutOfMemoryAtStep",
    "+hydra.callbacks.oom.step=1",
    "+hydra.callbacks.oom.max_batch=2",
]
SMALL = [
    "model=tiny_llama",
    *TINY,
    "training.max_steps=3",
    "training.save_steps=100",
    "eval.gen_prompts=0",
    "training.save_model=false",
    "training.per_device_train_batch_size=4",
    "training.gradient_accumulation_steps=1",
]


def _sweep(tmp_path, *extra: str, launcher: str = "local_parallel"):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *SMALL, "beta=0.1", *OOM, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", *extra],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
        timeout=1200,  # two attempts of a tiny run; minutes each on a loaded 2-core machine
        check=False,
    )
    (run_dir,) = [p.parent for p in sweep.glob(f"*/{run_folder.STATUS_FILE}")]
    return proc, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "local"])
def test_a_gpu_oom_halves_the_micro_batch_keeps_the_effective_batch_and_completes(tmp_path, launcher):
    proc, run_dir = _sweep(tmp_path, launcher=launcher)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    status = read_json(run_dir / run_folder.STATUS_FILE)
    assert status["state"] == run_folder.COMPLETED, status
    assert status["attempts"] == 2
    (plan,) = status["replans"]
    assert plan["cause"] == "gpu" and "OutOfMemoryError" in plan["error"] and "CUDA out of memory" in plan["error"]
    assert plan["changes"]["training.per_device_train_batch_size"] == {"from": 4, "to": 2}
    assert plan["changes"]["training.gradient_accumulation_steps"] == {"from": 1, "to": 2}
    assert "the same effective batch (4" in plan["why"]
    cfg = OmegaConf.load(run_dir / run_folder.CONFIG_FILE)  # what the second job really ran with
    assert cfg.training.per_device_train_batch_size == 2 and cfg.training.gradient_accumulation_steps == 2
    # What the training steps saw: 4 pairs a step until the OOM at step 1, then 2 pairs twice per optimizer step.
    seen = [json.loads(line) for line in (run_dir / "micro_batches.jsonl").read_text().splitlines()]
    first = [s for s in seen if s["pairs"] == 4]
    second = seen[len(first) :]
    assert [s["global_step"] for s in first] == [0, 1]  # step 0 trained, step 1 ran out of memory
    assert [s["pairs"] for s in second] == [2] * 6
    assert [s["global_step"] for s in second] == [0, 0, 1, 1, 2, 2]
    assert read_json(run_dir / run_folder.METRICS_FILE)["global_step"] == 3
    # The sweep's console summary and its tables say what changed and why.
    table = (run_dir.parent / "summary.csv").read_text()
    for said in ("re-planned: ", "training.per_device_train_batch_size 4 -> 2", "gradient_accumulation_steps 1 -> 2"):
        assert said in out and said in table


@pytest.mark.slow
def test_max_replans_0_fails_the_point_with_the_fix(tmp_path):
    proc, run_dir = _sweep(tmp_path, "resume.max_replans=0")
    assert proc.returncode == 1
    status = read_json(run_dir / run_folder.STATUS_FILE)
    assert status["state"] == run_folder.FAILED and status["attempts"] == 1 and not status.get("replans")
    assert status["memory_error"] == "gpu"
    assert "Not re-planned: re-planned 0 time(s) already (resume.max_replans=0)" in status["error"]


def test_gpu_plan_keeps_the_effective_batch():
    plan = replan.gpu_plan(
        {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 3, "per_device_eval_batch_size": 8}, "e"
    )
    assert plan.changes == {
        "training.per_device_train_batch_size": (6, 3),
        "training.gradient_accumulation_steps": (3, 6),
        "training.per_device_eval_batch_size": (8, 4),
    }
    odd = replan.gpu_plan({"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2}, "e")
    assert odd.changes["training.per_device_train_batch_size"] == (3, 1)
    assert odd.changes["training.gradient_accumulation_steps"] == (2, 6)  # 3 x 2 = 1 x 6


def test_at_a_micro_batch_of_1_gradient_checkpointing_is_next_and_then_nothing():
    plan = replan.gpu_plan({"per_device_train_batch_size": 1, "gradient_checkpointing": False}, "e")
    assert plan.changes == {"training.gradient_checkpointing": (False, True)}
    with pytest.raises(replan.CannotReplan, match="training.fsdp.enabled=true .* dry_run=true"):
        replan.gpu_plan({"per_device_train_batch_size": 1, "gradient_checkpointing": True}, "e")


def test_host_plan_doubles_mem_gb_up_to_the_partition():
    assert replan.host_plan(4, 21.7, "e").changes == {replan.MEM_GB_KEY: (4, 8)}
    assert replan.host_plan(16, 21.7, "e").changes == {replan.MEM_GB_KEY: (16, 21)}
    assert replan.host_plan(None, 21.7, "e").changes == {replan.MEM_GB_KEY: (None, 21)}
    with pytest.raises(replan.CannotReplan, match="already what a node of its partition holds"):
        replan.host_plan(21, 21.7, "e")


def test_a_host_kill_is_read_from_sacct_or_the_jobs_log(tmp_path):
    failed = {"state": run_folder.FAILED, "slurm": {"state": "FAILED"}}
    log_file = tmp_path / "log.err"
    log_file.write_text(
        "slurmstepd-n1: error: StepId=5.0 exceeded memory limit (313188352 > 209715200), being killed\n"
    )
    assert replan.memory_cause(failed, log_file) == replan.HOST
    assert replan.memory_cause(failed, tmp_path / "none.err") is None
    assert replan.memory_cause({**failed, "slurm": {"state": "OUT_OF_MEMORY"}}) == replan.HOST
    assert replan.memory_cause({"state": run_folder.FAILED, "memory_error": "gpu"}) == replan.GPU
    assert replan.memory_cause({"state": run_folder.COMPLETED, "memory_error": "gpu"}) is None
