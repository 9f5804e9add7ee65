"""Benchmark: how long the submitting process takes to put an N-point sweep on SLURM (one array job).

    source /tmp/dpo_sweeps_slurm/env.sh && python -m dpo_sweeps.bench.submit --points 32

Starts `python -m dpo_sweeps -m hydra/launcher=slurm beta=<N values> ...` as a user would, measures the wall time
from the process start until the array job is visible in `squeue`, reads the preflight's own composition time from
its log, then cancels the jobs and stops the process (the jobs are never meant to run). `measure()` returns the
numbers for another benchmark (dpo_sweeps/bench/cpu.py) to call. Needs a running SLURM cluster (launch/slurm-up.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _array_job_ids(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%F"], capture_output=True, text=True, check=False)
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


def measure(points: int = 32, timeout_s: float = 120.0) -> dict:
    name = f"bench_submit_{os.getpid()}"
    betas = ",".join(f"{0.01 * (i + 1):.2f}" for i in range(points))
    sweep_dir = Path(tempfile.mkdtemp(prefix="bench_submit_"))
    cmd = [
        sys.executable,
        "-m",
        "dpo_sweeps",
        "-m",
        "hydra/launcher=slurm",
        "model=tiny_qwen",
        "dataset=toy",
        "training=smoke",
        "logger=none",
        f"beta={betas}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=null",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    log_path = sweep_dir / "bench.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            while not (ids := _array_job_ids(name)):
                if proc.poll() is not None or time.perf_counter() - start > timeout_s:
                    raise RuntimeError(f"no array job appeared; log: {log_path}")
                time.sleep(0.02)
            submitted_s = time.perf_counter() - start
        finally:
            for job in _array_job_ids(name):
                subprocess.run(["scancel", job], check=False)
            proc.terminate()
            proc.wait(timeout=30)
    text = log_path.read_text()
    m = re.search(
        r"Composed and validated (\d+) sweep point\(s\)(?: \(\d+ distinct compositions\))? in ([0-9.]+) s", text
    )
    return {
        "points": points,
        "array_jobs": len(ids),
        "submit_wall_s": round(submitted_s, 2),
        "preflight_compose_validate_s": float(m.group(2)) if m else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=32)
    print(json.dumps(measure(parser.parse_args().points), indent=2))


if __name__ == "__main__":
    main()
