"""Prepared-data cache: the points of a sweep (and their requeues) prepare the data once, and share it.

Preparing a real dataset (read, adapt, validate, tokenize) costs minutes at 100k rows and gives the same result in
every point of a beta/learning-rate/seed sweep. An entry holds the prepared splits exactly as the trainer consumes
them (prompt/chosen/rejected plus TRL's token ids, see `tokenize.py`) as Arrow files, memory-mapped when read, and
what validation found (problems per row, counts), so a hit names the same bad rows and logs the same counts as the
run that computed it:

    key = sha256(data_identity(cfg, tokenizer))

- the source: every data file's content and path (stored problems name the file; a touched file with the same
  content still hits), or the hub dataset's `datasets` fingerprint (which pins its resolved revision), or the
  bundled rows themselves;
- every `dataset.*` setting (adapter, column mapping, format, splits and hold-out, sample limits, shuffle seed,
  length limits and truncation, validation policy) except `path` (resolved, with the content, above), `num_proc` (speed only)
  and `max_errors_shown` (the message only; the stored problems are formatted at read time);
- `model.merge_system_into_user`, the tokenizer (its `datasets` hash: vocabulary, settings, chat template) and the
  versions of TRL, transformers, tokenizers and datasets (they decide the token ids);
- dpo_sweeps' own preparation code: the source of every module of this package (`code_identity`), so an upgrade
  that changes an adapter, a validation rule, a length check or the tokenization prepares the data again.
Not in the key, because they do not change the prepared data: beta, learning rate, seed, LoRA, loss, training.

An entry is a folder `<data_cache.dir>/<key[:2]>/<key>/` (train/, eval/ as `Dataset.save_to_disk`, meta.json),
built under a temp name and renamed into place; an entry found damaged is left in place and recomputed under the
next generation's name (`<key>.g1`, see `PreparedStore`). Locking and stale-holder detection are
`cache_store.LockedStore`'s (shared with the reference cache). Deleting `data_cache.dir` is safe while no sweep uses
it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.cache_store import COMPUTED, HIT, OFF, LockedStore, file_sha256

log = logging.getLogger(__name__)

# Bump when the entry layout or what goes into the key changes: old entries are then simply never found.
ENTRY_FORMAT = 1
# The code that shapes an entry: every module of this package (sources, adapters, validation and its length checks,
# the tokenization, this file's layout). Their source goes into the key (`code_identity`), so an upgrade that changes
# how rows are read, adapted, checked or tokenized never serves entries prepared by the old code.
# tests/test_data_cache.py checks that the package imports no other dpo_sweeps module that could shape an entry.
CODE_DIR = Path(__file__).resolve().parent
META_FILE = "meta.json"
# dataset.* keys that do not change the prepared data (see the module docstring).
NOT_IN_KEY = ("path", "num_proc", "max_errors_shown")

__all__ = ["COMPUTED", "HIT", "OFF", "PreparedStore", "data_identity", "entry_key", "get_or_prepare"]

Splits = dict[str, Any]  # split name -> datasets.Dataset


# --------------------------------------------------------------------------------------------------------- the key


def source_identity(cfg: DictConfig, raw_rows: Callable[[str], list]) -> dict[str, Any]:
    """What the rows come from: file contents, the hub dataset's fingerprint, or (bundled sets) the rows."""
    from dpo_sweeps.data.sources import FORMATS, _format_of

    d = cfg.dataset
    splits = [s for s in (d.train_split, d.eval_split) if s]
    if d.path:
        # The path is part of the key too: the stored problems name the file a bad row came from.
        path = Path(d.path).expanduser().resolve()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) and not p.name.startswith("."))
            return {"path": str(path), "files": {str(p.relative_to(path)): file_sha256(p) for p in files}}
        if path.is_file():
            return {"path": str(path), "files": {path.name: file_sha256(path)}}
        return {"missing": str(path), "formats": FORMATS}  # preparing it raises the clear error
    if d.hub_id:
        from dpo_sweeps.data.sources import hub_snapshot, open_hub

        snapshot = hub_snapshot(d.hub_id)  # offline, fetched: the snapshot's commit names the files
        if snapshot is not None:
            return {"hub_id": d.hub_id, "snapshot": snapshot.name}

        return {"hub_id": d.hub_id, "fingerprints": {s: open_hub(d.name, d.hub_id, s)._fingerprint for s in splits}}
    digests = {}
    for split in splits:
        with contextlib.suppress(Exception):  # a bundled set without that split: preparing it says so
            rows = [row for row, _ in raw_rows(split)]
            digests[split] = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return {"rows": digests}


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    import datasets
    import tokenizers
    import transformers
    import trl
    from datasets.fingerprint import Hasher

    return {
        # The hash `datasets` fingerprints TRL's own tokenization map with: vocabulary, settings, special tokens.
        "tokenizer": Hasher.hash(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__,
        },
    }


