"""The generation eval (dpo_sweeps/eval/): KL to the reference, scores and win rate, finished answers, resume."""

from __future__ import annotations

import json
import math

import pytest

from dpo_sweeps.config.validation import find_problems
from dpo_sweeps.eval.scorers.rules import contains, starts_with, toy_helpful
from dpo_sweeps.runs import folder as run_folder
from tests.helpers import TINY, compose_config, read_json, run_cli


def _samples(run_dir):
    return [json.loads(line) for line in (run_dir / run_folder.SAMPLES_FILE).read_text().splitlines()]


def test_lora_run_kl_is_zero_before_training_and_positive_after(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(["model=tiny_llama", *TINY, "eval.gen_prompts=6", f"hydra.run.dir={run_dir}"])
    m = read_json(run_dir / "metrics.json")
    # Before training the adapter is a no-op: the policy is the reference, log-ratios cancel exactly.
    assert abs(m["gen/kl_to_ref_before"]) < 1e-3, m["gen/kl_to_ref_before"]
    assert m["gen/kl_to_ref"] > 0.01, m["gen/kl_to_ref"]
    assert m["gen/prompts"] == 6 and m["gen/max_new_tokens"] == 16
    for key in ("gen/finished_before", "gen/finished_after", "gen/score_before", "gen/score_after"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert 1.0 <= m["gen/mean_tokens"] <= 16
    assert m["gen/scorer"] == "rule:toy_helpful" and m["gen/seconds"] > 0
    # The same numbers reach the history and the model card.
    last = run_folder.read_history(run_dir)[-1]
    assert last["gen/kl_to_ref"] == m["gen/kl_to_ref"] and last["step"] == m["global_step"]
    card = (run_dir / "README.md").read_text()
    assert (
        "| KL to the reference (nats) |" in card and f"{m['gen/kl_to_ref']:.4f} ± {m['gen/kl_to_ref_se']:.4f}" in card
    )
    # Sampled at temperature 1 with every processor off: a KL estimate, with its standard error over the 6 prompts.
    assert m["gen/kl_regime"] is True and "gen/logratio_to_ref" not in m
    before = read_json(run_dir / "gen_before.json")
    scores = before["scores"]
    mean = sum(scores) / 6
    assert m["gen/score_before_se"] == pytest.approx((sum((s - mean) ** 2 for s in scores) / 5 / 6) ** 0.5)
    # Fluency: the reference's own answers, per token, under the reference (LoRA: the adapter disabled).
    per_token = [lp / len(ids) for lp, ids in zip(before["ref_logprobs"], before["completion_ids"], strict=True)]
    assert m["gen/ref_logprob_per_token_before"] == pytest.approx(sum(per_token) / 6)
    assert m["gen/fluency_drop"] == pytest.approx(
        m["gen/ref_logprob_per_token_before"] - m["gen/ref_logprob_per_token_after"]
    )
    assert m["gen/fluency_flag"] is (m["gen/fluency_drop"] > 0.3)
    # samples.jsonl: the first training.sample_completions (2 in training=smoke) answers, before and after.
    samples = _samples(run_dir)
    before = read_json(run_dir / "gen_before.json")
    assert [s["reference"] for s in samples] == before["texts"][:2]
    assert all({"policy_score", "reference_score", "policy_finished"} <= set(s) for s in samples)


def test_full_dpo_kl_uses_the_loaded_reference_or_says_why_it_is_missing(tmp_path):
    loaded = tmp_path / "loaded"
    run_cli(["model=tiny_qwen", *TINY, "lora=none", "ref_cache.enabled=false", f"hydra.run.dir={loaded}"])
    m = read_json(loaded / "metrics.json")
    assert abs(m["gen/kl_to_ref_before"]) < 1e-3 and m["gen/kl_to_ref"] > 0.01, m

    cached = tmp_path / "cached"
    run_cli(["model=tiny_qwen", *TINY, "lora=none", f"ref_cache.dir={tmp_path / 'rc'}", f"hydra.run.dir={cached}"])
    m = read_json(cached / "metrics.json")
    # Full DPO with the reference cache holds no reference model: no number, a reason.
    assert "gen/kl_to_ref" not in m and "gen/kl_to_ref_before" not in m
    assert "reference cache" in m["gen/kl_to_ref_note"]
    # Nor a fluency measure: it needs the reference to score the answers.
    assert "gen/ref_logprob_per_token_after" not in m and "gen/fluency_flag" not in m
    assert "not measured" in m["gen/fluency_note"]
    assert "gen/score_after" in m and "gen/win_rate_vs_ref" in m


def test_reward_model_scorer_scores_and_win_rate_match_a_recomputation(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dpo_sweeps.models.tiny import ensure_reward_model

    rm = ensure_reward_model()
    run_dir = tmp_path / "run"
    run_cli(
        ["model=tiny_llama", *TINY, "eval.scorer=reward_model", f"eval.reward_model={rm}", "eval.gen_prompts=4",
         "training.sample_completions=4", f"hydra.run.dir={run_dir}"]
    )  # fmt: skip
    m = read_json(run_dir / "metrics.json")
    samples = _samples(run_dir)
    assert m["gen/scorer"] == f"reward_model:{rm}" and len(samples) == 4

    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()

    def score(prompt: str, completion: str) -> float:
        messages = [
            {"role": "user", "content": prompt.removeprefix("user: ")},
            {"role": "assistant", "content": completion},
        ]
        enc = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), return_tensors="pt",
                        add_special_tokens=False)  # fmt: skip
        with torch.no_grad():
            return float(model(**enc).logits[0, 0])

    ref = [score(s["prompt"], s["reference"]) for s in samples]
    pol = [score(s["prompt"], s["policy"]) for s in samples]
    assert [s["reference_score"] for s in samples] == pytest.approx(ref, abs=1e-4)
    assert [s["policy_score"] for s in samples] == pytest.approx(pol, abs=1e-4)
    assert m["gen/score_before"] == pytest.approx(sum(ref) / 4, abs=1e-4)
    assert m["gen/score_after"] == pytest.approx(sum(pol) / 4, abs=1e-4)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(pol, ref, strict=True)]
    assert m["gen/win_rate_vs_ref"] == pytest.approx(sum(wins) / 4)


