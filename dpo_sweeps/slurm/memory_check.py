"""Does a run fit its GPUs? The memory estimate (`memory.py`) against what one GPU has, and the changes that would
make it fit, each with its own estimate, spelled as the overrides to type.

Import-light (no torch): runs in the submitting process.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.config.validation import reference_needed
from dpo_sweeps.slurm import resources
from dpo_sweeps.slurm.host_memory import host_lines_and_problems
from dpo_sweeps.slurm.memory import DTYPE_NAMES, GIB, Arch, RunSettings, estimate

# How each fix is spelled on the command line.
FIX_FSDP = "shard with FSDP over {n} GPUs (training.fsdp.enabled=true {gpus})"
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
                # training.fsdp.enabled=true on one rank has nothing to shard over: then only the GPUs are missing.
                template = FIX_MORE_GPUS if run.fsdp else FIX_FSDP
                text = template.format(n=n, gpus=gpu_request(n, gpus_per_node))
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


# ----------------------------------------------------------------------------- a sweep's points and its launcher

SKIP_ENV = "DPO_SWEEPS_MEMORY_CHECK"
# Where a launcher profile can name a GPU type ("gpu:h100:8", or "h100:8" for --gpus-per-node).
GRES_KEYS = ("gres", "gpus_per_node", "gpus_per_task", "additional_parameters.gres", "additional_parameters.gpus")


def arch_for(cfg: DictConfig) -> tuple[Arch | None, str]:
    """The model's shape and where it came from: a local folder's config.json (what will be loaded), else
    model.arch; (None, why) when neither exists."""
    m = cfg.model
    folder = Path(str(m.name_or_path)).expanduser()
    try:
        if (folder / "config.json").is_file():
            return Arch.from_config_json(folder), f"{folder}/config.json"
        if m.get("arch") is not None:
            values = OmegaConf.to_container(m.arch, resolve=True)
            return Arch.from_mapping({k: v for k, v in values.items() if v != "???"}), "model.arch"
    except (ValueError, OSError) as err:
        return None, str(err)
    return None, f"model.name_or_path={m.name_or_path} is no local folder and model.arch is not set"


def run_settings(cfg: DictConfig, world_size: int, arch: Arch | None = None) -> tuple[RunSettings | None, str]:
    """What of a point's config decides its memory, on `world_size` ranks; (None, why) when something is unknown."""
    from dpo_sweeps.config import fsdp

    d, t = cfg.dataset, cfg.training
    seq_len = d.max_length
    if seq_len is None and d.max_prompt_length and d.max_completion_length:
        seq_len = d.max_prompt_length + d.max_completion_length
    if not seq_len:
        return None, "dataset.max_length=null: the sequence length is unbounded"
    weights = DTYPE_NAMES.get(str(cfg.model.dtype), "bf16")  # auto: bf16 on a GPU that has it (A100 and later)
    precision = weights if t.precision == "auto" else str(t.precision)
    q = cfg.quantization
    # A pre-quantized checkpoint's own bit width: its config.json's quantization_config, or model.arch.quant_bits.
    quant_bits = (arch.quant_bits if arch else None) if cfg.model.prequantized else {"nf4": 4, "int8": 8}.get(q.mode)
    if cfg.model.prequantized and not quant_bits:
        return None, "a pre-quantized model whose bit width is unknown (set model.arch.quant_bits: 4 or 8)"
    return RunSettings(
        micro_batch=t.per_device_train_batch_size,
        seq_len=int(seq_len),
        eval_batch=t.per_device_eval_batch_size,
        lora_rank=cfg.lora.r if cfg.lora.enabled else None,
        lora_targets=(lambda t: t if isinstance(t, str) else tuple(t))(cfg.lora.target_modules),
        quant_bits=quant_bits,
        double_quant=bool(q.double_quant),
        weights_dtype=weights,
        precision=precision,
        # As train/ref_cache.py decides: a frozen copy unless LoRA, or the cache serves a loss that reads it.
        reference_copy=not (cfg.ref_cache.enabled and reference_needed(cfg)),
        optimizer=str(t.optim),
        world_size=world_size,
        fsdp=bool(t.fsdp.enabled),
        fsdp_reshard_after_forward=bool(t.fsdp.reshard_after_forward),
        # Rank-0-only loading is FSDP2's (models/loading.rank_zero_loads).
        fsdp_cpu_ram_efficient_loading=bool(t.fsdp.cpu_ram_efficient_loading) and t.fsdp.version == 2,
        fsdp_full_state_dict=t.fsdp.state_dict_type == "FULL_STATE_DICT",
        gradient_checkpointing=fsdp.activation_checkpointing(cfg),
        eager_attention=cfg.model.get("attn_implementation") == "eager",
    ), ""