def code_identity(folder: Path | None = None) -> str:
    """sha256 over the source of every module in `folder` (default: this package, CODE_DIR), in name order."""
    folder = folder or CODE_DIR
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def data_identity(cfg: DictConfig, tokenizer, raw_rows: Callable[[str], list]) -> dict[str, Any]:
    """Everything that decides the prepared data (see the module docstring)."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    for k in NOT_IN_KEY:
        dataset.pop(k, None)
    return {
        "entry_format": ENTRY_FORMAT,
        "code": code_identity(),
        "source": source_identity(cfg, raw_rows),
        "dataset": dataset,
        "merge_system_into_user": cfg.model.merge_system_into_user,
        **tokenizer_identity(tokenizer),
    }


def entry_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------------- the store


class PreparedStore(LockedStore):
    """Entries `<key>/` (one `save_to_disk` folder per split + meta.json) and their locks, in one folder.

    An entry found unreadable is never deleted or replaced in place: other jobs (on other hosts) may have its Arrow
    files memory-mapped, and one job's read error may be its own (a network filesystem's hiccup). The recomputed entry
    goes under the next generation's name (`<key>.g1`, `<key>.g2`, ...), loads read the newest generation, and the
    superseded ones stay until `prune` (`python -m dpo_sweeps.data.cache prune <data_cache.dir>`) removes those
    replaced long enough ago that no job can still be reading them."""

    label = "Data cache"

    def entry_path(self, key: str, generation: int = 0) -> Path:
        return self.root / key[:2] / (key if generation == 0 else f"{key}.g{generation}")

    def generations(self, key: str) -> list[int]:
        """The generations of `key` on disk, oldest first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / key[:2]):
                name, sep, gen = entry.name.partition(".g")
                if name == key and (not sep or gen.isdigit()):
                    found.append(int(gen) if sep else 0)
        return sorted(found)

    def load(self, key: str) -> tuple[Splits, dict[str, Any]] | None:
        """The newest generation's splits (memory-mapped) and meta, or None if absent or damaged (a damaged one is
        left in place, see the class doc)."""
        from datasets import Dataset

        generations = self.generations(key)
        if not generations:
            return None
        path = self.entry_path(key, generations[-1])
        try:
            meta = json.loads((path / META_FILE).read_text())
            if meta.get("key") != key:
                raise ValueError(f"{META_FILE} names key {meta.get('key')}")
            # A split with no valid rows is not written (Arrow has no zero-shard dataset): it comes back empty.
            splits = {
                name: Dataset.load_from_disk(str(path / name)) if (path / name).exists() else Dataset.from_list([])
                for name in meta["splits"]
            }
        except Exception as exc:  # a damaged folder (manual edit, a copy cut short): never trust it, recompute
            log.warning(
                "Data cache entry %s is unreadable (%s); preparing the data again as %s. The damaged entry is left "
                "for jobs that may still read it (`python -m dpo_sweeps.data.cache prune %s` removes it later).",
                path,
                exc,
                self.entry_path(key, generations[-1] + 1).name,
                self.root,
            )
            return None
        return splits, meta

    def save(self, key: str, splits: Splits, meta: dict[str, Any]) -> tuple[Splits, dict[str, Any]]:
        """Write the entry under a temp name, rename it into place (the generation after the newest on disk, which is
        damaged if there is one), and return the newest generation read back (memory-mapped)."""
        generations = self.generations(key)
        path = self.entry_path(key, generations[-1] + 1 if generations else 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.mkdir()
            with _quiet_datasets():
                for name, ds in splits.items():
                    if len(ds):
                        ds.save_to_disk(str(tmp / name))
            meta = {"key": key, "created": time.time(), "host": socket.gethostname(), "splits": list(splits), **meta}
            with open(tmp / META_FILE, "w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            for p in [tmp, *tmp.rglob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the cache is shared by the sweep's jobs
            try:
                os.rename(tmp, path)
            except OSError:
                # Another job (one that stopped waiting for us, or we for it) put the same generation in place first.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        found = self.load(key)
        if found is None:
            raise RuntimeError(
                f"Data cache: the entry {path} just written cannot be read back; is data_cache.dir full?"
            )
        return found


def prune(root: str | os.PathLike, older_than_s: float) -> list[Path]:
    """Remove every superseded generation whose successor was written more than `older_than_s` ago (a job that had
    it memory-mapped has long finished); returns what was removed. The newest generation of a key is never touched.
    Ages compare two mtimes the file server wrote (the successor's and a probe file's), not this host's clock."""
    store = PreparedStore(root, lock_timeout_s=0)
    removed = []
    keys = {
        entry.name.partition(".g")[0]
        for folder in store.root.glob("??")
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    }
    for key in sorted(keys):
        generations = store.generations(key)
        for older, newer in zip(generations, generations[1:], strict=False):
            path, successor = store.entry_path(key, older), store.entry_path(key, newer)
            try:
                replaced_at = successor.stat().st_mtime
            except FileNotFoundError:
                continue
            if path.exists() and store.server_now(successor.parent) - replaced_at > older_than_s:
                aside = path.with_name(f".{path.name}.pruned.{uuid.uuid4().hex}")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, aside)  # atomic: a concurrent prune removes it once
                    shutil.rmtree(aside, ignore_errors=True)
                    removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dpo_sweeps.data.cache",
        description="Prepared-data cache maintenance. prune: remove entries superseded (recomputed after a read "
        "error) more than --older-than-hours ago; the newest entry of a key is never touched.",
    )
    parser.add_argument("command", choices=["prune"])
    parser.add_argument("dir", help="the cache folder (data_cache.dir)")
    parser.add_argument("--older-than-hours", type=float, default=168.0)
    args = parser.parse_args(argv)
    removed = prune(args.dir, args.older_than_hours * 3600)
    print(
        f"Removed {len(removed)} superseded entr{'y' if len(removed) == 1 else 'ies'} from {args.dir}"
        + "".join(f"\n  {p}" for p in removed)
    )


