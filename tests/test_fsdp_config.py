"""training.fsdp as config: typed, defaulted per model family, mapped onto the Trainer's FSDP arguments, and the
results_conservative preset that shards with it, and FSDP on one rank refused before anything runs. No torch, no
training."""

from __future__ import annotations

import time

import pytest

from dpo_sweeps.config import fsdp
from dpo_sweeps.config.validation import find_problems
from tests.helpers import compose_config, run_cli
from tests.slurm_support import slurm_cluster  # noqa: F401  (the session fixture: the launcher asks scontrol first)

SEEDS = ["llama3_2_1b", "llama3_1_8b", "llama3_1_8b_4bit", "qwen1_5b", "gemma_2b"]
WRAP = {"llama": "LlamaDecoderLayer", "qwen2": "Qwen2DecoderLayer", "gemma": "GemmaDecoderLayer"}


@pytest.mark.parametrize("model", [*SEEDS, "smollm2_135m"])
def test_every_seed_model_has_its_shape_and_its_wrap_class(model):
    m = compose_config([f"model={model}"]).model
    assert m.arch is not None and m.arch.hidden_size > 0
    assert m.fsdp_wrap_class == WRAP[m.arch.model_type]


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen", "tiny_gemma"])
def test_tiny_models_wrap_their_family_layer(model):
    cfg = compose_config([f"model={model}"])
    assert cfg.model.fsdp_wrap_class == WRAP[cfg.model.tiny_arch]


def test_fsdp_off_leaves_the_trainer_alone():
    assert fsdp.trainer_args(compose_config(["model=qwen1_5b"])) == {}


def test_fsdp2_arguments_from_the_model_family():
    cfg = compose_config(["model=qwen1_5b", "lora=none", "training.fsdp.enabled=true"])
    args = fsdp.trainer_args(cfg)
    assert args["fsdp"] is True
    assert args["fsdp_config"] == {
        "version": 2,
        "state_dict_type": "FULL_STATE_DICT",
        # training.gradient_checkpointing=true (the default) becomes FSDP's own, and the Trainer's is off.
        "activation_checkpointing": True,
        "reshard_after_forward": True,
        "cpu_ram_efficient_loading": True,
        "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
    }
    assert args["activation_checkpointing"] is False


def test_fsdp_keys_override_the_family_defaults():
    cfg = compose_config(
        [
            "model=qwen1_5b",
            "lora=none",
            "training.fsdp.enabled=true",
            "training.fsdp.wrap_class=MyLayer",
            "training.fsdp.state_dict_type=SHARDED_STATE_DICT",
            "training.fsdp.activation_checkpointing=false",
        ]
    )
    config = fsdp.trainer_args(cfg)["fsdp_config"]
    assert config["transformer_layer_cls_to_wrap"] == ["MyLayer"]
    assert config["state_dict_type"] == "SHARDED_STATE_DICT" and config["activation_checkpointing"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.fsdp.version=3"], "training.fsdp.version=3: 2 (FSDP2) or 1"),
        (["training.fsdp.state_dict_type=LOCAL"], "training.fsdp.state_dict_type=LOCAL: must be one of"),
        (["lora=r16", "quantization=nf4"], "training.fsdp.enabled=true with quantization=nf4"),
    ],
)
def test_fsdp_rules_name_the_key_and_the_fix(overrides, message):
    cfg = compose_config(["model=qwen1_5b", "lora=none", "training.fsdp.enabled=true", *overrides])
    assert any(message in p for p in find_problems(cfg)), find_problems(cfg)


