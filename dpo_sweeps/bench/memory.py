"""The memory estimate (dpo_sweeps/slurm/memory.py) against the GPU benchmark's measured peaks (docs/distributed.md).

    python -m dpo_sweeps.bench.memory              # the calibration table
    python -m dpo_sweeps.bench.memory --presets    # and every experiment preset's estimate: the GPUs it needs

The measurements are docs/performance.md's GPU table (`python -m dpo_sweeps.bench.gpu`: one H100 80GB, torch 2.11,
peak = `torch.cuda.max_memory_allocated` over the whole run, evaluation included). The estimate is compared on the same
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
# (configuration as docs/distributed.md's table names it, its settings, measured peak GiB)
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


# Common GPU sizes (GB as sold), smallest first: what a preset's header names as the GPU it needs.
GPU_SIZES = (16, 24, 40, 48, 80, 141)


def preset_rows() -> list[dict]:
    """Each experiment preset as it composes: its ranks (from its launcher), its estimate, the smallest GPU it fits."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dpo_sweeps.cli import CONF_DIR
    from dpo_sweeps.slurm.memory_check import arch_for, check, ranks, run_settings

    out = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
            cfg = compose("config", overrides=[f"experiment={path.stem}"], return_hydra_config=True)
            launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
            row = {"name": path.stem, "ranks": ranks(launcher) if "tasks_per_node" in launcher else 1}
            arch, _ = arch_for(cfg)
            run, _ = run_settings(cfg, row["ranks"], arch) if arch else (None, "")
            if cfg.training.use_cpu or run is None:
                out.append({**row, "gib": None, "fits": "CPU" if cfg.training.use_cpu else "not estimated"})
                continue
            gib = estimate(arch, run).total / GIB
            fits = next((f"{size} GB" for size in GPU_SIZES if not check(arch, run, size)), "none")
            out.append({**row, "gib": gib, "fsdp": run.fsdp, "fits": fits})
    return out


def preset_table() -> str:
    lines = ["| preset | ranks (GPUs) | estimated peak per GPU (GiB) | smallest GPU that fits |", "|---|---|---|---|"]
    for r in preset_rows():
        gib = "" if r["gib"] is None else f"{r['gib']:.1f}"
        ranks = f"{r['ranks']}{' (FSDP)' if r.get('fsdp') and r['ranks'] > 1 else ''}"
        lines.append(f"| {r['name']} | {ranks} | {gib} | {r['fits']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", action="store_true", help="also estimate every experiment preset")
    args = parser.parse_args(argv)
    print(
        f"Qwen2.5-1.5B-Instruct architecture ({bench_arch().params / 1e9:.2f}B parameters), bf16, batch 4 pairs, "
        f"sequences padded to {BENCH_SEQ_LEN} tokens, eval batch 8 pairs, gradient checkpointing, AdamW; measured "
        "on one H100 (docs/performance.md, GPU table). Estimate = allocated peak (the pre-launch check adds the CUDA "
        "context and fragmentation on top)."
    )
    print()
    print(table())
    if args.presets:
        print()
        print(preset_table())


if __name__ == "__main__":
    main()
