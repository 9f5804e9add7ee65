"""Full-parameter DPO sharded with FSDP2 over two CPU ranks (gloo), as two tasks of one job on the local SLURM cluster
(the way test_slurm_sweeps.py runs DDP).

accelerate turns FSDP on only for GPU backends, so these tests force it on from test code: tests/force_fsdp/
sitecustomize.py, active through tests/helpers.FORCE_FSDP (PYTHONPATH + DPO_SWEEPS_TEST_FORCE_FSDP=1) (which reach the job through sbatch's
environment). The product runs unchanged: it passes `training.fsdp` to TRL as on GPUs. Every test checks that the run
really was sharded (metrics.json: parallelism/type == FSDP), so a forcing that stopped working fails them rather than
silently testing DDP twice.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.train import cluster
from tests.helpers import (
    FORCE_FSDP,
    TINY,
    preempt_at_step,
    read_json,
    run_cli,
    start_sweep,
)
from tests.slurm_support import QUEUE_WAIT_S, slurm_cluster  # noqa: F401  (the session fixture)

RULES_LOG = "DPO_SWEEPS_TEST_GPU_RULES_LOG"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Full DPO of the tiny Llama on two ranks of one job; the same point without FSDP is the DDP baseline.
TWO_RANKS = [
    "model=tiny_llama",
    *TINY,
    "lora=none",
    "hydra/launcher=slurm_local",
    "hydra.launcher.tasks_per_node=2",
    # Validation refuses FSDP with use_cpu=true (on GPUs it would be a mistake); the job still runs on CPU here.
    "training.use_cpu=false",
    "training.logging_steps=1",
]
FSDP = ["training.fsdp.enabled=true"]


def _env(tmp_path: Path, name: str) -> dict[str, str]:
    """The forcing, and the file its GPU-rule checks write to (tests/force_fsdp/sitecustomize.py)."""
    return {**FORCE_FSDP, RULES_LOG: str(tmp_path / f"{name}_gpu_rules.jsonl")}


def _sweep(tmp_path: Path, name: str, overrides: list[str], fsdp: bool, timeout: float = 600) -> Path:
    sweep = tmp_path / name
    run_cli(
        ["-m", *TWO_RANKS, *overrides, *(FSDP if fsdp else []), f"hydra.sweep.dir={sweep}"],
        env=_env(tmp_path, name),
        timeout=timeout,
    )
    (run_dir,) = [p.parent for p in sweep.glob("*/status.json")]
    return run_dir


def _assert_generation_on_the_prepared_model(tmp_path: Path, name: str, run_dir: Path, metrics: dict) -> None:
    """Every `generate` of the run, on both ranks, got the FSDP2 module accelerate prepared, every parameter a sharded
    DTensor (what NCCL on a device demands; see sitecustomize.py), once per batch before training and once after."""
    calls = [json.loads(line) for line in (tmp_path / f"{name}_gpu_rules.jsonl").read_text().splitlines()]
    batch_size = OmegaConf.load(run_dir / run_folder.CONFIG_FILE).eval.batch_size
    batches = math.ceil(metrics["gen/prompts"] / batch_size)
    for rank in (0, 1):
        mine = [c for c in calls if c["call"] == "generate" and c["rank"] == rank]
        assert len(mine) == 2 * batches, (rank, calls)
        assert all(c["fsdp"] and c["params"] == c["sharded"] > 0 for c in mine), mine


def _assert_fill_on_the_prepared_model(tmp_path: Path, name: str, metrics: dict) -> None:
    """Every forward that filled the reference cache, on both ranks, got the policy accelerate prepared (the FSDP2
    module, every parameter a sharded DTensor), not the unprepared policy (whole, on CPU: a CUDA batch does not run
    through it and NCCL refuses the gather) nor a second copy loaded for it on every rank."""
    calls = [json.loads(line) for line in (tmp_path / f"{name}_gpu_rules.jsonl").read_text().splitlines()]
    for rank in (0, 1):
        mine = [c for c in calls if c["call"] == "ref_fill" and c["rank"] == rank]
        assert len(mine) == metrics["ref_cache/forward_batches"] > 0, (rank, metrics, calls)
        assert all(c["fsdp"] and c["params"] == c["sharded"] > 0 and c["policy"] for c in mine), mine


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r}


def _assert_same_losses(got: dict[int, float], ref: dict[int, float], steps: int) -> None:
    assert sorted(got) == sorted(ref) == list(range(1, steps + 1))
    worst = max(abs(got[s] - ref[s]) for s in ref)
    assert worst < 1e-5, f"FSDP2 losses differ from DDP's by up to {worst:.2e}: {got} vs {ref}"


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def _assert_sharded(metrics: dict) -> None:
    assert metrics["parallelism/type"] == "FSDP" and metrics["parallelism/fsdp_version"] == 2, metrics
    assert metrics["parallelism/world_size"] == 2


def test_fsdp2_full_dpo_with_the_reference_cache_matches_ddp_and_saves_a_loadable_model(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    # Each run computes its own reference log-probs (own cache folder): the sharded pass must give DDP's numbers.
    common = ["training.max_steps=6", "training.save_steps=3"]
    fsdp = _sweep(tmp_path, "fsdp", [*common, f"ref_cache.dir={tmp_path / 'cache_fsdp'}"], fsdp=True)
    ddp = _sweep(tmp_path, "ddp", [*common, f"ref_cache.dir={tmp_path / 'cache_ddp'}"], fsdp=False)

    got, ref = read_json(fsdp / "metrics.json"), read_json(ddp / "metrics.json")
    _assert_sharded(got)
    assert ref["parallelism/type"] == "MULTI_CPU" and ref["parallelism/world_size"] == 2
    status = read_json(fsdp / "status.json")
    assert status["state"] == "completed" and status["world_size"] == 2
    # The rendezvous: the first host's NodeAddr and the job's own port; srun ends the job if a rank dies.
    assert status["nodes"] == [status["slurm"]["node"]]
    port = cluster.rendezvous_port(status["slurm"]["job_id"])
    assert status["master"] == f"{cluster.node_address(status['nodes'][0])}:{port}"
    assert all("--kill-on-bad-exit=1" in p.read_text() for p in (fsdp.parent / ".submitit").rglob("*.sh"))
    assert got["ref_cache"] == ref["ref_cache"] == "computed"
    _assert_fill_on_the_prepared_model(tmp_path, "fsdp", got)
    _assert_same_losses(_losses(fsdp), _losses(ddp), 6)
    # The evaluation before training ran (inside train(): FSDP2 shards model and optimizer together) and agrees.
    assert got["initial_eval_loss"] == pytest.approx(ref["initial_eval_loss"], abs=1e-5)
    assert got["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-5)

    # The saved model is the whole model (gathered from both shards), and it is the trained one.
    saved = _state_dict(fsdp / "model")
    trained = torch.load(fsdp / "checkpoints" / "checkpoint-6" / "pytorch_model_fsdp.bin", weights_only=True)
    assert sorted(saved) == sorted(trained)
    for name, tensor in trained.items():
        assert torch.equal(saved[name], tensor), f"{name}: model/ differs from the step-6 weights"
    ddp_saved = _state_dict(ddp / "model")
    for name, tensor in saved.items():
        assert tensor.shape == ddp_saved[name].shape, name
        assert torch.allclose(tensor, ddp_saved[name], atol=1e-5), name
    base = _state_dict(Path(tiny_model_paths["llama"]))
    assert any(not torch.equal(base[n], saved[n]) for n in saved), "training changed the weights"

    # The generation eval ran with both ranks taking part (a rank-0-only generate would hang on the all-gather);
    # before training both runs hold the same weights and sample with the same seed: the same answers.
    for key in ("gen/score_before", "gen/mean_tokens_before", "gen/finished_before"):
        assert got[key] == ref[key], key
    assert got["gen/prompts"] == ref["gen/prompts"] > 0 and "gen/mean_tokens" in got
    _assert_generation_on_the_prepared_model(tmp_path, "fsdp", fsdp, got)
    samples = (fsdp / "samples.jsonl").read_text().splitlines()
    assert len(samples) == len((ddp / "samples.jsonl").read_text().splitlines()) > 0, "written once, by rank 0"


def test_fsdp2_preempted_run_with_a_sharded_reference_resumes_to_ddps_losses(
    slurm_cluster,  # noqa: F811  (the fixture imported above)
    tmp_path,
    tiny_model_paths,
):
    # No reference cache: TRL shards the reference model too, and the generation eval's KL uses it on every rank.
    common = [
        "training.max_steps=40",
        "training.save_steps=20",
        "training.eval_before_training=false",
        "ref_cache.enabled=false",
    ]
    ddp = _sweep(tmp_path, "ddp", common, fsdp=False)

    sweep = tmp_path / "fsdp"
    proc = start_sweep(["-m", *TWO_RANKS, *common, *FSDP, f"hydra.sweep.dir={sweep}"], env=_env(tmp_path, "fsdp"))
    try:
        # Between two save points (save_steps=20): the checkpoint can only come from the signal.
        run_dir = preempt_at_step(proc, sweep, slurm_cluster, 5)
        out, _ = proc.communicate(timeout=QUEUE_WAIT_S)  # the requeued job queues again
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["requeues"] == 1 and status["world_size"] == 2
    metrics = read_json(run_dir / "metrics.json")
    _assert_sharded(metrics)
    assert 5 <= metrics["resumed_from_step"] < 20, "resumed from the checkpoint saved on the signal"
    assert metrics["global_step"] == 40
    _assert_same_losses(_losses(run_dir), _losses(ddp), 40)
    ref = read_json(ddp / "metrics.json")
    assert metrics["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-5)
    # The KL to the (sharded) reference was measured, close to DDP's.
    assert metrics["gen/kl_to_ref"] == pytest.approx(ref["gen/kl_to_ref"], abs=1e-3)
    # The answers before training were kept across the requeue (gen_before.json), not generated again.
    _assert_generation_on_the_prepared_model(tmp_path, "fsdp", run_dir, metrics)


# On TWO_RANKS: SmolLM2-135M (the `real` extra's model, fp32, 538 MB on disk), big enough that a load shows in RSS.
SMOLLM2 = [
    "model=smollm2_135m",
    "training.max_steps=3",
    # Enough rows for 3 steps of 2 x 2 pairs: every row more is a batch more of the cache fill on both ranks.
    "dataset.max_train_samples=16",
    "dataset.eval_max_rows=8",
    "training.learning_rate=1e-5",
    "training.per_device_train_batch_size=2",
    "training.per_device_eval_batch_size=4",
    "training.eval_before_training=false",
    "training.save_model=false",
    "training.sample_completions=2",
    "training.max_new_tokens=8",
    "eval.gen_prompts=2",
]


def _loads(tmp_path: Path, name: str) -> dict[int, dict]:
    calls = [json.loads(line) for line in (tmp_path / f"{name}_gpu_rules.jsonl").read_text().splitlines()]
    loads = {c["rank"]: c for c in calls if c["call"] == "load"}
    assert sorted(loads) == [0, 1] and len([c for c in calls if c["call"] == "load"]) == 2, calls
    return loads


def test_fsdp2_rank_zero_alone_reads_the_weights_and_broadcasts_them(slurm_cluster, tmp_path):  # noqa: F811
    """training.fsdp.cpu_ram_efficient_loading=true: rank 1 builds SmolLM2 on the meta device and grows by less than
    a tenth of what rank 0 grows reading the checkpoint; accelerate's prepare broadcasts rank 0's weights, so training
    gives the losses of a run where every rank read them."""
    timeout = QUEUE_WAIT_S + 900  # a 135M model on two CPU ranks of a loaded machine
    # The two runs are independent jobs of two tasks each: side by side they fit the cluster's four CPUs.
    with ThreadPoolExecutor(2) as pool:
        alone_run = pool.submit(
            _sweep, tmp_path, "alone", [*SMOLLM2, f"ref_cache.dir={tmp_path / 'cache_alone'}"], True, timeout
        )
        every_run = pool.submit(
            _sweep,
            tmp_path,
            "every",
            [*SMOLLM2, "training.fsdp.cpu_ram_efficient_loading=false", f"ref_cache.dir={tmp_path / 'cache_every'}"],
            True,
            timeout,
        )
        alone, every = alone_run.result(), every_run.result()
    got, ref = read_json(alone / "metrics.json"), read_json(every / "metrics.json")
    _assert_sharded(got)
    _assert_sharded(ref)

    loads, every_loads = _loads(tmp_path, "alone"), _loads(tmp_path, "every")
    assert loads[0]["meta_params"] == 0 and loads[0]["real_params"] > 0, loads
    assert loads[1]["real_params"] == 0 and loads[1]["meta_params"] == loads[0]["real_params"], loads
    assert loads[1]["rss_growth_mb"] < loads[0]["rss_growth_mb"] / 10, loads
    # Without the setting both ranks read the checkpoint and grow alike: the measure does see a whole load.
    assert all(c["meta_params"] == 0 for c in every_loads.values()), every_loads
    assert every_loads[1]["rss_growth_mb"] > loads[0]["rss_growth_mb"] / 2, (every_loads, loads)

    # Rank 1 trained and evaluated with rank 0's weights, not with uninitialised memory.
    _assert_same_losses(_losses(alone), _losses(every), 3)
    assert got["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-5)
    for key in ("gen/score_before", "gen/mean_tokens_before", "gen/mean_tokens"):
        assert got[key] == ref[key], key
    # The cache fill ran on the prepared policy after the broadcast (the harness checks every forward).
    assert got["ref_cache"] == "computed"
    _assert_fill_on_the_prepared_model(tmp_path, "alone", got)
