"""Sample completions for held-out prompts, from the reference and from the trained policy, side by side.

Metrics say that DPO moved the rewards; reading a few completions says what it changed. Greedy decoding, one prompt
at a time (no padding effects), so the same run gives the same samples. The reference's completions are taken from
the policy before training (see `reference_completions`). Written to samples.jsonl in the run folder and logged as a
W&B table (see tracking.py). Imported inside the job only (torch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dpo_sweeps import run_folder

log = logging.getLogger(__name__)


def _as_text(value: Any) -> str:
    """A prompt or completion for people to read: plain text, or `role: content` lines for a conversation."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


def _merge_system(messages: list[dict]) -> list[dict]:
    """Gemma's template has no system role (model.merge_system_into_user): prepend it to the first user turn."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = "\n\n".join([*system, rest[0]["content"]])
    return rest


def prompt_ids(cfg: DictConfig, tokenizer, prompt: Any) -> torch.Tensor:
    """Token ids of a prompt as the model saw it in training: chat template for conversations, raw text otherwise."""
    if isinstance(prompt, str):
        return tokenizer(prompt, return_tensors="pt").input_ids
    messages = _merge_system(prompt) if cfg.model.merge_system_into_user else list(prompt)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]


@torch.no_grad()
def greedy_completion(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int) -> str:
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        # Explicit: a model's generation_config may ask for sampling; these samples must be reproducible.
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def _completions(cfg: DictConfig, model, tokenizer, rows) -> list[str]:
    was_training = model.training
    model.eval()
    try:
        return [
            greedy_completion(model, tokenizer, prompt_ids(cfg, tokenizer, row["prompt"]), cfg.training.max_new_tokens)
            for row in rows
        ]
    finally:
        model.train(was_training)


def _sample_rows(cfg: DictConfig, eval_dataset):
    return eval_dataset.select(range(min(cfg.training.sample_completions, len(eval_dataset))))


def reference_completions(cfg: DictConfig, policy, tokenizer, eval_dataset) -> list[str]:
    """Call before training: the untrained policy *is* the reference (LoRA starts as a no-op, full DPO from the base
    weights, and a resumed run loads its checkpoint only inside `train()`), so no second model is needed; with the
    reference cache, full DPO keeps none in memory."""
    return _completions(cfg, policy, tokenizer, _sample_rows(cfg, eval_dataset))


def generate_samples(
    cfg: DictConfig, policy, tokenizer, eval_dataset, reference_texts: list[str], run_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Completions of the trained policy for the first `training.sample_completions` held-out prompts, next to the
    reference's (from `reference_completions`); written to samples.jsonl."""
    rows = _sample_rows(cfg, eval_dataset)
    if len(rows) == 0:
        return []
    policy_texts = _completions(cfg, policy, tokenizer, rows)
    samples = [
        {
            "index": i,
            "prompt": _as_text(row["prompt"]),
            "chosen": _as_text(row["chosen"]),
            "rejected": _as_text(row["rejected"]),
            "reference": ref_text,
            "policy": policy_text,
        }
        for i, (row, ref_text, policy_text) in enumerate(zip(rows, reference_texts, policy_texts, strict=True))
    ]
    if run_dir is not None:
        run_folder.write_text_atomic(
            Path(run_dir) / run_folder.SAMPLES_FILE, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        )
    return samples
