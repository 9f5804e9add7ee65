"""Figures that could only draw noise are left out with why (issue 26; dpo_sweeps/report/flat.py): the tiny demo's
reward-KL frontier, where the scorer gave every answer 0 and every win rate is 0.5; a heatmap of one colour; a
seed-mean panel of one flat line. The report's text (summary.md, the console) says why; plots that can say
something are still drawn."""

from __future__ import annotations

import json

from dpo_sweeps.report import sweep_report
from dpo_sweeps.report.sweep_report import write_sweep_report
from dpo_sweeps.runs import folder as run_folder
from tests.test_report import final_metrics, make_point

DONE = run_folder.COMPLETED


def _scored_nothing(kl: float) -> dict:
    """The generation eval of the tiny demo: every answer scored 0 before and after, every comparison a tie."""
    return {"gen/kl_to_ref": kl, "gen/kl_to_ref_se": 0.1, "gen/scorer": "rule:toy_helpful",
            "gen/score_before": 0.0, "gen/score_before_se": 0.0, "gen/score_after": 0.0, "gen/score_after_se": 0.0,
            "gen/win_rate_vs_ref": 0.5, "gen/win_rate_vs_ref_se": 0.0}  # fmt: skip


def _manifest(sweep):
    manifest = json.loads((sweep / "plots" / "plots.json").read_text())
    return {f["file"]: f for f in manifest["figures"]}, {s["file"]: s for s in manifest["skipped"]}


def test_a_frontier_whose_scorer_scored_nothing_is_not_drawn_and_the_report_says_why(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for beta, kl in (("0.05", 0.9), ("0.1", 0.8), ("0.3", 0.85)):
        make_point(sweep, [f"beta={beta}"], DONE, final_metrics(beta, "r16", **_scored_nothing(kl)))
    report = write_sweep_report(sweep)
    figures, skipped = _manifest(sweep)
    assert "reward_kl_frontier.png" not in figures and not (sweep / "plots" / "reward_kl_frontier.png").exists()
    why = skipped["reward_kl_frontier.png"]["reason"]
    assert "the scorer (rule:toy_helpful) gave every answer the same score (0)" in why and "at all 3 point(s)" in why
    assert "win rate (0.5: every comparison a tie)" in why
    assert "metric_vs_beta.png" in figures, "the figures that can say something are still drawn"
    md = (sweep / "summary.md").read_text()
    assert f"- reward_kl_frontier.png not drawn: {why}" in md
    assert [s["file"] for s in report.not_drawn] == ["reward_kl_frontier.png"]
    assert sweep_report.main([str(sweep)]) == 0
    assert f"reward_kl_frontier.png not drawn: {why}" in capsys.readouterr().out


def test_scores_that_differ_anywhere_are_drawn(tmp_path):
    """One answer scored otherwise (a spread over the prompts) is something to show, even with equal means."""
    sweep = tmp_path / "sweep"
    for beta, kl in (("0.05", 0.9), ("0.1", 0.8)):
        make_point(sweep, [f"beta={beta}"], DONE, final_metrics(beta, "r16", **_scored_nothing(kl)))
    spread = {**_scored_nothing(0.7), "gen/score_after_se": 0.05}
    make_point(sweep, ["beta=0.3"], DONE, final_metrics("0.3", "r16", **spread))
    write_sweep_report(sweep)
    figures, skipped = _manifest(sweep)
    assert "reward_kl_frontier.png" in figures and "reward_kl_frontier.png" not in skipped
    assert "not drawn" not in (sweep / "summary.md").read_text()


def test_a_heatmap_of_one_value_is_not_drawn(tmp_path):
    sweep = tmp_path / "sweep"
    for beta in ("0.1", "0.3"):
        for lora in ("none", "r16"):
            make_point(sweep, [f"beta={beta}", f"lora={lora}"], DONE,
                       final_metrics(beta, lora, **{"eval_rewards/accuracies": 1.0}))  # fmt: skip
    write_sweep_report(sweep)
    figures, skipped = _manifest(sweep)
    why = skipped["heatmap_beta_lora.png"]["reason"]
    assert "every one of the 4 cells has eval_rewards/accuracies = 1" in why
    assert "heatmap_beta_lora.png" not in figures
    # Another objective that differs between the cells: drawn.
    write_sweep_report(sweep, metric="eval_loss", mode="min")
    figures, skipped = _manifest(sweep)
    assert "heatmap_beta_lora.png" in figures and "heatmap_beta_lora.png" not in skipped


def test_seed_means_leave_out_a_metric_that_is_the_same_everywhere(tmp_path):
    sweep = tmp_path / "sweep"
    for beta in ("0.1", "0.3"):
        for seed in ("1", "2"):
            make_point(sweep, [f"beta={beta}", f"seed={seed}"], DONE,
                       final_metrics(beta, "r16", **{"eval_rewards/accuracies": 1.0}))  # fmt: skip
    write_sweep_report(sweep)
    figures, _ = _manifest(sweep)
    means = figures["metrics_by_beta_mean.png"]
    assert "eval_rewards/accuracies" not in [p["y"] for p in means["panels"]]
    assert "eval_rewards/accuracies = 1" in means["not_drawn"]["eval_rewards/accuracies"]
    assert "eval_rewards/margins" in [p["y"] for p in means["panels"]]


def test_a_search_under_a_kl_budget_keeps_its_frontier_and_says_its_scores_say_nothing(tmp_path):
    """The budget line and the points over it say something even when the scores do not: drawn, with the reason."""
    sweep = tmp_path / "sweep"
    for beta, kl in (("0.05", 0.9), ("0.1", 0.5), ("0.3", 0.2)):
        make_point(sweep, [f"beta={beta}"], DONE, final_metrics(beta, "r16", **_scored_nothing(kl)))
    (sweep / "optimization_results.yaml").write_text("constraints:\n- {metric: gen/kl_to_ref, at_most: 0.7}\n")
    write_sweep_report(sweep)
    figures, skipped = _manifest(sweep)
    frontier = figures["reward_kl_frontier.png"]
    assert frontier["limits"] == {"gen/kl_to_ref": 0.7} and frontier["infeasible"] == ["beta=0.05"]
    assert "gave every answer the same score (0)" in frontier["scores_say_nothing"]
    assert "reward_kl_frontier.png" not in skipped
