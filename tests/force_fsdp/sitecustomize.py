"""Test-only: force FSDP on for CPU ranks (accelerate enables it only on GPU backends; see STACK_NOTES "FSDP on CPU").

Active only in a process started with this folder on PYTHONPATH *and* DPO_SWEEPS_TEST_FORCE_FSDP=1 (tests/helpers.py's
FORCE_FSDP sets both; the environment reaches SLURM jobs through sbatch). It never imports anything heavy
itself: it waits for `transformers.trainer` to be imported, then wraps `Trainer.create_accelerator_and_postprocess` so
that a run whose TrainingArguments configure FSDP (`fsdp_plugin_args`) trains sharded. The product's code is untouched:
it passes `training.fsdp.*` to TRL exactly as on GPUs (config/fsdp.py). A run without FSDP settings (the DDP baseline) is left alone.
"""

from __future__ import annotations

import os
import sys

FLAG = "DPO_SWEEPS_TEST_FORCE_FSDP"


def _force(trainer) -> None:
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


if os.environ.get(FLAG) == "1":
    import importlib.abc
    import importlib.util

    class _PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "transformers.trainer":
                return None
            sys.meta_path.remove(self)  # one module, once; and the lookup below must not find us again
            spec = importlib.util.find_spec(name)
            loader_exec = spec.loader.exec_module

            def exec_module(module):
                loader_exec(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _PatchOnImport())