@contextlib.contextmanager
def _quiet_datasets():
    """No "Saving the dataset" progress bars: the run logs one line per entry instead."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def get_or_prepare(
    cfg: DictConfig,
    tokenizer,
    raw_rows: Callable[[str], list],
    prepare: Callable[[Path], tuple[Splits, dict[str, Any]]],
) -> tuple[Splits, dict[str, Any], str, str]:
    """(splits, meta, state, key): the cached entry (HIT) or `prepare(staging)`'s result stored (COMPUTED).

    `prepare` may keep intermediate Arrow files in `staging` (a private folder inside the cache, removed after)."""
    store = PreparedStore(cfg.data_cache.dir, cfg.data_cache.lock_timeout_s)
    key = entry_key(data_identity(cfg, tokenizer, raw_rows))

    def compute_and_save() -> tuple[Splits, dict[str, Any]]:
        staging = store.root / f".staging-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            return store.save(key, *prepare(staging))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    (splits, meta), state = store.get_or_compute_with(
        key, lambda: store.load(key), compute_and_save, "data_cache.lock_timeout_s"
    )
    log.info(
        "Prepared data (%s): %s (%s in %s)",
        ", ".join(f"{n} {len(ds)} rows" for n, ds in splits.items()),
        state,
        key[:12],
        cfg.data_cache.dir,
    )
    return splits, meta, state, key


if __name__ == "__main__":
    main()
