"""Hydra callbacks that make a point run out of memory the way a real one does (test code only; dpo_sweeps' own code
has no switch for it): a CUDA out-of-memory in a training step (`OutOfMemoryAtStep`), and a process that needs more
host memory than its SLURM job asked for (`HostMemoryPeak`). Both act in the job's own process (`on_job_start`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

MICRO_BATCHES_FILE = "micro_batches.jsonl"


class OutOfMemoryAtStep(Callback):
    """From optimizer step `step` on, a training step whose micro-batch holds more than `max_batch` pairs raises
    `torch.OutOfMemoryError`, as CUDA does for a batch that does not fit. Every training step's micro-batch (pairs
    actually in it, optimizer step) is appended to the run folder's micro_batches.jsonl, so a test sees what ran."""

    def __init__(self, step: int = 1, max_batch: int = 2) -> None:
        self.step, self.max_batch = int(step), int(max_batch)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        import torch
        import trl

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        original = getattr(trl.DPOTrainer.training_step, "_original", trl.DPOTrainer.training_step)
        step, max_batch = self.step, self.max_batch

        def training_step(trainer, model, inputs, *args, **kwargs):
            rows = len(inputs["input_ids"]) // 2  # TRL stacks the chosen answers over the rejected ones
            with open(run_dir / MICRO_BATCHES_FILE, "a") as out:
                out.write(json.dumps({"global_step": trainer.state.global_step, "pairs": rows}) + "\n")
            if trainer.state.global_step >= step and rows > max_batch:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: a micro-batch of {rows} > {max_batch})"
                )
            return original(trainer, model, inputs, *args, **kwargs)

        training_step._original = original
        trl.DPOTrainer.training_step = training_step


class HostMemoryPeak(Callback):
    """Holds `gb` GiB of touched host memory for `seconds` as the job starts (a model load's peak), then frees it."""

    def __init__(self, gb: float = 1.5, seconds: float = 4.0) -> None:
        self.gb, self.seconds = float(gb), float(seconds)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        block = bytearray(int(self.gb * 2**30))
        for i in range(0, len(block), 4096):  # touch every page: resident, as loaded weights are
            block[i] = 1
        time.sleep(self.seconds)
        del block
