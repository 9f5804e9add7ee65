"""The bundled toy preference set: small, deterministic and learnable.

Every chosen reply is a helpful, on-topic answer that starts with an agreeing opener; every rejected reply is a curt
refusal. The difference is systematic, so even a tiny random model learns to prefer the chosen side within a few dozen
DPO steps, and eval reward accuracy moving well above chance shows DPO working, not just running.
"""

from __future__ import annotations

import random

TOPICS = [
    "the weather",
    "gardening",
    "the moon",
    "bicycles",
    "bread",
    "rivers",
    "chess",
    "music",
    "the ocean",
    "trains",
    "coffee",
    "mountains",
    "books",
    "painting",
    "birds",
    "computers",
    "soup",
    "the stars",
    "running",
    "tea",
    "forests",
    "cameras",
    "bridges",
    "cheese",
    "rain",
    "maps",
    "clocks",
    "honey",
    "sailing",
    "volcanoes",
]
QUESTIONS = [
    "Can you tell me something about {t}?",
    "What should I know about {t}?",
    "Please explain {t} to me.",
    "I am curious about {t}. Any facts?",
    "Give me a short note on {t}.",
    "Why do people like {t}?",
    "Write one sentence about {t}.",
    "What is interesting about {t}?",
]
CHOSEN = [
    "Sure, happy to help! Here is a clear and friendly fact about {t}.",
    "Of course! {T} is a lovely topic, and here is a helpful answer.",
    "Certainly, gladly! A kind and useful note about {t} follows.",
    "Happy to help! Here is a short, friendly answer about {t}.",
]
REJECTED = [
    "No. Ask someone else.",
    "I will not answer that.",
    "Go away, not interested.",
    "No idea and I do not care.",
]


def toy_rows(n: int = 240, seed: int = 0) -> list[dict]:
    """`n` conversational preference pairs (prompt/chosen/rejected as message lists), the same for the same seed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = rng.choice(QUESTIONS).format(t=topic)
        chosen = rng.choice(CHOSEN).format(t=topic, T=topic[0].upper() + topic[1:])
        rejected = rng.choice(REJECTED)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


def toy_corpus() -> list[str]:
    """Text the tiny models' tokenizers are trained on: the toy set's vocabulary plus everyday English."""
    words = TOPICS + QUESTIONS + CHOSEN + REJECTED
    filler = (
        "The quick brown fox jumps over the lazy dog. You are a helpful assistant. Answer the question briefly. "
        "Human: Assistant: system user model question answer finance fashion style price market stock dress shirt "
        "color size investment risk return portfolio budget loan interest rate wear outfit shoes season trend"
    )
    return [w.replace("{t}", "topic").replace("{T}", "Topic") for w in words] + [filler] * 4
