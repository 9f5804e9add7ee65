"""Mixed-precision flags for the trainer (bf16/fp16 autocast), shared by the trainer and the reference cache's key
(the reference log-probs depend on them)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dpo_sweeps.models.loading import uses_gpu


def precision_flags(cfg: DictConfig, dtype: torch.dtype) -> dict[str, bool]:
    p = cfg.training.precision
    if p == "auto":
        p = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if uses_gpu(cfg) else "fp32"
    return {"bf16": p == "bf16", "fp16": p == "fp16"}
