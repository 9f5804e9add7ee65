"""A Hydra callback that records, in each job's run folder, the environment variables a test asks about, as the
job's own process sees them (a SLURM job's environment is sbatch's, not the test's)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

PROBE_FILE = "env_probe.json"


class RecordEnv(Callback):
    def __init__(self, names: str = "") -> None:
        self.names = [n for n in names.split(":") if n]  # NAME:NAME (one override value, no list syntax)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        out = Path(str(config.hydra.runtime.output_dir)) / PROBE_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({n: os.environ.get(n) for n in self.names}))
