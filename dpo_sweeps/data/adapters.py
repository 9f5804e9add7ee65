"""Adapters: one raw row in a dataset's published schema -> TRL's explicit prompt/chosen/rejected.

Conversational rows come out as `prompt` = the shared conversation (optional system turn, then user/assistant turns
ending on a user turn) and `chosen`/`rejected` = the two final assistant replies, as message lists. Standard rows
are three strings. An adapter raises `RowProblem(field, message, reason)` for a row it cannot convert; the caller
records it against the row's origin (nothing is dropped here, and nothing silently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


class RowProblem(ValueError):
    def __init__(self, field: str, message: str, reason: str):
        super().__init__(message)
        self.field, self.message, self.reason = field, message, reason


def _get(row: dict[str, Any], column: str, field: str) -> Any:
    if column not in row:
        raise RowProblem(field, f"missing column {column!r} (columns: {sorted(row)})", "missing_field")
    value = row[column]
    if value is None:
        raise RowProblem(field, f"column {column!r} is null", "missing_field")
    return value


def _messages(value: Any, field: str) -> Any:
    """Message lists may arrive JSON-encoded (a CSV cell, a stringified column): decode those."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem(
                field, f"looks like a JSON message list but does not parse ({exc.msg})", "wrong_type"
            ) from None
    return value


def _user_assistant(prompt: str, chosen: str, rejected: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "prompt": [*messages, {"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def split_shared_prefix(chosen: Any, rejected: Any) -> dict[str, Any]:
    """Implicit-prompt conversations (ultrafeedback's schema): the common leading turns are the prompt."""
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(conv, list) or not conv:
            raise RowProblem(field, f"expected a non-empty list of messages, got {type(conv).__name__}", "wrong_type")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RowProblem(
            "rejected",
            "chosen and rejected share no leading turn, so there is no prompt (the first message differs)",
            "no_shared_prompt",
        )
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


# Anthropic's transcripts: "\n\nHuman: ...\n\nAssistant: ..." (a few rows start without the leading blank line).
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh_transcript(text: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(text, str):
        raise RowProblem(field, f"expected a transcript string, got {type(text).__name__}", "wrong_type")
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        raise RowProblem(field, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns in the transcript", "bad_transcript")
    if parts[0].strip():
        raise RowProblem(field, f"text before the first 'Human:' turn: {parts[0].strip()[:40]!r}", "bad_transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def adapt_hh_rlhf(row: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    chosen = parse_hh_transcript(_get(row, "chosen", "chosen"), "chosen")
    rejected = parse_hh_transcript(_get(row, "rejected", "rejected"), "rejected")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise RowProblem(field, "the transcript does not end with an 'Assistant:' turn", "role_order")
    if chosen[:-1] != rejected[:-1]:
        raise RowProblem(
            "rejected", "the conversation before the final reply differs between chosen and rejected", "prompt_mismatch"
        )
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def adapt_ultrafeedback(row: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    # trl-lib's schema has no prompt column (copies with one repeat the first user turn): the shared prefix decides.
    return split_shared_prefix(_get(row, "chosen", "chosen"), _get(row, "rejected", "rejected"))


def adapt_orca_dpo_pairs(row: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    c = cfg.dataset.columns
    system = row.get(c.system) if c.system else None
    if system is not None and not isinstance(system, str):
        raise RowProblem("system", f"expected a string, got {type(system).__name__}", "wrong_type")
    return _user_assistant(
        _get(row, c.prompt, "prompt"), _get(row, c.chosen, "chosen"), _get(row, c.rejected, "rejected"), system
    )


def adapt_local(row: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    d = cfg.dataset
    c = d.columns
    system = row.get(c.system) if c.system else None
    if system is not None and not isinstance(system, str):
        raise RowProblem("system", f"expected a string, got {type(system).__name__}", "wrong_type")
    if d.format == "conversational":
        chosen = _messages(_get(row, c.chosen, "chosen"), "chosen")
        rejected = _messages(_get(row, c.rejected, "rejected"), "rejected")
        if c.prompt is None:
            out = split_shared_prefix(chosen, rejected)
        else:
            prompt = _messages(_get(row, c.prompt, "prompt"), "prompt")
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]  # a plain question as the prompt is common
            out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if system and isinstance(out["prompt"], list):
            out["prompt"] = [{"role": "system", "content": system}, *out["prompt"]]
        return out
    if c.prompt is None:
        raise RowProblem("prompt", "dataset.format=standard needs dataset.columns.prompt", "missing_field")
    prompt, chosen, rejected = (
        _get(row, c.prompt, "prompt"),
        _get(row, c.chosen, "chosen"),
        _get(row, c.rejected, "rejected"),
    )
    if d.to_conversational:
        return _user_assistant(prompt, chosen, rejected, system)
    if system and isinstance(prompt, str):
        prompt = f"{system}\n\n{prompt}"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def adapt_toy(row: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    return {k: _get(row, k, k) for k in ("prompt", "chosen", "rejected")}


ADAPTERS: dict[str, Callable[[dict[str, Any], DictConfig], dict[str, Any]]] = {
    "toy": adapt_toy,
    # The bundled style sets have the toy set's fixed columns.
    "opener": adapt_toy,
    "greeting": adapt_toy,
    "signoff": adapt_toy,
    "local": adapt_local,
    "ultrafeedback": adapt_ultrafeedback,
    "hh_rlhf": adapt_hh_rlhf,
    "orca_dpo_pairs": adapt_orca_dpo_pairs,
}


def merge_system_into_user(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """Gemma's template has no system role: the system text becomes the head of the first user turn."""
    if not prompt or prompt[0].get("role") != "system":
        return prompt
    system, rest = prompt[0], prompt[1:]
    if rest and rest[0].get("role") == "user":
        return [{"role": "user", "content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system["content"]}, *rest]
