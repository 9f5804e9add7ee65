"""Submitting sweeps to SLURM: the site's limits (`site`), the split into arrays (`plan`), the launcher
(`launcher`) and the collection of results, dead tasks included (`watch`). Import-light: no submitit at import."""
