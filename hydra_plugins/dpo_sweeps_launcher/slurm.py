"""`_target_` of conf/hydra/launcher/slurm.yaml, and its schema. Hydra scans this package at every start (which
registers the schema): keep it import-light."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SweepSlurmQueueConf(SlurmQueueConf):
    """hydra-submitit-launcher's SlurmQueueConf plus what only the pre-launch check reads (never passed to sbatch)."""

    _target_: str = "hydra_plugins.dpo_sweeps_launcher.slurm.SlurmLauncher"
    # GiB of memory of one GPU on the nodes this profile submits to (80 for A100/H100 80GB), for the pre-launch memory
    # check; null = from the GPU type in the gres (sinfo's, or the profile's own gres request).
    gpu_mem_gb: float | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="dpo_sweeps_slurm_schema", node=SweepSlurmQueueConf, provider="dpo_sweeps"
)

# After the schema: importing the launcher checks the submitit internals it uses (slurm/submitit_compat.py) and fails
# on a changed submitit; with the schema stored, a sweep still composes and the pre-launch check says why, cleanly.
from dpo_sweeps.slurm.launcher import SweepSlurmLauncher as _Launcher  # noqa: E402
from dpo_sweeps.sweep import racing  # noqa: E402


class SlurmLauncher(_Launcher):
    """Registered under this module's name (Hydra requires `hydra_plugins.`); see dpo_sweeps.slurm.launcher. Seed
    racing is hooked in here because it lives in the sweep stage, which the slurm stage may not import."""

    def launch(self, job_overrides, initial_job_idx):
        # With racing, each wave is one submission (one array) that is waited for before the next is decided.
        return racing.launch(self, job_overrides, initial_job_idx, super().launch)
