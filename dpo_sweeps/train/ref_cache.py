"""Reference log-prob cache: the runs of a sweep compute the reference model's log-probs once, and share them.

In a beta (learning-rate, loss, seed) sweep every run feeds the same reference model the same data: about a quarter
of a DPO step's compute, repeated in every run. TRL's own `precompute_ref_log_probs` cache misses on every sweep
point (its key covers the whole DPOConfig and, with PEFT, the freshly initialised LoRA weights), so we key it here:

    key = sha256(reference identity, prepared token ids of the split)

- reference identity (`reference_identity`): the weights (hub id + resolved commit, or a content fingerprint of a
  local folder), dtype, quantization, attention implementation, autocast precision, max_length + truncation mode,
  LD-DPO's ld_alpha (it changes how TRL sums the reference log-probs), the TRL version and our entry format.
- the split's rows (`rows_digest`): the token ids TRL produced from prompt/chosen/rejected. They capture the dataset
  content, split, order, the tokenizer and the chat template, and nothing else.
Not in the key, because they do not change the reference: beta, learning rate, seed, the LoRA shape and its fresh
weights, the loss type (except ld_alpha), batch sizes, steps.

An entry is one `.npz` file under `ref_cache.dir` (a shared filesystem on a cluster), written atomically (temp file +
fsync + os.replace). Locking (one job computes an entry, the others wait up to `ref_cache.lock_timeout_s`; a dead
holder's lock is broken) is `cache_store.LockedStore`'s, shared with the prepared-data cache. The store imports only
numpy; the trainer part imports torch/TRL inside functions (job side only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from dpo_sweeps.cache_store import COMPUTED, HIT, OFF, STALE_LOCK_S, LockedStore  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Bump when the entry layout or what goes into the key changes: old entries are then simply never found.
ENTRY_FORMAT = 1
# Local weight folders up to this size are fingerprinted by content; bigger ones by (name, size, mtime) + config:
# hashing 16 GB of an 8B model would cost ~45 s per run, more than the cache saves on a short run.
CONTENT_HASH_MAX_BYTES = 512 * 1024**2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Files of a local model folder that decide the reference's outputs besides the weights.
MODEL_CONFIG_FILES = ("config.json",)
ROW_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


# --------------------------------------------------------------------------------------------------------- the key


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def local_weights_fingerprint(folder: str | os.PathLike, content_max_bytes: int = CONTENT_HASH_MAX_BYTES) -> str:
    """A fingerprint of a local model folder's weights and config; independent of where the folder lives."""
    folder = Path(folder)
    weights = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(
            f"model.name_or_path={folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in this folder, so the "
            "reference cache cannot identify the model. Point model.name_or_path at a saved model, or set "
            "ref_cache.enabled=false."
        )
    h = hashlib.sha256()
    for name in MODEL_CONFIG_FILES:
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    by_content = sum(p.stat().st_size for p in weights) <= content_max_bytes
    h.update(b"content" if by_content else b"stat")
    for p in weights:
        st = p.stat()
        h.update(str(p.relative_to(folder)).encode() + b"\0" + str(st.st_size).encode())
        if by_content:
            with open(p, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                    h.update(chunk)
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def hub_commit(repo_id: str, revision: str | None, cache_dir: str | None = None) -> str | None:
    """The commit hash of the snapshot `from_pretrained` resolved `repo_id@revision` to, from the local hub cache."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    # The hub cache lays files out as .../snapshots/<commit>/config.json.
    return Path(path).parent.name if isinstance(path, str) else None


def weights_identity(cfg: DictConfig) -> dict[str, Any]:
    from dpo_sweeps.models.loading import model_path

    path = model_path(cfg)
    if os.path.isdir(path):
        return {"local_weights": local_weights_fingerprint(path)}
    commit = hub_commit(path, cfg.model.revision)
    if commit is None:
        log.warning(
            "Reference cache: could not resolve %s@%s to a commit in the local hub cache; the cache key uses the "
            "revision name. Pin model.revision=<commit hash> so that an updated hub model cannot reuse stale entries.",
            path,
            cfg.model.revision or "main",
        )
    return {"hub_id": path, "revision": cfg.model.revision, "commit": commit}


def reference_identity(cfg: DictConfig) -> dict[str, Any]:
    """Everything besides the data rows that decides the reference log-probs (see the module docstring)."""
    import trl

    from dpo_sweeps.models.loading import resolve_dtype
    from dpo_sweeps.train.precision import precision_flags

    dtype = resolve_dtype(cfg.model.dtype, cfg)
    q = cfg.quantization
    quant: dict[str, Any] = {"mode": q.mode}
    if q.mode == "nf4":
        quant |= {"double_quant": q.double_quant, "compute_dtype": str(resolve_dtype(q.compute_dtype, cfg))}
    return {
        "entry_format": ENTRY_FORMAT,
        "trl": trl.__version__,
        "weights": weights_identity(cfg),
        "prequantized": cfg.model.prequantized,
        "dtype": str(dtype),
        "quantization": quant,
        "attn_implementation": cfg.model.attn_implementation,
        "autocast": precision_flags(cfg, dtype),
        "max_length": cfg.dataset.max_length,
        "truncation_mode": cfg.dataset.truncation_side,
        "ld_alpha": cfg.loss.ld_alpha,
    }


def rows_digest(dataset) -> str:
    """sha256 of the split's token ids (row order included), read column-wise from Arrow: seconds for 100k rows."""
    h = hashlib.sha256(f"rows={len(dataset)}".encode())
    for col in ROW_COLUMNS:
        # Lengths and flattened values in two streams: the digest pins the ragged rows exactly and does not depend
        # on how Arrow happens to chunk or offset the column.
        lengths, values = hashlib.sha256(), hashlib.sha256()
        for table in dataset.select_columns([col]).with_format("arrow").iter(batch_size=8192):
            for chunk in table.column(col).chunks:
                lengths.update(np.asarray(chunk.value_lengths(), dtype=np.int64).tobytes())
                values.update(np.asarray(chunk.flatten(), dtype=np.int64).tobytes())
        h.update(f"{col}:{lengths.hexdigest()}:{values.hexdigest()}".encode())
    return h.hexdigest()


def entry_key(identity: dict[str, Any], rows: str) -> str:
    return _sha256_json({"reference": identity, "rows": rows})


# ------------------------------------------------------------------------------------------------------- the store


class EntryStore(LockedStore):
    """Entries (`<key>.npz`) and their locks (`<key>.lock`) in one folder; the locking is `cache_store.LockedStore`'s."""

    label = "Reference cache"

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str, rows: int | None = None) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None if absent or unreadable (an unreadable entry is logged and recomputed)."""
        path = self.entry_path(key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = {k: npz[k] for k in npz.files if k != "meta"}
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged file (disk full, manual edit): never trust it, recompute
            log.warning("Reference cache entry %s is unreadable (%s); computing it again.", path, exc)
            return None
        if meta.get("key") != key or (rows is not None and any(len(a) != rows for a in arrays.values())):
            log.warning("Reference cache entry %s does not match its key or row count; computing it again.", path)
            return None
        return arrays

    def save(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path:
        path = self.entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_json = json.dumps({"key": key, "created": time.time(), "host": socket.gethostname(), **(meta or {})})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(meta_json), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared by the sweep's jobs (maybe other users)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(
        self, key: str, compute: Callable[[], dict[str, np.ndarray]], rows: int | None = None, meta: dict | None = None
    ) -> tuple[dict[str, np.ndarray], str]:
        """The entry for `key` and HIT, or `compute()`'s result (stored) and COMPUTED. One job computes, others wait."""

        def compute_and_save() -> dict[str, np.ndarray]:
            arrays = compute()
            self.save(key, arrays, meta)
            return arrays

        return self.get_or_compute_with(key, lambda: self.load(key, rows), compute_and_save, "ref_cache.lock_timeout_s")


