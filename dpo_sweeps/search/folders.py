"""Trial folders a person can read: `trial_007-beta=0.0561,loss=sigmoid,lr=0.00143`, not
`beta=0.05611516415334506,loss=sigmoid,training.learning_rate=0.001432249371823025`.

The name is the number of the first trial that used these parameters, then the parameters with values rounded to 3
significant digits and keys shortened to their last part (`lr` for learning_rate). The number keeps it unique (two
learning rates that round alike are two trials, two folders); the rounded values only make it readable, nothing
parses them back (a run's parameters are in its status.json and config.yaml).

Stable, whatever happens to the driver: a trial's folder is recorded in the study when it is asked for (the trial's
`run_dir` user attribute) and read back from there by a driver started again; a trial whose parameters equal an
earlier trial's (a retry, or a sampler proposing the same choices again) gets that trial's folder, so that a retry
resumes from its checkpoints and identical parameters train once. A folder of the same name that another study in the
same sweep folder trained with other parameters is never shared (`new_folder`).

A study started before this naming keeps naming its folders by their full overrides, as its first trials were named:
it says so once (the study's `trial_folders` attribute is what tells the two apart). The job learns its folder from
the driver as `hydra.sweep.subdir` (a `hydra.` override: launchers leave those off the lines they print).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from dpo_sweeps.config import naming
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search.study import ATTR_OVERRIDES, ATTR_RUN_DIR

PREFIX = "trial_"
# The study user attribute naming its folder scheme (absent on a study started before it existed: overrides).
ATTR_NAMING = "trial_folders"
NUMBERED, BY_OVERRIDES = "numbered", "overrides"
SIGNIFICANT_DIGITS = 3
# Keys whose last part is still long; anything else goes by its last part (`training.beta` -> `beta`).
SHORT_KEYS = {"learning_rate": "lr", "weight_decay": "wd", "per_device_train_batch_size": "batch"}

_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")


def short_value(value: str) -> str:
    """`0.05611516415334506` -> `0.0561`, `1.5e-06` stays; integers, words and lists are kept as they are."""
    if not _FLOAT.match(value):
        return value
    return f"{float(value):.{SIGNIFICANT_DIGITS}g}"


def _short_keys(keys: list[str]) -> dict[str, str]:
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    short = {k: SHORT_KEYS.get(v, v) for k, v in last.items()}
    # Two keys that would read alike (model.dropout, lora.dropout) keep their full names.
    return {k: s if list(short.values()).count(s) == 1 else k for k, s in short.items()}


def readable(number: int, overrides: list[str]) -> str:
    """The folder of trial `number` with these overrides (those that vary across the sweep, as a grid point's)."""
    varying = naming.identity_overrides(naming.varying_overrides(overrides))
    pairs = [o.split("=", 1) if "=" in o else [o, ""] for o in varying]
    keys = _short_keys([naming.override_key(k) for k, _ in pairs])
    params = ",".join(f"{keys[naming.override_key(k)]}={short_value(v)}" for k, v in pairs)
    return naming.safe_name(f"{PREFIX}{number:03d}" + (f"-{params}" if params else ""))


def scheme(study: Any) -> str:
    """How this study names its trial folders; a new study (no trials yet) is given the readable scheme."""
    current = study.user_attrs.get(ATTR_NAMING)
    if current:
        return str(current)
    current = BY_OVERRIDES if study.get_trials(deepcopy=False) else NUMBERED
    study.set_user_attr(ATTR_NAMING, current)
    return current


def earlier_folder(trials: list, number: int, overrides: list[str]) -> str | None:
    """The folder of the first other trial with the same parameters (a retry, a repeated proposal), if it has one."""
    wanted = sorted(overrides)
    for t in trials:
        if t.number == number:
            continue
        run_dir = t.user_attrs.get(ATTR_RUN_DIR)
        if run_dir and sorted(t.user_attrs.get(ATTR_OVERRIDES) or []) == wanted:
            return Path(run_dir).name
    return None


def _fits(run_dir: Path, overrides: list[str]) -> bool:
    """Whether an existing folder holds a run of these parameters (another study's trial in this sweep folder, e.g.
    `hydra.sweeper.study_name=<new>`: it is reused, as a folder named by its overrides was)."""
    recorded = (run_folder.read_status(run_dir) or {}).get("overrides")
    return isinstance(recorded, list) and set(naming.varying_overrides(overrides)) <= {str(o) for o in recorded}


def new_folder(sweep_dir: Path, trials: list, number: int, overrides: list[str]) -> str:
    """The folder of a trial asked for now: an earlier trial's with the same parameters, else `readable`; a folder of
    that name holding other parameters (another study in this sweep folder numbered its trials alike) is never
    shared: the name then ends in a digest of the parameters."""
    name = earlier_folder(trials, number, overrides)
    if name:
        return name
    name = readable(number, overrides)
    if (Path(sweep_dir) / name).exists() and not _fits(Path(sweep_dir) / name, overrides):
        digest = hashlib.sha1(",".join(sorted(overrides)).encode()).hexdigest()[:8]
        name = naming.safe_name(f"{name}-{digest}")
    return name


def subdir_override(name: str) -> str:
    """The job's folder, for its launch overrides: quoted (a name holds `,` and `=`, which Hydra would otherwise read
    as a sweep and a nested override)."""
    return f"hydra.sweep.subdir='{name}'"
