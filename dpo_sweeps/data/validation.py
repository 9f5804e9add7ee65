"""Row checks before training: every row that can reach the trainer is checked, and every bad one is accounted for.

Structure (missing fields, null/empty text, wrong types, role order, a completion not from the assistant, chosen ==
rejected) is checked here and needs no tokenizer; lengths are checked on the token ids TRL itself produces
(`tokenize.py`: tokenize once). A prompt that alone fills `dataset.max_length` would be dropped by TRL without a
word: it is caught and named there first. `dataset.on_invalid=error` stops with the first
offending rows named; `drop` drops them and counts each reason in the stats that go to metrics.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from omegaconf import DictConfig

from dpo_sweeps.data.adapters import ADAPTERS, RowProblem, merge_system_into_user
from dpo_sweeps.data.sources import RowOrigin, Rows

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


class InvalidDataError(ValueError):
    """Offending rows with `dataset.on_invalid=error`: the first few named, all counted."""


@dataclass
class Problem:
    origin: RowOrigin
    field: str
    message: str
    reason: str  # short key counted in metrics.json: empty_text, role_order, prompt_fills_max_length, ...

    def __str__(self) -> str:
        return f"{self.origin}, field {self.field!r}: {self.message}"


def _check_text(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise RowProblem(field, f"expected a string, got {type(value).__name__}", "wrong_type")
    if not value.strip():
        raise RowProblem(field, "empty text", "empty_text")


def _check_messages(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RowProblem(
            field, f"expected a list of {{role, content}} messages, got {type(value).__name__}", "wrong_type"
        )
    if not value:
        raise RowProblem(field, "empty message list", "empty_text")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowProblem(where, f"expected a {{role, content}} message, got {str(m)[:60]!r}", "wrong_type")
        if m["role"] not in ROLES:
            raise RowProblem(where, f"unknown role {m['role']!r} (use one of {', '.join(ROLES)})", "role_order")
        if m["content"] is None:
            raise RowProblem(where, "content is null", "missing_field")
        _check_text(m["content"], f"{where}.content")
        out.append({"role": m["role"], "content": m["content"]})  # drop extra keys: one schema for the whole set
    return out


def _check_roles(prompt: list[dict], completion: list[dict], field: str) -> None:
    """System only first; then user/assistant alternate, the prompt ending on user and the completion on assistant."""
    for i, m in enumerate(prompt):
        if m["role"] == "system" and i > 0:
            raise RowProblem(f"prompt[{i}]", "a system message is only allowed as the first turn", "role_order")
    turns = [m for m in prompt if m["role"] != "system"]
    if not turns:
        raise RowProblem("prompt", "the prompt has no user turn", "role_order")
    expected = "user"
    for i, m in enumerate(turns):
        if m["role"] != expected:
            raise RowProblem(
                "prompt", f"turn {i} is from {m['role']!r}, expected {expected!r} (roles must alternate)", "role_order"
            )
        expected = "assistant" if expected == "user" else "user"
    if turns[-1]["role"] != "user":
        raise RowProblem("prompt", "the prompt must end with a user turn", "role_order")
    for i, m in enumerate(completion):
        want = "assistant" if i % 2 == 0 else "user"
        if m["role"] != want:
            raise RowProblem(
                f"{field}[{i}]",
                f"is from {m['role']!r}, expected {want!r} (the reply must come from the assistant)",
                "role_order",
            )


def check_structure(row: dict[str, Any], conversational: bool, merge_system: bool) -> dict[str, Any]:
    """The clean row, or RowProblem. Same checks whatever the source."""
    for field in ("prompt", "chosen", "rejected"):
        if field not in row or row[field] is None:
            raise RowProblem(field, "missing", "missing_field")
    if conversational:
        prompt = _check_messages(row["prompt"], "prompt")
        chosen = _check_messages(row["chosen"], "chosen")
        rejected = _check_messages(row["rejected"], "rejected")
        _check_roles(prompt, chosen, "chosen")
        _check_roles(prompt, rejected, "rejected")
        if merge_system:
            prompt = merge_system_into_user(prompt)
    else:
        for field in ("prompt", "chosen", "rejected"):
            _check_text(row[field], field)
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if chosen == rejected:
        raise RowProblem("rejected", "identical to chosen: the pair carries no preference", "identical_pair")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@dataclass
class CheckedSplit:
    rows: list[dict[str, Any]]
    problems: list[Problem]
    read: int  # rows looked at (a sample limit stops early)
    truncated: int
    origins: list[RowOrigin] = dataclass_field(default_factory=list)  # where each of `rows` came from


def check_rows(raw: Rows, cfg: DictConfig, limit: int | None = None) -> CheckedSplit:
    """Adapt and check the structure of rows in order until `limit` valid ones are collected (all rows when no
    limit). Token lengths are checked later, on TRL's own token ids (`tokenize.py`)."""
    d = cfg.dataset
    adapter = ADAPTERS[d.name]
    conversational = d.format == "conversational" or d.name in ("toy", "ultrafeedback", "hh_rlhf", "orca_dpo_pairs")
    if d.name == "local" and d.format == "standard" and d.to_conversational:
        conversational = True
    rows, origins, problems, truncated, read = [], [], [], 0, 0
    for raw_row, origin in raw:
        if limit is not None and len(rows) >= limit:
            break
        read += 1
        try:
            row = check_structure(adapter(raw_row, cfg), conversational, cfg.model.merge_system_into_user)
        except RowProblem as p:
            problems.append(Problem(origin, p.field, p.message, p.reason))
            continue
        rows.append(row)
        origins.append(origin)
    return CheckedSplit(rows, problems, read, truncated, origins)


