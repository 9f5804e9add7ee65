"""Scorers for generated answers: one module each, chosen with `eval.scorer`.

A scorer turns (prompts, completions) into one number per completion, higher is better. A module here is a scorer when
it has `build(cfg) -> Scorer`; register its name in `SCORERS` (adding a scorer is one file and one line). Nothing is
imported until a run builds its scorer: validation and `--help` stay light.

    rule          a bundled rule for verifiable tasks (`rules.py`): 1.0 when the answer has the property, else 0.0
    reward_model  a sequence-classification reward model from a folder or hub id (`reward_model.py`)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

SCORERS = {"rule": "dpo_sweeps.eval.scorers.rules", "reward_model": "dpo_sweeps.eval.scorers.reward_model"}
# eval.scorer values: a scorer's name, `auto` (the dataset's bundled rule, else eval.reward_model when set, else none)
# or `none` (no scores; KL and finished fractions are still measured).
SCORER_CHOICES = ("auto", "none", *SCORERS)


@dataclass
class Scorer:
    name: str  # what metrics.json says scored the answers, e.g. "rule:starts_with(Great question!)"
    score: Callable[[list[Any], list[str]], list[float]]  # (prompts as given to the model, completions) -> scores


def resolve_scorer_name(cfg: DictConfig) -> tuple[str | None, str]:
    """(scorer name or None, why): what `eval.scorer=auto` means for this config, said in words for metrics.json."""
    from dpo_sweeps.eval.scorers.rules import rule_for

    e = cfg.eval
    if e.scorer != "auto":
        return (None, "eval.scorer=none") if e.scorer == "none" else (e.scorer, f"eval.scorer={e.scorer}")
    if rule_for(cfg) is not None:
        return "rule", f"the bundled rule for dataset={cfg.dataset.name}" if e.rule is None else "eval.rule"
    if e.reward_model:
        return "reward_model", "eval.reward_model"
    return None, (
        f"no bundled rule for dataset={cfg.dataset.name} and no eval.reward_model: set eval.rule=<rule> "
        "(see dpo_sweeps/eval/scorers/rules.py) or eval.reward_model=<folder or hub id> to score answers"
    )


def build_scorer(cfg: DictConfig) -> tuple[Scorer | None, str]:
    name, why = resolve_scorer_name(cfg)
    if name is None:
        return None, why
    module = importlib.import_module(SCORERS[name])
    return module.build(cfg), why
