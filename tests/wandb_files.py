"""Read back what the W&B client wrote in offline mode, so tests can assert on it without a W&B server.

wandb 0.31 writes an offline run as `<wandb dir>/offline-run-<time>-<id>/run-<id>.wandb` and ships no Python reader
for it (see /work/shared/STACK_NOTES.md, "W&B 0.31"). The file is:

    7-byte header           b":W&B" + 2-byte magic + 1-byte version
    32 KiB blocks           counted from the start of the file (the header sits in the first block), each holding
                            LevelDB-log records: crc32 (4 bytes LE, zlib crc32 of type byte + payload),
                            length (2 bytes LE), type (1 byte: 1 full, 2 first, 3 middle, 4 last), payload.
                            A block tail shorter than a record header is zero padding.
    payloads                `wandb.proto.wandb_internal_pb2.Record` protobufs (run, config, history, summary, ...).

Naming conventions of the result:
- `config`: the user's config as a nested dict (W&B's own `_wandb` entry left out); an item addressed by a
  `nested_key` path is put at that path in the nested dict.
- `history` and `summary`: flat dicts whose keys are the item's `key`, or its `nested_key` parts joined by "/".
  `wandb.log({"train/loss": x})` gives the key "train/loss"; a logged `wandb.Table` becomes "name/_type",
  "name/path", "name/nrows", ... Values are the decoded JSON (NaN and Infinity decode to floats).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_LEN = 7
HEADER_IDENT = b":W&B"
BLOCK_LEN = 32 * 1024
RECORD_HEADER_LEN = 7  # crc32 (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B run file, or a record in it is corrupt."""


@dataclass
class OfflineRun:
    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    # One dict per history record (one per logged step), in file order; each holds "_step" when W&B recorded it.
    history: list[dict[str, Any]] = field(default_factory=list)
    # The final summary after all summary updates and removals (empty if the run wrote no summary records).
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    record_counts: dict[str, int] = field(default_factory=dict)

    def history_by_step(self) -> dict[int, dict[str, Any]]:
        """Step -> the keys logged at that step (a step logged twice, e.g. after a resume, keeps the later values)."""
        out: dict[int, dict[str, Any]] = {}
        for i, row in enumerate(self.history):
            step = int(row.get("_step", i))
            out.setdefault(step, {}).update(row)
        return out

    def series(self, key: str) -> list[tuple[int, Any]]:
        """(step, value) for every history row that logged `key`."""
        return [(int(r.get("_step", i)), r[key]) for i, r in enumerate(self.history) if key in r]


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    """Yield the reassembled payload of every record. A truncated tail (a run still writing, or killed) ends the
    iteration; a CRC mismatch or a broken fragment sequence raises, naming the offset."""
    if len(data) < HEADER_LEN or not data.startswith(HEADER_IDENT):
        raise WandbFileError(f"{path}: not a W&B run file (expected it to start with {HEADER_IDENT!r})")
    pos = HEADER_LEN
    pending: list[bytes] | None = None
    while pos < len(data):
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < RECORD_HEADER_LEN:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + RECORD_HEADER_LEN > len(data):
            break
        crc, length, rtype = struct.unpack_from("<IHB", data, pos)
        if rtype == 0 and length == 0:
            # Zero-filled space (padding or preallocation): nothing more in this block.
            pos += left_in_block
            continue
        start = pos + RECORD_HEADER_LEN
        end = start + length
        if end > len(data):
            break  # the last record was cut short
        if length > left_in_block - RECORD_HEADER_LEN:
            raise WandbFileError(f"{path}: record at offset {pos} crosses a block boundary (length {length})")
        chunk = data[start:end]
        if zlib.crc32(bytes([rtype]) + chunk) != crc:
            raise WandbFileError(f"{path}: CRC mismatch in the record at offset {pos}")
        pos = end
        if rtype == FULL:
            if pending is not None:
                raise WandbFileError(f"{path}: full record at offset {start - RECORD_HEADER_LEN} inside a fragment")
            yield chunk
        elif rtype == FIRST:
            if pending is not None:
                raise WandbFileError(f"{path}: first fragment at offset {start - RECORD_HEADER_LEN} inside another")
            pending = [chunk]
        elif rtype in (MIDDLE, LAST):
            if pending is None:
                raise WandbFileError(
                    f"{path}: fragment type {rtype} at offset {start - RECORD_HEADER_LEN} without a first"
                )
            pending.append(chunk)
            if rtype == LAST:
                yield b"".join(pending)
                pending = None
        else:
            raise WandbFileError(f"{path}: unknown record type {rtype} at offset {start - RECORD_HEADER_LEN}")


def iter_records(wandb_file: str | Path) -> Iterator[Any]:
    """Every `wandb_internal_pb2.Record` in the file, in order."""
    from wandb.proto import wandb_internal_pb2  # only the test process needs wandb

    path = Path(wandb_file)
    for payload in _payloads(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _decode(value_json: str) -> Any:
    return json.loads(value_json) if value_json else None


def _set_nested(target: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[path[-1]] = value


def _remove_nested(target: dict, path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply_config(config: dict, config_record: Any) -> None:
    for item in config_record.update:
        _set_nested(config, _item_path(item), _decode(item.value_json))
    for item in config_record.remove:
        _remove_nested(config, _item_path(item))


def resolve_wandb_file(run_dir_or_wandb_file: str | Path) -> Path:
    path = Path(run_dir_or_wandb_file)
    if path.is_file():
        return path
    files = sorted(path.glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected exactly one run-<id>.wandb file, found {len(files)}")
    return files[0]


def read_offline_run(run_dir_or_wandb_file: str | Path) -> OfflineRun:
    """Parse an offline run folder (`offline-run-*`) or its `run-<id>.wandb` file."""
    path = resolve_wandb_file(run_dir_or_wandb_file)
    run = OfflineRun(path=path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        run.record_counts[kind] = run.record_counts.get(kind, 0) + 1
        if kind == "run":
            r = record.run
            # Later run records (a rename, new tags) update the fields they set.
            for attr, value in (
                ("run_id", r.run_id),
                ("project", r.project),
                ("group", r.run_group),
                ("name", r.display_name),
                ("job_type", r.job_type),
            ):
                if value:
                    setattr(run, attr, value)
            if r.tags:
                run.tags = list(r.tags)
            _apply_config(run.config, r.config)
        elif kind == "config":
            _apply_config(run.config, record.config)
        elif kind == "history":
            row = {"/".join(_item_path(item)): _decode(item.value_json) for item in record.history.item}
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary["/".join(_item_path(item))] = _decode(item.value_json)
            for item in record.summary.remove:
                prefix = "/".join(_item_path(item))
                for key in [k for k in run.summary if k == prefix or k.startswith(prefix + "/")]:
                    del run.summary[key]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """The offline run folders under `wandb_dir` (WANDB_DIR, its `wandb/` subfolder, or any folder above them),
    oldest first (their names start with the start time). `latest-run` links are not counted twice."""
    root = Path(wandb_dir)
    found = {p.parent.resolve() for p in root.rglob("offline-run-*/run-*.wandb") if "latest-run" not in p.parts}
    return sorted(found, key=lambda p: p.name)
