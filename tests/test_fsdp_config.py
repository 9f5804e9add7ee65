"""training.fsdp as config: typed, defaulted per model family, mapped onto the Trainer's FSDP arguments, and the
results_conservative preset that shards with it. Composition only: no torch, no training."""

from __future__ import annotations

import pytest

from dpo_sweeps.config import fsdp
from dpo_sweeps.config.validation import find_problems
from tests.helpers import compose_config

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
