"""Models and datasets from the Hugging Face Hub, fetched once and used offline: what a sweep's points need from the
hub (`needs`), whether each is in the local cache or reachable, and the switch that runs jobs with the hub off
(`check`), and `python -m dpo_sweeps.fetch <the sweep's overrides>`, which downloads them on a login node
(`__main__`).

Import-light: huggingface_hub is imported only when a sweep names something on the hub. May import `config` and
`data` (the local readers); the sweep stage imports it for its pre-launch check.
"""