def ranks(launcher: dict[str, Any]) -> int:
    """Ranks of one training: one per task, tasks_per_node on each of `nodes` nodes."""
    return max(1, int(launcher.get("nodes") or 1)) * max(1, int(launcher.get("tasks_per_node") or 1))


def gpu_gib(launcher: dict[str, Any], query_cluster=None) -> tuple[float | None, str]:
    """GiB of one GPU the jobs will get, and where that comes from; (None, why) when nothing says, never a guess."""
    if launcher.get("gpu_mem_gb"):
        return float(launcher["gpu_mem_gb"]), "hydra.launcher.gpu_mem_gb"
    extra = launcher.get("additional_parameters") or {}
    for key in GRES_KEYS:
        value = extra.get(key.split(".", 1)[1]) if key.startswith("additional_parameters.") else launcher.get(key)
        text = str(value or "")
        types = gpu_types_in_gres(text if text.startswith("gpu") else f"gpu:{text}")
        sizes = [gpu_gib_of_type(t) for t in types]
        if sizes and None not in sizes:
            return min(sizes), f"the GPU type in hydra.launcher.{key}={value}"
    if os.environ.get(resources.SKIP_ENV, "1") == "0":
        return None, f"{resources.SKIP_ENV}=0 (no sinfo) and hydra.launcher.gpu_mem_gb is not set"
    try:
        cluster = (query_cluster or resources.query_cluster)()
    except resources.ClusterUnavailable:
        return None, "no sinfo answers here and hydra.launcher.gpu_mem_gb is not set"
    partition = launcher.get("partition") or cluster.default_partition
    wanted = {p.strip() for p in str(partition).split(",")}
    gres = sorted({g.gres for g in cluster.groups if g.partition in wanted and g.gpus})
    types = [t for text in gres for t in gpu_types_in_gres(text)]
    sizes = [gpu_gib_of_type(t) for t in types]
    if not types or None in sizes:
        return None, f"sinfo's gres for partition {partition} ({', '.join(gres) or 'no GPUs'}) names no known GPU size"
    return min(sizes), f"sinfo: {', '.join(sorted(set(types)))} in partition {partition}"


# Override keys that cannot change a point's memory: points differing only in them share one estimate.
NO_MEMORY_EFFECT = frozenset(
    {"beta", "seed", "name", "rerun", "dry_run", "loss.label_smoothing", "loss.discopop_tau", "loss.ld_alpha"}
    | {f"training.{k}" for k in ("learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm")}
    | {f"training.{k}" for k in ("max_steps", "num_train_epochs", "gradient_accumulation_steps", "logging_steps")}
    | {f"training.{k}" for k in ("eval_steps", "save_steps", "save_total_limit")}
)


@dataclass
class _Group:
    arch: Arch
    run: RunSettings
    source: str
    points: list[int]
    overrides: list[str]


def _label(points: list[int]) -> str:
    shown = ", ".join(f"#{i}" for i in points[:6])
    more = f", ... ({len(points)} points)" if len(points) > 6 else ""
    return f"point{'s' if len(points) > 1 else ''} {shown}{more}"


