"""Tokenize once, with TRL's own code: the token ids that validation measures are the ones the trainer uses.

TRL 1.16's DPOTrainer always runs its own `datasets.map`s over the data it is given (extract the prompt, add EOS to
plain-text rows, tokenize with the chat template, drop rows whose prompt fills max_length) and has no switch for data
that is already tokenized. Our row checks need the same token lengths (a prompt that fills `dataset.max_length`
must be named, not dropped silently). Rather than tokenizing twice (once to check, once in TRL), we:

1. run TRL's own `DPOTrainer._prepare_dataset` here, during data preparation, minus its silent max_length filter;
2. check lengths on the `prompt_ids`/`chosen_ids`/`rejected_ids` columns it produced (Arrow column lengths, no
   Python loop), naming and dropping bad rows the way `validation.py` does;
3. store the result in the prepared-data cache, and hand it to a DPOTrainer whose `_prepare_dataset` passes
   already-prepared splits through (`PreparedDataDPOTrainer`).

So every row is tokenized once per sweep (by TRL's code, so the ids are exactly TRL's) and zero times on a cache hit.
Imports `datasets`/TRL inside functions (job side only).
"""

from __future__ import annotations

import contextlib
import logging
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
from omegaconf import DictConfig

from dpo_sweeps.data.adapters import RowProblem
from dpo_sweeps.data.sources import RowOrigin
from dpo_sweeps.data.validation import Problem

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# Below this many rows, worker processes cost more to start than they save.
PARALLEL_MIN_ROWS = 4000


def num_proc(cfg: DictConfig, rows: int) -> int | None:
    """Processes for tokenization: dataset.num_proc, else the job's CPUs (SLURM's allocation, else this machine's
    usable cores) shared by the ranks on this node. None (in-process) for small sets."""
    if cfg.dataset.num_proc is not None:
        return cfg.dataset.num_proc if cfg.dataset.num_proc > 1 else None
    if rows < PARALLEL_MIN_ROWS:
        return None
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    n = int(cpus) if cpus and cpus.isdigit() else len(os.sched_getaffinity(0))
    # SLURM_CPUS_PER_TASK is per rank already; the machine's cores are shared by the ranks of this node.
    if not os.environ.get("SLURM_CPUS_PER_TASK"):
        n //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return n if n > 1 else None


def is_prepared(dataset: Any) -> bool:
    return dataset is not None and all(c in getattr(dataset, "column_names", ()) for c in TOKEN_COLUMNS)


def trl_tokenize(dataset, tokenizer, cfg: DictConfig, name: str, processes: int | None):
    """TRL 1.16's `DPOTrainer._prepare_dataset` on `dataset`, without its silent max_length filter (we check and name
    those rows instead) and without its cross-rank barrier (our cache lock decides who computes)."""
    import trl.trainer.dpo_trainer as dpo_trainer_module

    trainer_like = SimpleNamespace(_tokenizer=getattr(tokenizer, "tokenizer", tokenizer))
    args = SimpleNamespace(dataset_num_proc=processes, max_length=None, truncation_mode=cfg.dataset.truncation_side)
    original = dpo_trainer_module.global_then_local_main_first
    dpo_trainer_module.global_then_local_main_first = contextlib.nullcontext
    try:
        return dpo_trainer_module.DPOTrainer._prepare_dataset(trainer_like, dataset, tokenizer, args, name)
    finally:
        dpo_trainer_module.global_then_local_main_first = original


def template_problems(rows_dataset, tokenizer, origins: list[RowOrigin], merge_hint: str) -> list[tuple[int, Problem]]:
    """The rows the chat template refuses (jinja's raise_exception): the slow per-row path, only taken when TRL's
    tokenization failed, so that the offending rows are named instead of one traceback from inside `map`."""
    bad = []
    for i, row in enumerate(rows_dataset):
        if not isinstance(row["prompt"], list):
            continue
        try:
            for completion in ("chosen", "rejected"):
                tokenizer.apply_chat_template(row["prompt"] + row[completion], tokenize=True)
            tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        except Exception as exc:  # jinja2 TemplateError, mostly
            bad.append(
                (i, Problem(origins[i], "prompt", f"the chat template refused it: {exc}{merge_hint}", "template_error"))
            )
    return bad


