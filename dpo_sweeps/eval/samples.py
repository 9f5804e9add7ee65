"""Sample completions for held-out prompts, from the reference and from the trained policy, side by side.

Metrics say that DPO moved the rewards; reading a few completions says what it changed. The answers are the
generation eval's (`generation.py`: fixed seed, so the same run gives the same samples; the reference's are the
policy's before training). Written to samples.jsonl in the run folder and logged as a W&B table (see tracking/wandb_run.py).
Imported inside the job only (torch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dpo_sweeps.runs import folder as run_folder

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


def sample_rows(cfg: DictConfig, rows, before, after) -> list[dict[str, Any]]:
    """The first `training.sample_completions` prompts with the reference's answer (the policy before training) next
    to the trained policy's, their scores and whether each finished (generation.Answers)."""
    out = []
    for i in range(min(cfg.training.sample_completions, len(rows))):
        row = rows[i]
        sample = {
            "index": i,
            "prompt": _as_text(row["prompt"]),
            "chosen": _as_text(row["chosen"]),
            "rejected": _as_text(row["rejected"]),
            "reference": before.texts[i],
            "policy": after.texts[i],
            "reference_finished": before.finished[i],
            "policy_finished": after.finished[i],
        }
        if before.scores is not None and after.scores is not None:
            sample.update(reference_score=before.scores[i], policy_score=after.scores[i])
        out.append(sample)
    return out


def write(run_dir: Path, samples: list[dict[str, Any]]) -> None:
    if samples:
        run_folder.write_text_atomic(
            Path(run_dir) / run_folder.SAMPLES_FILE, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        )
