"""The generation eval's numbers from its answers: means with their standard errors over prompts, the log-ratio to the
reference named for what it is (a KL estimate only in the KL regime), and fluency under the reference.

Pure functions over `generation.Answers` (duck-typed: texts, completion_ids, finished, scores, log_ratios,
ref_logprobs); standard library only, so they can be checked with known numbers, without a model.

    gen/<x>_se                     standard error of the mean over prompts (sample sd / sqrt(n)); absent below 2 prompts
    gen/kl_to_ref                  mean of log pi(y|x) - log pi_ref(y|x) over the policy's answers, in the KL regime:
                                   answers sampled at temperature 1 with no logits processor, i.e. from pi itself
    gen/logratio_to_ref            the same mean outside that regime (greedy, another temperature, a processor on):
                                   E_q[log pi - log pi_ref] for a q that is not pi is no KL, so it is not called one
    gen/ref_logprob_per_token_before   mean over the reference's own answers of log pi_ref(y|x) / |y| (nats per token)
    gen/ref_logprob_per_token_after    the same for the trained policy's answers, still scored by the reference
    gen/fluency_drop               before - after: how much less likely, per token, the reference finds the trained
                                   answers than its own; gen/fluency_flag when it exceeds eval.max_fluency_drop
"""

from __future__ import annotations

import math
from typing import Any

KL_KEY = "gen/kl_to_ref"
LOGRATIO_KEY = "gen/logratio_to_ref"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def standard_error(values: list[float]) -> float | None:
    """Sample standard deviation / sqrt(n): how far the mean over these prompts may sit from the mean over all
    prompts like them. None below two values."""
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def with_se(key: str, values: list[float]) -> dict[str, float]:
    """{key: mean, key_se: standard error} (no _se below two values)."""
    out = {key: mean(values)}
    se = standard_error(values)
    if se is not None:
        out[f"{key}_se"] = se
    return out


def ratio_key(kl_regime: bool) -> str:
    """What the mean log-ratio to the reference is called: a KL only when the answers were sampled from pi itself."""
    return KL_KEY if kl_regime else LOGRATIO_KEY


def regime_note(temperature: float, sampled_from_model: bool) -> str | None:
    """Why a run is not in the KL regime (None when it is)."""
    if temperature == 0:
        return "answers decoded greedily (eval.temperature=0): gen/logratio_to_ref is a log-ratio, not a KL estimate"
    if temperature != 1.0:
        return (
            f"answers sampled at eval.temperature={temperature}, not from the model's own distribution: "
            "gen/logratio_to_ref is a log-ratio, not a KL estimate (eval.temperature=1 measures the KL)"
        )
    if not sampled_from_model:
        return (
            "a logits processor changed the sampling distribution (the processed and raw log-probs of the sampled "
            "tokens differ): gen/logratio_to_ref is a log-ratio, not a KL estimate"
        )
    return None


def per_token(ref_logprobs: list[float], completion_ids: list[list[int]]) -> list[float]:
    """log pi_ref(y|x) / |y| for each non-empty answer (tokens up to and including EOS)."""
    return [lp / len(ids) for lp, ids in zip(ref_logprobs, completion_ids, strict=True) if ids]


def summary(answers, when: str) -> dict[str, Any]:
    """The metrics of one set of answers (`when` = before/after) that need no other set, each mean with its _se."""
    m: dict[str, Any] = {
        f"gen/finished_{when}": mean([float(f) for f in answers.finished]),
        f"gen/mean_tokens{'_before' if when == 'before' else ''}": mean(
            [float(len(c)) for c in answers.completion_ids]
        ),
    }
    if answers.scores is not None:
        m.update(with_se(f"gen/score_{when}", answers.scores))
    if answers.ref_logprobs:
        m.update(with_se(f"gen/ref_logprob_per_token_{when}", per_token(answers.ref_logprobs, answers.completion_ids)))
    return m


def log_ratio(before, after, kl_regime: bool) -> dict[str, float]:
    """The mean log-ratio to the reference after (with _se) and before (~0: the reference is the untrained policy),
    under the name the regime allows."""
    key = ratio_key(kl_regime)
    m: dict[str, float] = {}
    if after.log_ratios is not None:
        m.update(with_se(key, after.log_ratios))
    if before.log_ratios is not None:
        m[f"{key}_before"] = mean(before.log_ratios)
    return m


def win_rate(before_scores: list[float], after_scores: list[float]) -> dict[str, float]:
    """Share of prompts where the trained answer scores higher than the reference's (ties count half), with _se."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after_scores, before_scores, strict=True)]
    return with_se("gen/win_rate_vs_ref", wins)


def fluency(metrics: dict[str, Any], max_drop: float) -> tuple[dict[str, Any], str | None]:
    """gen/fluency_drop and gen/fluency_flag from the two ref_logprob_per_token means in `metrics`, and the warning to
    print when the flag is up (None otherwise, and nothing at all without both means)."""
    before = metrics.get("gen/ref_logprob_per_token_before")
    after = metrics.get("gen/ref_logprob_per_token_after")
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return {}, None
    drop = before - after
    out = {"gen/fluency_drop": drop, "gen/max_fluency_drop": max_drop, "gen/fluency_flag": drop > max_drop}
    warning = None
    if out["gen/fluency_flag"]:
        warning = (
            f"Fluency flag: under the reference model the trained answers are {drop:.3f} nats per token less likely "
            f"than the reference's own ({after:.3f} vs {before:.3f}), more than eval.max_fluency_drop={max_drop}. "
            "A rule scorer cannot see this: read samples.jsonl before trusting gen/score_after (a lower learning "
            "rate, fewer steps, a higher beta or an SFT term keep answers fluent)."
        )
    return out, warning