def length_problems(dataset, cfg: DictConfig, origins: list[RowOrigin]) -> tuple[list[tuple[int, Problem]], int]:
    """(row position, Problem) for rows whose token lengths make them invalid, and how many valid rows the collator
    will truncate. The same rules as before tokenizing once (see `validation.py`), on TRL's own ids."""
    import pyarrow.compute as pc

    d = cfg.dataset
    table = dataset.with_format("arrow")[:]
    n_prompt, n_chosen, n_rejected = (
        np.asarray(pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False), dtype=np.int64)
        for c in TOKEN_COLUMNS
    )
    n_completion = np.maximum(n_chosen, n_rejected)
    longer = np.where(n_chosen >= n_rejected, "chosen", "rejected")
    bad: dict[int, RowProblem] = {}

    def flag(mask: np.ndarray, make) -> None:
        for i in np.flatnonzero(mask):
            bad.setdefault(int(i), make(int(i)))

    if d.max_length is not None and d.truncation_side == "keep_start":
        flag(
            n_prompt >= d.max_length,
            lambda i: RowProblem(
                "prompt",
                f"{n_prompt[i]} tokens after templating fill dataset.max_length={d.max_length}: no completion token "
                "would be trained (TRL drops such rows silently). Raise dataset.max_length or use "
                "dataset.truncation_side=keep_end",
                "prompt_fills_max_length",
            ),
        )
    if d.max_prompt_length is not None:
        flag(
            n_prompt > d.max_prompt_length,
            lambda i: RowProblem(
                "prompt",
                f"{n_prompt[i]} tokens after templating > dataset.max_prompt_length={d.max_prompt_length}",
                "prompt_too_long",
            ),
        )
    if d.max_completion_length is not None:
        flag(
            n_completion > d.max_completion_length,
            lambda i: RowProblem(
                str(longer[i]),
                f"{n_completion[i]} completion tokens > dataset.max_completion_length={d.max_completion_length}",
                "completion_too_long",
            ),
        )
    too_long = (n_prompt + n_completion > d.max_length) if d.max_length is not None else np.zeros(len(table), bool)
    if d.on_too_long == "invalid":
        flag(
            too_long,
            lambda i: RowProblem(
                str(longer[i]),
                f"{n_prompt[i] + n_completion[i]} tokens > dataset.max_length={d.max_length} (dataset.on_too_long=invalid)",
                "too_long",
            ),
        )
    problems = [(i, Problem(origins[i], p.field, p.message, p.reason)) for i, p in sorted(bad.items())]
    truncated = int(too_long.sum()) - sum(1 for i in bad if too_long[i])
    return problems, truncated


def tokenize_and_check(dataset, tokenizer, cfg: DictConfig, name: str, origins: list[RowOrigin]):
    """(tokenized dataset without the invalid rows, their origins, problems, truncated count)."""
    processes = num_proc(cfg, len(dataset))
    merge_hint = "" if cfg.model.merge_system_into_user else " (no system role? set model.merge_system_into_user=true)"
    refused: list[tuple[int, Problem]] = []
    try:
        tokenized = trl_tokenize(dataset, tokenizer, cfg, name, processes)
    except Exception:
        refused = template_problems(dataset, tokenizer, origins, merge_hint)
        if not refused:
            raise
        keep = sorted(set(range(len(dataset))) - {i for i, _ in refused})
        dataset, origins = dataset.select(keep), [origins[i] for i in keep]
        if not keep:
            return dataset, origins, [p for _, p in refused], 0
        tokenized = trl_tokenize(dataset, tokenizer, cfg, name, processes)
    too_long, truncated = length_problems(tokenized, cfg, origins)
    if too_long:
        bad = {i for i, _ in too_long}
        keep = [i for i in range(len(tokenized)) if i not in bad]
        tokenized, origins = tokenized.select(keep), [origins[i] for i in keep]
    return tokenized, origins, [p for _, p in refused] + [p for _, p in too_long], truncated


_TRAINER_CLASS = None


def prepared_data_trainer_class():
    """DPOTrainer that passes splits prepared by `trl_tokenize` through instead of running its maps again.

    Built on first use so that importing this module does not import TRL."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        from trl import DPOTrainer

        class PreparedDataDPOTrainer(DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if is_prepared(dataset):
                    return dataset  # tokenized once, by TRL's own code, during data preparation
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        _TRAINER_CLASS = PreparedDataDPOTrainer
    return _TRAINER_CLASS
