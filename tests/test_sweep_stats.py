"""The sweep report across points: the reward-KL frontier and seeds aggregated (dpo_sweeps/report/seeds.py)."""

from __future__ import annotations

import csv
import json

import pytest

from dpo_sweeps.report.seeds import mean_ci95
from dpo_sweeps.report.sweep_report import write_sweep_report
from dpo_sweeps.runs import folder as run_folder
from tests.helpers import TINY, run_cli, run_dirs


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mean_ci95():
    assert mean_ci95([]) == (None, None)
    assert mean_ci95([2.0]) == (2.0, None)
    mean, ci = mean_ci95([1.0, 3.0])
    # sd = sqrt(2), sem = 1, t(1 df) = 12.706
    assert mean == 2.0 and ci == pytest.approx(12.706)
    mean, ci = mean_ci95([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and ci == pytest.approx(4.303 / 3**0.5)


@pytest.mark.slow
def test_beta_by_seed_sweep_aggregates_seeds_and_draws_the_frontier(tmp_path):
    sweep = tmp_path / "sweep"
    # A rule the tiny model's random answers meet now and then (the toy set's own rule scores them all 0, and a frontier
    # of one score is not drawn: tests/test_report_nothing_to_show.py).
    scorer = ["eval.scorer=rule", "eval.rule=contains", "eval.rule_arg=in"]
    run_cli(
        ["model=tiny_qwen", *TINY, "training.max_steps=8", "eval.gen_prompts=4", *scorer, "beta=0.1,0.5", "seed=1,2",
         f"hydra.sweep.dir={sweep}", "-m"]
    )  # fmt: skip
    assert len(run_dirs(sweep)) == 4
    points = {(r["beta"], r["seed"]): r for r in _csv(sweep / "summary.csv")}
    assert len(points) == 4 and all(r["gen/kl_to_ref"] for r in points.values()), "frontier data in summary.csv"

    rows = _csv(sweep / "summary_by_config.csv")
    assert [(r["config"], r["n"], r["seeds"]) for r in rows] == [("beta=0.1", "2", "1 2"), ("beta=0.5", "2", "1 2")]
    for row in rows:
        for metric in ("eval_rewards/accuracies", "gen/kl_to_ref", "gen/score_after", "gen/finished_after"):
            a, b = (float(points[(row["beta"], seed)][metric]) for seed in ("1", "2"))
            assert float(row[f"{metric}_mean"]) == pytest.approx((a + b) / 2)
            # Two seeds: the 95% half-width is t(1) * |a - b| / 2.
            assert float(row[f"{metric}_ci95"]) == pytest.approx(12.706 * abs(a - b) / 2)

    md = (sweep / "summary.md").read_text()
    assert "## Seeds aggregated" in md and "| beta=0.5 | 2 | 1 2 |" in md

    manifest = json.loads((sweep / "plots" / "plots.json").read_text())
    figures = {f["file"]: f for f in manifest["figures"]}
    assert (sweep / "plots" / "reward_kl_frontier.png").stat().st_size > 1000
    score_panel = figures["reward_kl_frontier.png"]["panels"][0]
    assert score_panel["y"] == "gen/score_after" and len(score_panel["points"]) == 4
    assert [c["config"] for c in score_panel["configs"]] == ["beta=0.1", "beta=0.5"]
    assert all(c["n"] == 2 and c["x_ci95"] is not None for c in score_panel["configs"])
    means = figures["metrics_by_beta_mean.png"]
    assert means["kind"] == "mean_vs_param" and means["panels"][0]["series"][0]["n_points"] == 2

    # The same sweep without seed variation: no by-config file (a stale one is removed).
    for point in run_dirs(sweep):
        if "seed=2" in point.name:
            (point / "status.json").rename(point / "status.moved.json")
    from dpo_sweeps.report.sweep_report import write_sweep_report

    write_sweep_report(sweep)
    assert not (sweep / "summary_by_config.csv").exists()
    assert "## Seeds aggregated" not in (sweep / "summary.md").read_text()


def _gen(kl_key: str, kl: float, score: float, **extra) -> dict:
    """The generation eval's part of a point's metrics.json (dpo_sweeps/eval/measures.py's keys)."""
    return {kl_key: kl, f"{kl_key}_se": kl / 10, "gen/score_after": score, "gen/score_after_se": 0.05,
            "gen/win_rate_vs_ref": score, "gen/win_rate_vs_ref_se": 0.07, **extra}  # fmt: skip


def test_each_metric_has_its_own_count_and_left_out_seeds_are_named(tmp_path):
    from tests.test_report import final_metrics, make_point

    sweep = tmp_path / "sweep"
    done, failed = run_folder.COMPLETED, run_folder.FAILED
    make_point(sweep, ["beta=0.1", "seed=1"], done, final_metrics("0.1", "r16", **_gen("gen/kl_to_ref", 2.0, 0.5)))
    make_point(sweep, ["beta=0.1", "seed=2"], done, final_metrics("0.1", "r16"))  # ran with eval.gen_prompts=0
    make_point(sweep, ["beta=0.1", "seed=3"], failed, error="RuntimeError: boom")
    make_point(sweep, ["beta=0.5", "seed=1"], done, final_metrics("0.3", "r16", **_gen("gen/kl_to_ref", 1.0, 0.4)))
    make_point(sweep, ["beta=0.5", "seed=2"], done, final_metrics("0.3", "r16", **_gen("gen/kl_to_ref", 3.0, 0.6)))
    write_sweep_report(sweep)
    rows = {r["config"]: r for r in _csv(sweep / "summary_by_config.csv")}
    low, high = rows["beta=0.1"], rows["beta=0.5"]
    assert (low["n"], low["eval_rewards/accuracies_n"], low["gen/kl_to_ref_n"]) == ("2", "2", "1")
    assert float(low["gen/kl_to_ref_mean"]) == 2.0 and low["gen/kl_to_ref_ci95"] == ""
    assert (low["seeds_failed"], low["seeds_unfinished"], low["seeds_missing"]) == ("3", "", "")
    assert (high["n"], high["gen/kl_to_ref_n"], high["seeds_missing"], high["seeds_failed"]) == ("2", "2", "3", "")
    md = (sweep / "summary.md").read_text()
    low_line = next(line for line in md.splitlines() if line.startswith("| beta=0.1 |"))
    high_line = next(line for line in md.splitlines() if line.startswith("| beta=0.5 |"))
    assert "seed 3 failed" in low_line and "2 (n=1)" in low_line, low_line
    assert "seed 3 missing" in high_line and "(n=" not in high_line, high_line


def _frontier(sweep):
    manifest = json.loads((sweep / "plots" / "plots.json").read_text())
    return next(f for f in manifest["figures"] if f["file"] == "reward_kl_frontier.png")


def test_single_seed_frontier_draws_standard_errors_over_prompts(tmp_path):
    from tests.test_report import final_metrics, make_point

    sweep = tmp_path / "sweep"
    for beta, kl, score in (("0.1", 4.0, 0.8), ("0.5", 2.0, 0.6)):
        make_point(sweep, [f"beta={beta}"], run_folder.COMPLETED,
                   final_metrics("0.1", "r16", **_gen("gen/kl_to_ref", kl, score)))  # fmt: skip
    write_sweep_report(sweep)
    frontier = _frontier(sweep)
    assert frontier["x"] == "gen/kl_to_ref" and frontier["x_label"].startswith("KL to reference")
    score, win = frontier["panels"]
    assert [(p["x_se"], p["y_se"]) for p in score["points"]] == [(0.4, 0.05), (0.2, 0.05)]
    assert [p["y_se"] for p in win["points"]] == [0.07, 0.07]
    assert (sweep / "plots" / "reward_kl_frontier.png").stat().st_size > 1000


def test_a_log_ratio_is_drawn_and_tabled_as_one_never_as_a_kl(tmp_path):
    # eval.temperature=0.7 (or a processor): the points have gen/logratio_to_ref, the frontier's axis says so.
    from tests.test_report import final_metrics, make_point

    sweep = tmp_path / "sweep"
    flagged = {"gen/fluency_flag": True, "gen/fluency_drop": 0.69, "gen/max_fluency_drop": 0.3}
    for beta, kl, extra in (("0.1", 26.0, flagged), ("0.5", 9.0, {"gen/fluency_flag": False})):
        make_point(sweep, [f"beta={beta}"], run_folder.COMPLETED,
                   final_metrics("0.1", "r16", **_gen("gen/logratio_to_ref", kl, 1.0, **extra)))  # fmt: skip
    write_sweep_report(sweep)
    frontier = _frontier(sweep)
    assert frontier["x"] == "gen/logratio_to_ref" and "not a KL" in frontier["x_label"]
    assert [p["x"] for p in frontier["panels"][0]["points"]] == [26.0, 9.0]
    rows = {r["point"]: r for r in _csv(sweep / "summary.csv")}
    assert rows["beta=0.1"]["gen/logratio_to_ref"] == "26.0" and rows["beta=0.1"]["gen/kl_to_ref"] == ""
    assert "fluency flag: answers 0.69 nats/token less likely" in rows["beta=0.1"]["notes"]
    assert "fluency flag" not in rows["beta=0.5"]["notes"]
    md = (sweep / "summary.md").read_text()
    assert "log-ratio to ref (not KL)" in md and "fluency flag" in md
