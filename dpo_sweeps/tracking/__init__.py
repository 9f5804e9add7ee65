"""Weights & Biases: one run per sweep point grouped by sweep, resumed across requeues, offline when unreachable,
and the sweep-summary run (`wandb_run`).

May import `runs` and `report` (the model card's framework versions). wandb itself is imported inside functions.
"""
