"""Every file a point names, checked before anything starts (a single run's folder or a sweep's first job).

The config rules (`config/validation.py`) say whether a setting makes sense; this says whether what it names is there:
`dataset.path` exists, holds the split the point trains on, and its first rows parse; a local model or reward-model
folder exists. Each distinct file is checked once per sweep (`InputCheck` remembers), so a 64-point beta sweep on one
file opens it once. A single run is checked in `check_run`, from Hydra's `on_run_start`: before Hydra creates the run
folder, so a mistake leaves nothing on disk.

Import-light: our config rules and the data readers (pyarrow only for a parquet file's footer).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.config.validation import ConfigError, find_problems
from dpo_sweeps.data.sources import DataFileError, first_rows, split_files
from dpo_sweeps.fetch.check import HubCheck, go_offline

log = logging.getLogger(__name__)
# For a site whose compute nodes reach a hub (a mirror, a proxy) that the submitting machine does not.
HUB_CHECK_ENV = "DPO_SWEEPS_HUB_CHECK"


def _looks_local(name: str | None) -> bool:
    """A model reference written as a path (`/data/m`, `./m`, `~/m`), not a hub id (`org/name`)."""
    return bool(name) and str(name).startswith(("/", "./", "../", "~"))


class InputCheck:
    """The files of every point of one sweep, each distinct one checked once."""

    def __init__(self) -> None:
        self.seen: dict[tuple, str | None] = {}

    def _once(self, key: tuple, check) -> list[str]:
        if key not in self.seen:
            try:
                check()
                self.seen[key] = None
            except DataFileError as err:
                self.seen[key] = str(err)
        return [self.seen[key]] if self.seen[key] else []

    def problems(self, cfg: DictConfig) -> list[str]:
        found: list[str] = []
        d = cfg.dataset
        # `dataset=local` without a path is the config rules' to name (validation._check_dataset).
        path = None if OmegaConf.is_missing(d, "path") else d.path
        if path:
            found += self._once(("data", str(path), d.train_split), lambda: _check_data(Path(str(path)), d.train_split))
        for key in ("model.name_or_path", "eval.reward_model"):
            value = OmegaConf.select(cfg, key, default=None)
            if key.startswith("model") and (cfg.model.tiny_arch or cfg.model.gguf):
                continue  # built or converted locally: name_or_path only names the architecture
            if _looks_local(value):
                found += self._once(("folder", key, value), lambda k=key, v=value: _check_folder(k, v))
        return found


def _check_data(path: Path, split: str) -> None:
    path = path.expanduser()
    files = split_files(path, split)  # raises for a missing path, an empty folder, a split with no files
    for f in files[:1] if len(files) > 8 else files:
        first_rows(f)


def _check_folder(key: str, value: str) -> None:
    if not Path(value).expanduser().exists():
        raise DataFileError(f"{key}={value}: no such folder. Fix: the path of a saved model folder, or a hub id.")


def _problem_message(problems: list[str]) -> str:
    return str(ConfigError(problems))


def check_run(config: DictConfig) -> None:
    """Hydra's on_run_start for a single run: the config rules and the files, before Hydra creates the run folder.
    Exits 1 with every problem listed, leaving nothing behind."""
    problems = find_problems(config) + InputCheck().problems(config)
    if problems:
        # Hydra turns a callback's exception into a warning and runs the job anyway; SystemExit passes through.
        raise SystemExit(f"Error: {_problem_message(problems)}\nNothing was run.")
    hub = HubCheck()
    hub.add(config)
    check_hub(hub, config)


def check_hub(hub: HubCheck, config: DictConfig) -> None:
    """Refuse a sweep (or run) whose models/datasets are neither cached nor reachable, naming each and the fetch
    command; when all are cached, its jobs run with the hub off. A dry run reports, and changes nothing."""
    if os.environ.get(HUB_CHECK_ENV) == "0":
        log.info("%s=0: the models and datasets are not looked up before the sweep.", HUB_CHECK_ENV)
        return
    tic = time.perf_counter()
    hub.resolve()
    refusal = hub.refusal([str(o) for o in config.hydra.overrides.task])
    if refusal and config.get("dry_run"):
        # A dry run previews a sweep from anywhere (a laptop, a login node before the fetch): it says what the real
        # run would refuse, and goes on to show the grid.
        print(refusal.replace("Error: ", "Hub check (the sweep itself would stop here): ", 1), flush=True)
        return
    if refusal:
        raise SystemExit(refusal)
    if hub.state:
        log.info(
            "Hub check (%.1f s): %s",
            time.perf_counter() - tic,
            "; ".join(f"{item}: {state}" for item, state in sorted(hub.state.items())),
        )
    if hub.all_cached and not config.get("dry_run"):
        go_offline()
        log.info("Every model and dataset is in the local cache: the jobs run with HF_HUB_OFFLINE=1 (no hub requests).")
