"""What the generation eval's numbers mean: the KL regime and its name, standard errors over prompts, fluency under
the reference (dpo_sweeps/eval/measures.py), and eval.gen_prompts=0 turning it all off."""

from __future__ import annotations

import copy
import logging

import pytest

from dpo_sweeps.eval.generation import Answers
from dpo_sweeps.eval.measures import fluency, standard_error, summary
from dpo_sweeps.runs import folder as run_folder
from tests.helpers import TINY, compose_config, read_json, run_cli


@pytest.fixture(scope="module")
def tiny(tiny_model_paths):
    """A tiny Llama, its tokenizer and four held-out prompts of the toy set."""
    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.models.loading import load_models

    cfg = compose_config(["model=tiny_llama", *TINY, "lora=none", "eval.gen_prompts=4"])
    models = load_models(cfg)
    data = load_preference_data(cfg, models.tokenizer)
    return cfg, models.policy, models.tokenizer, data.eval


def test_standard_error():
    assert standard_error([]) is None and standard_error([1.0]) is None
    # sd of (1, 2, 3) is 1: se = 1 / sqrt(3)
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(3**-0.5)


def test_a_models_generation_defaults_do_not_change_what_is_sampled(tiny):
    from dpo_sweeps.eval.generation import generate

    cfg, model, tokenizer, rows = tiny
    prompts = [r["prompt"] for r in rows.select(range(3))]
    clean = generate(cfg, model, tokenizer, prompts)
    assert clean.sampled_from_model, "temperature 1, no processor: the answers are samples of the model itself"
    # What a hub model's generation_config may ship: generate() would apply each of these unless told otherwise.
    saved = copy.deepcopy(model.generation_config)
    model.generation_config.update(top_k=3, top_p=0.5, repetition_penalty=1.5, no_repeat_ngram_size=1, min_new_tokens=8)
    try:
        shipped = generate(cfg, model, tokenizer, prompts)
    finally:
        model.generation_config = saved
    assert shipped.texts == clean.texts and shipped.logprobs == pytest.approx(clean.logprobs)
    assert shipped.sampled_from_model


def test_a_processor_that_still_acts_or_another_temperature_is_no_kl(tiny, monkeypatch):
    from dpo_sweeps.eval import generation

    cfg, model, tokenizer, rows = tiny
    prompts = [r["prompt"] for r in rows.select(range(3))]
    # A processor that generate() applies (top-k 3 here): the processed and raw log-probs of the sampled tokens
    # differ, so the sampling distribution was not the model's.
    monkeypatch.setitem(generation.PROCESSORS_OFF, "top_k", 3)
    assert not generation.generate(cfg, model, tokenizer, prompts).sampled_from_model
    monkeypatch.undo()
    warm = compose_config(["model=tiny_llama", *TINY, "lora=none", "eval.temperature=0.7"])
    assert not generation.generate(warm, model, tokenizer, prompts).sampled_from_model


def test_out_of_the_kl_regime_the_metric_is_named_a_log_ratio(tiny, tmp_path):
    from dpo_sweeps.eval import GenerationEval

    _, model, tokenizer, rows = tiny
    for temperature, named, note in ((1.0, "gen/kl_to_ref", None), (0.0, "gen/logratio_to_ref", "greedily")):
        cfg = compose_config(["model=tiny_llama", *TINY, "lora=none", f"eval.temperature={temperature}"])
        gen = GenerationEval(cfg, tokenizer, rows.select(range(4)), tmp_path / str(temperature))
        gen.run_before(model, model)
        m = gen.run_after(model, model)
        other = ({"gen/kl_to_ref", "gen/logratio_to_ref"} - {named}).pop()
        assert not [k for k in m if k.startswith(other)], m
        assert m[named] == pytest.approx(0.0, abs=1e-3) and f"{named}_se" in m and f"{named}_before" in m
        assert m["gen/kl_regime"] is (note is None) and (note is None or note in m["gen/kl_regime_note"])
        assert {"gen/score_before_se", "gen/score_after_se", "gen/win_rate_vs_ref_se"} <= set(m), m


def _answers(completion_ids: list[list[int]], ref_logprobs: list[float]) -> Answers:
    n = len(completion_ids)
    return Answers(["x"] * n, completion_ids, [True] * n, [0.0] * n, ref_logprobs=ref_logprobs)