class SweepMemory:
    """The memory check of a sweep: one estimate per distinct (model shape, settings), listing the points that share
    it; `lines()` for dry_run=true, `problems()` for the refusal before sbatch."""

    def __init__(self, launcher: dict[str, Any], query_cluster=None):
        self.launcher, self.world = launcher, ranks(launcher)
        self._query = query_cluster
        self.groups: dict[tuple, _Group] = {}
        self.skipped: dict[str, list[int]] = {}
        self._read: dict[tuple[str, ...], tuple[Arch, RunSettings, str] | str] = {}
        self._gpu: tuple[float | None, str] | None = None

    def add(self, index: int, overrides: list[str], cfg: DictConfig) -> None:
        # Points that differ only in keys the estimate does not read (a beta or learning-rate sweep) share one
        # reading of their config (~1.5 ms a point, 2 s over 1200 points otherwise).
        memo = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NO_MEMORY_EFFECT)
        if memo not in self._read:
            self._read[memo] = self._settings(cfg)
        found = self._read[memo]
        if isinstance(found, str):
            self.skipped.setdefault(found, []).append(index)
        else:
            self.groups.setdefault(found, _Group(*found, [], overrides)).points.append(index)

    def _settings(self, cfg: DictConfig) -> tuple[Arch, RunSettings, str] | str:
        """(shape, settings, where the shape came from), or why there is no estimate."""
        if cfg.training.use_cpu or ("gpus_per_node" in self.launcher and not resources.requested_gpus(self.launcher)):
            return "CPU job: no GPU memory to check"
        arch, source = arch_for(cfg)
        run, why = run_settings(cfg, self.world, arch) if arch else (None, source)
        if arch is None or run is None:
            return f"memory not estimated: {why}"
        return arch, run, source

    def gpu(self) -> tuple[float | None, str]:
        if self._gpu is None:
            if not self.groups:
                self._gpu = (None, "")
            elif not (resources.is_slurm_launcher(self.launcher) or self.launcher.get("gpu_mem_gb")):
                self._gpu = (None, "not a SLURM launcher: this machine's GPUs are not looked up")
            else:
                self._gpu = gpu_gib(self.launcher, self._query)
        return self._gpu

    def lines(self) -> list[str]:
        """What dry_run=true prints: per distinct config its estimate, and whether it fits."""
        if not self.groups:
            return [f"GPU memory: {_label(points)}: {why}" for why, points in self.skipped.items()]
        if "tasks_per_node" in self.launcher:
            nodes, tasks = self.launcher.get("nodes") or 1, self.launcher.get("tasks_per_node") or 1
            ranks_text = f"{self.world} rank(s) (nodes={nodes} x tasks_per_node={tasks})"
        else:
            ranks_text = "1 rank (each point runs in this process)"
        gib, source = self.gpu()
        gpus = f"GPUs of {gib:g} GiB ({source})" if gib else f"GPU memory unknown ({source}): not checked"
        lines = [f"GPU memory, estimated per GPU for {ranks_text}; {gpus}:"]
        for g in self.groups.values():
            est = estimate(g.arch, g.run)
            verdict = ""
            if gib:
                problems = check(g.arch, g.run, gib, self._gpus_per_node())
                verdict = f": fits ({gib - est.total / GIB:.1f} GiB to spare)" if not problems else ": DOES NOT FIT"
            sharded = ", FSDP" if g.run.fsdp and self.world > 1 else ""
            lines.append(f"  {_label(g.points)} ({g.source}{sharded}): {est.summary()}{verdict}")
            if gib and problems:
                lines.append(f"    would be REFUSED: {problems[0]}")
        lines += [f"  {_label(points)}: {why}" for why, points in self.skipped.items()]
        return lines + self.host()[0]

    def host(self) -> tuple[list[str], list[str]]:
        """(dry_run lines, refusals) of a node's host memory against what the job asks for (host_memory.py)."""
        lines, problems = host_lines_and_problems(list(self.groups.values()), self.launcher, _label)
        return lines, [] if os.environ.get(SKIP_ENV, "1") == "0" else problems

    def problems(self) -> list[str]:
        """One problem per distinct config that cannot fit, naming its points and the fix; [] when all fit, the GPU
        memory is unknown, or DPO_SWEEPS_MEMORY_CHECK=0."""
        if os.environ.get(SKIP_ENV, "1") == "0":
            return []
        gib, _ = self.gpu()
        if not gib:
            return []
        out = []
        for g in self.groups.values():
            for problem in check(g.arch, g.run, gib, self._gpus_per_node()):
                out.append(f"{_label(g.points)} [{' '.join(g.overrides) or 'no overrides'}]: {problem}")
        return out

    def _gpus_per_node(self) -> int:
        return max(8, resources.requested_gpus(self.launcher))
