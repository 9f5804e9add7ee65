"""tests/parallel.py, the plugin that runs the suite side by side under pytest-xdist: the order tests start in, and
the locks (a serial test alone on the machine, an exclusive SLURM test alone on the cluster), on a suite of stand-in
tests that only record when they ran. The markers are the real ones; no cluster is needed for the locks."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

from tests.helpers import REPO

SUITE = """
import json, os, time

import pytest


def record(name):
    start = time.time()
    time.sleep(0.5)
    line = {"name": name, "start": start, "end": time.time(), "worker": os.environ.get("PYTEST_XDIST_WORKER")}
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(line) + "\\n")


@pytest.mark.parametrize("i", range(4))
def test_plain(i):
    record(f"plain{i}")


@pytest.mark.slurm
@pytest.mark.parametrize("i", range(4))
def test_shared(i):
    record(f"shared{i}")


@pytest.mark.slow
@pytest.mark.slurm
def test_slow_shared():
    record("slow_shared")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(2))
def test_slow(i):
    record(f"slow{i}")


@pytest.mark.slurm_exclusive
@pytest.mark.parametrize("i", range(3))
def test_exclusive(i):
    record(f"exclusive{i}")


@pytest.mark.serial
@pytest.mark.parametrize("i", range(2))
def test_serial(i):
    record(f"serial{i}")
"""


def _pytest(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_stand_ins.py").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECORD": str(tmp_path / "record.jsonl")}
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        env.pop(var, None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.parallel",
            "-p",
            "no:cacheprovider",
            "-q",
            *args,
            "test_stand_ins.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_exclusive_group_starts_first_then_slow_tests_without_the_cluster_and_the_serial_group_last(tmp_path):
    proc = _pytest(tmp_path, "--collect-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line]
    assert names == [
        *(f"test_exclusive[{i}]" for i in range(3)),
        *(f"test_slow[{i}]" for i in range(2)),
        "test_slow_shared",
        *(f"test_shared[{i}]" for i in range(4)),
        *(f"test_plain[{i}]" for i in range(4)),
        *(f"test_serial[{i}]" for i in range(2)),
    ], names


def test_under_xdist_serial_tests_run_alone_and_exclusive_ones_back_to_back_without_other_slurm_tests(tmp_path):
    proc = _pytest(tmp_path, "-n", "3", "--dist", "loadgroup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert len(runs) == 16, runs

    def overlap(a, b):
        return a["start"] < b["end"] and b["start"] < a["end"]

    for a, b in itertools.combinations(runs, 2):
        pair = (a["name"], b["name"])
        if a["name"].startswith("serial") or b["name"].startswith("serial"):
            assert not overlap(a, b), f"a serial test ran beside another: {pair}"
        slurm = [r for r in (a, b) if r["name"].startswith(("shared", "slow_shared", "exclusive"))]
        if len(slurm) == 2 and any(r["name"].startswith("exclusive") for r in slurm):
            assert not overlap(a, b), f"an exclusive SLURM test ran beside another SLURM test: {pair}"
    # Each group on one worker, one test after another, and no other SLURM test between the exclusive ones.
    exclusive = sorted((r for r in runs if r["name"].startswith("exclusive")), key=lambda r: r["start"])
    serial = [r for r in runs if r["name"].startswith("serial")]
    assert len({r["worker"] for r in exclusive}) == 1 and len({r["worker"] for r in serial}) == 1, runs
    between = [
        r
        for r in runs
        if r["name"].startswith(("shared", "slow_shared")) and exclusive[0]["start"] < r["start"] < exclusive[-1]["end"]
    ]
    assert not between, between
