"""Benchmark (`make bench-racing`): the same grid of configurations x seeds with and without seed racing.

    python -m dpo_sweeps.bench.racing                                  # 6 betas x 5 seeds
    python -m dpo_sweeps.bench.racing --grid beta=0.01,0.1 --seeds 1,2,3 --min-seeds 2   # quicker, for a look

Both sweeps run through the CLI exactly as a user types them, on tiny_llama and the toy set, 10 steps a point, no
generation, objective eval_rewards/margins (max), Hydra's default launcher (one point after another in one process,
so the wall time follows the points trained). Printed and written to `--out` (markdown): points trained, points
skipped by racing, wall time, the best configuration of each (the highest mean objective over its seeds, from
summary_by_config.csv) and whether they agree, and the machine's load (os.getloadavg) before and after.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpo_sweeps.runs import reading

BASE = [
    "model=tiny_llama",
    "dataset=toy",
    "training=smoke",
    "logger=none",
    "training.max_steps=10",
    "eval.gen_prompts=0",
    "training.sample_completions=0",
    "objective.metric=eval_rewards/margins",
]
METRIC = "eval_rewards/margins"


def run_sweep(sweep: Path, grid: str, seeds: str, racing: bool, min_seeds: int) -> dict:
    args = [*BASE, grid, f"seed={seeds}", f"racing.enabled={str(racing).lower()}", f"racing.min_seeds={min_seeds}"]
    load = os.getloadavg()[0]
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_sweeps", "-m", *args, f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(
            f"Error: the sweep in {sweep} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    states = [reading.read_run(d, history=False, objective=False).state for d in reading.point_dirs(sweep)]
    with open(sweep / "summary_by_config.csv") as f:
        rows = list(csv.DictReader(f))
    ranked = [r for r in rows if r.get(f"{METRIC}_mean")]
    best = max(ranked, key=lambda r: float(r[f"{METRIC}_mean"]))
    return {
        "racing": racing,
        "trained": states.count("completed"),
        "skipped": states.count("skipped_by_racing"),
        "other": len(states) - states.count("completed") - states.count("skipped_by_racing"),
        "wall_s": wall,
        "best": best["config"],
        "best_mean": float(best[f"{METRIC}_mean"]),
        "raced_out": [r["config"] for r in rows if r.get("raced_out")],
        "load": (load, os.getloadavg()[0]),
    }


def table(results: list[dict], grid: str, seeds: str, min_seeds: int) -> str:
    plain, raced = results
    lines = [
        f"Grid `{grid}` x `seed={seeds}` on tiny_llama/toy, 10 steps a point, objective {METRIC} (max), "
        f"racing.min_seeds={min_seeds}, confidence 0.95; {platform.node()}, {os.cpu_count()} cores.",
        "",
        "| sweep | points trained | skipped by racing | wall time | best configuration (mean) | load before/after |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {'racing' if r['racing'] else 'no racing'} | {r['trained']} | {r['skipped']} | {r['wall_s']:.0f} s | "
            f"{r['best']} ({r['best_mean']:.4g}) | {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    same = "the same" if plain["best"] == raced["best"] else "NOT the same"
    lines += [
        "",
        f"Best configuration: {same}. Raced out: {', '.join(raced['raced_out']) or 'none'}. Points trained "
        f"{raced['trained']} of {plain['trained']} ({raced['trained'] / max(plain['trained'], 1):.0%}), wall time "
        f"{raced['wall_s'] / max(plain['wall_s'], 1e-9):.0%} of the sweep without racing.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="beta=0.01,0.03,0.1,0.3,1.0,3.0", help="the swept configurations")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--min-seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/racing.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir="outputs") as tmp:
        results = [
            run_sweep(Path(tmp) / name, args.grid, args.seeds, racing, args.min_seeds)
            for name, racing in (("plain", False), ("racing", True))
        ]
    text = table(results, args.grid, args.seeds, args.min_seeds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
