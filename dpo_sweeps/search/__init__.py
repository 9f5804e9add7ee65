"""Hyperparameter search: what a sweep point hands its sweeper (`objective`: the objective value, a failed trial as
an exception, objective.mode as Optuna's direction).

Import-light. May import `runs` only; the sweep, the SLURM launcher and training import it.
"""
