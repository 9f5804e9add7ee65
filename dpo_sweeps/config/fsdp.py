"""training.fsdp (schema.py's FsdpConfig) as HF TrainingArguments' `fsdp` / `fsdp_config` (transformers 5).

With FSDP on, `training.gradient_checkpointing` becomes FSDP's own activation checkpointing (per wrapped layer) and
the Trainer's is turned off: transformers warns that both together cost an extra all-gather in backward.
Pure (no torch): the pre-launch check reads the same choice.
"""

from __future__ import annotations

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
