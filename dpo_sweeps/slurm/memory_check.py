"""Does a run fit its GPUs? The memory estimate (`memory.py`) against what one GPU has, and the changes that would
make it fit, each with its own estimate, spelled as the overrides to type.

Import-light (no torch): runs in the submitting process.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from dpo_sweeps.slurm.memory import GIB, Arch, RunSettings, estimate

# How each fix is spelled on the command line.
FIX_FSDP = "shard with FSDP over {n} GPUs (training.fsdp=full_shard {gpus})"
FIX_MORE_GPUS = "shard over {n} GPUs ({gpus})"
FIX_REF_CACHE = "the reference cache instead of a frozen copy (ref_cache.enabled=true)"
FIX_CHECKPOINTING = "gradient checkpointing (training.gradient_checkpointing=true)"
FIX_MICRO_BATCH = (
    "a micro-batch of {k} (training.per_device_train_batch_size={k}; multiply gradient_accumulation_steps by {f} to"
    " keep the effective batch)"
)
FIX_MAX_LENGTH = "shorter sequences (dataset.max_length={k})"
FIX_LORA = "LoRA instead of full-parameter DPO (lora=r16)"
FIX_QLORA = "4-bit base weights (quantization=nf4)"


@dataclass(frozen=True)
class Fix:
    kind: str
    text: str
    run: RunSettings
    gib: float


def gpu_request(n: int, gpus_per_node: int) -> str:
    """The launcher overrides that give one training `n` GPUs, one rank per GPU."""
    per_node = min(n, gpus_per_node)
    nodes = f" hydra.launcher.nodes={math.ceil(n / per_node)}" if n > per_node else ""
    return f"hydra.launcher.gpus_per_node={per_node} hydra.launcher.tasks_per_node={per_node}{nodes}"


def _options(run: RunSettings, gpus_per_node: int) -> list[tuple[str, str, RunSettings]]:
    """(kind, text, changed settings) for every single change that can lower the per-GPU peak."""
    ranks = max(1, run.world_size)
    out: list[tuple[str, str, RunSettings]] = []
    if run.full and not (run.fsdp and ranks > 1):
        for n in sorted({2, 4, 8, gpus_per_node, ranks} - {1}):
            if n >= ranks:
                text = FIX_FSDP.format(n=n, gpus=gpu_request(n, gpus_per_node))
                out.append(("fsdp", text, replace(run, fsdp=True, world_size=n)))
    elif run.fsdp and ranks > 1:
        for n in (2 * ranks, 4 * ranks, 8 * ranks):
            text = FIX_MORE_GPUS.format(n=n, gpus=gpu_request(n, gpus_per_node))
            out.append(("gpus", text, replace(run, world_size=n)))
    if run.full and run.reference_copy:
        out.append(("ref_cache", FIX_REF_CACHE, replace(run, reference_copy=False)))
    if not run.gradient_checkpointing:
        out.append(("checkpointing", FIX_CHECKPOINTING, replace(run, gradient_checkpointing=True)))
    k = run.micro_batch // 2
    while k >= 1:
        text = FIX_MICRO_BATCH.format(k=k, f=math.ceil(run.micro_batch / k))
        out.append(("micro_batch", text, replace(run, micro_batch=k)))
        k //= 2
    if run.seq_len > 512:
        out.append(("max_length", FIX_MAX_LENGTH.format(k=run.seq_len // 2), replace(run, seq_len=run.seq_len // 2)))
    if run.full:
        out.append(
            ("lora", FIX_LORA, replace(run, lora_rank=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj")))
        )
    elif not run.quant_bits:
        out.append(("qlora", FIX_QLORA, replace(run, quant_bits=4)))
    return out


def fixes(arch: Arch, run: RunSettings, gpu_gib: float, gpus_per_node: int = 8) -> list[Fix]:
    """Single changes that lower the peak: per kind, the mildest one that fits, else the one that lowers it most.
    Fitting ones first."""
    current = estimate(arch, run).total / GIB
    best: dict[str, Fix] = {}
    for kind, text, changed in _options(run, gpus_per_node):
        gib = estimate(arch, changed).total / GIB
        if gib >= current - 0.05:
            continue
        held = best.get(kind)
        # Options of a kind come mildest first (fewest GPUs, largest micro-batch): keep the first that fits.
        if held is None or (held.gib > gpu_gib and gib < held.gib):
            best[kind] = Fix(kind, text, changed, gib)
    return sorted(best.values(), key=lambda f: (f.gib > gpu_gib, f.gib if f.gib > gpu_gib else 0))


def combined(arch: Arch, run: RunSettings, gpu_gib: float, gpus_per_node: int = 8) -> list[Fix] | None:
    """Several changes that fit together (greedy: the biggest saving first), or None."""
    chosen: list[Fix] = []
    while True:
        options = [f for f in fixes(arch, run, gpu_gib, gpus_per_node) if f.kind not in {c.kind for c in chosen}]
        if not options:
            return None
        # The mildest change that fits, else the one that saves most.
        step = next((f for f in options if f.gib <= gpu_gib), None) or min(options, key=lambda f: f.gib)
        chosen.append(step)
        run = step.run
        if step.gib <= gpu_gib:
            return chosen


def check(arch: Arch, run: RunSettings, gpu_gib: float, gpus_per_node: int = 8) -> list[str]:
    """Problems of this run on GPUs of `gpu_gib` GiB each, naming the fix; [] when it fits."""
    est = estimate(arch, run)
    if est.total <= gpu_gib * GIB:
        return []
    ranks = max(1, run.world_size)
    where = f"{ranks} GPU{'s' if ranks > 1 else ''}{' (FSDP)' if run.fsdp and ranks > 1 else ''} of {gpu_gib:g} GiB"
    found = fixes(arch, run, gpu_gib, gpus_per_node)
    fitting = [f for f in found if f.gib <= gpu_gib]
    if fitting:
        listed = "; ".join(f"{f.text}: {f.gib:.1f} GiB" for f in fitting)
        advice = f"Any one of these fits: {listed}."
    else:
        together = combined(arch, run, gpu_gib, gpus_per_node)
        if together:
            steps = " + ".join(f.text for f in together)
            advice = f"No single change fits; together these do ({together[-1].gib:.1f} GiB): {steps}."
        else:
            advice = "No change the estimate knows of makes it fit: a smaller model, or GPUs with more memory."
    return [f"Does not fit in GPU memory on {where}: {est.summary()}. {advice}"]


# ---------------------------------------------------------------------------------- GPU memory from a gres GPU type

# Memory per GPU (GiB, as sold) of GPU type names that sites use in their gres; a type sold in several sizes (a100,
# v100, gh200) counts only with its size in the name (a100_80g, v100-32gb). Unknown or ambiguous: None, never a guess.
GPU_TYPES_GIB = {
    "h100": 80,
    "h100_nvl": 94,
    "h200": 141,
    "b200": 180,
    "mi300x": 192,
    "mi250": 64,
    "mi250x": 64,
    "mi210": 64,
    "l40s": 48,
    "l40": 48,
    "a40": 48,
    "a6000": 48,
    "rtx_a6000": 48,
    "rtx6000_ada": 48,
    "a5000": 24,
    "a10": 24,
    "a10g": 24,
    "l4": 24,
    "rtx3090": 24,
    "rtx4090": 24,
    "t4": 16,
    "a4000": 16,
}


def gpu_gib_of_type(name: str) -> float | None:
    """GiB of one GPU from a gres type name ("a100_80g", "h100", "nvidia_h100_80gb_hbm3"); None when unknown."""
    name = name.strip().lower()
    sized = re.search(r"(?<![a-z0-9])(\d{2,3})\s*g(?:b|ib)?(?![a-z0-9])", name.replace("-", "_").replace("_", " "))
    if sized:
        return float(sized.group(1))
    key = re.sub(r"^(nvidia|amd|tesla)[_-]", "", name).replace("-", "_")
    return float(GPU_TYPES_GIB[key]) if key in GPU_TYPES_GIB else None


def gpu_types_in_gres(gres: str | None) -> list[str]:
    """The GPU type names in a gres string ("gpu:a100_80g:4(S:0-1),gpu:h100:2" -> [a100_80g, h100]); untyped: []."""
    types = []
    for item in (gres or "").split(","):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and not parts[1].isdigit():
            types.append(parts[1])
    return types
