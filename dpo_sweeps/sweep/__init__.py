"""The sweep: Hydra's callbacks around a multirun (`callbacks`), the pre-launch check that composes and validates
every point and hands the result to the launcher (`preflight`), the life of one point in its job (`job`), and the
submitting console's per-point lines (`watcher`).

The top of the stack: may import every other stage. Nothing imports it except the entrypoint (`cli`).
"""
