"""Before a sweep starts: is every model and dataset its points need in the local Hugging Face cache, or reachable?

Each distinct item is checked once per sweep (`HubCheck.add` collects, `resolve` checks them all at once, in
parallel): the cache by huggingface_hub's own lookup (no network), the hub by one HEAD request with a short timeout
and no retries. An item that is neither refuses the sweep before any job starts, naming it and the fetch command;
without this a compute node without internet retries every download for minutes, once per point, after the queue
wait. When everything is cached the jobs run with the hub off (`go_offline`): no HEAD request, no retry.
"""

from __future__ import annotations

import os
import shlex
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from omegaconf import DictConfig

from dpo_sweeps.fetch.needs import HubItem, needs

# Seconds for the one reachability request: a hub that answers takes well under a second.
HEAD_TIMEOUT_S = 3.0
CACHED, REACHABLE = "cached", "reachable"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_requested() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in (*OFFLINE_VARS, "TRANSFORMERS_OFFLINE")
    )


def cached_folder(item: HubItem, cache_dir: str | None = None) -> Path | None:
    """The item's snapshot folder in the Hugging Face cache, or None (no network: local files only)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                item.repo_id, repo_type=item.kind, revision=item.revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except Exception:  # LocalEntryNotFoundError, a bad repo id, ...: not cached
        return None
    if item.kind == "model" and not (folder / "config.json").is_file():
        return None  # a folder with a stray file (a tokenizer fetched alone) does not load
    return folder if any(folder.iterdir()) else None


def unreachable(item: HubItem, timeout_s: float = HEAD_TIMEOUT_S) -> str | None:
    """None when the hub answers for the item; else why not, in a few words. One HEAD request, no retries."""
    if offline_requested():
        return "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    url = f"{endpoint()}/api/{item.kind}s/{item.repo_id}/revision/{quote(item.revision, safe='')}"
    token = os.environ.get("HF_TOKEN")
    request = urllib.request.Request(url, method="HEAD", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return None  # gated or private: it exists; the job's token decides
        if err.code == 404:
            return f"{endpoint()} has no {item.kind} {item.repo_id} at revision {item.revision} (HTTP 404)"
        return f"{endpoint()} answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{endpoint()} is unreachable ({reason})"


class HubCheck:
    """Every hub item of one sweep, each checked once."""

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir
        self.pending: set[HubItem] = set()
        self.state: dict[HubItem, str] = {}  # CACHED, REACHABLE, or why neither

    def add(self, cfg: DictConfig) -> None:
        self.pending.update(i for i in needs(cfg) if i not in self.state)

    def resolve(self) -> None:
        items = sorted(self.pending - set(self.state))
        self.pending.clear()
        if not items:
            return
        for item in items:
            if cached_folder(item, self.cache_dir) is not None:
                self.state[item] = CACHED
        todo = [i for i in items if i not in self.state]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
            for item, why in zip(todo, pool.map(unreachable, todo), strict=True):
                self.state[item] = REACHABLE if why is None else why

    @property
    def missing(self) -> dict[HubItem, str]:
        return {i: s for i, s in self.state.items() if s not in (CACHED, REACHABLE)}

    @property
    def all_cached(self) -> bool:
        return bool(self.state) and all(s == CACHED for s in self.state.values())

    def refusal(self, overrides: list[str]) -> str | None:
        """The message that stops the sweep, or None: one line per missing item, then the fetch command."""
        missing = self.missing
        if not missing:
            return None
        where = self.cache_dir or os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache"
        lines = [f"  - {item}: not in {where}, and {why}." for item, why in sorted(missing.items())]
        command = shlex.join(["python", "-m", "dpo_sweeps.fetch", *overrides])
        return (
            f"Error: {len(missing)} model(s)/dataset(s) this sweep needs are neither cached nor reachable; nothing was "
            "run or submitted:\n" + "\n".join(lines) + f"\nFetch them where there is internet (a login node): {command}"
        )


def go_offline() -> None:
    """Run the jobs with the hub off: set for this process and the jobs it starts (local processes, sbatch's exported
    environment). huggingface_hub reads the variable when imported, so an already imported copy is told too."""
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True
