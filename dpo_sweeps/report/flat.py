"""Figures that could only draw noise: when every value a figure would show is the same (a scorer that scored
nothing, a metric saturated at its limit), the figure is not drawn and the report says why instead.

The tiny demo is the usual case: its 16-token answers never say what the toy rule looks for, so every answer of
every point scores 0 before and after training, each win rate is 0.5 (every comparison a tie), and a reward-KL
frontier would show dots on one line that look like a result.
"""

from __future__ import annotations

from dpo_sweeps.report.points import fmt
from dpo_sweeps.runs.reading import RunRecord, finite

SCORE_KEYS = ("gen/score_before", "gen/score_after")
WIN_RATE_KEY = "gen/win_rate_vs_ref"
# Set on a skipped figure's plots.json entry when it was left out for saying nothing (summary.md lists those).
NOTHING_TO_SHOW = "nothing_to_show"
# Set on a drawn frontier whose scores say nothing but whose KL budget does (a search under limits), with the reason.
SCORES_SAY_NOTHING = "scores_say_nothing"


def _spread(p: RunRecord, key: str) -> float | None:
    return p.value(f"{key}_se")


def scorer_reason(points: list[RunRecord]) -> str | None:
    """Why the generation score and the win rate cannot tell these points apart, or None when they can: every answer
    scored (before and after training, at every point) got one and the same score."""
    scored = [p for p in points if any(finite(p.value(k)) for k in SCORE_KEYS)]
    values = [v for p in scored for k in SCORE_KEYS if finite(v := p.value(k))]
    if not values or max(values) != min(values):
        return None
    # A mean can repeat by chance; answers that all score alike leave no spread over the prompts either.
    if any(finite(se := _spread(p, k)) and se != 0 for p in scored for k in SCORE_KEYS):
        return None
    scorers = sorted({str(p.metrics["gen/scorer"]) for p in scored if p.metrics.get("gen/scorer")})
    by = f" ({', '.join(scorers)})" if scorers else ""
    return (
        f"the scorer{by} gave every answer the same score ({fmt(values[0])}) before and after training at all "
        f"{len(scored)} point(s), so neither the score nor the win rate (0.5: every comparison a tie) can tell the "
        "points apart. Typical of a small model whose short answers never show what the scorer looks for; a scorer "
        "that grades these answers (eval.scorer, eval.rule, eval.reward_model) or more training gives this figure "
        "something to show."
    )


def same_value_reason(metric: str, values: list[float], points: list[RunRecord], what: str) -> str | None:
    """Why a figure of `metric` over `what` (cells, configurations) would show one colour or one flat line: all
    `values` equal (two or more of them). A generation score says it through `scorer_reason`."""
    values = [v for v in values if finite(v)]
    if len(values) < 2 or max(values) != min(values):
        return None
    if metric in (*SCORE_KEYS, WIN_RATE_KEY):
        reason = scorer_reason(points)
        if reason:
            return reason
    return (
        f"every one of the {len(values)} {what} has {metric} = {fmt(values[0])} (a metric at its limit, or one the "
        "runs do not move): there is no better or worse to show. The table lists the points."
    )


def skip(entry: dict, reason: str) -> dict:
    """Mark a plots.json entry as not drawn because it would say nothing."""
    entry["skipped"] = reason
    entry[NOTHING_TO_SHOW] = True
    return entry