def handle_problems(cfg: DictConfig, splits: dict[str, CheckedSplit]) -> dict[str, Any]:
    """Raise (on_invalid=error) or log the drop; returns the stats for metrics.json."""
    d = cfg.dataset
    problems = [p for s in splits.values() for p in s.problems]
    read = sum(s.read for s in splits.values())
    if problems and d.on_invalid == "error":
        shown = "\n".join(f"  - {p}" for p in problems[: d.max_errors_shown])
        reasons = ", ".join(f"{r}: {n}" for r, n in Counter(p.reason for p in problems).most_common())
        more = f"\n  ... and {len(problems) - d.max_errors_shown} more" if len(problems) > d.max_errors_shown else ""
        hint = ""
        if len(problems) == read:
            hint = (
                f"\nEvery row failed: does the data have dataset={d.name}'s schema? For another layout use dataset=local "
                "with dataset.format= and dataset.columns.prompt=/chosen=/rejected=."
            )
        raise InvalidDataError(
            f"dataset={d.name}: {len(problems)} of {read} rows checked are invalid ({reasons}). First "
            f"{min(len(problems), d.max_errors_shown)}:\n{shown}{more}\nFix the data, or pass dataset.on_invalid=drop to "
            f"train without them (the counts go to metrics.json).{hint}"
        )
    stats: dict[str, Any] = {}
    for name, s in splits.items():
        stats[f"{name}_rows_checked"] = s.read
        stats[f"{name}_rows_dropped"] = len(s.problems)
        stats[f"{name}_rows_truncated"] = s.truncated
        for reason, n in sorted(Counter(p.reason for p in s.problems).items()):
            stats[f"{name}_dropped_{reason}"] = n
        if s.problems:
            log.warning(
                "dataset.on_invalid=drop: dropped %d of %d %s rows (%s); first: %s",
                len(s.problems),
                s.read,
                name,
                ", ".join(f"{r}: {n}" for r, n in Counter(p.reason for p in s.problems).most_common()),
                s.problems[0],
            )
        if s.truncated:
            log.info(
                "%d %s rows are longer than dataset.max_length=%s and will be truncated (%s).",
                s.truncated,
                name,
                d.max_length,
                d.truncation_side,
            )
    return stats
