"""Benchmark: how long the submitting process takes to put an N-point sweep on SLURM, phase by phase.

    source /tmp/dpo_sweeps_slurm/env.sh && python -m dpo_sweeps.bench.submit --points 64 256 1200
    source /tmp/dpo_sweeps_slurm/env.sh && python -m dpo_sweeps.bench.submit --points 64 --stock   # + the stock launcher

For each size, starts `python -m dpo_sweeps -m hydra/launcher=slurm seed=range(0,N) ...` as a user would, with the
jobs held (`sbatch --hold`: they wait and never run), measures the wall time from the process start until every array
task is visible in `squeue`, reads the launcher's own breakdown from its log (validate = the pre-launch composition
and validation, prepare = reading the site's limits + writing the job pickles, sbatch = the sbatch calls), then
cancels the jobs and stops the process. The split into arrays follows the cluster's MaxArraySize: the local cluster
sets 3 for the tests; `DPO_SWEEPS_SLURM_MAX_ARRAY_SIZE=1001 make slurm-up` gives SLURM's default (docs/slurm.md's
table). The cluster must hold 1200 more jobs (MaxJobCount; cancelled jobs count for MinJobAge=300 s).
`--stock` also times the same command with the stock hydra-submitit-launcher
(`hydra.launcher._target_=STOCK_TARGET`; it logs no breakdown, so only its wall time is measured; it submits one array
per sweep, so the cluster's MaxArraySize must exceed the points). `measure()` returns the numbers for another
benchmark to call. Needs a running cluster (launch/slurm-up.sh).
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
# The local cluster's profile: no GPU, one core per task, no memory request (conf/hydra/launcher/slurm_local.yaml).
LOCAL_SLURM = ["hydra/launcher=slurm_local"]
STOCK_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
BREAKDOWN = re.compile(
    r"Submitted (\d+) point\(s\) in (\d+) SLURM array job\(s\).* in ([0-9.]+) s: validate ([0-9.]+) s \(preflight\), "
    r"prepare ([0-9.]+) s \(limits ([0-9.]+) s, pickles ([0-9.]+) s\), sbatch ([0-9.]+) s"
)


def _tasks(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.strip())


def measure(points: int = 64, timeout_s: float = 300.0, stock: bool = False) -> dict:
    """Seconds from the command's start until all `points` tasks are in squeue (our launcher: and its breakdown);
    `stock`: the same command with the stock hydra-submitit-launcher."""
    name = f"bench_submit_{os.getpid()}_{points}{'_stock' if stock else ''}"
    sweep_dir = Path(tempfile.mkdtemp(prefix="bench_submit_"))
    cmd = [
        sys.executable,
        "-m",
        "dpo_sweeps",
        "-m",
        *LOCAL_SLURM,
        "model=tiny_qwen",
        "dataset=toy",
        "training=smoke",
        "logger=none",
        f"seed=range(0,{points})",
        "+hydra.launcher.additional_parameters.hold=true",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        *([f"hydra.launcher._target_={STOCK_TARGET}"] if stock else []),
    ]
    log_path = sweep_dir / "bench.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            while _tasks(name) < points:
                if proc.poll() is not None or time.perf_counter() - start > timeout_s:
                    raise RuntimeError(f"the {points} tasks did not all appear in squeue; log: {log_path}")
                time.sleep(0.05)
            submitted_s = time.perf_counter() - start
            # Our launcher logs its breakdown right after the last sbatch (the stock one logs none).
            deadline = time.perf_counter() + (0 if stock else 30)
            while not BREAKDOWN.search(log_path.read_text()) and time.perf_counter() < deadline:
                time.sleep(0.05)
        finally:
            subprocess.run(["scancel", "-n", name], check=False, timeout=60)
            proc.terminate()
            proc.wait(timeout=30)
    if stock:
        return {"points": points, "launcher": "stock", "wall_s": round(submitted_s, 2)}
    m = BREAKDOWN.search(log_path.read_text())
    if not m:
        raise RuntimeError(f"no submission breakdown in {log_path}")
    return {
        "points": points,
        "launcher": "dpo_sweeps",
        "array_jobs": int(m.group(2)),
        "wall_s": round(submitted_s, 2),
        "validate_s": float(m.group(4)),
        "prepare_s": float(m.group(5)),
        "limits_s": float(m.group(6)),
        "pickles_s": float(m.group(7)),
        "sbatch_s": float(m.group(8)),
        "launcher_total_s": float(m.group(3)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[64, 256, 1200])
    parser.add_argument("--stock", action="store_true", help="also time the stock hydra-submitit-launcher")
    parser.add_argument("--stock-timeout", type=float, default=900.0, help="seconds to wait for the stock launcher")
    args = parser.parse_args()
    rows = []
    for n in args.points:
        row = measure(n)
        if args.stock:
            try:
                row["stock_wall_s"] = measure(n, timeout_s=args.stock_timeout, stock=True)["wall_s"]
            except RuntimeError as exc:
                row["stock_wall_s"] = None
                row["stock_error"] = str(exc)
        rows.append(row)
    print(json.dumps(rows, indent=2))
    stock_head = " stock hydra-submitit-launcher |" if args.stock else ""
    print(f"\n| points | arrays | wall (start -> all tasks queued) | validate | prepare | sbatch |{stock_head}")
    print("|---|---|---|---|---|---|" + ("---|" if args.stock else ""))
    for r in rows:
        stock = ""
        if args.stock:
            stock = f" {r['stock_wall_s']:.1f} s |" if r["stock_wall_s"] is not None else " failed (see above) |"
        print(
            f"| {r['points']} | {r['array_jobs']} | {r['wall_s']:.1f} s | {r['validate_s']:.1f} s | "
            f"{r['prepare_s']:.2f} s | {r['sbatch_s']:.2f} s |{stock}"
        )


if __name__ == "__main__":
    main()
