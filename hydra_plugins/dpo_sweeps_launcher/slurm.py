"""`_target_` of conf/hydra/launcher/slurm.yaml. Hydra scans this package at every start: keep it import-light."""

from dpo_sweeps.slurm.launcher import SweepSlurmLauncher as _Launcher


class SlurmLauncher(_Launcher):
    """Registered under this module's name (Hydra requires `hydra_plugins.`); see dpo_sweeps.slurm.launcher."""
