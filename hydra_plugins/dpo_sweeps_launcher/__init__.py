"""dpo_sweeps' Hydra launcher plugin. Hydra instantiates launchers only from the `hydra_plugins` namespace package;
the code lives in `dpo_sweeps.slurm` (see `dpo_sweeps/slurm/launcher.py`)."""
