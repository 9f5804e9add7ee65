"""`make gpu-check` without a GPU: it says so and exits 0 in seconds, importing nothing heavy (this machine has no
GPU: its GPU path, run for real on one NVIDIA GPU, is untested here; docs/distributed.md says so)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a GPU is here: make gpu-check runs for real")
def test_without_a_gpu_it_says_so_and_exits_0_in_seconds(tmp_path):
    tic = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dpo_sweeps.bench.gpu_check", "--out", str(tmp_path / "t.md")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no nvidia-smi on PATH
    )
    took = time.monotonic() - tic
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "make gpu-check: no NVIDIA GPU on this machine" in proc.stdout and "nothing was run" in proc.stdout
    assert "| torch " not in proc.stderr and "| transformers" not in proc.stderr, "no torch import without a GPU"
    assert took < 10 and not (tmp_path / "t.md").exists(), took


def test_make_help_lists_gpu_check():
    makefile = (REPO / "Makefile").read_text()
    assert "gpu-check: install ## On one NVIDIA GPU" in makefile
    assert "\t$(PY) -m dpo_sweeps.bench.gpu_check" in makefile
