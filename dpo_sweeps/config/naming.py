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

from omegaconf import OmegaConf

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


def sweep_subdirname(overrides: list[str] | None) -> str:
    """A point's folder inside its sweep: the overrides that vary across the sweep (`beta=0.1`), the shared ones
    being in the sweep folder's name already. Compared by key: Hydra re-renders values in the jobs (false -> False)."""
    fixed = {_key(o) for o in json.loads(os.environ.get(SWEEP_ENV) or "{}").get("fixed", [])}
    return run_dirname([o for o in (overrides or []) if _key(o) not in fixed])


def register_resolvers() -> None:
    resolvers = (("run_dirname", run_dirname), ("sweep_dirname", sweep_dirname), ("sweep_subdirname", sweep_subdirname))
    for resolver_name, fn in resolvers:
        if not OmegaConf.has_resolver(resolver_name):
            OmegaConf.register_new_resolver(resolver_name, fn)


register_resolvers()
