"""Where dpo_sweeps keeps things outside run folders (the tiny-model cache), computed without importing torch."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# Bump when the tiny models' recipe changes, so a stale cached build is never reused.
TINY_MODELS_VERSION = "v1"


def cache_dir() -> Path:
    """$DPO_SWEEPS_CACHE, else $XDG_CACHE_HOME/dpo_sweeps, else ~/.cache/dpo_sweeps."""
    if os.environ.get("DPO_SWEEPS_CACHE"):
        return Path(os.environ["DPO_SWEEPS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "dpo_sweeps"


def tiny_model_dir(arch: str) -> str:
    return str(cache_dir() / "tiny_models" / TINY_MODELS_VERSION / arch)


def register_path_resolvers() -> None:
    if not OmegaConf.has_resolver("tiny_model_dir"):
        OmegaConf.register_new_resolver("tiny_model_dir", tiny_model_dir)
