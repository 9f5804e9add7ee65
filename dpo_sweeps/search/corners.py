"""Checks before the first trial, on the corners of the search space that matter, not only on the base config.

A search's trials do not exist before it runs, so the pre-launch check (sweep/preflight.py) sees the base config only:
a misspelt key, a group option that does not exist, an invalid combination, an objective that some trials cannot
produce (a KL objective outside the KL regime) or a LoRA rank or batch size that does not fit the GPUs would each
surface in every trial's job, hours later. Here, before the study is opened:

- validation corners: every choice of a categorical parameter and both ends of every range, one parameter varied at a
  time from the first values; each is composed (Hydra's own `load_sweep_config`), validated
  (`config.validation.find_problems`) and its objectives checked (`settings.problems`: each metric logged by a run
  with that config);
- memory corners: each parameter's values with every other parameter at its most memory-hungry value (the value
  whose corner has the larger estimated peak; keys the estimate never reads are left at their first value), through
  the sweep's memory check (`slurm.memory_check.SweepMemory`; refused on a SLURM launcher, as for a grid sweep).

`check` returns every problem (each naming the corner it appeared at) and the lines a dry run prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.config.validation import find_problems
from dpo_sweeps.search import settings as settings_mod
from dpo_sweeps.search import space as space_mod


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what was checked (dry_run=true prints them)


def _label(params: dict[str, Any], base: dict[str, Any]) -> str:
    varied = [f"{k}={space_mod.encode(v)}" for k, v in params.items() if v != base[k]]
    return " ".join(varied) or "first values: " + " ".join(f"{k}={space_mod.encode(v)}" for k, v in params.items())


def _launcher(config: DictConfig) -> dict[str, Any]:
    launcher = {k: v for k, v in config.hydra.launcher.items() if k != "submitit_folder"}
    return OmegaConf.to_container(OmegaConf.create(launcher), resolve=True)


def _peak(cfg: DictConfig, world: int) -> float | None:
    """The estimated per-GPU peak of a config (bytes), None where there is no estimate (a CPU run, an unknown model)."""
    from dpo_sweeps.slurm import memory, memory_check

    if cfg.training.use_cpu:
        return None
    arch, _ = memory_check.arch_for(cfg)
    run, _ = memory_check.run_settings(cfg, world) if arch else (None, "")
    return memory.estimate(arch, run).total if arch is not None and run is not None else None


def check(config: DictConfig, loader: Any, space: space_mod.SearchSpace, settings: settings_mod.Settings) -> Report:
    """Compose, validate and memory-check the corners of `space` (see the module doc)."""
    from dpo_sweeps.slurm import memory_check, resources

    launcher = _launcher(config)
    world = memory_check.ranks(launcher)
    values = {key: space_mod.ends(d) for key, d in space.distributions.items()}
    base = {key: v[0] for key, v in values.items()}
    report = Report()
    composed: dict[tuple[str, ...], DictConfig | None] = {}
    found: dict[str, str] = {}  # problem -> the first corner it appeared at
    seen: set[str] = set()

    def compose(params: dict[str, Any]) -> DictConfig | None:
        overrides = space.overrides(params)
        key = tuple(overrides)
        if key in composed:
            return composed[key]
        where = _label(params, base)
        try:
            cfg = loader.load_sweep_config(config, overrides)
        except Exception as exc:  # Hydra's message names the key or the option
            message = str(exc).splitlines()[0].removeprefix("Error: ")
            # One line per bad key, not one per value tried: the message names the value (`key=0.01: unknown key`).
            same = re.sub(r"=[^\s:]+", "=", message)
            if same not in seen:
                seen.add(same)
                found.setdefault(message, where)
            composed[key] = None
            return None
        for problem in find_problems(cfg) + settings_mod.problems(settings, cfg):
            found.setdefault(problem, where)
        composed[key] = cfg
        return cfg

    corners = [base] + [{**base, key: v} for key, vs in values.items() for v in vs[1:]]
    configs = [compose(params) for params in corners]
    report.lines.append(
        f"Search space: {len(corners)} corner(s) composed and validated before the first trial (every choice and "
        "both ends of every range, one parameter varied at a time), objectives checked at each:"
    )
    report.lines += [f"  {_label(params, base)}" for params in corners]

    # Each parameter's most memory-hungry value, from the corners above (one parameter varied at a time).
    peaks = [None if cfg is None else _peak(cfg, world) for cfg in configs]
    by_params = {tuple(space.overrides(p)): peak for p, peak in zip(corners, peaks, strict=True)}
    hungry = {}
    for key, vs in values.items():
        if key.lstrip("+~") in memory_check.NO_MEMORY_EFFECT:
            hungry[key] = vs[0]
            continue
        estimates = [(by_params.get(tuple(space.overrides({**base, key: v}))), i) for i, v in enumerate(vs)]
        known = [(peak, i) for peak, i in estimates if peak is not None]
        hungry[key] = vs[max(known)[1]] if known else vs[-1]
    if any(peak is not None for peak in peaks):
        memory = memory_check.SweepMemory(launcher)
        mem_corners = [{**hungry, key: v} for key, vs in values.items() for v in vs]
        unique = list({tuple(space.overrides(p)): p for p in mem_corners}.values())
        for i, params in enumerate(unique):
            cfg = compose(params)
            if cfg is not None:
                memory.add(i, space.overrides(params), cfg)
        report.lines.append(
            f"GPU memory checked at {len(unique)} corner(s), every other parameter at its most memory-hungry value "
            f"({' '.join(f'{k}={space_mod.encode(v)}' for k, v in hungry.items())}):"
        )
        report.lines += [
            f"  #{i}: {_label(params, hungry) if params != hungry else 'every parameter at its most memory-hungry value'}"
            for i, params in enumerate(unique)
        ]
        report.lines += [f"  {line}" for line in memory.lines()]
        if resources.is_slurm_launcher(launcher):
            found.update({p: "" for p in memory.problems() if p not in found})
    else:
        report.lines.append("GPU memory: no corner has an estimate (CPU runs, or models without a known shape).")
    report.problems = [f"{p} (with {where})" if where else p for p, where in found.items()]
    return report


def refusal(report: Report) -> str:
    lines = "\n".join(f"  - {p}" for p in report.problems)
    return (
        f"the search space has problems at some of its corners; no trial was run:\n{lines}\n"
        "Fix the key, option or range in hydra.sweeper.params or on the command line (a new key needs a leading +), "
        "or narrow the range that leaves what works (e.g. 'lora.r=range(8, 33, 8)')."
    )


def for_dry_run(config: DictConfig, loader: Any) -> Report:
    """What `dry_run=true` of a search prints (the pre-launch check calls this; no sweeper runs in a dry run): the
    settings' problems, then the corners' checks."""
    settings = settings_mod.from_sweeper(dict(config.hydra.sweeper), config)
    problems = settings_mod.problems(settings, config)
    if problems:
        return Report(problems=problems)
    try:
        space = space_mod.parse(settings.params, list(OmegaConf.to_container(config.hydra.overrides.task)))
    except ValueError as exc:
        return Report(problems=[f"hydra.sweeper.params / the command line: {exc}"])
    return check(config, loader, space, settings)


def is_ours(config: DictConfig) -> bool:
    """The sweeper is dpo_sweeps' search (not Hydra's basic sweeper or another make)."""
    return str(config.hydra.sweeper.get("_target_", "")).startswith("hydra_plugins.dpo_sweeps_sweeper.")
