"""Configuration: the typed schema of every config group (`schema`), the cross-group rules with messages that name
the key and the fix (`validation`), the names of run and sweep folders (`naming`), and training.fsdp as the
Trainer's FSDP arguments (`fsdp`).

Import-light (Hydra and OmegaConf only): it runs on login nodes. May import the shared top level (`paths`), `models`
(to ask whether the real model's packages are installed), `eval.scorers` and `data` (their registries).
"""
