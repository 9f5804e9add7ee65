"""Before a sweep runs or is submitted: compose and validate every point; `dry_run=true` prints the job grid.

Hydra's basic sweeper only checks that each point composes, and then launches; a 32-job SLURM sweep with one bad
point would run 31 jobs and fail the 32nd hours later. `check_sweep` (called from the `SweepSummary` callback's
`on_multirun_start`, in the submitting process, before the sweeper launches anything) expands the sweep the way the
basic sweeper does, composes each point as Hydra's own `load_sweep_config` would (once per distinct set of group
choices, see `_PointComposer`), runs `validation.find_problems` on it,
and raises one error naming every bad point by its overrides. For a SLURM launcher it then checks the profile against
`sinfo` (dpo_sweeps/slurm/resources.py) and refuses a mismatch before sbatch runs.

Why a callback and not a custom sweeper: Hydra only instantiates sweepers from the `hydra_plugins` namespace
package, which would add a top-level package next to `dpo_sweeps`; a callback also keeps working under other
sweepers (the Optuna sweeper: its points do not exist before it runs, so there the base config is validated).

Import-light: Hydra and our validation only.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from dpo_sweeps.config import naming
from dpo_sweeps.config.validation import ConfigError, find_problems
from dpo_sweeps.fetch.check import HubCheck
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import options
from dpo_sweeps.slurm.handoff import CheckedSweep
from dpo_sweeps.sweep import hydra_compat
from dpo_sweeps.sweep.inputs import InputCheck, check_hub

# The Hydra internals used here and by the launchers, checked once at import (hydra_compat.py).
hydra_compat.check()

log = logging.getLogger(__name__)

POINTS_FILE = run_folder.SWEEP_POINTS_FILE
# Launcher keys worth showing in the grid, in this order (whichever the launcher has).
RESOURCE_KEYS = (
    "partition",
    "account",
    "qos",
    "constraint",
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "cpus_per_gpu",
    "mem_gb",
    "mem_per_gpu",
    "timeout_min",
    "array_parallelism",
    "max_num_timeout",
    "signal_delay_s",
)


class SweepValidationError(ConfigError):
    """Problems in one or more sweep points; nothing was run or submitted."""

    def __init__(self, bad: list[tuple[list[str], list[str]]], total: int):
        self.bad = bad
        blocks = []
        for overrides, problems in bad:
            lines = "\n".join(f"    - {p}" for p in problems)
            blocks.append(f"  point [{' '.join(overrides)}]:\n{lines}")
        ValueError.__init__(
            self,
            f"{len(bad)} of {total} sweep point(s) have config problems; nothing was run or submitted:\n"
            + "\n".join(blocks),
        )
        self.problems = [p for _, ps in bad for p in ps]


def _uses_basic_sweeper(config: DictConfig) -> bool:
    return str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")


def expand(config: DictConfig, config_loader) -> list[list[str]]:
    """The points the basic sweeper will launch, in its order: `hydra.sweeper.params` then the command line."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=config_loader)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [list(point) for batch in batches for point in batch]


def resources(config: DictConfig) -> dict[str, Any]:
    """What each job asks the launcher for (nothing for the basic, in-process launcher)."""
    launcher = config.hydra.launcher
    shown = {k: launcher[k] for k in RESOURCE_KEYS if k in launcher and launcher[k] is not None}
    extra = launcher.get("additional_parameters")
    if extra:
        shown["additional_parameters"] = OmegaConf.to_container(extra, resolve=True)
    return shown


