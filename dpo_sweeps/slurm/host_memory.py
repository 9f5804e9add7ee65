"""Host memory (RAM) of one node of a GPU job, estimated before submission: the ranks on the node times what each
holds on the host while it loads the model and while it writes a checkpoint. Import-light (no torch).

What one rank holds on the host (P = parameters, w = bytes per weight in the load dtype, W = ranks):
- always: the process itself (Python, torch, the CUDA and NCCL libraries, tokenizer, prepared data): PROCESS_GIB.
- loading: the policy in its load dtype (P x w), and a frozen reference copy the same; under FSDP2 with
  training.fsdp.cpu_ram_efficient_loading=true rank 0 alone reads the policy (models/loading.py builds it on the meta
  device elsewhere and accelerate broadcasts rank 0's weights), the reference is still read on every rank. Counted per
  rank, an upper bound where the ranks of a node share the checkpoint's file pages. FSDP with bf16/fp16 compute:
  accelerate upcasts the trainable weights to fp32 masters on the host before sharding (P x 4): on rank 0 only with
  cpu_ram_efficient_loading, on every rank without.
  bitsandbytes (4/8-bit) weights load straight onto the GPU: not counted.
- checkpointing: FSDP with FULL_STATE_DICT gathers the fp32 model and AdamW's two fp32 states on rank 0's host to
  write them (12 bytes per parameter); SHARDED_STATE_DICT writes each rank's 1/W share. Without FSDP rank 0 copies the
  model (its dtype) to the host to write it; a LoRA adapter is negligible.
The node that holds rank 0 is the one counted (it holds the most in every phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpo_sweeps.slurm.memory import BYTES, GIB, Arch, RunSettings

# A training process's own resident memory on a GPU node (CUDA context host side, libraries, data), measured order.
PROCESS_GIB = 3.0
# AdamW's two fp32 states and the fp32 master: what a FULL_STATE_DICT checkpoint gathers per parameter.
FULL_CHECKPOINT_BYTES = 12


Parts = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class HostEstimate:
    """What rank 0 and each other rank on its node hold on the host in each phase: (name, bytes) parts."""

    ranks_per_node: int
    rank0_loading: Parts
    other_loading: Parts
    rank0_checkpoint: Parts
    other_checkpoint: Parts

    def _node(self, rank0: Parts, other: Parts) -> float:
        return sum(b for _, b in rank0) + (self.ranks_per_node - 1) * sum(b for _, b in other)

    @property
    def loading(self) -> float:
        return self._node(self.rank0_loading, self.other_loading)

    @property
    def checkpoint(self) -> float:
        return self._node(self.rank0_checkpoint, self.other_checkpoint)

    @property
    def total(self) -> float:
        return max(self.loading, self.checkpoint)

    @property
    def peak_phase(self) -> str:
        return "loading" if self.loading >= self.checkpoint else "checkpointing"

    def summary(self) -> str:
        """The node's peak, then per phase what rank 0 and each other rank hold."""

        def held(parts: Parts) -> str:
            return " + ".join(f"{name} {b / GIB:.1f}" for name, b in parts if b / GIB >= 0.05)

        others = self.ranks_per_node - 1
        phases = []
        for phase, rank0, other in (
            ("loading", self.rank0_loading, self.other_loading),
            ("checkpointing", self.rank0_checkpoint, self.other_checkpoint),
        ):
            rest = f"; each of the other {others} rank(s): {held(other)}" if others else ""
            phases.append(f"{phase}: rank 0 {held(rank0)}{rest}")
        return f"{self.total / GIB:.1f} GiB per node (peak: {self.peak_phase}); " + "; ".join(phases)


def estimate_host(arch: Arch, run: RunSettings, ranks_per_node: int) -> HostEstimate:
    """What the node with rank 0 holds on the host while loading and while checkpointing (see the module doc)."""
    cpu_ram_efficient, full_state = run.fsdp_cpu_ram_efficient_loading, run.fsdp_full_state_dict
    p, w = arch.params, BYTES[run.weights_dtype]
    process = ("process", PROCESS_GIB * GIB)
    policy = ("policy", 0.0 if run.quant_bits else p * w)
    reference = ("reference copy", p * w if run.full and run.reference_copy else 0.0)
    shard = run.fsdp and run.world_size > 1
    upcast = p * 4 if shard and run.precision != "fp32" and w < 4 else 0.0
    rank0_loading = (process, policy, reference, ("fp32 masters", upcast))
    # Rank-0-only loading: the other ranks read no policy and build no masters (rank 0's are broadcast into shards).
    rank0_only = shard and cpu_ram_efficient
    other_policy = ("policy", 0.0) if rank0_only else policy
    other_loading = (process, other_policy, reference, ("fp32 masters", 0.0 if rank0_only else upcast))
    if shard:
        state = p * FULL_CHECKPOINT_BYTES if run.full else 0.0
        name = "fp32 model + AdamW states" if full_state else "its share of model + AdamW states"
        rank0_ckpt = (process, (name, state if full_state else state / run.world_size))
        other_ckpt = (process, (name, 0.0 if full_state else state / run.world_size))
    else:
        rank0_ckpt, other_ckpt = (process, ("model", p * w if run.full else 0.0)), (process,)
    return HostEstimate(ranks_per_node, rank0_loading, other_loading, rank0_ckpt, other_ckpt)


def requested_gib(launcher: dict) -> tuple[float | None, str]:
    """The host memory one node of the job asks for: mem_gb, or mem_per_gpu x gpus_per_node; None = the partition's
    default (not checked)."""
    if launcher.get("mem_gb"):
        return float(launcher["mem_gb"]), f"hydra.launcher.mem_gb={launcher['mem_gb']}"
    per_gpu, gpus = launcher.get("mem_per_gpu"), launcher.get("gpus_per_node")
    if per_gpu and gpus:
        gib = float(str(per_gpu).rstrip("GgBb")) * int(gpus)
        return gib, f"hydra.launcher.mem_per_gpu={per_gpu} x gpus_per_node={gpus}"
    return None, "hydra.launcher.mem_gb=null (the partition's default)"


def host_lines_and_problems(groups, launcher: dict, label) -> tuple[list[str], list[str]]:
    """dry_run lines and refusals for the memory check's groups (memory_check.SweepMemory)."""
    if not groups:
        return [], []
    ranks_per_node = max(1, int(launcher.get("tasks_per_node") or 1))
    have, source = requested_gib(launcher)
    head = f"Host memory per node ({source}), estimated for {ranks_per_node} rank(s) on the node with rank 0:"
    lines, problems = [head], []
    for g in groups:
        est = estimate_host(g.arch, g.run, ranks_per_node)
        need = math.ceil(est.total / GIB * 1.1)  # 10% for the page cache and the allocator's slack
        verdict = ""
        if have is not None:
            verdict = ": fits" if need <= have else f": DOES NOT FIT ({have:g} GiB asked)"
            if need > have:
                problems.append(
                    f"{label(g.points)} [{' '.join(g.overrides) or 'no overrides'}]: does not fit in the host memory "
                    f"the job asks for ({source}): {est.summary()}. Fix: hydra.launcher.mem_gb={need} (or more)"
                    + (
                        ", or training.fsdp.cpu_ram_efficient_loading=true"
                        if g.run.fsdp and not g.run.fsdp_cpu_ram_efficient_loading
                        else ""
                    )
                    + "."
                )
        lines.append(f"  {label(g.points)}: {est.summary()}{verdict}")
    return lines, problems
