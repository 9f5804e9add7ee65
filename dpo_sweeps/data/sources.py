"""Where raw preference rows come from: a local file or folder, or the Hugging Face Hub.

This is the only place where a hub dataset and its pre-downloaded copy (`dataset.path=`) differ: both end up as a
list of raw rows in the dataset's published schema, each with a `RowOrigin` (file, row index, line) so that a bad
row can be named later. Local files are parsed here rather than by `datasets`, so a broken file says which line
breaks instead of failing deep inside pyarrow.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Suffix (after an optional .gz) -> reader. hh-rlhf ships .jsonl.gz, ultrafeedback parquet, orca one .jsonl.
FORMATS = (".jsonl", ".json", ".parquet", ".csv")
# Split names recognised in file names (`train-00000-of-00001.parquet`, `helpful-base/test.jsonl.gz`, ...).
KNOWN_SPLITS = ("train", "test", "validation", "valid", "eval", "dev", "train_prefs", "test_prefs")


class DataFileError(ValueError):
    """A data file that cannot be read: names the file and, where it can, the line."""


class DatasetUnavailableError(RuntimeError):
    """A hub dataset that cannot be reached (offline node, no network, gated, wrong id)."""


@dataclass(frozen=True)
class RowOrigin:
    source: str  # a file path, or "<hub id>[<split>]"
    index: int  # 0-based row index within the source
    line: int | None = None  # 1-based line in a jsonl/csv file

    def __str__(self) -> str:
        return f"{self.source} row {self.index}" + (f" (line {self.line})" if self.line is not None else "")


Rows = list[tuple[dict[str, Any], RowOrigin]]


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return next((f for f in FORMATS if name.endswith(f)), None)


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path, limit: int | None = None) -> Rows:
    """Every row, or the first `limit` (the pre-launch check reads only a file's first rows)."""
    rows: Rows = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(
                    f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})."
                ) from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path} line {lineno}: expected a JSON object per line, got {type(row).__name__}.")
            rows.append((row, RowOrigin(str(path), len(rows), lineno)))
    return rows


def _read_json(path: Path) -> Rows:
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(
            f"{path} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}). One JSON object per line? "
            "Name the file .jsonl."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the {"data": [...]} layout `datasets` also accepts
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        n = {len(v) for v in data.values()}
        if len(n) != 1:
            raise DataFileError(f"{path}: a dict of columns needs columns of equal length, got lengths {sorted(n)}.")
        data = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    if not isinstance(data, list):
        raise DataFileError(
            f"{path}: expected a list of row objects (or a dict of columns), got {type(data).__name__}."
        )
    rows: Rows = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataFileError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}.")
        rows.append((row, RowOrigin(str(path), i)))
    return rows


def _read_csv(path: Path) -> Rows:
    rows: Rows = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                # A row with more cells than the header puts the extras under the key None.
                if None in row:
                    raise DataFileError(
                        f"{path} line {reader.line_num}: more cells than the header has columns ({reader.fieldnames})."
                    )
                rows.append((dict(row), RowOrigin(str(path), len(rows), reader.line_num)))
        except csv.Error as exc:
            raise DataFileError(f"{path} line {reader.line_num}: not valid CSV ({exc}).") from None
    if reader.fieldnames is None:
        raise DataFileError(f"{path}: empty CSV file (no header line).")
    return rows


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with its own wording
        raise DataFileError(f"{path}: not a valid parquet file ({type(exc).__name__}: {exc}).") from None
    return [(row, RowOrigin(str(path), i)) for i, row in enumerate(table.to_pylist())]


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_file(path: Path) -> Rows:
    fmt = _format_of(path)
    if fmt is None:
        raise DataFileError(f"{path}: unknown file type; use one of {', '.join(FORMATS)} (optionally .gz).")
    try:
        return READERS[fmt](path)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataFileError(f"{path}: broken gzip file ({exc}).") from None


def first_rows(path: Path, count: int = 5) -> int:
    """Parse the first `count` rows of a data file (the pre-launch check: a file that cannot be read fails before any
    job starts, without reading a 1 GB file through). Returns how many rows were read; raises DataFileError."""
    fmt = _format_of(path)
    if fmt is None:
        raise DataFileError(f"{path}: unknown file type; use one of {', '.join(FORMATS)} (optionally .gz).")
    try:
        if fmt == ".jsonl":
            rows = len(_read_jsonl(path, limit=count))
        elif fmt == ".parquet":
            import pyarrow.parquet as pq

            try:
                rows = min(count, pq.ParquetFile(path).metadata.num_rows)
            except Exception as exc:  # pyarrow's ArrowInvalid/OSError, in its own words
                raise DataFileError(f"{path}: not a valid parquet file ({type(exc).__name__}: {exc}).") from None
        elif fmt == ".csv":
            with _open_text(path) as f:
                reader = csv.DictReader(f)
                try:
                    rows = sum(1 for _, row in zip(range(count), reader, strict=False) if None not in row)
                except csv.Error as exc:
                    raise DataFileError(f"{path} line {reader.line_num}: not valid CSV ({exc}).") from None
                if reader.fieldnames is None:
                    raise DataFileError(f"{path}: empty CSV file (no header line).")
        else:  # one JSON document: it parses whole or not at all
            rows = len(read_file(path))
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataFileError(f"{path}: broken gzip file ({exc}).") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if rows == 0:
        raise DataFileError(f"{path}: no rows (an empty file).")
    return rows


