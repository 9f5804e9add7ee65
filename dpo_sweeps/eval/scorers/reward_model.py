"""Reward-model scorer: `AutoModelForSequenceClassification` (one label) from `eval.reward_model`, a folder or hub id.

Each (prompt, completion) pair is formatted with the reward model's own chat template when it has one (as the reward
model was trained), else as `prompt\\n\\ncompletion`; the score is the model's single logit. Runs on the CPU or the
run's GPU, one pair at a time (no padding effects), in eval mode. Imported inside the job only (torch).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def _messages(prompt: Any, completion: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return [*[dict(m) for m in prompt], {"role": "assistant", "content": completion}]


def build(cfg: DictConfig):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dpo_sweeps.eval.scorers import Scorer

    path = cfg.eval.reward_model
    if not path:
        raise ValueError("eval.scorer=reward_model needs eval.reward_model=<folder or hub id of a reward model>.")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.num_labels != 1:
        raise ValueError(
            f"eval.reward_model={path} has {model.config.num_labels} labels: a reward model has one output (a score)."
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score(prompts: list[Any], completions: list[str]) -> list[float]:
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if tokenizer.chat_template:
                text = tokenizer.apply_chat_template(_messages(prompt, completion), tokenize=False)
            else:
                text = f"{prompt if isinstance(prompt, str) else prompt[-1]['content']}\n\n{completion}"
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
            out.append(float(model(**enc).logits[0, 0]))
        return out

    return Scorer(name=f"reward_model:{path}", score=score)
