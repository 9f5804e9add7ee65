"""dpo_sweeps' Hydra sweeper plugin: the Optuna search (`hparams_search=dpo_optuna`, `dpo_frontier`). Hydra
instantiates sweepers only from the `hydra_plugins` namespace package; the code lives in `dpo_sweeps.search`."""
