"""Preference data: load a source, map it to prompt/chosen/rejected, check every row, split train/eval, tokenize.

Every source goes through one path: `_raw_split` (the only place that differs between the hub, a local copy given
with `dataset.path=`, and the bundled toy set; see `sources.py`) -> shuffle and hold out -> the dataset's
adapter and the structure checks (`adapters.py`, `validation.py`) -> TRL's own tokenization and the length checks on
its token ids (`tokenize.py`) -> `datasets.Dataset`s ready for the trainer. With a tokenizer and `data_cache.enabled`
the result is stored once per sweep and memory-mapped by every point (`cache.py`). Heavy imports (`datasets`,
TRL) happen inside.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dpo_sweeps.data.sources import RowOrigin, Rows, has_split, load_hub, load_local
from dpo_sweeps.data.validation import CheckedSplit, Problem, check_rows, handle_problems

log = logging.getLogger(__name__)


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset with prompt/chosen/rejected (+ TRL's prompt_ids/chosen_ids/rejected_ids)
    eval: Any
    # Counts recorded in metrics.json: rows read, kept, dropped (by reason), truncated.
    stats: dict[str, Any] = field(default_factory=dict)
    # The prepared-data cache: "hit", "computed" or "off", and the entry's key.
    cache: str = "off"
    cache_key: str | None = None

    def cache_metrics(self) -> dict[str, Any]:
        return {"data_cache": self.cache, **({"data_cache/key": self.cache_key} if self.cache_key else {})}


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
    if d.name in ("greeting", "signoff"):
        from dpo_sweeps.data.styles import style_rows

        return [(row, RowOrigin(f"{d.name}_data", i)) for i, row in enumerate(style_rows(d.name))]
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


def _held_out(cfg: DictConfig, n_rows: int) -> tuple[int, str]:
    """How many training rows to hold out for eval, and how the model card says where eval came from."""
    d = cfg.dataset
    n_eval = max(1, round(n_rows * d.eval_fraction))
    if n_eval >= n_rows:
        raise ValueError(
            f"dataset={d.name}: {n_rows} rows cannot be split into train and eval with "
            f"dataset.eval_fraction={d.eval_fraction}; add rows or give an eval split."
        )
    if d.eval_max_rows is not None and n_eval > d.eval_max_rows:
        source = (
            f"{d.eval_max_rows} rows held out of {d.train_split} (dataset.eval_fraction={d.eval_fraction:g} of "
            f"{n_rows} rows, capped at dataset.eval_max_rows={d.eval_max_rows})"
        )
        log.info("Eval split: %s.", source)
        return d.eval_max_rows, source
    return n_eval, f"{d.eval_fraction:g} of {d.train_split}"


def _raw_splits(cfg: DictConfig) -> tuple[Rows, Rows, str]:
    """(train rows, eval rows, where eval came from), shuffled with dataset.shuffle_seed."""
    d = cfg.dataset
    train_raw = _raw_split(cfg, d.train_split)
    random.Random(d.shuffle_seed).shuffle(train_raw)
    if _eval_from_own_split(cfg):
        eval_raw = _raw_split(cfg, d.eval_split)
        random.Random(d.shuffle_seed).shuffle(eval_raw)
        return train_raw, eval_raw, d.eval_split
    n_eval, eval_source = _held_out(cfg, len(train_raw))
    return train_raw[n_eval:], train_raw[:n_eval], eval_source


def _prepare_split(
    raw: Rows, cfg: DictConfig, tokenizer, limit: int | None, name: str, staging: Path | None
) -> tuple[Any, CheckedSplit]:
    """The split as a Dataset (tokenized when a tokenizer is given) and what its checks found (`rows` left empty).

    Rows are taken in order until `limit` valid ones are found; a row is valid when its structure and (with a
    tokenizer) its token lengths pass. Lengths are known only after tokenizing, so with a limit this goes in rounds:
    check structure until the missing number of rows, tokenize those, repeat while rows fell out for length.
    With a `staging` folder the rows go to disk before tokenizing, so that TRL's `map`s write their results to
    memory-mapped cache files there (as with bare TRL's file-backed datasets) instead of holding them in memory."""
    from datasets import Dataset, concatenate_datasets

    parts, problems, read, truncated, kept, pos = [], [], 0, 0, 0, 0
    while pos < len(raw) and (limit is None or kept < limit):
        checked = check_rows(raw[pos:] if pos else raw, cfg, None if limit is None else limit - kept)
        pos, read = pos + checked.read, read + checked.read
        problems += checked.problems
        if not checked.rows:
            continue
        ds = Dataset.from_list(checked.rows)
        del checked.rows[:]  # the Arrow copy is what we keep: no second Python copy of a big set
        if staging is not None:
            ds.save_to_disk(str(staging / f"{name}-{len(parts)}"))
            ds = Dataset.load_from_disk(str(staging / f"{name}-{len(parts)}"))
        if tokenizer is not None:
            from dpo_sweeps.data.tokenize import tokenize_and_check

            ds, _, length_problems, n_truncated = tokenize_and_check(ds, tokenizer, cfg, name, checked.origins)
            problems += length_problems
            truncated += n_truncated
        parts.append(ds)
        kept += len(ds)
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts) if parts else Dataset.from_list([])
    return dataset, CheckedSplit([], problems, read, truncated)