def test_fluency_flag_trips_only_past_the_margin():
    # Known log-probs through the real functions: the reference's own answers at -1.0 nats per token.
    before = _answers([[1, 2], [3, 4, 5, 6]], [-2.0, -4.0])
    m = {**summary(before, "before")}
    assert m["gen/ref_logprob_per_token_before"] == pytest.approx(-1.0)
    for after_lp, flagged in ((-1.25, False), (-1.4, True), (-0.5, False)):
        after = _answers([[7, 8, 9, 10], [11, 12]], [after_lp * 4, after_lp * 2])
        metrics = {**m, **summary(after, "after")}
        assert metrics["gen/ref_logprob_per_token_after"] == pytest.approx(after_lp)
        out, warning = fluency(metrics, 0.3)
        assert out["gen/fluency_drop"] == pytest.approx(-1.0 - after_lp)
        assert out["gen/fluency_flag"] is flagged and (warning is not None) is flagged
    assert fluency({"gen/ref_logprob_per_token_before": -1.0}, 0.3) == ({}, None), "no after number, no verdict"


def test_reference_scores_both_answer_sets_and_flags_garbled_answers(tiny, tmp_path, caplog):
    # The real eval on a real (tiny) model: the reference is confident (its output layer scaled up); a "trained"
    # policy that prefers what the reference finds least likely writes answers the reference finds far less likely.
    # The same model as policy gives the same answers: no drop, no flag.
    import torch

    from dpo_sweeps.eval import GenerationEval
    from dpo_sweeps.eval.generation import _sequence_logprob
    from dpo_sweeps.eval.samples import prompt_ids

    cfg, model, tokenizer, rows = tiny
    reference, garbled = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        reference.get_output_embeddings().weight.mul_(20.0)
        garbled.get_output_embeddings().weight.mul_(-20.0)
    gen = GenerationEval(cfg, tokenizer, rows, tmp_path)
    gen.run_before(reference, reference)
    same = gen.run_after(reference, reference)
    assert same["gen/fluency_drop"] == pytest.approx(0.0, abs=1e-4) and same["gen/fluency_flag"] is False
    # The "before" number is the reference's log-prob of its own answers, per token, recomputed here.
    saved = read_json(tmp_path / "gen_before.json")
    with torch.no_grad():
        recomputed = [
            _sequence_logprob(reference, prompt_ids(cfg, tokenizer, r["prompt"])[0].tolist(), ids) / len(ids)
            for r, ids in zip(rows, saved["completion_ids"], strict=False)
        ]
    assert same["gen/ref_logprob_per_token_before"] == pytest.approx(sum(recomputed) / len(recomputed), abs=1e-3)
    with caplog.at_level(logging.WARNING, logger="dpo_sweeps.eval.generation"):
        bad = gen.run_after(garbled, reference)
    assert bad["gen/ref_logprob_per_token_after"] < bad["gen/ref_logprob_per_token_before"] - 0.3, bad
    assert bad["gen/fluency_flag"] is True and bad["gen/max_fluency_drop"] == 0.3
    assert any("Fluency flag" in r.getMessage() for r in caplog.records)


def test_gen_prompts_zero_turns_the_eval_off():
    from dpo_sweeps.eval import n_prompts

    # training=smoke asks for 2 samples; the switch still wins (samples.jsonl comes from the eval's answers).
    assert n_prompts(compose_config(["model=tiny_llama", *TINY, "eval.gen_prompts=0"])) == 0
    assert n_prompts(compose_config(["model=tiny_llama", *TINY, "eval.gen_prompts=1"])) == 2


@pytest.mark.slow
def test_gen_prompts_zero_generates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["model=tiny_llama", *TINY, "training.max_steps=2", "eval.gen_prompts=0",
                    "training.eval_before_training=false", f"hydra.run.dir={run_dir}"])  # fmt: skip
    m = read_json(run_dir / "metrics.json")
    assert not [k for k in m if k.startswith("gen/")], m
    assert not (run_dir / "gen_before.json").exists() and not (run_dir / run_folder.SAMPLES_FILE).exists()
    assert "Generation eval" not in proc.stdout + proc.stderr
    assert "held-out prompts" not in (run_dir / "README.md").read_text()
