"""Deterministic run and sweep folder names, built from the overrides the user typed.

A folder named by its overrides (not a timestamp or job number) is what lets a rerun or a SLURM requeue find its own
checkpoints and skip completed points. Registered as OmegaConf resolvers used by `conf/config.yaml`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Keys that do not change what a run computes, so they must not change its folder.
NON_IDENTITY_KEYS = frozenset({"name", "dry_run", "rerun", "ref_cache.dir"})
NON_IDENTITY_PREFIXES = ("hydra.", "hydra/", "logger.", "+hydra", "~hydra")
MAX_NAME_CHARS = 150
DEFAULT_NAME = "default"
# Hydra resolves hydra.sweep.dir once for the sweep (in the submitting process) and again inside every job, where
# only that job's overrides are visible. The sweep-level answer is handed to the jobs through the environment, which
# the basic launcher shares and submitit's local and SLURM executors inherit.
SWEEP_ENV = "DPO_SWEEPS_SWEEP"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def identity_overrides(overrides: list[str] | None) -> list[str]:
    """The overrides that define what a run computes, sorted so that their order on the command line is irrelevant."""
    kept = [
        o
        for o in (overrides or [])
        if _key(o) not in NON_IDENTITY_KEYS and not _key(o).startswith(NON_IDENTITY_PREFIXES)
    ]
    return sorted(kept)


@functools.lru_cache(maxsize=4096)  # ~0.3 ms a parse; the sweep folder is named again for every point of a sweep
def _is_sweep(override: str) -> bool:
    """Whether Hydra expands `override` into several values (`a,b`, `[1,2],[3,4]`, `range(..)`, `choice(..)`, ...).
    Hydra's own parser decides: a list value is one value, a comma between lists is a sweep, quoted commas are not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except OverrideParseException:
        return False  # Hydra refuses it with its own message before any folder is named


def _safe(name: str) -> str:
    name = name.replace("/", "_").replace(" ", "")
    name = re.sub(r"[^A-Za-z0-9=,._+\-@%:\[\]]", "_", name)
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME_CHARS - 11]}-{digest}"
    return name or DEFAULT_NAME


def run_dirname(overrides: list[str] | None) -> str:
    """`beta=0.1,model=tiny_qwen` for a point; `default` when nothing that matters was overridden."""
    return _safe(",".join(identity_overrides(list(overrides or []))))


def _sweep_identity(name: str | None, overrides: list[str] | None) -> dict:
    fixed = [o for o in identity_overrides(list(overrides or [])) if not _is_sweep(o)]
    return {"dirname": _safe(str(name)) if name else _safe(",".join(fixed)), "fixed": fixed}


def remember_sweep(name: str | None, overrides: list[str] | None) -> None:
    """Called once per multirun in the submitting process (`hydra_callbacks`), before any folder is resolved."""
    os.environ[SWEEP_ENV] = json.dumps(_sweep_identity(name, overrides))


def sweep_dirname(name: str | None, overrides: list[str] | None, job_num: int | None = None) -> str:
    """The sweep's folder: its `name` if given, else the overrides shared by all its points (the swept ones left out),
    so that widening a sweep (`beta=0.1,0.3` -> `beta=0.1,0.3,1.0`) reuses the folder and skips completed points."""
    if job_num is not None and os.environ.get(SWEEP_ENV):
        return json.loads(os.environ[SWEEP_ENV])["dirname"]
    return _sweep_identity(name, overrides)["dirname"]


def varying_overrides(overrides: list[str] | None) -> list[str]:
    """The overrides that vary across the sweep (`beta=0.1`), the shared ones being in the sweep folder's name
    already. Compared by key: Hydra re-renders values in the jobs (false -> False)."""
    fixed = {_key(o) for o in json.loads(os.environ.get(SWEEP_ENV) or "{}").get("fixed", [])}
    return [o for o in (overrides or []) if _key(o) not in fixed]


def sweep_subdirname(overrides: list[str] | None) -> str:
    """A point's folder inside its sweep: the overrides that vary across the sweep (`varying_overrides`)."""
    return run_dirname(varying_overrides(overrides))


# For other namers of folders (a search's trial folders, search/folders.py).
override_key, safe_name = _key, _safe


