"""`from dpo_sweeps import load_sweep`: a sweep as a DataFrame with summary.csv's columns and typed parameters."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from dpo_sweeps import load_sweep
from dpo_sweeps.report.sweep_report import EmptySweepError, write_sweep_report
from tests.test_report import REPO, build_sweep, make_point


def test_one_row_per_point_with_summary_csv_columns_and_typed_parameters(tmp_path):
    sweep = build_sweep(tmp_path)
    df = load_sweep(sweep)
    report = write_sweep_report(sweep, plots=False)
    with open(report.csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert list(df.columns) == reader.fieldnames
    assert list(df["point"]) == [r["point"] for r in rows]  # the report's order, best first
    assert df.attrs["metric"] == "eval_rewards/accuracies" and df.attrs["swept"] == ["beta", "lora"]

    assert df["beta"].dtype == float and list(df["beta"])[:1] == [0.1]
    assert df["lora"].dtype != float and set(df["lora"]) == {"r16", "none"}
    assert str(df["rank"].dtype) == "Int64" and list(df["rank"][:6]) == [1, 2, 3, 4, 5, 6]
    assert df["rank"][6:].isna().all()  # running and failed: no rank
    assert df["eval_rewards/accuracies"].dtype == float
    for row, (_, frame_row) in zip(rows, df.iterrows(), strict=True):
        for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"):
            if row[key] in ("", "nan"):
                assert math.isnan(frame_row[key]), (row["point"], key)
            else:
                assert frame_row[key] == float(row[key])
        assert frame_row["status"] == row["status"] and frame_row["error"] == row["error"]
    assert df.loc[df["status"] == "failed", "error"].item().startswith("RuntimeError: CUDA out of memory")

    by_loss = load_sweep(sweep, metric="eval_loss")
    assert by_loss.attrs["mode"] == "min" and by_loss["eval_loss"].iloc[0] == df["eval_loss"].min()


def test_parameters_are_typed_int_bool_or_text(tmp_path):
    sweep = tmp_path / "s"
    for seed, flag, lr in (("1", "true", "1e-4"), ("2", "false", "3e-4")):
        make_point(sweep, [f"seed={seed}", f"training.flag={flag}", f"training.learning_rate={lr}"], "completed", {})
    df = load_sweep(sweep)
    assert df["seed"].dtype.kind == "i" and sorted(df["seed"]) == [1, 2]
    assert df["training.flag"].dtype == bool
    assert df["training.learning_rate"].dtype == float and sorted(df["training.learning_rate"]) == [1e-4, 3e-4]


def test_an_empty_folder_is_named(tmp_path):
    with pytest.raises(EmptySweepError, match="no sweep points found"):
        load_sweep(tmp_path)


def test_importing_dpo_sweeps_stays_light():
    code = "import sys, dpo_sweeps; print(sorted(m for m in ('pandas', 'torch', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
