"""Each seed-card preset, composed as a user types it and run end to end on the tiny model of its architecture.

The preset keeps its own model option (so the real model file's quirks apply: Llama's pad token, Gemma's eager
attention and system-turn merge, the pre-quantized flag); only `model.name_or_path` points at a tiny local model of
the same architecture, and `dataset.path` at a fixture in the dataset's published schema. Four steps each.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from helpers import REPO, compose_config

from dpo_sweeps.report.model_card import parse_front_matter, write_model_card
from dpo_sweeps.runs import folder as run_folder

FIXTURES = REPO / "tests" / "fixtures" / "datasets"
PRESETS = {
    # preset: (tiny arch, dataset fixture, what the preset must keep from its model file)
    "dpo_padded_mild": ("llama", FIXTURES / "ultrafeedback", {"model.pad_token": "<|finetune_right_pad_id|>"}),
    "results_conservative": ("llama", FIXTURES / "ultrafeedback", {"lora.enabled": False}),
    # With dataset=hh_rlhf swapped in: a preset's dataset is an ordinary override.
    "qwen_dpo": ("qwen2", FIXTURES / "hh_rlhf", {"lora.enabled": False}),
    "finance_qlora": ("llama", FIXTURES / "finance" / "finance_prefs.jsonl", {"model.prequantized": True}),
    "gemma_fashion": ("gemma", FIXTURES / "fashion" / "fashion_prefs.jsonl", {"model.attn_implementation": "eager"}),
}
FAST = [
    "training=smoke",
    "training.max_steps=4",
    "training.logging_steps=1",
    "training.save_model=true",
    "training.save_steps=100",
    "training.gradient_checkpointing=false",
    "training.per_device_train_batch_size=4",
    "training.gradient_accumulation_steps=1",
    "training.per_device_eval_batch_size=4",
    "training.learning_rate=1e-3",
    "logger=none",
    "dataset.max_eval_samples=4",
]


@pytest.fixture(scope="session")
def prequantized_tiny_llama(tiny_model_paths, tmp_path_factory):
    """The tiny Llama quantized to bitsandbytes NF4 and saved with save_pretrained, like unsloth's *-bnb-4bit repos:
    loading it exercises the pre-quantized path (quantization_config read from config.json, no second quantization)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dest = tmp_path_factory.mktemp("tiny_llama_bnb_4bit")
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    src = tiny_model_paths["llama"]
    model = AutoModelForCausalLM.from_pretrained(
        src, quantization_config=q, device_map={"": "cpu"}, dtype=torch.bfloat16
    )
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


def _model_folder(preset: str, tiny_model_paths, request) -> Path:
    if preset == "finance_qlora":
        return request.getfixturevalue("prequantized_tiny_llama")
    return tiny_model_paths[PRESETS[preset][0]]


def test_every_preset_starts_with_its_command():
    for preset in PRESETS:
        text = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), preset
        assert f"python -m dpo_sweeps experiment={preset}" in text.splitlines()[1], preset
        assert yaml.safe_load(text)["name"] == preset


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_with_its_seed_model(preset):
    # With Hydra's node: the launcher decides how many ranks a point has (FSDP needs several).
    cfg = compose_config([f"experiment={preset}", "dataset.path=/data/prefs.jsonl"], return_hydra_config=True)
    from dpo_sweeps.config.validation import find_problems

    assert find_problems(cfg) == []
    for key, value in PRESETS[preset][2].items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, (preset, key)
    assert not cfg.model.tiny_arch  # the real seed model, not a tiny option


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_end_to_end_on_its_tiny_architecture(preset, tiny_model_paths, request, tmp_path):
    from dpo_sweeps.train.trainer import run_training

    arch, data, _ = PRESETS[preset]
    model_dir = _model_folder(preset, tiny_model_paths, request)
    overrides = [f"experiment={preset}", f"model.name_or_path={model_dir}", f"dataset.path={data}", *FAST]
    if preset == "qwen_dpo":
        overrides.append("dataset=hh_rlhf")
    if preset == "finance_qlora":
        # The tiny checkpoint was quantized with bf16 compute, like unsloth's.
        overrides.append("model.dtype=bfloat16")
    if preset == "results_conservative":
        # One CPU process here; FSDP needs ranks (its own tests run it on several).
        overrides.append("training.fsdp.enabled=false")
    cfg = compose_config(overrides)
    run_dir = tmp_path / preset
    run_dir.mkdir()
    run_folder.update_status(run_dir, overrides=overrides)
    metrics = run_training(cfg, run_dir)

    assert metrics["global_step"] == 4
    for key in ("train_loss", "eval_loss", "eval_rewards/accuracies", "initial_eval_loss"):
        assert math.isfinite(metrics[key]), (key, metrics[key])
    # Every logged training loss was finite (Gemma with padded batches included).
    losses = [r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    assert metrics["data/train_rows"] > 0 and metrics["data/train_rows_dropped"] == 0
    saved = Path(metrics["outputs"]["adapter" if cfg.lora.enabled else "model"])
    assert (saved / ("adapter_config.json" if cfg.lora.enabled else "config.json")).exists()

    if preset == "finance_qlora":
        # Loaded as the saved 4-bit checkpoint (bitsandbytes Linear4bit under the LoRA layers), not re-quantized.
        import bitsandbytes as bnb

        from dpo_sweeps.models.loading import load_models

        policy = load_models(cfg).policy
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    if preset == "gemma_fashion":
        # The batches were padded (rows of different lengths) and the system turn went into the user turn.
        from dpo_sweeps.data import load_preference_data
        from dpo_sweeps.models.loading import load_tokenizer

        tok = load_tokenizer(cfg)
        data = load_preference_data(cfg, tok)
        lengths = {
            len(tok.apply_chat_template(r["prompt"] + r["chosen"], return_dict=True)["input_ids"]) for r in data.train
        }
        assert len(lengths) > 1
        assert all(m["role"] != "system" for r in data.train for m in r["prompt"])
        assert data.train[0]["prompt"][0]["content"].startswith("You are a friendly fashion stylist.")

    card = write_model_card(cfg, run_dir, metrics, wandb_url="https://wandb.ai/team/dpo/runs/abc123").read_text()
    fm = parse_front_matter(card)
    assert fm["base_model"] == str(model_dir)
    assert ("lora" in fm["tags"]) == cfg.lora.enabled
    assert f"experiment={preset}" in card
