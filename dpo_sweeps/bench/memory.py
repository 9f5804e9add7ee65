"""The memory estimate (dpo_sweeps/slurm/memory.py) against the GPU benchmark's measured peaks: the README's table.

    python -m dpo_sweeps.bench.memory

The measurements are the README's GPU table (`python -m dpo_sweeps.bench.gpu`: one H100 80GB, torch 2.11, peak =
`torch.cuda.max_memory_allocated` over the whole run, evaluation included). The estimate is compared on the same
quantity: its allocated peak, without the CUDA context and fragmentation margin that the pre-launch check adds.
No torch: runs anywhere.
"""

from __future__ import annotations

import argparse

from dpo_sweeps.bench.gpu import QWEN2_5_1_5B
from dpo_sweeps.slurm.memory import GIB, Arch, RunSettings, estimate

# bench/gpu.py's run: batch 4 pairs, per_device_eval_batch_size 8 (training=default) over its 8 eval pairs, gradient
# checkpointing on, adamw_torch, bf16 (dtype auto on an H100), one GPU.
# Sequence length: its pairs tokenized as the run does (tiny Qwen tokenizer, Qwen's chat template): mean 927 tokens,
# longest 1001; a batch pads to its longest sequence, so 1001 is the bound the estimate uses.
BENCH_SEQ_LEN = 1001
BENCH = RunSettings(micro_batch=4, seq_len=BENCH_SEQ_LEN, eval_batch=8)
# (configuration as the README's table names it, its settings, measured peak GiB)
MEASURED = (
    ("LoRA r16, no ref cache", {"lora_rank": 16}, 4.8),
    ("LoRA r16, ref cache", {"lora_rank": 16, "reference_copy": False}, 4.8),
    ("full, no ref cache", {}, 17.4),
    ("full, ref cache", {"reference_copy": False}, 14.5),
)
# What the calibration promises: within this of every measurement, and never below it by more than rounding.
TOLERANCE = 0.15


def bench_arch() -> Arch:
    return Arch.from_mapping({**QWEN2_5_1_5B, "model_type": "qwen2"})


def rows() -> list[dict]:
    """One dict per measured configuration: name, estimate and measured GiB, their ratio, the peak's phase."""
    from dataclasses import replace

    arch, out = bench_arch(), []
    for name, changes, measured in MEASURED:
        est = estimate(arch, replace(BENCH, **changes))
        gib = est.allocated / GIB
        out.append({"name": name, "estimate": gib, "measured": measured, "ratio": gib / measured, "est": est})
    return out


def table() -> str:
    lines = [
        "| configuration | estimate (GiB) | measured (GiB) | estimate / measured | peak at | parts at the peak (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows():
        parts = ", ".join(f"{name} {gib:.2f}" for name, gib in r["est"].parts())
        lines.append(
            f"| {r['name']} | {r['estimate']:.2f} | {r['measured']:.1f} | {r['ratio']:.3f} | {r['est'].peak_phase} |"
            f" {parts} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(
        f"Qwen2.5-1.5B-Instruct architecture ({bench_arch().params / 1e9:.2f}B parameters), bf16, batch 4 pairs, "
        f"sequences padded to {BENCH_SEQ_LEN} tokens, eval batch 8 pairs, gradient checkpointing, AdamW; measured "
        "on one H100 (README, GPU table). Estimate = allocated peak (the pre-launch check adds the CUDA context and "
        "fragmentation on top)."
    )
    print()
    print(table())


if __name__ == "__main__":
    main()
