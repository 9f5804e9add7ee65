"""dpo_sweeps: Hydra-composed DPO fine-tuning sweeps.

Kept import-light on purpose: `python -m dpo_sweeps --help`, `--cfg job` and composing/submitting a sweep must not
import torch, transformers or TRL. The heavy stack is imported inside the job (`dpo_sweeps.train.trainer`).

`load_sweep(sweep_dir)`: a sweep's points as a pandas DataFrame, for notebooks (`dpo_sweeps.report.frame`; pandas is
imported when it is called, not here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import pandas

__version__ = "0.1.0"
__all__ = ["load_sweep"]


def load_sweep(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> pandas.DataFrame:
    """One row per point of the sweep in `sweep_dir`: summary.csv's columns, the parameters typed, best first.

    from dpo_sweeps import load_sweep
    df = load_sweep("outputs/sweeps/demo")
    df[["beta", "eval_rewards/accuracies"]]
    """
    from dpo_sweeps.report.frame import load_sweep as load

    return load(sweep_dir, metric=metric, mode=mode)
