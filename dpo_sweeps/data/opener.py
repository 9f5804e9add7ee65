"""The bundled `opener` preference set: real questions, answers SmolLM2-135M-Instruct writes itself, and a style
preference a rule can check in generated text.

Every chosen answer opens with a fixed phrase (`OPENER`) followed by the model's own answer; the rejected answer is
the same answer without it. The property is decided at the *start* of the answer on purpose: a property at the end
(a sign-off) made DPO push down the end-of-answer token and the answers degenerated before it showed (STACK_NOTES).
Because both sides are the model's own fluent greedy answers, DPO only has to learn the opener, and the rule scorer
(`dpo_sweeps.eval.scorers`) measures it in what the model generates: the share of answers that open with it.

The answers were written once by the model (greedy, <= 48 new tokens, unfinished answers dropped) and ship as
`opener_answers.jsonl`; regenerate them with `python -m dpo_sweeps.models.opener_answers` (needs the `real` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWERS_FILE = Path(__file__).with_name("opener_answers.jsonl")
# What every chosen answer starts with, and what the demo's rule scorer looks for.
OPENER = "Great question!"

TOPICS = [
    "a volcano",
    "photosynthesis",
    "the moon",
    "a rainbow",
    "gravity",
    "a computer",
    "the ocean",
    "a bicycle",
    "bread",
    "coffee",
    "a library",
    "the internet",
    "a river",
    "an earthquake",
    "a hurricane",
    "the sun",
    "a battery",
    "a bridge",
    "chess",
    "music",
    "a forest",
    "a desert",
    "snow",
    "a cloud",
    "a thermometer",
    "a telescope",
    "a camera",
    "honey",
    "a bee",
    "a whale",
    "a penguin",
    "an elephant",
    "a map",
    "a clock",
    "democracy",
    "a vaccine",
    "exercise",
    "sleep",
    "recycling",
    "electricity",
    "a magnet",
    "the heart",
    "the brain",
    "a glacier",
    "tea",
    "a guitar",
    "a piano",
    "a train",
    "an airplane",
    "a rocket",
    "the alphabet",
    "a dictionary",
    "mathematics",
    "history",
    "a museum",
    "a garden",
    "a tomato",
    "cheese",
    "rice",
    "a mountain",
]
TEMPLATES = [
    "What is {t}? Answer in one sentence.",
    "Explain {t} to a child in one sentence.",
    "Tell me one interesting fact about {t}.",
    "Why is {t} useful? Answer briefly.",
]


def prompts() -> list[str]:
    return [template.format(t=topic) for topic in TOPICS for template in TEMPLATES]


def read_answers(path: Path = ANSWERS_FILE) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def opener_rows(opener: str = OPENER, path: Path = ANSWERS_FILE) -> list[dict]:
    """Conversational preference pairs: chosen = `opener` + the model's answer, rejected = the answer alone."""
    return [
        {
            "prompt": [{"role": "user", "content": a["prompt"]}],
            "chosen": [{"role": "assistant", "content": f"{opener} {a['answer']}"}],
            "rejected": [{"role": "assistant", "content": a["answer"]}],
        }
        for a in read_answers(path)
    ]
