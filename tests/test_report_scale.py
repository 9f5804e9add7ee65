"""The sweep report at many points: plots that stay legible (best few named, the rest a band; dots coloured by a
parameter; a heatmap of two parameters; the Pareto points ringed), the terminal table cut short, and the objective
read from status.json without parsing config.yaml."""

from __future__ import annotations

import csv
import itertools
import json
import math
import random

from dpo_sweeps.report.curves import BEST
from dpo_sweeps.report.frontier import pareto_front
from dpo_sweeps.report.sweep_report import write_sweep_report
from dpo_sweeps.report.tables import TERMINAL_ROWS
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading
from tests.test_report import assert_valid_png, final_metrics, make_point

BETAS = ["0.02", "0.05", "0.1", "0.2", "0.5", "1.0"]
LRS = ["1e-05", "3e-05", "0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03"]


def _gen(beta: float, lr: float) -> dict:
    kl = round(0.1 + math.sqrt(lr) * 10 / (1 + 5 * beta), 6)
    score = round(0.9 * (1 - math.exp(-1.5 * kl)) - 0.05 * beta, 6)
    return {"gen/kl_to_ref": kl, "gen/score_after": score, "gen/win_rate_vs_ref": round(0.5 + score / 3, 6)}


def build_grid(root):
    sweep = root / "grid"
    for beta, lr in itertools.product(BETAS, LRS):
        metrics = final_metrics("0.1", "none", **_gen(float(beta), float(lr)))
        # A smooth objective over both parameters, best at beta=0.1, lr=3e-4, distinct everywhere.
        acc = 0.9 - (math.log10(float(beta)) + 1) ** 2 / 10 - (math.log10(float(lr)) + 3.5) ** 2 / 20
        metrics["eval_rewards/accuracies"] = round(acc + float(beta) * float(lr), 8)
        make_point(sweep, [f"beta={beta}", f"training.learning_rate={lr}"], run_folder.COMPLETED, metrics)
    return sweep


def test_plots_at_many_points_name_the_best_and_summarise_the_rest(tmp_path):
    sweep = build_grid(tmp_path)
    report = write_sweep_report(sweep)
    figures = {f["file"]: f for f in json.loads(report.manifest.read_text())["figures"]}
    with open(report.csv, newline="") as f:
        ranked = [row["point"] for row in csv.DictReader(f)]
    n = len(BETAS) * len(LRS)
    assert len(ranked) == n

    curves = figures["curves.png"]
    assert curves["highlighted"] == ranked[:BEST]  # the best by the objective, in rank order
    assert curves["band"] == {"points": n - BEST, "quantiles": [0.1, 0.5, 0.9]}
    assert len(curves["legend"]) == BEST + 2 and curves["legend"][0].startswith("#1 beta=0.1, ")
    assert curves["legend"][-2:] == [
        f"the other {n - BEST} points: 10-90% band",
        f"the other {n - BEST} points: median",
    ]
    assert all(len(panel["series"]) == n for panel in curves["panels"][:1])  # every point still listed

    # 8 learning rates per beta: too many lines, so dots coloured by the learning rate with their median.
    vs_beta = figures["metric_vs_beta.png"]
    assert vs_beta["colour"] == "training.learning_rate"
    assert vs_beta["panels"][0]["series"] == [
        {"label": "every point, coloured by training.learning_rate", "n_points": n}
    ]

    frontier = figures["reward_kl_frontier.png"]
    assert frontier["colour"] == "beta"
    score = frontier["panels"][0]
    values = {p["point"]: (p["x"], p["y"]) for p in score["points"]}
    dominated = {
        a
        for a, (xa, ya) in values.items()
        for b, (xb, yb) in values.items()
        if (xb <= xa and yb >= ya) and (xb, yb) != (xa, ya)
    }
    assert set(score["pareto"]) == set(values) - dominated and score["pareto"]

    heatmap = figures["heatmap_beta_training.learning_rate.png"]
    assert heatmap["cells"] == n and heatmap["x_values"] == BETAS and heatmap["y_values"] == LRS
    assert heatmap["best"]["beta"] == "0.1" and heatmap["best"]["training.learning_rate"] == "0.0003"
    for png in report.plots:
        assert_valid_png(png)
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[0] < 1500, f"{png.name} taller than a screen"

    assert report.table.count("\n") < TERMINAL_ROWS + 3
    assert f"... {n - TERMINAL_ROWS} more point(s) not listed: every point is in summary.csv" in report.table


def test_pareto_front_is_the_non_dominated_set():
    rng = random.Random(7)
    for _ in range(50):
        xy = [(rng.randint(0, 9), rng.randint(0, 9), f"p{i}") for i in range(rng.randint(1, 30))]
        front = set(pareto_front(xy))
        expected = {
            name
            for x, y, name in xy
            if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2, _ in xy)
            # of equal points the first in (x, -y) order stands for them
        }
        assert {(x, y) for x, y, n in xy if n in front} == {(x, y) for x, y, n in xy if n in expected}


def test_objective_comes_from_status_json_and_old_folders_fall_back_to_the_config(tmp_path):
    sweep = tmp_path / "s"
    new = make_point(sweep, ["beta=0.1"], run_folder.COMPLETED, final_metrics("0.1", "none"))
    run_folder.update_status(new, objective={"metric": "eval_loss", "mode": "min"})
    # A config a reader must not need: the status says it all.
    (new / run_folder.CONFIG_FILE).write_text("objective: [not, what, status, says\n")
    assert reading.read_run(new).objective == ("eval_loss", "min")

    old = make_point(sweep, ["beta=0.2"], run_folder.COMPLETED, final_metrics("0.1", "none"), objective=("x", "min"))
    assert reading.read_run(old).objective == ("x", "min")  # the objective block of OmegaConf's layout
    (old / run_folder.CONFIG_FILE).write_text("beta: 0.2\nobjective: {metric: y, mode: max}\n")
    assert reading.read_run(old).objective == ("y", "max")  # another layout: the whole file
    (old / run_folder.CONFIG_FILE).write_text("beta: 0.2\nobjective:\n  metric: z\nother:\n  objective: no\n")
    assert reading.read_run(old).objective == ("z", "max")
    (old / run_folder.CONFIG_FILE).unlink()
    assert reading.read_run(old).objective is None
    assert reading.read_run(new, objective=False).objective is None