def override_dirname(cfg: DictConfig, parsed: list[Any]) -> str:
    """`hydra.job.override_dirname` as Hydra's config loader computes it for these (parsed) task overrides, less
    `dry_run`: a dry run shows the folders the same command without dry_run=true will use."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    spec = cfg.hydra.job.config.override_dirname
    return get_overrides_dirname(
        overrides=[o for o in parsed if not o.is_hydra_override() and o.key_or_group != "dry_run"],
        kv_sep=spec.kv_sep,
        item_sep=spec.item_sep,
        exclude_keys=list(spec.exclude_keys),
    )


class SubdirError(ValueError):
    """hydra.sweep.subdir cannot be resolved before the jobs run; nothing was run or submitted."""


def point_run_dir(config: DictConfig, cfg: DictConfig, job_num: int) -> str:
    """The folder a point will run in, as Hydra's launchers name it: the sweep folder as this (sweep-level) config
    resolves it (a point's own config is not a job yet and would name the sweep folder after its own overrides),
    joined with the point's `hydra.sweep.subdir`, resolved with the job number the launcher gives it (every launcher
    here numbers the points of a sweep in order from 0, and `hydra.job.num` is what `p_${hydra.job.num}` reads)."""
    with open_dict(cfg):
        cfg.hydra.job.num = job_num
    try:
        subdir = str(cfg.hydra.sweep.subdir)
    except Exception as exc:  # an interpolation only a running job can resolve (hydra.job.id, a missing key, ...)
        raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
        raise SubdirError(
            f"hydra.sweep.subdir={raw!r} cannot be resolved before the jobs run ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}). A point's folder must be known before it runs, so that a rerun finds its "
            "checkpoints and skips it when completed: use ${hydra.job.num}, ${hydra.job.override_dirname}, "
            "${hydra.job.name} or config keys (the default, the overrides that vary, needs no setting)."
        ) from None
    if not subdir.strip() or subdir.strip() in (".", "..") or Path(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise SubdirError(
            f"hydra.sweep.subdir resolves to {subdir!r} for point #{job_num}: each point needs a folder of its own "
            "inside the sweep folder (a relative path without '..')."
        )
    if len(Path(subdir).parts) > 1:
        # status, report, the summary and a search read a sweep folder's immediate subfolders.
        raise SubdirError(
            f"hydra.sweep.subdir resolves to {subdir!r} for point #{job_num}: a point's folder must be directly inside "
            "the sweep folder (no '/'). Use '_' instead, or for ${hydra.job.override_dirname} leave the key with a "
            "path out: hydra.job.config.override_dirname.exclude_keys=[<key>]."
        )
    return str(Path(str(config.hydra.sweep.dir)) / subdir)


DEFAULT_SUBDIR = "${sweep_subdirname:${hydra.overrides.task}}"


def custom_subdir(config: DictConfig) -> bool:
    """Whether `hydra.sweep.subdir` is not ours (conf/config.yaml): a search must then compose a trial to name its
    folder (`point_run_dir`), instead of reading the name off its overrides (`sweep_subdirname`)."""
    return OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") != DEFAULT_SUBDIR


# Config keys that hold a path on this machine: relative ones mean "relative to where the command was started".
PATH_KEYS = ("data_cache.dir", "ref_cache.dir", "dataset.path")
# Keys that hold a local path or a hub id: anchored only when the relative path exists where the command started.
PATH_OR_HUB_KEYS = ("model.name_or_path", "eval.reward_model")


def anchor_paths(cfg: DictConfig, started_in: str) -> list[str]:
    """With `hydra.job.chdir=true` a job runs inside its run folder: a relative path in the config would then point
    into that folder (each point building its own data and reference caches, a dataset.path not found). Anchors them
    to the folder the command was started in (`hydra.runtime.cwd`), as the user meant them; returns what changed."""
    changed = []
    for key in PATH_KEYS + PATH_OR_HUB_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        anchored = Path(started_in) / value
        if key in PATH_OR_HUB_KEYS and not anchored.exists():
            continue  # a hub id (org/name), not a local folder
        OmegaConf.update(cfg, key, str(anchored), merge=False)
        changed.append(f"{key}={anchored}")
    return changed


def register_resolvers() -> None:
    resolvers = (("run_dirname", run_dirname), ("sweep_dirname", sweep_dirname), ("sweep_subdirname", sweep_subdirname))
    for resolver_name, fn in resolvers:
        if not OmegaConf.has_resolver(resolver_name):
            OmegaConf.register_new_resolver(resolver_name, fn)


register_resolvers()