def test_resumed_run_keeps_the_before_answers(tmp_path, tiny_model_paths):
    # A requeued job finds gen_before.json and reuses it: the "before" numbers are not lost or re-drawn.
    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.eval import GenerationEval
    from dpo_sweeps.models.loading import load_models

    cfg = compose_config(["model=tiny_llama", *TINY, "eval.gen_prompts=3"])
    models = load_models(cfg)
    data = load_preference_data(cfg, models.tokenizer)
    first = GenerationEval(cfg, models.tokenizer, data.eval, tmp_path)
    metrics = first.run_before(models.policy)
    saved = read_json(tmp_path / "gen_before.json")
    saved["metrics"]["gen/score_before"] = 0.123  # a marker the resumed run must carry over, not recompute
    run_folder.write_json_atomic(tmp_path / "gen_before.json", saved)
    resumed = GenerationEval(cfg, models.tokenizer, data.eval, tmp_path)
    assert resumed.run_before(models.policy)["gen/score_before"] == 0.123
    assert resumed.before.texts == first.before.texts and set(metrics) == set(resumed.before.metrics)


def test_generation_leaves_the_training_rng_alone(tiny_model_paths):
    import torch

    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.eval.generation import generate
    from dpo_sweeps.models.loading import load_models

    cfg = compose_config(["model=tiny_qwen", *TINY])
    models = load_models(cfg)
    prompts = [r["prompt"] for r in load_preference_data(cfg, models.tokenizer).eval.select(range(3))]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = generate(cfg, models.policy, models.tokenizer, prompts)
    assert torch.equal(torch.rand(3), expected), "the eval must not move the global RNG (data order, dropout)"
    b = generate(cfg, models.policy, models.tokenizer, prompts)
    assert a.texts == b.texts, "same seed, same answers"
    assert all(len(ids) <= cfg.training.max_new_tokens for ids in a.completion_ids)


