"""Test-only: force FSDP on for CPU ranks (accelerate enables it only on GPU backends; see STACK_NOTES "FSDP on CPU").

Active only in a process started with this folder on PYTHONPATH *and* DPO_SWEEPS_TEST_FORCE_FSDP=1 (tests/helpers.py's
FORCE_FSDP sets both; the environment reaches SLURM jobs through sbatch). It never imports anything heavy
itself: it waits for `transformers.trainer` to be imported, then wraps `Trainer.create_accelerator_and_postprocess` so
that a run whose TrainingArguments configure FSDP (`fsdp_plugin_args`) trains sharded. The product's code is untouched:
it passes `training.fsdp.*` to TRL exactly as on GPUs (config/fsdp.py). A run without FSDP settings (the DDP baseline) is left alone.

Forcing alone would test less than a GPU demands (gloo with CPU tensors accepts what NCCL refuses), so a forced run
also checks the GPU's rules: every `generate` (the generation eval, before and after training, on every rank) and
every forward that fills the reference cache (`compute_ref_log_probs`) gets the model accelerate prepared, with sharded
parameters; a violation raises in the job, and each check is logged to the file named by
DPO_SWEEPS_TEST_GPU_RULES_LOG for the test to read.
"""

from __future__ import annotations

import os
import sys

FLAG = "DPO_SWEEPS_TEST_FORCE_FSDP"


# Set by _force(): this process trains sharded, so the GPU's rules below apply to it.
_FORCED = False
# tests/helpers.GPU_RULES_LOG names a file: one JSON line per check, from every rank, for the test to read.
RULES_LOG = "DPO_SWEEPS_TEST_GPU_RULES_LOG"


def _record(**entry) -> None:
    import json

    path = os.environ.get(RULES_LOG)
    if path:
        with open(path, "a") as f:  # one short line per write: appends of the ranks do not interleave
            f.write(json.dumps({"rank": int(os.environ.get("RANK", "0")), "pid": os.getpid(), **entry}) + "\n")


def _check_sharded(call: str, model, **extra) -> None:
    """What NCCL and a real device demand of a forward in a sharded run, which gloo with CPU tensors lets through:
    the model is the one accelerate prepared (an FSDP2 module, on the device) and its parameters are sharded DTensors.
    An unprepared model is whole and on CPU on every rank: a CUDA batch does not run through it, and its collectives
    (generate's synced all-reduce, the fill's gather) on a CPU tensor fail on NCCL."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    # A unit whose reshard_after_forward is off (accelerate's tail: final norm + LM head) keeps its parameters gathered
    # after a forward until the next backward: reshard first (FSDP2's public call, a no-op on sharded units), so the
    # count says whether FSDP manages every parameter.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    params = list(model.parameters())
    sharded = sum(isinstance(p, DTensor) for p in params)
    fsdp = isinstance(model, FSDPModule)
    _record(call=call, model=type(model).__name__, fsdp=fsdp, params=len(params), sharded=sharded, **extra)
    if not fsdp or sharded != len(params):
        raise AssertionError(
            f"{call}() on {type(model).__name__} ({sharded} of {len(params)} parameters sharded) in a sharded run: "
            "not the model accelerate prepared; on GPUs it is whole and on CPU, and NCCL refuses its collectives."
        )
    if not extra.get("policy", True):
        raise AssertionError(
            f"{call}() on a {type(model).__name__} that is not the trainer's model: a second whole model loaded on "
            "every rank (TRL's own reference: device_map='auto' on GPUs spreads it over all of the node's GPUs), "
            "which the memory estimate does not count and rank-0-only loading cannot spare."
        )


def _check_generate(model) -> None:
    _check_sharded("generate", model)


def _force(trainer) -> None:
    global _FORCED
    _FORCED = True
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    state.distributed_type = DistributedType.FSDP
    # Without this one the state falls back to MULTI_CPU mid-run and saving fails on sharded tensors.
    PartialState().distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


def _patch(trainer_module) -> None:
    trainer_cls = trainer_module.Trainer
    original = trainer_cls.create_accelerator_and_postprocess

    def create_accelerator_and_postprocess(self):
        original(self)
        if self.args.fsdp_plugin_args and not self.is_fsdp_enabled and self.args.world_size > 1:
            _force(self)

    trainer_cls.create_accelerator_and_postprocess = create_accelerator_and_postprocess

    from transformers.generation.utils import GenerationMixin

    generate = GenerationMixin.generate

    def checked_generate(self, *args, **kwargs):
        if _FORCED:
            _check_generate(self)
        return generate(self, *args, **kwargs)

    GenerationMixin.generate = checked_generate


def _patch_dpo(dpo_module) -> None:
    """Every forward of a reference-cache fill (ours and TRL's loop both call `compute_ref_log_probs` once per batch)
    runs on the policy accelerate prepared: full DPO's untrained policy, or LoRA's with the adapter disabled."""
    trainer_cls = dpo_module.DPOTrainer
    compute = trainer_cls.compute_ref_log_probs

    def checked_compute_ref_log_probs(self, model, inputs):
        if _FORCED:
            _check_sharded("ref_fill", model, policy=model is self.model)
        return compute(self, model, inputs)

    trainer_cls.compute_ref_log_probs = checked_compute_ref_log_probs


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _patch_loading(loading) -> None:
    """accelerate shards here (forced), so the product's rank-0-only loading applies as on GPUs; and each policy load
    is measured: this rank's RSS growth once every loaded weight has been read (an fp32 safetensors file is
    memory-mapped, so its pages count in RSS only when read, as the first forward would)."""
    loading.accelerate_shards = lambda cfg: bool(cfg.training.fsdp.enabled) and int(os.environ["WORLD_SIZE"]) > 1

    def measured(build):
        def build_and_measure(*args, **kwargs):
            import torch

            before = _rss_mb()
            model = build(*args, **kwargs)
            with torch.no_grad():
                real = [p for p in model.parameters() if p.device.type != "meta"]
                for p in real:
                    p.sum()
            meta = sum(p.device.type == "meta" for p in model.parameters())
            _record(call="load", rss_growth_mb=_rss_mb() - before, real_params=len(real), meta_params=meta)
            return model

        return build_and_measure

    loading._load_causal_lm = measured(loading._load_causal_lm)
    loading._empty_causal_lm = measured(loading._empty_causal_lm)


# Patched as each is imported: module name -> patch.
_PATCHES = {
    "transformers.trainer": _patch,
    "trl.trainer.dpo_trainer": _patch_dpo,
    "dpo_sweeps.models.loading": _patch_loading,
}


if os.environ.get(FLAG) == "1":
    import importlib.abc
    import importlib.util

    class _PatchOnImport(importlib.abc.MetaPathFinder):
        def __init__(self):
            self.pending = dict(_PATCHES)

        def find_spec(self, name, path=None, target=None):
            patch = self.pending.pop(name, None)
            if patch is None:
                return None
            # Each module once; and the lookup below must not find us again.
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                if self.pending:
                    sys.meta_path.insert(0, self)
            loader_exec = spec.loader.exec_module

            def exec_module(module):
                loader_exec(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _PatchOnImport())