# ------------------------------------------------------------------------------------------------ the trainer part


@dataclass
class RefCacheInfo:
    """What the cache did in this run; `state` goes into metrics.json as `ref_cache`."""

    enabled: bool
    store: EntryStore | None = None
    cfg: DictConfig | None = None
    # split name -> {"key": ..., "state": hit/computed, "rows": n}
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    forward_batches: int = 0
    _identity: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        if not self.enabled:
            return OFF
        states = {e["state"] for e in self.entries.values()}
        return COMPUTED if COMPUTED in states else HIT if states else OFF

    @property
    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = reference_identity(self.cfg)
        return self._identity

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ref_cache": self.state}
        for name, entry in self.entries.items():
            out[f"ref_cache/{name}"] = entry["state"]
            out[f"ref_cache/{name}_key"] = entry["key"]
        if self.enabled:
            out["ref_cache/forward_batches"] = self.forward_batches
        return out


def enabled(cfg: DictConfig) -> bool:
    from dpo_sweeps.config.validation import reference_needed

    return bool(cfg.ref_cache.enabled) and reference_needed(cfg)


def prepare(cfg: DictConfig) -> tuple[Callable[..., Any], RefCacheInfo, dict[str, Any]]:
    """(trainer class or factory, info, DPOConfig overrides) for this run: TRL's DPOTrainer (taking our prepared data
    as it is, see data/tokenize.py) when the cache is off."""
    from dpo_sweeps.data.tokenize import prepared_data_trainer_class

    if not enabled(cfg):
        return prepared_data_trainer_class(), RefCacheInfo(enabled=False), {}
    info = RefCacheInfo(enabled=True, store=EntryStore(cfg.ref_cache.dir, cfg.ref_cache.lock_timeout_s), cfg=cfg)
    trainer_cls = _cached_trainer_class()

    def factory(*args, **kwargs):
        return trainer_cls(*args, ref_cache_info=info, **kwargs)

    # TRL reads the batch's precomputed ref_*_logps instead of running the reference in every step and eval.
    return factory, info, {"precompute_ref_log_probs": True}


