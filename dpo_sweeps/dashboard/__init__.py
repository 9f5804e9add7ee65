"""The search's own dashboard: `python -m dpo_sweeps.dashboard <sweep folder>` serves optuna-dashboard (the `search`
extra installs it) on the Optuna journal a hparams_search sweep leaves in its folder (`server`).

May import the search's file names (dpo_sweeps.search.files) and nothing else of dpo_sweeps; Optuna and
optuna-dashboard are imported when the server starts.
"""
