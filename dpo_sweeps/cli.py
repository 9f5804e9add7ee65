"""The one entrypoint: compose -> validate -> run -> return the configured metric.

`python -m dpo_sweeps` and the `dpo-sweeps` console script both land here. Nothing heavy is imported at module level:
`--help`, `--cfg job` and composing or submitting a sweep stay near Hydra's own start-up time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dpo_sweeps.config import (
    naming,  # noqa: F401  (registers the folder-name resolvers)
    typos,
)
from dpo_sweeps.config.schema import register_schemas
from dpo_sweeps.paths import register_path_resolvers

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

register_schemas()
register_path_resolvers()
typos.install()  # `lora.rank=8`: our unknown-key message instead of Hydra's "use +lora.rank=8"
# conf/hydra/launcher/submitit_local.yaml deliberately shadows the plugin's schema of the same name (see the file);
# Hydra's deprecation notice about it, printed four times per sweep, tells a user nothing they can act on.
warnings.filterwarnings(
    "ignore", message=r"(?s).*validated against ConfigStore schema with the same name", category=UserWarning
)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from dpo_sweeps.sweep.job import run_sweep_point

    return run_sweep_point(cfg)


if __name__ == "__main__":
    main()
