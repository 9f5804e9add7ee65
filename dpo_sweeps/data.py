"""Preference data: load a source, map it to prompt/chosen/rejected, split train/eval.

Every source goes through one path: `_load_source` (the only place that differs between the hub, a local file and
the bundled toy set) -> the dataset's adapter -> validation -> split. Heavy imports (`datasets`) happen inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt/chosen/rejected
    eval: Any
    # Counts recorded in metrics.json: rows loaded, kept, dropped (by reason).
    stats: dict[str, Any] = field(default_factory=dict)


def _load_local(path: Path):
    from datasets import load_dataset

    if not path.exists():
        raise FileNotFoundError(f"dataset.path={path}: no such file or folder.")
    files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"dataset.path={path}: no {', '.join(LOCAL_FORMATS)} files in this folder.")
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1 or files[0].suffix not in LOCAL_FORMATS:
        raise ValueError(
            f"dataset.path={path}: expected files of one format among {', '.join(LOCAL_FORMATS)}, got {sorted(suffixes)}."
        )
    return load_dataset(LOCAL_FORMATS[files[0].suffix], data_files=[str(p) for p in files], split="train")


def _load_source(cfg: DictConfig, split: str):
    """The raw rows of `split`: from dataset.path if set, else the hub (or the bundled toy set)."""
    from datasets import Dataset, load_dataset

    d = cfg.dataset
    if d.name == "toy" and not d.path:
        from dpo_sweeps.toy_data import toy_rows

        return Dataset.from_list(toy_rows())
    if d.path:
        return _load_local(Path(d.path).expanduser())
    return load_dataset(d.hub_id, split=split)


def _to_standard_columns(ds, cfg: DictConfig):
    cols = cfg.dataset.columns
    mapping = {cols.prompt: "prompt", cols.chosen: "chosen", cols.rejected: "rejected"}
    missing = [src for src in mapping if src not in ds.column_names]
    if missing:
        raise ValueError(
            f"dataset {cfg.dataset.name}: column(s) {missing} not found (columns: {ds.column_names}). Map yours with "
            "dataset.columns.prompt=/chosen=/rejected=."
        )
    ds = ds.rename_columns({k: v for k, v in mapping.items() if k != v})
    return ds.select_columns(["prompt", "chosen", "rejected"])


def load_preference_data(cfg: DictConfig, tokenizer=None) -> PreferenceData:
    d = cfg.dataset
    train = _to_standard_columns(_load_source(cfg, d.train_split), cfg)
    if d.eval_split:
        eval_ = _to_standard_columns(_load_source(cfg, d.eval_split), cfg)
    else:
        parts = train.train_test_split(test_size=d.eval_fraction, seed=d.shuffle_seed)
        train, eval_ = parts["train"], parts["test"]
    train = train.shuffle(seed=d.shuffle_seed)
    if d.max_train_samples:
        train = train.select(range(min(d.max_train_samples, len(train))))
    if d.max_eval_samples:
        eval_ = eval_.select(range(min(d.max_eval_samples, len(eval_))))
    return PreferenceData(train=train, eval=eval_, stats={"train_rows": len(train), "eval_rows": len(eval_)})
