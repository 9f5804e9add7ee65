"""training.fsdp (schema.py's FsdpConfig) as HF TrainingArguments' `fsdp` / `fsdp_config` (transformers 5).

With FSDP on, `training.gradient_checkpointing` becomes FSDP's own activation checkpointing (per wrapped layer) and
the Trainer's is turned off: transformers warns that both together cost an extra all-gather in backward.
Pure (no torch): the pre-launch check reads the same choice.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig


def wrap_class(cfg: DictConfig) -> str | None:
    """The layer class FSDP wraps: training.fsdp.wrap_class, else the model family's (model.fsdp_wrap_class)."""
    return cfg.training.fsdp.wrap_class or cfg.model.get("fsdp_wrap_class")


def activation_checkpointing(cfg: DictConfig) -> bool:
    """Whether layers are recomputed in backward, by FSDP or by the Trainer."""
    fsdp = cfg.training.fsdp
    if fsdp.enabled and fsdp.activation_checkpointing is not None:
        return bool(fsdp.activation_checkpointing)
    return bool(cfg.training.gradient_checkpointing)


def trainer_args(cfg: DictConfig) -> dict[str, Any]:
    """The TrainingArguments keys for FSDP; {} when it is off (the Trainer's own checkpointing stays as set)."""
    fsdp = cfg.training.fsdp
    if not fsdp.enabled:
        return {}
    config: dict[str, Any] = {
        "version": fsdp.version,
        "state_dict_type": fsdp.state_dict_type,
        "activation_checkpointing": activation_checkpointing(cfg),
        "reshard_after_forward": fsdp.reshard_after_forward,
        "cpu_ram_efficient_loading": fsdp.cpu_ram_efficient_loading,
    }
    if wrap_class(cfg):
        config["transformer_layer_cls_to_wrap"] = [wrap_class(cfg)]
    return {
        "fsdp": True,
        "fsdp_config": config,
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }


FSDP_STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
# Launchers that run each point as one process of this machine, whatever tasks_per_node says.
ONE_PROCESS_LAUNCHERS = ("hydra_plugins.dpo_sweeps_launcher.local.", "hydra._internal.core_plugins.basic_launcher.")
GPUS = "<GPUs per node>"
TO_A_LAUNCHER = (
    f"-m hydra/launcher=slurm hydra.launcher.tasks_per_node={GPUS} hydra.launcher.gpus_per_node={GPUS} (one task, "
    "i.e. one rank, per GPU)"
)


def ranks(cfg: DictConfig) -> tuple[int, str, str]:
    """How many torch.distributed ranks train one point, what decides it, and how to get several: from the launcher
    when `cfg` carries Hydra's node (before launch), else from this process's WORLD_SIZE (inside the job, where
    cluster.setup_distributed has already exported it; under torchrun it is torchrun's)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = cfg.get("hydra") if "hydra" in cfg else None
    mode = hydra.get("mode") if hydra is not None else HydraConfig.get().mode if HydraConfig.initialized() else None
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if str(mode) == "RunMode.RUN":
        return world, "a single run is one process", TO_A_LAUNCHER
    if hydra is None:
        return world, f"WORLD_SIZE={world} in this job", TO_A_LAUNCHER
    launcher = hydra.launcher
    target = str(launcher.get("_target_", ""))
    if target.startswith(ONE_PROCESS_LAUNCHERS) or "tasks_per_node" not in launcher:
        name = target.rsplit(".", 1)[-1]
        return 1, f"the {name} launcher runs each point as one process", TO_A_LAUNCHER
    tasks, nodes = int(launcher.tasks_per_node or 1), int(launcher.get("nodes") or 1)
    fix = f"hydra.launcher.tasks_per_node={GPUS} hydra.launcher.gpus_per_node={GPUS} (one task, i.e. one rank, per GPU)"
    return tasks * nodes, f"hydra.launcher.tasks_per_node={tasks} x hydra.launcher.nodes={nodes}", fix


def check(cfg: DictConfig, problems: list[str]) -> None:
    """The FSDP rules of validation.py (which runs them with every other check)."""
    fsdp = cfg.training.fsdp
    if not fsdp.enabled:
        return
    if cfg.training.use_cpu:
        problems.append(
            "training.fsdp.enabled=true with training.use_cpu=true: FSDP shards over GPUs. "
            "Fix: training.fsdp.enabled=false."
        )
    if cfg.quantization.mode != "none" or cfg.model.prequantized:
        what = f"quantization={cfg.quantization.mode}" if cfg.quantization.mode != "none" else "a pre-quantized model"
        problems.append(
            f"training.fsdp.enabled=true with {what}: bitsandbytes weights are not sharded by FSDP here. "
            "Fix: training.fsdp.enabled=false (DDP), or an unquantized model for full-parameter FSDP."
        )
    if fsdp.version not in (1, 2):
        problems.append(f"training.fsdp.version={fsdp.version}: 2 (FSDP2) or 1 (legacy FSDP). Fix: 2.")
    if fsdp.state_dict_type not in FSDP_STATE_DICT_TYPES:
        problems.append(
            f"training.fsdp.state_dict_type={fsdp.state_dict_type}: must be one of {', '.join(FSDP_STATE_DICT_TYPES)}."
        )
    world, why, fix = ranks(cfg)
    # torchrun starts a process group even for one process, and transformers accepts FSDP in it (make gpu-check).
    if world < 2 and not os.environ.get("TORCHELASTIC_RUN_ID"):
        # Refused here, before any folder or job exists: transformers raises "Using fsdp only works in distributed
        # training" in a single process, i.e. after the job waited in the queue and loaded the model.
        problems.append(
            f"training.fsdp.enabled=true with one rank ({why}): FSDP shards the model over several ranks, and "
            f"transformers refuses it in a single process. Fix: {fix}; or training.fsdp.enabled=false on one GPU "
            "(LoRA, or a model that fits it)."
        )
