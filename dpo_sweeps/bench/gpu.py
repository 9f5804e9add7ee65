"""GPU benchmark at a real model's size: throughput and peak memory of DPO steps through the framework.

    python -m dpo_sweeps.bench.gpu                      # needs a CUDA GPU; ~5 min on one H100
    python -m dpo_sweeps.bench.gpu --steps 20 --out outputs/bench/gpu.md

The hubs are out of reach on test machines, so the model is Qwen2.5-1.5B-Instruct's exact architecture (28 layers,
hidden 1536, vocabulary 151936) with random weights, built on the GPU; the tokenizer is the tiny Qwen's (the
vocabulary size of the embedding and the LM head is the real one, so the compute is). The data are synthetic pairs of
a few hundred tokens each. Each configuration runs in its own process through the normal CLI (`model=qwen1_5b`
pointed at that folder); the table reports its steady-state seconds per optimizer step and tokens per second (from the
per-step timestamps in `metrics.jsonl`, the first WARMUP steps left out) and its peak GPU memory (`metrics.json`).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QWEN2_5_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
CONFIGS = {
    "LoRA r16, no ref cache": ["lora=r16", "ref_cache.enabled=false"],
    "LoRA r16, ref cache": ["lora=r16"],
    "full, no ref cache": ["lora=none", "ref_cache.enabled=false"],
    "full, ref cache": ["lora=none"],
}
WARMUP = 5
WORDS = [
    "the",
    "model",
    "answers",
    "questions",
    "about",
    "markets",
    "risk",
    "budgets",
    "style",
    "colours",
    "seasons",
    "with",
    "care",
    "and",
    "detail",
]


def build_model(dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from dpo_sweeps.models.tiny import ensure

    tokenizer = AutoTokenizer.from_pretrained(ensure("qwen2"))
    config = Qwen2Config(
        **QWEN2_5_1_5B,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def write_data(path: Path, rows: int, words: int) -> None:
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as f:
        for _ in range(rows):
            f.write(
                json.dumps({"prompt": text(words // 2), "chosen": text(words), "rejected": "No. " + text(words - 1)})
                + "\n"
            )


def run_point(name: str, overrides: list[str], work: Path) -> dict:
    run_dir = work / name.replace(" ", "_").replace(",", "")
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr[-2000:]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in history if "loss" in r]  # logging_steps=1: one record per optimizer step
    # Steady state: the first WARMUP steps (CUDA context, allocator, kernel selection) are left out.
    window = train[WARMUP:]
    elapsed = window[-1]["time"] - window[0]["time"]
    steps = window[-1]["step"] - window[0]["step"]
    tokens = window[-1]["num_tokens"] - window[0]["num_tokens"]
    return {
        "name": name,
        "s_per_step": elapsed / steps,
        "tokens_per_s": tokens / elapsed,
        "peak_gb": metrics.get("gpu/peak_memory_gb", float("nan")),
        "ref_cache": metrics.get("ref_cache"),
        "wall_s": time.time() - started,
        "final_loss": metrics.get("train_loss"),
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--words", type=int, default=300, help="words per completion (the prompt has half)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "gpu.md"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU.")
    work = Path(tempfile.mkdtemp(prefix="dpo_bench_gpu_"))
    model_dir, data = work / "qwen2.5-1.5b-random", work / "pairs.jsonl"
    build_model(model_dir)
    write_data(data, rows=args.steps * args.batch + 16, words=args.words)
    common = [
        "model=qwen1_5b",
        f"model.name_or_path={model_dir}",
        "dataset=local",
        f"dataset.path={data}",
        "dataset.to_conversational=true",
        "dataset.max_length=2048",
        "dataset.max_eval_samples=8",
        "logger=none",
        f"training.max_steps={args.steps}",
        f"training.per_device_train_batch_size={args.batch}",
        "training.gradient_accumulation_steps=1",
        "training.eval_before_training=false",
        "training.eval_steps=null",
        "training.save_model=false",
        f"training.save_steps={args.steps * 10}",
        "training.sample_completions=0",
        "training.logging_steps=1",
        "training.learning_rate=1e-5",
        f"ref_cache.dir={work / 'ref_cache'}",
    ]
    rows = [run_point(name, [*common, *extra], work) for name, extra in CONFIGS.items()]
    gpu = torch.cuda.get_device_name(0)
    lines = [
        f"GPU benchmark: Qwen2.5-1.5B architecture (random weights, bf16), batch {args.batch}, {args.steps} steps, "
        f"pairs of ~{args.words} words; {gpu}, torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "| configuration | s / step | tokens / s | peak GPU memory (GiB) | ref cache | process wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'].splitlines()[-1] if r['error'] else ''} | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_gb']:.1f} | "
            f"{r['ref_cache']} | {r['wall_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    for r in rows:
        if "error" in r:
            print(f"\n{r['name']} failed:\n{r['error']}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