def test_results_conservative_shards_a_whole_node():
    cfg = compose_config(["experiment=results_conservative"], return_hydra_config=True)
    assert cfg.training.fsdp.enabled and cfg.training.fsdp.version == 2
    assert fsdp.activation_checkpointing(cfg) and cfg.model.dtype == "auto"  # bf16 on the GPUs
    assert fsdp.trainer_args(cfg)["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("dpo_sweeps_launcher.slurm.SlurmLauncher")
    assert launcher.gpus_per_node == 8 and launcher.tasks_per_node == 8
    assert find_problems(cfg) == []
    # A site profile or one GPU on the command line still wins over the preset.
    one = compose_config(
        ["experiment=results_conservative", "hydra.launcher.gpus_per_node=1", "hydra.launcher.tasks_per_node=1"],
        return_hydra_config=True,
    )
    assert one.hydra.launcher.gpus_per_node == 1


FULL_FSDP = ["model=qwen1_5b", "lora=none", "training.fsdp.enabled=true"]
ONE_RANK = "training.fsdp.enabled=true with one rank"


@pytest.mark.parametrize(
    ("overrides", "why", "fix"),
    [
        (
            ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=1"],
            "hydra.launcher.tasks_per_node=1 x hydra.launcher.nodes=1",
            "hydra.launcher.tasks_per_node=<GPUs per node> hydra.launcher.gpus_per_node=<GPUs per node>",
        ),
        (["hydra/launcher=submitit_local"], "tasks_per_node=1 x hydra.launcher.nodes=1", "tasks_per_node=<GPUs"),
        # The local launchers run a point as one process whatever tasks_per_node says.
        (
            ["hydra/launcher=local_parallel", "hydra.launcher.tasks_per_node=2"],
            "the LocalLauncher launcher runs each point as one process",
            "-m hydra/launcher=slurm hydra.launcher.tasks_per_node=<GPUs per node>",
        ),
        ([], "the BasicLauncher launcher runs each point as one process", "-m hydra/launcher=slurm"),
    ],
)
def test_fsdp_on_one_rank_is_refused_naming_the_key_the_cause_and_the_fix(overrides, why, fix):
    cfg = compose_config([*FULL_FSDP, *overrides], return_hydra_config=True)
    (problem,) = [p for p in find_problems(cfg) if ONE_RANK in p]
    assert why in problem and fix in problem and "training.fsdp.enabled=false" in problem, problem


@pytest.mark.parametrize(
    "overrides",
    [
        ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=2"],
        ["hydra/launcher=slurm", "hydra.launcher.nodes=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"],
        ["experiment=results_conservative"],
    ],
)
def test_fsdp_over_several_ranks_is_accepted(overrides):
    cfg = compose_config([*FULL_FSDP, *overrides], return_hydra_config=True)
    assert not [p for p in find_problems(cfg) if "training.fsdp" in p], find_problems(cfg)


def test_fsdp_inside_a_job_counts_the_jobs_ranks(monkeypatch):
    # Inside the job the config has no hydra node: the ranks are the WORLD_SIZE the job exported (cluster.py).
    cfg = compose_config(FULL_FSDP)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert any("WORLD_SIZE=1 in this job" in p for p in find_problems(cfg))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not [p for p in find_problems(cfg) if ONE_RANK in p]


@pytest.mark.slurm
def test_fsdp_on_one_slurm_task_exits_before_anything_is_submitted(slurm_cluster, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    tic = time.monotonic()
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=slurm",
            *FULL_FSDP,
            "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.gpus_per_node=1",
            f"hydra.sweep.dir={sweep}",
        ],
        check=False,
        timeout=60,
    )
    took = time.monotonic() - tic
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert ONE_RANK in out and "hydra.launcher.tasks_per_node=<GPUs per node>" in out, out
    assert "Traceback" not in out and not sweep.exists() and list(tmp_path.iterdir()) == [], out
    assert took < 10 * 3, f"{took:.1f} s"  # < 10 s on a quiet machine; the shared 2-core VM runs ~3x slower


def test_fsdp_in_a_single_local_run_exits_with_the_fix(tmp_path):
    # As a user runs it: without HYDRA_FULL_ERROR=1 (which run_cli sets for the tests' own diagnosis).
    env = {"HYDRA_FULL_ERROR": "0"}
    proc = run_cli([*FULL_FSDP, f"hydra.run.dir={tmp_path / 'run'}"], check=False, timeout=60, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{ONE_RANK} (a single run is one process)" in out, out
    assert "-m hydra/launcher=slurm hydra.launcher.tasks_per_node=" in out and "Traceback" not in out, out
    assert not (tmp_path / "run").exists(), "refused before Hydra creates the run folder"


def test_fsdp_under_torchrun_is_a_process_group_even_with_one_rank(monkeypatch):
    # torchrun --nproc-per-node=1 (make gpu-check): transformers accepts FSDP in its process group.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "gpu-check")
    assert not [p for p in find_problems(compose_config(FULL_FSDP)) if ONE_RANK in p]
