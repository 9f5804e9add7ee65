"""The sweep report, on synthetic sweep folders written with the run-folder writers (no training needed)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_sweeps.report.sweep_report import EmptySweepError, write_sweep_report
from dpo_sweeps.runs import folder as run_folder

REPO = Path(__file__).resolve().parent.parent
BETAS = ["0.05", "0.1", "0.3"]
LORAS = ["r16", "none"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG_YAML = "model:\n  name_or_path: tiny\nbeta: {beta}\nobjective:\n  metric: {metric}\n  mode: {mode}\n"


def accuracy(beta: str, lora: str) -> float:
    # Distinct for every point, not monotone in beta, so a sort by folder name or by beta would be caught.
    return round(0.5 + {"0.05": 0.1, "0.1": 0.3, "0.3": 0.2}[beta] + (0.05 if lora == "r16" else 0.0), 4)


def make_point(
    sweep: Path,
    overrides: list[str],
    state: str,
    metrics: dict | None = None,
    steps: int = 4,
    eval_every: int = 2,
    error: str | None = None,
    objective: tuple[str, str] = ("eval_rewards/accuracies", "max"),
) -> Path:
    run_dir = sweep / ",".join(sorted(overrides))
    run_dir.mkdir(parents=True)
    values = dict(o.split("=", 1) for o in overrides)
    run_folder.write_text_atomic(
        run_dir / run_folder.CONFIG_FILE,
        CONFIG_YAML.format(beta=values.get("beta", 0.1), metric=objective[0], mode=objective[1]),
    )
    fields = {
        "state": state,
        "started_at": "2025-01-01T10:00:00+00:00",
        "overrides": overrides,
        "run_dir": str(run_dir),
    }
    if state in (run_folder.COMPLETED, run_folder.FAILED):
        fields["ended_at"] = "2025-01-01T10:02:30+00:00"
    if error:
        fields.update(error=error, traceback="Traceback (most recent call last):\n  ...\n" + error)
    run_folder.update_status(run_dir, **fields)
    speed = float(values.get("beta", 0.1)) * (2 if values.get("lora") == "r16" else 1)  # distinct curves
    for step in range(1, steps + 1):
        run_folder.append_history(
            run_dir, {"step": step, "epoch": step / steps, "time": float(step), "loss": 0.7 - speed * 0.1 * step,
                      "rewards/margins": speed * step, "rewards/accuracies": 0.5}
        )  # fmt: skip
        if step % eval_every == 0:
            run_folder.append_history(
                run_dir, {"step": step, "epoch": step / steps, "time": float(step),
                          "eval_loss": 0.69 - speed * 0.08 * step, "eval_rewards/margins": speed * 0.8 * step}
            )  # fmt: skip
    if metrics is not None:
        run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, metrics)
    return run_dir


def final_metrics(beta: str, lora: str, **extra) -> dict:
    acc = accuracy(beta, lora)
    return {
        "eval_loss": round(1.0 - acc, 4),
        "eval_rewards/accuracies": acc,
        "eval_rewards/margins": acc * 2,
        "eval_rewards/chosen": 0.4,
        "eval_rewards/rejected": -0.6,
        "initial_eval_rewards/accuracies": 0.5,
        "train_loss": 0.6,
        "train_runtime": 12.5,
        "objective_metric": "eval_rewards/accuracies",
        "objective_value": acc,
        **extra,
    }


def build_sweep(root: Path) -> Path:
    """3 betas x 2 loras completed (one with a NaN margin), beta=1.0 failed (r16) and running (none)."""
    sweep = root / "sweeps" / "model=tiny_qwen"
    for beta in BETAS:
        for lora in LORAS:
            extra = {"eval_rewards/margins": float("nan")} if (beta, lora) == ("0.3", "none") else {}
            make_point(
                sweep,
                [f"beta={beta}", f"lora={lora}", "model=tiny_qwen"],
                run_folder.COMPLETED,
                final_metrics(beta, lora, **extra),
            )
    make_point(
        sweep,
        ["beta=1.0", "lora=r16", "model=tiny_qwen"],
        run_folder.FAILED,
        steps=3,
        eval_every=99,
        error="RuntimeError: CUDA out of memory | tried to allocate 2 GiB",
    )
    make_point(sweep, ["beta=1.0", "lora=none", "model=tiny_qwen"], run_folder.RUNNING, steps=2)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own files are not points
    (sweep / ".submitit").mkdir()
    return sweep


@pytest.fixture
def sweep(tmp_path) -> Path:
    return build_sweep(tmp_path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_order() -> list[tuple[str, str]]:
    completed = sorted(((b, lo) for b in BETAS for lo in LORAS), key=lambda p: -accuracy(*p))
    return completed + [("1.0", "none"), ("1.0", "r16")]  # running before failed


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def test_csv_rows_columns_and_order(sweep):
    report = write_sweep_report(sweep)
    assert report.metric == "eval_rewards/accuracies" and report.mode == "max"  # from the points' config.yaml
    assert report.n_points == 8 and report.counts == {"running": 1, "completed": 6, "failed": 1}
    rows = read_csv(report.csv)
    assert len(rows) == 8
    columns = list(rows[0])
    assert columns[:5] == ["rank", "point", "beta", "lora", "model"]  # swept (beta first), then fixed overrides
    for col in ("status", "eval_rewards/accuracies", "eval_rewards/margins", "eval_loss", "eval_rewards/chosen",
                "eval_rewards/rejected", "train_runtime", "run_dir", "error"):  # fmt: skip
        assert col in columns
    assert [(r["beta"], r["lora"]) for r in rows] == expected_order()
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6", "", ""]
    assert [float(r["eval_rewards/accuracies"]) for r in rows[:6]] == sorted(
        (accuracy(b, lo) for b in BETAS for lo in LORAS), reverse=True
    )
    assert {r["model"] for r in rows} == {"tiny_qwen"}

    running, failed = rows[6], rows[7]
    assert running["status"] == "running" and running["eval_rewards/accuracies"] == "" and running["error"] == ""
    assert failed["status"] == "failed" and failed["error"].startswith("RuntimeError: CUDA out of memory")
    assert failed["run_dir"] == str(sweep / "beta=1.0,lora=r16,model=tiny_qwen")
    assert failed["wall_time_s"] == "150.0"

    nan_row = next(r for r in rows if (r["beta"], r["lora"]) == ("0.3", "none"))
    assert nan_row["eval_rewards/margins"] == "nan" and nan_row["rank"] != ""  # NaN margin, ranked by accuracy


def test_markdown(sweep):
    report = write_sweep_report(sweep)
    md = report.markdown.read_text()
    assert "8 points: 1 running, 6 completed, 1 failed." in md
    assert "Same for every point: `model=tiny_qwen`." in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split(" | ")]
    assert header[:4] == ["#", "beta", "lora", "status"]
    assert "reward acc" in header and "margin" in header and "eval loss" in header
    body = table[2:]
    assert len(body) == 8
    best_beta, best_lora = expected_order()[0]
    assert body[0].startswith(f"| 1 | {best_beta} | {best_lora} | completed | {accuracy(best_beta, best_lora):.4g} |")
    assert "| **running** |" in body[6]
    assert "| **failed** |" in body[7]
    assert "error: RuntimeError: CUDA out of memory \\| tried to allocate 2 GiB" in body[7]  # pipe escaped
    assert "[beta=1.0,lora=r16,model=tiny_qwen](beta=1.0,lora=r16,model=tiny_qwen/)" in body[7]
    assert "![metric_vs_beta](plots/metric_vs_beta.png)" in md


def test_plots_and_manifest(sweep):
    report = write_sweep_report(sweep)
    plots = sweep / "plots"
    files = ["metric_vs_beta.png", "metric_vs_lora.png", "curves.png", "heatmap_beta_lora.png"]
    assert report.plots == [plots / f for f in files]
    for png in report.plots:
        assert_valid_png(png)
    manifest = json.loads(report.manifest.read_text())
    figures = {f["file"]: f for f in manifest["figures"]}
    assert list(figures) == files
    # Two swept parameters: the objective over both, one cell per pair; the best (beta=0.1, r16) outlined.
    heatmap = figures["heatmap_beta_lora.png"]
    assert (heatmap["x"], heatmap["y"], heatmap["value"]) == ("beta", "lora", "eval_rewards/accuracies")
    assert heatmap["x_values"] == BETAS and heatmap["y_values"] == ["none", "r16"] and heatmap["cells"] == 6
    assert heatmap["best"] == {"beta": "0.1", "lora": "r16", "eval_rewards/accuracies": accuracy("0.1", "r16")}
    assert manifest["skipped"] == []

    vs_beta = figures["metric_vs_beta.png"]
    assert vs_beta["x"] == "beta" and vs_beta["x_kind"] == "numeric"
    acc, margin = vs_beta["panels"]  # the objective is accuracy: no third panel
    assert acc["y"] == "eval_rewards/accuracies"
    # One line per lora value; the failed and the running beta=1.0 have no final metrics.
    assert {s["label"]: s["n_points"] for s in acc["series"]} == {"lora=none": 3, "lora=r16": 3}
    assert {s["label"]: s["n_points"] for s in margin["series"]} == {"lora=none": 2, "lora=r16": 3}  # NaN left out

    vs_lora = figures["metric_vs_lora.png"]
    assert vs_lora["x_kind"] == "categorical"
    assert [s["label"] for s in vs_lora["panels"][0]["series"]] == ["beta=0.05", "beta=0.1", "beta=0.3"]

    curves = {p["y"]: p["series"] for p in figures["curves.png"]["panels"]}
    assert list(curves) == ["loss", "eval_loss", "rewards/margins", "eval_rewards/margins"]
    assert len(curves["loss"]) == 8  # every point that logged, failed and running included
    assert len(curves["rewards/margins"]) == 8
    assert len(curves["eval_loss"]) == 7  # the failed point died before its first eval
    labels = [s["label"] for s in curves["loss"]]
    assert labels[0] == "beta={}, lora={}".format(*expected_order()[0]) and len(set(labels)) == 8
    failed = next(s for s in curves["loss"] if s["label"] == "beta=1.0, lora=r16")
    assert failed["n_points"] == 3


def test_cli(sweep):
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.report", str(sweep), "--metric", "eval_loss"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["point", "status", "reward", "acc", "margin", "eval_loss"]
    # eval_loss defaults to min: the lowest loss (= the best accuracy here) first.
    best = "beta={}, lora={}".format(*expected_order()[0])
    assert lines[2].startswith(best + "  ")
    assert "failed (RuntimeError: CUDA out of memory" in proc.stdout and "running" in proc.stdout
    assert "8 points (1 running, 6 completed, 1 failed), sorted by eval_loss (min)." in proc.stdout
    rows = read_csv(sweep / "summary.csv")
    losses = [float(r["eval_loss"]) for r in rows[:6]]
    assert losses == sorted(losses)
    manifest = json.loads((sweep / "plots" / "plots.json").read_text())
    vs_beta = next(f for f in manifest["figures"] if f["x"] == "beta")
    assert [p["y"] for p in vs_beta["panels"]] == ["eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"]

    help_proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.report", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert help_proc.returncode == 0 and "--metric" in help_proc.stdout and "--mode" in help_proc.stdout


def test_objective_from_config(tmp_path):
    sweep = tmp_path / "sweep"
    for beta in BETAS:
        make_point(sweep, [f"beta={beta}"], "completed", final_metrics(beta, "none"), objective=("eval_loss", "min"))
    report = write_sweep_report(sweep)
    assert (report.metric, report.mode) == ("eval_loss", "min")
    rows = read_csv(report.csv)
    assert [r["beta"] for r in rows] == ["0.1", "0.3", "0.05"]  # lowest eval loss first
    assert write_sweep_report(sweep, mode="max").mode == "max"  # an explicit mode wins
    assert [r["beta"] for r in read_csv(report.csv)] == ["0.05", "0.3", "0.1"]


def test_empty_sweep_folder(tmp_path):
    (tmp_path / "empty" / "not_a_point").mkdir(parents=True)
    with pytest.raises(EmptySweepError, match="no sweep points found"):
        write_sweep_report(tmp_path / "empty")
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.report", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2 and "no sweep points found" in proc.stderr
    with pytest.raises(EmptySweepError, match="no such sweep folder"):
        write_sweep_report(tmp_path / "missing")
    assert not (tmp_path / "empty" / "summary.csv").exists()


def test_unreadable_and_missing_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    make_point(sweep, ["beta=0.1"], "completed", final_metrics("0.1", "none"))
    broken = make_point(sweep, ["beta=0.3"], "completed")
    (broken / run_folder.METRICS_FILE).write_text('{"eval_loss": 0.3, "eval_rew')  # cut short
    make_point(sweep, ["beta=0.5"], "completed")  # completed but never wrote metrics.json
    make_point(sweep, ["beta=0.7"], "completed", {"eval_rewards/accuracies": float("nan"), "eval_loss": 0.2})
    (sweep / "beta=0.9").mkdir()
    (sweep / "beta=0.9" / run_folder.STATUS_FILE).write_text("{not json")

    report = write_sweep_report(sweep)
    rows = {r["point"]: r for r in read_csv(report.csv)}
    assert list(rows) == ["beta=0.1", "beta=0.3", "beta=0.5", "beta=0.7", "beta=0.9"]
    assert rows["beta=0.1"]["rank"] == "1"
    assert "metrics.json unreadable" in rows["beta=0.3"]["notes"]
    assert "completed but no metrics.json" in rows["beta=0.5"]["notes"]
    assert rows["beta=0.7"]["eval_rewards/accuracies"] == "nan"
    assert "eval_rewards/accuracies is nan" in rows["beta=0.7"]["notes"]
    assert rows["beta=0.7"]["eval_loss"] == "0.2"
    assert rows["beta=0.9"]["status"] == "unknown" and "status.json unreadable" in rows["beta=0.9"]["notes"]
    assert rows["beta=0.9"]["beta"] == "0.9"  # overrides recovered from the folder name
    md = report.markdown.read_text()
    assert "metrics.json unreadable" in md and "completed but no metrics.json" in md
    manifest = json.loads(report.manifest.read_text())
    vs_beta = manifest["figures"][0]
    assert vs_beta["file"] == "metric_vs_beta.png"
    assert vs_beta["panels"][0]["series"] == [{"label": "all points", "n_points": 1}]
    for png in report.plots:
        assert_valid_png(png)


def test_single_point(tmp_path):
    sweep = tmp_path / "sweep"
    make_point(sweep, ["beta=0.1", "lora=r16"], "completed", final_metrics("0.1", "r16"))
    report = write_sweep_report(sweep)
    rows = read_csv(report.csv)
    assert len(rows) == 1 and rows[0]["beta"] == "0.1" and rows[0]["lora"] == "r16"
    assert report.plots == [sweep / "plots" / "curves.png"]  # nothing swept: no metric_vs_* plot
    manifest = json.loads(report.manifest.read_text())
    assert [p["series"][0]["label"] for p in manifest["figures"][0]["panels"]] == ["beta=0.1,lora=r16"] * 4
    md = report.markdown.read_text()
    assert "Same for every point: `beta=0.1`, `lora=r16`." in md
    assert md.count("\n| 1 | completed |") == 1


def test_stale_plots_are_removed(sweep):
    write_sweep_report(sweep)
    assert (sweep / "plots" / "metric_vs_lora.png").exists()
    for folder in sweep.glob("*lora=none*"):
        run_folder.update_status(folder, state="moved")
        (folder / run_folder.STATUS_FILE).rename(folder / "status.old.json")  # no longer a point
    report = write_sweep_report(sweep)
    assert report.n_points == 4
    assert not (sweep / "plots" / "metric_vs_lora.png").exists()


def test_import_is_light():
    code = (
        "import sys, dpo_sweeps.report.sweep_report\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'matplotlib', 'pandas', 'hydra') if m in sys.modules]\n"
        "print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_value_helpers():
    from dpo_sweeps.report.points import value_order as _value_order
    from dpo_sweeps.runs.reading import number as _number
    from dpo_sweeps.runs.reading import parse_overrides

    assert sorted(["10", "none", "2", "0.5", "abc"], key=_value_order) == ["0.5", "2", "10", "abc", "none"]
    assert parse_overrides(["beta=0.1", "+lora.r=8", "~logger", "x=a=b"]) == {
        "beta": "0.1",
        "lora.r": "8",
        "logger": "<deleted>",
        "x": "a=b",
    }

    assert math.isnan(_number("nan")) and _number("inf") == math.inf and _number("abc") is None
    assert _number(True) is None and _number(3) == 3.0
