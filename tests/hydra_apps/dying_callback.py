"""A Hydra callback that ends a job's process outright (`os._exit`) after our task function returned: a crash outside
dpo_sweeps' code (a native library at exit, a plugin's callback), which no `except` in the task function sees."""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback


class ExitAfterJob(Callback):
    def __init__(self, only: str = "") -> None:
        self.only = only  # an override the dying point has (e.g. beta=0.3); empty: every point

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not self.only or self.only in list(job_return.overrides or []):
            os._exit(3)