def _search_lines(config: DictConfig) -> list[str]:
    """What a search sweeper will do: its trials are proposed as it runs, so there is no grid to list."""
    sweeper = config.hydra.sweeper
    pruner = options.section(sweeper.get("pruner"))
    lines = [
        f"Search: {sweeper.get('n_trials', '?')} trial(s), {sweeper.get('n_jobs', 1)} at a time, pruner "
        f"{options.in_force(pruner, 'none', options.PRUNER_KEYS, nulls=False)}; trials are proposed as the search runs (none listed)"
    ]
    lines += [f"  {key}: {value}" for key, value in (sweeper.get("params") or {}).items()]
    # What proposes the trials: Optuna 5 changed TPE's defaults, so the settings in force are shown, not assumed.
    lines.append(f"Sampler: {options.in_force(sweeper.get('sampler'), 'tpe', options.SAMPLER_KEYS)}")
    if "retry_failed" in sweeper:  # our search: what counts toward n_trials
        from dpo_sweeps.search.retry import describe

        lines.append(f"Retries: {describe(int(sweeper.retry_failed))}")
    return lines


def format_grid(points: list[dict], config: DictConfig) -> str:
    target = str(config.hydra.launcher.get("_target_", "?")).rsplit(".", 1)[-1]
    if not _uses_basic_sweeper(config):
        lines = [f"Launcher {target}, sweep folder {config.hydra.sweep.dir}", *_search_lines(config)]
        res = resources(config)
        if res:
            lines.append("Resources per job: " + ", ".join(f"{k}={v}" for k, v in res.items()))
        return "\n".join(lines)
    lines = [f"Sweep: {len(points)} point(s), launcher {target}, sweep folder {config.hydra.sweep.dir}"]
    res = resources(config)
    if res:
        lines.append("Resources per job: " + ", ".join(f"{k}={v}" for k, v in res.items()))
    for i, p in enumerate(points):
        note = f"  [{p['state']}: will be skipped]" if p["skip"] else ""
        lines.append(f"  #{i:<3} {' '.join(p['overrides']) or '(no overrides)'}{note}")
        lines.append(f"        -> {p['run_dir']}")
    return "\n".join(lines)


def _value_override(override, loader) -> bool:
    """A plain `key=value` on a config key (not a group choice, not hydra's, not +/~/++): Hydra applies these after
    composing, so they can be applied to a copy of a config composed without them."""
    key = override.key_or_group
    return (
        override.package is None
        and not (override.is_add() or override.is_force_add() or override.is_delete())
        and not key.startswith("hydra")
        and not loader.repository.group_exists(key)
    )


