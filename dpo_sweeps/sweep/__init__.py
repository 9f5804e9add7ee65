"""The sweep: Hydra's callbacks around a multirun (`callbacks`), the pre-launch check that composes and validates
every point and hands the result to the launcher (`preflight`), the life of one point in its job (`job`), the
submitting console's per-point lines (`watcher`), and the local launchers: points one after another in this process or
as parallel processes sharing the cores (`local_launcher`), and the check of the private Hydra internals these rely on
(`hydra_compat`).

The top of the stack: may import every other stage. Nothing imports it except the entrypoint (`cli`) and the launcher
classes Hydra loads from `hydra_plugins/`.
"""
