"""The sweep report across points: the reward-KL frontier and seeds aggregated (dpo_sweeps/report/seeds.py)."""

from __future__ import annotations

import csv
import json

import pytest

from dpo_sweeps.report.seeds import mean_ci95
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
    run_cli(
        ["model=tiny_qwen", *TINY, "training.max_steps=8", "eval.gen_prompts=4", "beta=0.1,0.5", "seed=1,2",
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
