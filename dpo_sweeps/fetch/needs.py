"""What a sweep point needs from the Hugging Face Hub: its model (and tokenizer, the same repo), its dataset, a reward
model. Tiny models, GGUF copies, local folders and the bundled sets need nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Sets shipped inside the package (data/toy.py, data/opener.py, data/styles.py): never on the hub.
BUNDLED_DATASETS = ("toy", "opener", "greeting", "signoff")


@dataclass(frozen=True, order=True)
class HubItem:
    kind: str  # "model" or "dataset" (the hub's repo type)
    repo_id: str
    revision: str
    key: str  # the config key that names it, for messages

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{self.kind} {self.repo_id}{rev} ({self.key})"


def _local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def needs(cfg: DictConfig) -> list[HubItem]:
    items = []
    m = cfg.model
    if not m.tiny_arch and not m.gguf and not _local(str(m.name_or_path)):
        items.append(HubItem("model", str(m.name_or_path), str(m.revision or "main"), "model.name_or_path"))
    d = cfg.dataset
    path = None if OmegaConf.is_missing(d, "path") else d.path
    if not path and d.hub_id and d.name not in BUNDLED_DATASETS:
        items.append(HubItem("dataset", str(d.hub_id), "main", "dataset.hub_id"))
    reward = OmegaConf.select(cfg, "eval.reward_model", default=None)
    if reward and not _local(str(reward)):
        items.append(HubItem("model", str(reward), "main", "eval.reward_model"))
    return items
