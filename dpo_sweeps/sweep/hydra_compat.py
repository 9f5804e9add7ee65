"""The private Hydra internals the sweep stage relies on, checked when the pre-launch check is imported, so that a Hydra
release that changed one fails at once naming the installed and the tested versions, not inside a sweep.

1. `BasicSweeper.split_arguments(overrides, max_batch_size)`: the basic sweeper's own expansion of a sweep into points
   (preflight.expand), so the pre-launch check validates exactly the points that will run;
2. `ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)`: Hydra's own step that applies `key=value` overrides
   to a composed config (preflight._PointComposer composes once per set of group choices, then applies values);
3. `hydra._internal.core_plugins.basic_launcher.BasicLauncher`: the in-process launcher our SequentialLauncher extends
   (sweep/local_launcher.py);
4. `HydraContext`, a frozen dataclass with `config_loader` and `callbacks`: the SLURM launcher replaces its
   `config_loader` with `object.__setattr__` (slurm/launcher.py) so that the sweeper does not compose each point again.
5. `config_loader_impl.get_overrides_dirname(overrides, exclude_keys, item_sep, kv_sep)`: Hydra's own
   `hydra.job.override_dirname`, computed per point before launch (config/naming.py).
Checked by presence and signature (~1 ms); nothing runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from importlib import metadata

# The versions the sweep stage was tested with (the whole suite, Hydra's own launcher/sweeper suites included).
TESTED_RANGE = ">=1.3.2,<1.4"
TESTED_VERSIONS = "1.3.8"


class HydraChangedError(ImportError):
    """The installed hydra-core lacks an internal the sweep stage relies on."""


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def problems() -> list[str]:
    """What the installed Hydra lacks of what we use (see the module doc); [] when all is there."""
    from hydra._internal import config_loader_impl
    from hydra._internal.core_plugins import basic_launcher, basic_sweeper
    from hydra.types import HydraContext

    found: list[str] = []

    def need(ok, what: str) -> None:
        try:
            good = ok()
        except (AttributeError, TypeError, ValueError):
            good = False
        if not good:
            found.append(what)

    need(
        lambda: _params(basic_sweeper.BasicSweeper.split_arguments)[:2] == ["overrides", "max_batch_size"],
        "BasicSweeper.split_arguments(overrides, max_batch_size)",
    )
    need(
        lambda: _params(config_loader_impl.ConfigLoaderImpl._apply_overrides_to_config)[:2] == ["overrides", "cfg"],
        "ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)",
    )
    need(
        lambda: (
            {"overrides", "exclude_keys", "item_sep", "kv_sep"}
            <= set(_params(config_loader_impl.get_overrides_dirname))
        ),
        "config_loader_impl.get_overrides_dirname(overrides, exclude_keys, item_sep, kv_sep)",
    )
    need(
        lambda: all(callable(getattr(basic_launcher.BasicLauncher, m)) for m in ("setup", "launch")),
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher (setup, launch)",
    )
    need(
        lambda: {"config_loader", "callbacks"} <= {f.name for f in dataclasses.fields(HydraContext)},
        "HydraContext(config_loader, callbacks), a dataclass",
    )
    return found


def check() -> None:
    """Raise HydraChangedError naming the installed and tested versions when an internal has changed."""
    missing = problems()
    if not missing:
        return
    try:
        installed = metadata.version("hydra-core")
    except metadata.PackageNotFoundError:
        installed = "(version unknown)"
    raise HydraChangedError(
        f"dpo_sweeps cannot work with the installed hydra-core {installed}: it relies on Hydra internals that this "
        f"version changed: {'; '.join(missing)}. Tested with hydra-core {TESTED_VERSIONS} (pyproject pins "
        f"'hydra-core{TESTED_RANGE}'). Fix: pip install 'hydra-core{TESTED_RANGE}'."
    )
