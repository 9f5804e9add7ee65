"""`_target_` of conf/hydra/launcher/local_parallel.yaml and local.yaml. Hydra scans this package at every start:
keep it import-light."""

from dpo_sweeps.sweep.local_launcher import ParallelLocalLauncher
from dpo_sweeps.sweep.local_launcher import SequentialLauncher as _Sequential


class LocalLauncher(ParallelLocalLauncher):
    """Registered under this module's name (Hydra requires `hydra_plugins.`); see dpo_sweeps.sweep.local_launcher."""


class SequentialLauncher(_Sequential):
    """Registered under this module's name, like LocalLauncher."""