def _prepare(cfg: DictConfig, tokenizer, staging: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(split name -> Dataset, meta): the work the data cache saves. Meta keeps what the checks found, as JSON."""
    d = cfg.dataset
    train_raw, eval_raw, eval_source = _raw_splits(cfg)
    limits = {"train": d.max_train_samples, "eval": d.max_eval_samples}
    splits, checks = {}, {}
    for name, raw in (("train", train_raw), ("eval", eval_raw)):
        splits[name], checks[name] = _prepare_split(raw, cfg, tokenizer, limits[name], name, staging)
        raw.clear()  # the raw rows are no longer needed: let them go before the next split is prepared
    meta = {
        "eval_source": eval_source,
        "checks": {
            name: {
                "read": c.read,
                "truncated": c.truncated,
                "problems": [
                    {**vars(p.origin), "field": p.field, "message": p.message, "reason": p.reason} for p in c.problems
                ],
            }
            for name, c in checks.items()
        },
    }
    return splits, meta


def _checks_from_meta(meta: dict[str, Any]) -> dict[str, CheckedSplit]:
    def problem(p: dict[str, Any]) -> Problem:
        return Problem(RowOrigin(p["source"], p["index"], p["line"]), p["field"], p["message"], p["reason"])

    return {
        name: CheckedSplit([], [problem(p) for p in c["problems"]], c["read"], c["truncated"])
        for name, c in meta["checks"].items()
    }


def load_preference_data(cfg: DictConfig, tokenizer=None) -> PreferenceData:
    """Train/eval datasets in TRL's explicit-prompt form; with a tokenizer also tokenized and length-checked (by
    TRL's own code, see `tokenize.py`), from the prepared-data cache when `data_cache.enabled`."""
    d = cfg.dataset
    key, state = None, "off"
    if tokenizer is not None and cfg.data_cache.enabled:
        from dpo_sweeps.data import cache

        splits, meta, state, key = cache.get_or_prepare(
            cfg, tokenizer, lambda split: _raw_split(cfg, split), lambda staging: _prepare(cfg, tokenizer, staging)
        )
    else:
        splits, meta = _prepare(cfg, tokenizer)
    checks = _checks_from_meta(meta)
    # On a hit too: the same bad rows named (on_invalid=error) or the same drops logged and counted (drop).
    stats = handle_problems(cfg, checks)
    for name, s in checks.items():
        if not len(splits[name]):
            raise ValueError(f"dataset={d.name}: no valid {name} rows left ({s.read} checked, all invalid).")
    stats.update(train_rows=len(splits["train"]), eval_rows=len(splits["eval"]), eval_source=meta["eval_source"])
    return PreferenceData(train=splits["train"], eval=splits["eval"], stats=stats, cache=state, cache_key=key)