def _split_of(path: Path) -> str | None:
    """The split a file belongs to, from its name (`train-0000.parquet`, `test.jsonl.gz`, `train_prefs-...`)."""
    name = path.name.lower()
    for split in sorted(KNOWN_SPLITS, key=len, reverse=True):
        if name.startswith(split) and (len(name) == len(split) or name[len(split)] in "-._"):
            return split
    return None


def split_files(path: Path, split: str) -> list[Path]:
    """The data files of `split` under `path` (a file is the training split; a folder is searched recursively).

    In a folder, files named for a split (`train-*.parquet`, `helpful-base/test.jsonl.gz`) hold that split, as on
    the hub; a folder whose files carry no split name (orca_dpo_pairs' `orca_rlhf.jsonl`) is all training data.
    """
    if not path.exists():
        raise DataFileError(f"dataset.path={path}: no such file or folder.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) and not p.name.startswith("."))
    if not files:
        raise DataFileError(f"dataset.path={path}: no {', '.join(FORMATS)} files in this folder.")
    formats = {_format_of(p) for p in files}
    by_split: dict[str | None, list[Path]] = {}
    for p in files:
        by_split.setdefault(_split_of(p), []).append(p)
    named = {s for s in by_split if s is not None}
    # No split in any file name (orca's orca_rlhf.jsonl): everything is training data.
    unnamed_train = files if split in ("train", "train_prefs") else []
    chosen = by_split.get(split.lower(), []) if named else unnamed_train
    if not chosen:
        raise DataFileError(
            f"dataset.path={path}: no files for split {split!r} (found splits: {sorted(named) or ['train (unnamed)']}). "
            "Name the split files like the hub does (train-*.parquet, test.jsonl), set dataset.train_split/eval_split, "
            "or set dataset.eval_split=null to hold out dataset.eval_fraction of the training rows."
        )
    if len({_format_of(p) for p in chosen}) > 1:
        raise DataFileError(f"dataset.path={path}: split {split!r} mixes file formats {sorted(formats)}; use one.")
    return chosen


def has_split(path: Path, split: str) -> bool:
    try:
        split_files(path, split)
    except DataFileError:
        return False
    return True


def load_local(path: Path, split: str) -> Rows:
    rows: Rows = []
    for f in split_files(path, split):
        rows.extend(read_file(f))
    return rows


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def open_hub(name: str, hub_id: str, split: str):
    """`hub_id`'s `split` as a `datasets.Dataset` (its cache works offline). Unreachable = one clear message."""
    from datasets import load_dataset

    try:
        ds = load_dataset(hub_id, split=split)
    except Exception as exc:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, HfHubHTTPError, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not in the local cache" if _offline() else first
        raise DatasetUnavailableError(
            f"dataset={name}: cannot load {hub_id} (split {split!r}) from the Hugging Face Hub: {why} "
            f"[{type(exc).__name__}]. On a node without internet, download it where there is network "
            f"(`huggingface-cli download {hub_id} --repo-type dataset --local-dir <dir>`) and pass "
            f"dataset.path=<dir>, or use dataset=local dataset.path=<file> for your own file."
        ) from None
    return ds


def hub_snapshot(hub_id: str) -> Path | None:
    """With the hub off (a job whose inputs `python -m dpo_sweeps.fetch` put in the cache): the dataset's files in the
    Hugging Face cache, read by the local readers above, as `dataset.path=<that folder>` would. None otherwise."""
    if not _offline():
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, repo_type="dataset", local_files_only=True))
    except Exception:  # not in the cache: open_hub says so in its own words
        return None


def load_hub(name: str, hub_id: str, split: str) -> Rows:
    """Rows of `hub_id`'s `split`, each with its origin."""
    snapshot = hub_snapshot(hub_id)
    if snapshot is not None:
        return load_local(snapshot, split)
    ds = open_hub(name, hub_id, split)
    source = f"{hub_id}[{split}]"
    return [(row, RowOrigin(source, i)) for i, row in enumerate(ds.to_list())]
