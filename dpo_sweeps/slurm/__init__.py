"""Submitting sweeps to SLURM: what the nodes offer against what a profile asks for (`resources`, the pre-launch
sinfo check), the site's limits (`site`), the split into arrays (`plan`), the launcher (`launcher`) and the collection
of results, dead tasks included (`watch`). Import-light: no submitit at import."""
