"""Rule scorers for verifiable preferences: 1.0 when a generated answer has the property, else 0.0.

A rule is a function `(prompt_text, completion, arg) -> bool`; `eval.rule` names it and `eval.rule_arg` is its
argument. With `eval.rule=null` the bundled set's own rule applies (`DATASET_RULES`). Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


def starts_with(prompt: str, completion: str, arg: str | None) -> bool:
    """The answer opens with `arg` (case and surrounding whitespace ignored)."""
    return completion.strip().casefold().startswith((arg or "").strip().casefold())


def ends_with(prompt: str, completion: str, arg: str | None) -> bool:
    """The answer closes with `arg` (case and surrounding whitespace ignored): signing off and then writing on fails."""
    return completion.strip().casefold().endswith((arg or "").strip().casefold())


def contains(prompt: str, completion: str, arg: str | None) -> bool:
    """`arg` appears anywhere in the answer (case ignored)."""
    return (arg or "").casefold() in completion.casefold()


# The toy set's chosen replies agree and help; its rejected ones refuse (dpo_sweeps/data/toy.py).
TOY_HELPFUL = ("sure", "of course", "certainly", "happy to help", "here is")


def toy_helpful(prompt: str, completion: str, arg: str | None) -> bool:
    """The toy set's preference: a helpful, agreeing reply rather than a curt refusal (whole words only)."""
    text = completion.casefold()
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in TOY_HELPFUL)


RULES: dict[str, Callable[[str, str, str | None], bool]] = {
    "starts_with": starts_with,
    "ends_with": ends_with,
    "contains": contains,
    "toy_helpful": toy_helpful,
}
# Rules that need eval.rule_arg.
RULES_WITH_ARG = ("starts_with", "ends_with", "contains")


def dataset_rules() -> dict[str, tuple[str, str | None]]:
    """The bundled sets' own rules: dataset.name -> (rule, arg)."""
    from dpo_sweeps.data.opener import OPENER
    from dpo_sweeps.data.styles import STYLES

    rules = {"toy": ("toy_helpful", None), "opener": ("starts_with", OPENER)}
    for name, (place, phrase) in STYLES.items():
        rules[name] = ("starts_with" if place == "start" else "ends_with", phrase)
    return rules


def rule_for(cfg: DictConfig) -> tuple[str, str | None] | None:
    """(rule, arg) for this config: eval.rule if set, else the bundled dataset's rule (a local file has none)."""
    if cfg.eval.rule is not None:
        return cfg.eval.rule, cfg.eval.rule_arg
    if cfg.dataset.path:
        return None
    return dataset_rules().get(cfg.dataset.name)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


def build(cfg: DictConfig):
    from dpo_sweeps.eval.scorers import Scorer

    found = rule_for(cfg)
    if found is None:
        raise ValueError(
            f"eval.scorer=rule with dataset={cfg.dataset.name}: this dataset has no bundled rule. Set eval.rule to one "
            f"of {', '.join(RULES)} (and eval.rule_arg), or use eval.scorer=reward_model."
        )
    rule_name, arg = found
    rule = RULES[rule_name]

    def score(prompts: list[Any], completions: list[str]) -> list[float]:
        return [float(rule(_prompt_text(p), c, arg)) for p, c in zip(prompts, completions, strict=True)]

    return Scorer(name=f"rule:{rule_name}" + (f"({arg})" if arg is not None else ""), score=score)
