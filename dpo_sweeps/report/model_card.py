"""The run's model card (README.md): what the seed cards had, plus the hyperparameters and the eval results.

Front matter (YAML) for the hub: base_model, library_name, model_name, tags, pipeline_tag, datasets. Body: quick
start loading this run's output, training procedure (with the W&B link when there is one), hyperparameters that
differ from the defaults, eval results before/after, framework versions, citations.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from dpo_sweeps.runs import folder as run_folder

FRAMEWORKS = ("dpo_sweeps", "trl", "transformers", "peft", "torch", "datasets", "tokenizers", "bitsandbytes")
DPO_CITATION = """@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023)},
    url          = {http://papers.nips.cc/paper_files/paper/2023/hash/a85b405ed65c6477a4fe8302b5e06ce7-Abstract-Conference.html},
}"""
TRL_CITATION = """@software{vonwerra2020trl,
    title        = {{TRL: Transformers Reinforcement Learning}},
    author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
    license      = {Apache-2.0},
    url          = {https://github.com/huggingface/trl},
    year         = {2020}
}"""
RESULT_ROWS = (
    ("rewards/accuracies", "Reward accuracy"),
    ("rewards/margins", "Reward margin"),
    ("rewards/chosen", "Chosen reward"),
    ("rewards/rejected", "Rejected reward"),
    ("loss", "Loss"),
)


def framework_versions() -> dict[str, str]:
    versions = {}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def base_model_id(cfg: DictConfig) -> str:
    return f"dpo_sweeps/tiny-{cfg.model.tiny_arch}" if cfg.model.tiny_arch else cfg.model.name_or_path


def dataset_id(cfg: DictConfig) -> str:
    d = cfg.dataset
    return d.hub_id or d.path or d.name


def schema_defaults() -> dict[str, Any]:
    """The value each `hyperparameters()` key takes with no override at all (the dataclass schema's defaults)."""
    from omegaconf import OmegaConf

    from dpo_sweeps.config.schema import (
        DatasetConfig,
        DpoSweepsConfig,
        LoggerConfig,
        LoraConfig,
        LossConfig,
        ModelConfig,
        QuantizationConfig,
        TrainingConfig,
    )

    default = DpoSweepsConfig(
        model=ModelConfig(name_or_path=""),
        dataset=DatasetConfig(name=""),
        lora=LoraConfig(),
        quantization=QuantizationConfig(),
        loss=LossConfig(),
        training=TrainingConfig(),
        logger=LoggerConfig(),
    )
    return hyperparameters(OmegaConf.structured(default))


def changed_hyperparameters(cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """key -> (value, default) for the hyperparameters this run changed."""
    defaults = schema_defaults()
    return {k: (v, defaults[k]) for k, v in hyperparameters(cfg).items() if k in defaults and v != defaults[k]} | (
        {"lora": ("none (full-parameter DPO)", "r16")} if not cfg.lora.enabled else {}
    )


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The settings people compare across DPO runs, in one flat table."""
    t = cfg.training
    hp: dict[str, Any] = {
        "beta": cfg.beta,
        "loss_type": "+".join([cfg.loss.type, *cfg.loss.extra_types]),
        "label_smoothing": cfg.loss.label_smoothing,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_ratio": t.warmup_ratio,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_steps": t.max_steps,
        "num_train_epochs": t.num_train_epochs,
        "max_length": cfg.dataset.max_length,
        "precision": t.precision,
        "seed": cfg.seed,
        "quantization": cfg.quantization.mode + (" (pre-quantized)" if cfg.model.prequantized else ""),
    }
    if cfg.lora.enabled:
        targets = cfg.lora.target_modules
        hp.update(
            lora_r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            lora_target_modules=targets if isinstance(targets, str) else ",".join(targets),
        )
    else:
        hp["lora"] = "none (full-parameter DPO)"
    return hp


def front_matter(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    tags = ["dpo", "trl", "dpo_sweeps", "transformers"]
    if cfg.lora.enabled:
        tags.append("lora")
    if cfg.quantization.mode != "none" or cfg.model.prequantized:
        tags.append("qlora" if cfg.lora.enabled else "quantized")
    if cfg.quantization.mode != "none" or cfg.model.prequantized:
        tags.append("bitsandbytes")
    return {
        "base_model": base_model_id(cfg),
        "library_name": "peft" if cfg.lora.enabled else "transformers",
        "model_name": run_dir.name,
        "tags": tags,
        "pipeline_tag": "text-generation",
        "datasets": [dataset_id(cfg)],
        "license": "other",
    }


def _results_table(metrics: dict[str, Any]) -> str:
    lines = ["| Metric | Before training | After training |", "|---|---|---|"]
    for key, label in RESULT_ROWS:
        before, after = metrics.get(f"initial_eval_{key}"), metrics.get(f"eval_{key}")
        if before is None and after is None:
            continue
        fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
        lines.append(f"| {label} | {fmt(before)} | {fmt(after)} |")
    return "\n".join(lines)


def _generation_section(metrics: dict[str, Any]) -> str:
    """The generation eval (dpo_sweeps/eval/): answers to held-out prompts from the reference and the trained model."""
    if not any(k.startswith("gen/") for k in metrics):
        return ""

    def fmt(key: str | None) -> str:
        v = metrics.get(key) if key else None
        if v is None:
            return "n/a"
        se = metrics.get(f"{key}_se")
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return text + (f" ± {se:.4f}" if isinstance(se, int | float) else "")

    # A KL only in the KL regime (eval/measures.py); otherwise the same mean under its own name.
    ratio, ratio_label = (
        ("gen/kl_to_ref", "KL to the reference (nats)")
        if "gen/kl_to_ref" in metrics or "gen/logratio_to_ref" not in metrics
        else ("gen/logratio_to_ref", "log-ratio to the reference (nats, not a KL)")
    )
    rows = [
        ("score (mean)", "gen/score_before", "gen/score_after"),
        ("answers that finish", "gen/finished_before", "gen/finished_after"),
        ("answer length (tokens)", "gen/mean_tokens_before", "gen/mean_tokens"),
        (ratio_label, f"{ratio}_before", ratio),
        (
            "log-prob per token under the reference (fluency)",
            "gen/ref_logprob_per_token_before",
            "gen/ref_logprob_per_token_after",
        ),
    ]
    notes = [metrics[k] for k in ("gen/score_note", "gen/kl_regime_note", "gen/kl_to_ref_note") if metrics.get(k)]
    if metrics.get("gen/fluency_flag"):
        notes.insert(
            0,
            f"**Fluency flag**: scored by the reference model, the trained answers are "
            f"{metrics['gen/fluency_drop']:.3f} nats per token less likely than the reference's own answers, more "
            f"than eval.max_fluency_drop={metrics.get('gen/max_fluency_drop')}. A rule scorer cannot see this; read "
            "the samples before trusting the score.",
        )
    return (
        f"\n\nAnswers to {metrics.get('gen/prompts', 'n/a')} held-out prompts (at most "
        f"{metrics.get('gen/max_new_tokens', 'n/a')} new tokens, temperature {metrics.get('gen/temperature', 'n/a')}), "
        f"scored by `{metrics.get('gen/scorer', 'none')}`; win rate against the reference: "
        f"{fmt('gen/win_rate_vs_ref')}. Means over the prompts ± their standard error."
        "\n\n| Generation | Reference (before) | After training |\n|---|---|---|\n"
        + "\n".join(f"| {label} | {fmt(b)} | {fmt(a)} |" for label, b, a in rows)
        + "".join(f"\n\nNote: {n}" for n in notes)
    )


def _source_line(cfg: DictConfig) -> str:
    """What was trained when it is not the checkpoint `base_model` names (a GGUF copy of it, dequantized)."""
    if not cfg.model.gguf:
        return ""
    from dpo_sweeps.models.gguf import source_description

    return (
        f"\n\nWhat was trained is not the `{cfg.model.name_or_path}` checkpoint itself but its quantized copy: "
        f"{source_description(cfg.model.gguf)} (`base_model_source` in metrics.json and the W&B config). Expect it "
        "to differ slightly from the original weights."
    )


def _dataset_section(cfg: DictConfig, data_stats: dict[str, Any]) -> str:
    d = cfg.dataset
    source = f"[{d.hub_id}](https://huggingface.co/datasets/{d.hub_id})" if d.hub_id else f"`{d.path or 'bundled'}`"
    local_copy = f" (read from the local copy `{d.path}`)" if d.hub_id and d.path else ""
    lines = [f"- `dataset={d.name}`: {source}{local_copy}, {d.format} format"]
    if data_stats:
        lines.append(
            f"- rows: {data_stats.get('train_rows', 'n/a')} train, {data_stats.get('eval_rows', 'n/a')} eval "
            f"(eval from {data_stats.get('eval_source', 'n/a')})"
        )
        dropped = {k: v for k, v in data_stats.items() if "_dropped_" in k}
        if dropped:
            lines.append(
                "- dropped as invalid (dataset.on_invalid=drop): " + ", ".join(f"{k}: {v}" for k, v in dropped.items())
            )
        truncated = {k: v for k, v in data_stats.items() if k.endswith("_truncated") and v}
        if truncated:
            lines.append(
                f"- truncated to max_length={d.max_length}: " + ", ".join(f"{k}: {v}" for k, v in truncated.items())
            )
    lines.append(f"- max_length: {d.max_length} tokens after the chat template, truncation: {d.truncation_side}")
    return "\n".join(lines)


def _quick_start(cfg: DictConfig, run_dir: Path) -> str:
    if cfg.lora.enabled:
        return (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{run_dir / "adapter"}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{run_dir / "adapter"}")\n'
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")\n'
            "print(tokenizer.decode(model.generate(inputs, max_new_tokens=64)[0]))\n```"
        )
    return (
        "```python\nfrom transformers import pipeline\n\n"
        f'generator = pipeline("text-generation", model="{run_dir / "model"}")\n'
        'print(generator([{"role": "user", "content": "Hello!"}], max_new_tokens=64, return_full_text=False)[0]'
        '["generated_text"])\n```'
    )


def render_model_card(
    cfg: DictConfig,
    run_dir: Path,
    metrics: dict[str, Any],
    wandb_url: str | None = None,
    tracking_note: str | None = None,
) -> str:
    fm = yaml.safe_dump(front_matter(cfg, run_dir), sort_keys=False).strip()
    changed = changed_hyperparameters(cfg)
    hp = "\n".join(
        f"| {k} | {v} | {changed[k][1] if k in changed else '(default)'} |" for k, v in hyperparameters(cfg).items()
    )
    changed_line = ", ".join(f"{k}={v}" for k, (v, _) in changed.items()) or "none"
    versions = "\n".join(f"- {k}: {v}" for k, v in framework_versions().items())
    tracking = (
        f'[<img src="https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg" alt="Visualize in Weights & Biases" width="150" height="24"/>]({wandb_url})\n\n'
        if wandb_url
        # An offline W&B run has no URL yet: say which run it is and how to upload it.
        else (f"{tracking_note}\n\n" if tracking_note else "")
    )
    overrides = " ".join((run_folder.read_status(run_dir) or {}).get("overrides", [])) or "(defaults)"
    data_stats = {k[5:]: v for k, v in metrics.items() if k.startswith("data/")}
    return f"""---
{fm}
---

# {run_dir.name}

This model is a fine-tuned version of `{base_model_id(cfg)}` on `{dataset_id(cfg)}` with Direct Preference
Optimization (DPO){" and LoRA" if cfg.lora.enabled else ""}, trained with [TRL](https://github.com/huggingface/trl)
through [dpo_sweeps](https://github.com/dpo-sweeps/dpo_sweeps).{_source_line(cfg)}

## Quick start

{_quick_start(cfg, run_dir)}

## Training procedure

{tracking}Trained with DPO, as introduced in [Direct Preference Optimization: Your Language Model is Secretly a Reward
Model](https://huggingface.co/papers/2305.18290). Reproduce with:

```bash
python -m dpo_sweeps {overrides}
```

### Dataset

{_dataset_section(cfg, data_stats)}

### Hyperparameters

Changed from the defaults: {changed_line}.

| Setting | Value | Default |
|---|---|---|
{hp}

## Evaluation results

Held-out preference pairs, before and after training:

{_results_table(metrics)}{_generation_section(metrics)}

Global steps: {metrics.get("global_step", "n/a")}. Full metrics: `metrics.json`; per-step history: `metrics.jsonl`.

### Framework versions

{versions}

## Citations

Cite DPO as:

```bibtex
{DPO_CITATION}
```

Cite TRL as:

```bibtex
{TRL_CITATION}
```
"""


def write_model_card(
    cfg: DictConfig,
    run_dir: Path,
    metrics: dict[str, Any],
    wandb_url: str | None = None,
    tracking_note: str | None = None,
) -> Path:
    path = run_dir / run_folder.MODEL_CARD_FILE
    run_folder.write_text_atomic(path, render_model_card(cfg, run_dir, metrics, wandb_url, tracking_note))
    return path


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML between the leading `---` lines of a model card."""
    if not text.startswith("---\n"):
        raise ValueError("model card has no front matter")
    return yaml.safe_load(text.split("---\n", 2)[1])
