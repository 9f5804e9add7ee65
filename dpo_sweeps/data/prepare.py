"""Preference data: load a source, map it to prompt/chosen/rejected, check every row, split train/eval.

Every source goes through one path: `_raw_split` (the only place that differs between the hub, a local copy given
with `dataset.path=`, and the bundled toy set; see `sources.py`) -> shuffle and hold out -> the dataset's
adapter and the row checks (`adapters.py`, `validation.py`) -> `datasets.Dataset`. Heavy imports
(`datasets`) happen inside.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dpo_sweeps.data.sources import RowOrigin, Rows, has_split, load_hub, load_local
from dpo_sweeps.data.validation import check_rows, handle_problems

log = logging.getLogger(__name__)


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt/chosen/rejected
    eval: Any
    # Counts recorded in metrics.json: rows read, kept, dropped (by reason), truncated.
    stats: dict[str, Any] = field(default_factory=dict)


def _raw_split(cfg: DictConfig, split: str) -> Rows:
    """The raw rows of `split`: from dataset.path if set, else the hub (or the bundled toy set)."""
    d = cfg.dataset
    if d.path:
        return load_local(Path(d.path).expanduser(), split)
    if d.name == "toy":
        from dpo_sweeps.data.toy import toy_rows

        return [(row, RowOrigin("toy_data", i)) for i, row in enumerate(toy_rows())]
    if d.name == "opener":
        from dpo_sweeps.data.opener import opener_rows

        return [(row, RowOrigin("opener_data", i)) for i, row in enumerate(opener_rows())]
    if not d.hub_id:
        raise ValueError(f"dataset={d.name} has neither dataset.path nor dataset.hub_id: set dataset.path=<file>.")
    return load_hub(d.name, d.hub_id, split)


def _eval_from_own_split(cfg: DictConfig) -> bool:
    """Whether eval rows come from `dataset.eval_split` (else a held-out fraction of the training rows)."""
    d = cfg.dataset
    if not d.eval_split:
        return False
    path = Path(d.path).expanduser() if d.path else None
    if path is not None and (path.is_file() or not has_split(path, d.eval_split)):
        # A single file (or a copy without that split) has no eval split: said out loud, with the fraction used.
        log.warning(
            "dataset.path=%s has no %r split: holding out dataset.eval_fraction=%s of the training rows for eval "
            "instead (set dataset.eval_split=null to silence this).",
            d.path,
            d.eval_split,
            d.eval_fraction,
        )
        return False
    return True


def load_preference_data(cfg: DictConfig, tokenizer=None) -> PreferenceData:
    """Train/eval datasets in TRL's explicit-prompt form. With a tokenizer, lengths are checked after templating."""
    from datasets import Dataset

    d = cfg.dataset
    train_raw = _raw_split(cfg, d.train_split)
    random.Random(d.shuffle_seed).shuffle(train_raw)
    if _eval_from_own_split(cfg):
        eval_raw = _raw_split(cfg, d.eval_split)
        random.Random(d.shuffle_seed).shuffle(eval_raw)
        eval_source = d.eval_split
    else:
        n_eval = max(1, round(len(train_raw) * d.eval_fraction))
        if n_eval >= len(train_raw):
            raise ValueError(
                f"dataset={d.name}: {len(train_raw)} rows cannot be split into train and eval with "
                f"dataset.eval_fraction={d.eval_fraction}; add rows or give an eval split."
            )
        eval_raw, train_raw = train_raw[:n_eval], train_raw[n_eval:]
        eval_source = f"{d.eval_fraction:g} of {d.train_split}"
    splits = {
        "train": check_rows(train_raw, cfg, tokenizer, d.max_train_samples),
        "eval": check_rows(eval_raw, cfg, tokenizer, d.max_eval_samples),
    }
    stats = handle_problems(cfg, splits)
    for name, s in splits.items():
        if not s.rows:
            raise ValueError(f"dataset={d.name}: no valid {name} rows left ({s.read} checked, all invalid).")
    stats.update(train_rows=len(splits["train"].rows), eval_rows=len(splits["eval"].rows), eval_source=eval_source)
    return PreferenceData(
        train=Dataset.from_list(splits["train"].rows), eval=Dataset.from_list(splits["eval"].rows), stats=stats
    )