def test_generation_restores_every_cuda_generator_it_seeds(tiny_model_paths, monkeypatch):
    # No GPU here, so pretend two CUDA devices and watch what generation forks and seeds: every CUDA generator it
    # seeds must be inside a fork that restores all of them (else on a GPU every seed of a sweep trains on the same
    # CUDA stream after the "before" eval). The one place a spy stands in: there is no CUDA generator to read back.
    import contextlib

    import torch

    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.eval.generation import generate
    from dpo_sweeps.models.loading import load_models

    cfg = compose_config(["model=tiny_qwen", *TINY])
    models = load_models(cfg)
    prompts = [r["prompt"] for r in load_preference_data(cfg, models.tokenizer).eval.select(range(2))]
    real_fork = torch.random.fork_rng
    forks: list[tuple[list[int], str]] = []
    open_forks: list[list[int]] = []
    seeded: list[tuple[str, set[int]]] = []  # (call, CUDA devices restored by the forks open at the time)

    @contextlib.contextmanager
    def fork_spy(devices=None, enabled=True, device_type="cuda", **kwargs):
        forks.append((list(devices or []), device_type))
        open_forks.append(list(devices or []))
        try:
            with real_fork(devices=[], enabled=enabled):  # the CPU generator is real and restored for real
                yield
        finally:
            open_forks.pop()

    def seed_spy(name):
        return lambda *args, **kwargs: seeded.append((name, {d for f in open_forks for d in f}))

    torch.manual_seed(11)
    cpu_state = torch.get_rng_state()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.random, "fork_rng", fork_spy)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seed_spy("manual_seed_all"))
    monkeypatch.setattr(torch.cuda, "manual_seed", seed_spy("manual_seed"))
    generate(cfg, models.policy, models.tokenizer, prompts)
    assert forks and all(f == ([0, 1], "cuda") for f in forks), f"fork_rng must cover every CUDA device: {forks}"
    assert seeded, "sampling on a GPU draws from the CUDA generator: it must be seeded for reproducible answers"
    assert all(restored == {0, 1} for _, restored in seeded), f"a CUDA generator seeded outside a full fork: {seeded}"
    assert torch.equal(torch.get_rng_state(), cpu_state), "the CPU generator must come back as it was"


def test_rules():
    assert starts_with("q", "  great question! The sun is a star.", "Great question!")
    assert not starts_with("q", "The sun is a star. Great question!", "Great question!")
    assert contains("q", "It is **bold**", "**BOLD**")
    assert toy_helpful("q", "Sure, here you go", None) and not toy_helpful("q", "Go away.", None)
    assert not toy_helpful("q", "I measure it", None), "words, not substrings"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.scorer=reward_model"], "eval.scorer=reward_model needs eval.reward_model="),
        (["eval.rule=bogus"], "eval.rule=bogus: must be one of starts_with, ends_with, contains, toy_helpful"),
        (["eval.rule=starts_with"], "eval.rule=starts_with needs eval.rule_arg="),
        (["eval.scorer=rule", "dataset=local", "dataset.path=x.jsonl"], "eval.scorer=rule with dataset=local"),
        (["eval.temperature=-1"], "eval.temperature=-1"),
        (["model=smollm2_135m", "model.gguf=no_such_pkg:m.gguf"], "needs the Python package(s) no_such_pkg"),
    ],
)
def test_bad_eval_settings_are_named(overrides, expected):
    problems = find_problems(compose_config(["model=tiny_llama", *TINY, *overrides]))
    assert any(expected in p for p in problems), problems


def test_a_dataset_without_a_rule_gets_no_score_and_says_why(tmp_path):
    # A dataset without a rule and no reward model: answers are measured (KL, finished) but not scored, and the
    # metrics say why instead of reporting a score that was never computed.
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Say {i}", "chosen": f"Yes {i}", "rejected": f"No {i}"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    run_cli(["model=tiny_llama", "dataset=local", f"dataset.path={path}", "training=smoke", "logger=none",
             "training.max_steps=4", f"hydra.run.dir={run_dir}"])  # fmt: skip
    m = read_json(run_dir / "metrics.json")
    assert "gen/score_after" not in m and "gen/win_rate_vs_ref" not in m
    assert "no bundled rule for dataset=local" in m["gen/score_note"]
    assert math.isfinite(m["gen/kl_to_ref"])