def needs_reference_model(cfg: DictConfig) -> bool:
    """Full-parameter DPO keeps a frozen reference copy in memory, unless the cache provides its log-probs: then the
    untrained policy, prepared for training, serves as the reference for the one pass that fills the cache."""
    return not cfg.lora.enabled and not enabled(cfg)


_CLASS = None


def _cached_trainer_class():
    """Built on first use so that importing this module does not import TRL (login nodes, the store's tests)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    import trl.trainer.dpo_trainer as dpo_trainer_module
    from accelerate.utils import broadcast_object_list
    from torch.utils.data import DataLoader

    from dpo_sweeps.data.tokenize import prepared_data_trainer_class

    class CachedRefDPOTrainer(prepared_data_trainer_class()):
        """DPOTrainer whose reference log-probs come from (and go to) our cross-run cache."""

        def __init__(self, *args, ref_cache_info: RefCacheInfo, **kwargs):
            self.ref_cache_info = ref_cache_info
            # TRL's __init__ hashes every reference parameter (7 s for 1.2B, 45 s for 8B) for its own cache's key, read
            # only by `_precompute_ref_logps` (replaced below), and under FSDP without a reference (full DPO) loads a
            # second whole model per rank for its fill (device_map="auto" on GPUs: over all the node's GPUs), even on
            # our hits. Our fill runs on the prepared policy (`_fill_model`): both skipped for the duration of __init__.
            skipped = {"hash_module": lambda module: None, "create_model_from_path": lambda *a, **k: None}
            originals = {name: getattr(dpo_trainer_module, name) for name in skipped}
            vars(dpo_trainer_module).update(skipped)
            try:
                super().__init__(*args, **kwargs)
            finally:
                vars(dpo_trainer_module).update(originals)

        def _fill_model(self):
            """The reference if there is one (TRL prepared it), else the policy as accelerate prepares it: under FSDP
            the Trainer shards it only in `train()`; before, it is whole and on CPU (meta off rank 0, loading on rank 0
            alone), a CUDA batch does not run through it and NCCL refuses the gather. Prepared here as HF's evaluate()
            before train() does (accelerate 1.15 takes an FSDP2 model without its optimizer), in the constructor:
            before any step or checkpoint load, full DPO's policy is the reference (LoRA: TRL disables the adapter)."""
            if self.ref_model is not None:
                return self.ref_model
            if self.is_fsdp_enabled:
                from torch.distributed.fsdp import FSDPModule

                if not isinstance(self.model, FSDPModule):  # FSDP2 shards in place: one object, as in evaluate()
                    self.model = self.model_wrapped = self.accelerator.prepare(self.model)
            return self.model

        def _compute_ref_arrays(self, dataset, name: str, batch_size: int) -> dict[str, np.ndarray]:
            # TRL 1.16's own loop, minus its datasets cache (see `_precompute_ref_logps` in trl/trainer/dpo_trainer.py).
            loader = self.accelerator.prepare(
                DataLoader(
                    dataset,
                    batch_size=batch_size,
                    collate_fn=self.data_collator,
                    num_workers=self.args.dataloader_num_workers,
                    pin_memory=self.args.dataloader_pin_memory,
                    shuffle=False,
                )
            )
            model = self._fill_model()
            chosen, rejected = [], []
            for batch in loader:
                c, r = self.compute_ref_log_probs(model, batch)
                c, r = self.accelerator.gather_for_metrics((c, r))
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
                self.ref_cache_info.forward_batches += 1
            return {
                "ref_chosen_logps": torch.cat(chosen).numpy(),
                "ref_rejected_logps": torch.cat(rejected).numpy(),
            }

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            info = self.ref_cache_info
            if self.is_deepspeed_enabled and self.ref_model is None:
                raise ValueError(
                    "ref_cache.enabled=true is not supported with DeepSpeed and no separate reference model. "
                    "Fix: ref_cache.enabled=false."
                )
            self._fill_model()  # prepared on a hit too: what train() starts from does not depend on the cache
            key = entry_key(info.identity, rows_digest(dataset))
            meta = {"split": name, "rows": len(dataset), "reference": info.identity}
            compute = lambda: self._compute_ref_arrays(dataset, name, batch_size)  # noqa: E731
            if self.accelerator.num_processes == 1:
                arrays, state = info.store.get_or_compute(key, compute, len(dataset), meta)
            else:
                # Computing is collective (gather), so every rank must take the same branch: the main process
                # decides and broadcasts. Ranks do not wait on another job's lock here (a rank waiting alone would
                # deadlock the others), so two multi-GPU jobs may both compute an entry; writes stay atomic.
                decision = [None]
                if self.accelerator.is_main_process:
                    decision = [HIT if info.store.load(key, len(dataset)) is not None else COMPUTED]
                broadcast_object_list(decision, from_process=0)
                arrays = info.store.load(key, len(dataset)) if decision[0] == HIT else None
                if arrays is None:
                    arrays = compute()
                    if self.accelerator.is_main_process:
                        info.store.save(key, arrays, meta)
                    self.accelerator.wait_for_everyone()
                state = decision[0]
            previous = info.entries.get(name)
            # evaluate() precomputes the eval split again: that is a hit on our own entry, not news.
            if previous is None or previous["key"] != key:
                info.entries[name] = {"key": key, "state": state, "rows": len(dataset)}
                log.info("Reference log-probs for %s (%d rows): %s (%s)", name, len(dataset), state, key[:12])
            return dataset.add_column("ref_chosen_logps", arrays["ref_chosen_logps"]).add_column(
                "ref_rejected_logps", arrays["ref_rejected_logps"]
            )

    _CLASS = CachedRefDPOTrainer
    return _CLASS