class _PointComposer:
    """Composes sweep points the way `load_sweep_config` does, once per distinct set of group choices: the points of a
    beta (or learning-rate, ...) sweep share one composition and differ only in values, which Hydra's own override
    step applies to a copy. A 64-point beta sweep then costs one composition instead of 64 (~0.1 s each)."""

    def __init__(self, config: DictConfig, loader):
        self.config, self.loader = config, loader
        self.parser = OverridesParser.create(config_loader=loader)
        self.bases: dict[tuple[str, ...], bytes] = {}
        self.parsed: dict[str, tuple[Any, bool]] = {}

    def _parse(self, override: str) -> tuple[Any, bool]:
        """The parsed override and whether it is a plain value: parsed once per distinct string (the grammar's parser
        costs ~2 ms an override; a 1200-point sweep repeats its shared overrides 1200 times)."""
        if override not in self.parsed:
            (parsed,) = self.parser.parse_overrides([override])
            self.parsed[override] = (parsed, _value_override(parsed, self.loader))
        return self.parsed[override]

    def __call__(self, overrides: list[str]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        parsed = [self._parse(o) for o in overrides]
        values = [o for o, is_value in parsed if is_value]
        structure = tuple(o.input_line for o, is_value in parsed if not is_value)
        if structure not in self.bases:
            # Kept pickled: unpickling gives an independent copy 4-5x faster than copy.deepcopy (3 vs 15 ms a
            # point, most of a 1200-point sweep's pre-launch time).
            self.bases[structure] = pickle.dumps(self.loader.load_sweep_config(self.config, list(structure)))
        cfg = pickle.loads(self.bases[structure])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        with open_dict(cfg):
            cfg.hydra.overrides.task = list(overrides)
            # Hydra names it from all of the point's overrides; the shared composition knows only its structure's.
            cfg.hydra.job.override_dirname = naming.override_dirname(cfg, [o for o, _ in parsed])
        return cfg


def _uses_our_slurm_launcher(config: DictConfig) -> bool:
    return str(config.hydra.launcher.get("_target_", "")).startswith("hydra_plugins.dpo_sweeps_launcher.slurm")


def check_sweep(
    config: DictConfig, on_point: Callable[[int, list[str], DictConfig], None] | None = None
) -> CheckedSweep:
    """Compose and validate every point; raise SweepValidationError naming all bad points. Returns the points and
    what the check cost, for the launcher (our SLURM launcher submits from them instead of composing every point
    again, see `dpo_sweeps/slurm/handoff.py`). `on_point(number, overrides, cfg)` sees each composed point (the
    memory check); under another sweeper, the base config."""
    loader = GlobalHydra.instance().config_loader()
    inputs = InputCheck()  # the files every point names, each distinct one opened once
    if not _uses_basic_sweeper(config):
        problems = find_problems(config) + inputs.problems(config)
        if problems:
            raise SweepValidationError([(["<base config>"], problems)], 1)
        if on_point:
            on_point(0, [], config)
        return CheckedSweep()
    tic = time.perf_counter()
    points, bad = [], []
    all_points = expand(config, loader)
    if _uses_our_slurm_launcher(config) and not config.get("dry_run"):
        # Before composing (~20 ms a point): a sweep the site's job limits cannot take is refused in seconds.
        from dpo_sweeps.slurm.checks import refuse_if_too_large

        refuse_if_too_large(config, all_points)
    compose_point = _PointComposer(config, loader)
    for number, overrides in enumerate(all_points):
        cfg = compose_point(overrides)
        problems = find_problems(cfg) + inputs.problems(cfg)
        if problems:
            bad.append((overrides, problems))
        elif on_point:
            on_point(number, overrides, cfg)
        run_dir = naming.point_run_dir(config, cfg, number)
        state = (run_folder.read_status(run_dir) or {}).get("state")
        points.append(
            {"overrides": overrides, "run_dir": run_dir, "state": state, "skip": state == "completed" and not cfg.rerun}
        )
    bad += _sharing_a_folder(points)
    log.info(
        "Composed and validated %d sweep point(s) (%d distinct compositions) in %.2f s",
        len(points),
        len(compose_point.bases),
        time.perf_counter() - tic,
    )
    if bad:
        raise SweepValidationError(bad, len(all_points))
    return CheckedSweep(points=points, seconds=time.perf_counter() - tic)


def _sharing_a_folder(points: list[dict[str, Any]]) -> list[tuple[list[str], list[str]]]:
    """Points that differ but would run in one folder (they differ only in keys that do not name folders: logger.*,
    hydra.*, name, ...): the second would overwrite or skip the first, so the sweep is refused instead."""
    first_in: dict[str, list[str]] = {}
    bad = []
    for point in points:
        other = first_in.setdefault(point["run_dir"], point["overrides"])
        if sorted(other) != sorted(point["overrides"]):
            bad.append(
                (
                    point["overrides"],
                    [
                        f"would run in the same folder as point [{' '.join(other)}] ({point['run_dir']}): they differ "
                        "only in keys that do not name a run folder (dpo_sweeps/config/naming.py). Sweep those in "
                        "separate sweeps (name=<sweep> each)."
                    ],
                )
            )
    return bad


def _search_corners(config: DictConfig) -> None:
    """A search's dry run: what its corner checks found (search/corners.py; a real run checks them in its driver)."""
    if _uses_basic_sweeper(config):
        return
    from dpo_sweeps.search import corners

    if not corners.is_ours(config):
        return
    report = corners.for_dry_run(config, GlobalHydra.instance().config_loader())
    print("\n".join(report.lines), flush=True)
    if report.problems:
        raise SystemExit(f"Error: {corners.refusal(report)}")


def preflight(config: DictConfig) -> CheckedSweep:
    """on_multirun_start: validate; print the grid and stop for dry_run; else record this sweep's points and return
    them for the launcher."""
    if _uses_our_slurm_launcher(config):
        # Hydra's plugin scan turns a failed launcher import into a warning: say it here, once, and stop.
        from dpo_sweeps.slurm import submitit_compat

        try:
            submitit_compat.check()
        except submitit_compat.SubmititChangedError as err:
            raise SystemExit(f"Error: {err} Nothing was submitted.") from None
    from dpo_sweeps.slurm.memory_check import SweepMemory
    from dpo_sweeps.slurm.resources import cluster_problems, is_slurm_launcher

    launcher = {k: v for k, v in config.hydra.launcher.items() if k != "submitit_folder"}
    # Each point's peak GPU memory against the GPUs the launcher asks for (one estimate per distinct config).
    memory = SweepMemory(OmegaConf.to_container(OmegaConf.create(launcher), resolve=True))
    hub = HubCheck()  # the models and datasets the points need from the hub: cached, reachable, or refused

    def each_point(number: int, overrides: list[str], cfg: DictConfig) -> None:
        memory.add(number, overrides, cfg)
        hub.add(cfg)

    try:
        checked = check_sweep(config, on_point=each_point)
    except (SweepValidationError, naming.SubdirError) as err:
        # Hydra turns an exception from a callback into a warning and goes on to launch: exit instead (status 1).
        raise SystemExit(f"Error: {err}") from None
    points = checked.points
    # What a SLURM profile asks for against what sinfo reports (one call; [] for other launchers).
    misfits = cluster_problems(launcher)
    if config.get("dry_run"):
        print(format_grid(points, config), flush=True)
        _search_corners(config)
        for problem in misfits:
            print(f"Cluster check: {problem}", flush=True)
        print("\n".join(memory.lines()), flush=True)
        if _uses_our_slurm_launcher(config):
            from dpo_sweeps.slurm.checks import describe_split

            print(describe_split(config, points), flush=True)
        check_hub(hub, config)  # says what the real run would refuse
        print("dry_run=true: nothing was run or submitted.", flush=True)
        raise SystemExit(0)
    if misfits:
        lines = "\n".join(f"  - {p}" for p in misfits)
        raise SystemExit(f"Error: the launcher does not fit the cluster; nothing was submitted:\n{lines}")
    too_big = memory.problems() if is_slurm_launcher(launcher) else []
    if too_big:
        lines = "\n".join(f"  - {p}" for p in too_big)
        raise SystemExit(
            f"Error: {len(too_big)} configuration(s) of this sweep cannot fit in GPU memory; nothing was submitted:\n"
            f"{lines}\n(The estimate: dpo_sweeps/slurm/memory.py, calibrated in docs/distributed.md. If you know "
            "better: DPO_SWEEPS_MEMORY_CHECK=0, or hydra.launcher.gpu_mem_gb=<GiB per GPU>.)"
        )
    no_room = memory.host()[1] if is_slurm_launcher(launcher) else []
    if no_room:
        lines = "\n".join(f"  - {p}" for p in no_room)
        raise SystemExit(
            f"Error: {len(no_room)} configuration(s) of this sweep cannot fit in the host memory of a node; nothing was "
            f"submitted:\n{lines}\n(The estimate: dpo_sweeps/slurm/host_memory.py. If you know better: "
            "DPO_SWEEPS_MEMORY_CHECK=0.)"
        )
    for note in memory.lines() if is_slurm_launcher(launcher) else []:
        log.info("%s", note)
    # Last: the sweep's shape is right; are its models and datasets here (or reachable)? All cached: hub off.
    check_hub(hub, config)
    if config.get("rerun") and checked.points:  # a folder a live job holds is refused, naming the job, for any launcher
        from dpo_sweeps.slurm.attach import split_live

        split_live([(p,) for p in checked.points], rerun=True)
    if checked.points:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        run_folder.write_json_atomic(sweep_dir / POINTS_FILE, checked.points)
    return checked
