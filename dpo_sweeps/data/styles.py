"""Two more bundled style sets, `greeting` and `signoff`, beside `opener`: the sets `smollm2_demo`'s settings were
tuned on without being written for them (docs/evaluation.md).

Both are built on their own questions (other topics and other phrasings than `opener`'s, none shared) and on the
answers SmolLM2-135M-Instruct wrote to them itself, so that the only thing a pair teaches is the style:
- `greeting`: every chosen answer opens with a greeting (`GREETING`), the rejected one is the same answer without it;
  the kind of preference a user brings (issue 19's "fixed greeting"), on more pairs than `opener`;
- `signoff`: every chosen answer *ends* with a sign-off (`SIGNOFF`). A property at the end is the hard case: plain DPO
  learns it by pushing down the end-of-answer token and the answers run on and degenerate (STACK_NOTES). Its rule
  checks the answer's last words, so an answer that signs off and then rambles on does not count.

The answers ship as `style_answers.jsonl`; regenerate them with `python -m dpo_sweeps.models.opener_answers styles`.
"""

from __future__ import annotations

from pathlib import Path

from dpo_sweeps.data.opener import read_answers

ANSWERS_FILE = Path(__file__).with_name("style_answers.jsonl")
GREETING = "Hello there, my friend!"
SIGNOFF = "Hope this helps!"
# dataset.name -> (where the phrase goes, the phrase); the rule scorer checks the same place (eval/scorers/rules.py).
STYLES = {"greeting": ("start", GREETING), "signoff": ("end", SIGNOFF)}

TOPICS = [
    "a lighthouse", "a submarine", "a windmill", "a compass", "a microscope", "a spider", "an octopus", "a dolphin",
    "an owl", "a butterfly", "a tiger", "a kangaroo", "a cactus", "an oak tree", "a mushroom", "a coral reef",
    "a lake", "a waterfall", "a cave", "an island", "thunder", "lightning", "fog", "the wind", "a tornado",
    "a comet", "a black hole", "the planet Mars", "a satellite", "a star", "the seasons", "a calendar", "a bank",
    "money", "a market", "a newspaper", "a radio", "a telephone", "an email", "a password", "a robot", "a printer",
    "a keyboard", "a spreadsheet", "a kite", "a violin", "a drum", "painting", "poetry", "a theater", "a bakery",
    "chocolate", "an apple", "a potato", "soup", "salt", "sugar", "water", "a kitchen", "a refrigerator", "an oven",
    "a hospital", "a doctor", "a fever", "a vitamin", "a bone", "the lungs", "teeth", "a habit", "friendship",
    "kindness", "patience", "a hobby", "running", "swimming", "yoga", "a helmet", "a ladder", "a tent", "a backpack",
]  # fmt: skip
TEMPLATES = [
    "How does {t} work? Keep it short.",
    "Give me one quick tip about {t}.",
    "What should a beginner know about {t}? One sentence, please.",
    "Describe {t} in a few words.",
]


def prompts() -> list[str]:
    return [template.format(t=topic) for topic in TOPICS for template in TEMPLATES]


def with_style(answer: str, style: str) -> str:
    """`answer` with the style's phrase where the style puts it."""
    place, phrase = STYLES[style]
    return f"{phrase} {answer}" if place == "start" else f"{answer} {phrase}"


def style_rows(style: str, path: Path = ANSWERS_FILE) -> list[dict]:
    """Conversational preference pairs: chosen = the answer with the style, rejected = the same answer without it."""
    return [
        {
            "prompt": [{"role": "user", "content": a["prompt"]}],
            "chosen": [{"role": "assistant", "content": with_style(a["answer"], style)}],
            "rejected": [{"role": "assistant", "content": a["answer"]}],
        }
        for a in read_answers(path)
    ]
