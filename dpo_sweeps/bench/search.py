"""Benchmark (`make bench-search`): the same 16-trial search with and without pruning, side by side.

    python -m dpo_sweeps.bench.search                 # ~7 min on 2 CPU cores shared with other jobs
    python -m dpo_sweeps.bench.search --trials 8      # quicker, for a look

Both searches run through the CLI exactly as a user types them (`hparams_search=dpo_optuna`, local launcher, one
process): TPE over the learning rate and beta (log scales) on tiny_qwen and the toy set, 40 steps a trial with an
evaluation every 4 steps, minimising eval_loss, sampler seed fixed. The second adds
`hydra.sweeper.pruner.type=successive_halving` (first rung at the first evaluation, a third of the trials promoted at
each rung). Measured: training steps spent (each run folder's last step, pruned or not), wall time of the command,
trials per state, the best eval_loss found and its parameters. Targets: pruning spends at most half the steps and its
best is within 0.02 of the unpruned search's.

The table is printed and written to `--out` (markdown).
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
from typing import Any

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search.files import RESULTS_FILE, TRIALS_CSV

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, EVAL_STEPS = 40, 4
SEARCH = [
    "-m",
    "hparams_search=dpo_optuna",
    "model=tiny_qwen",
    "dataset=toy",
    "training=smoke",
    "logger=none",
    f"training.max_steps={MAX_STEPS}",
    f"training.eval_steps={EVAL_STEPS}",
    "training.eval_before_training=false",
    "training.save_model=false",
    "training.sample_completions=0",
    "eval.gen_prompts=0",
    "objective.metric=eval_loss",
    "objective.mode=min",
    "loss=sigmoid",
    "beta=tag(log, interval(0.01, 1.0))",
    "training.learning_rate=tag(log, interval(1e-4, 1e-2))",
    "hydra.sweeper.sampler.seed=0",
    "hydra.sweeper.sampler.n_startup_trials=4",
]
PRUNED = [
    "hydra.sweeper.pruner.type=successive_halving",
    f"hydra.sweeper.pruner.min_resource={EVAL_STEPS}",
    "hydra.sweeper.pruner.reduction_factor=3",
]
TARGET_STEPS_RATIO, TARGET_BEST_GAP = 0.5, 0.02


def run_search(sweep_dir: Path, trials: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dpo_sweeps", *SEARCH, f"hydra.sweeper.n_trials={trials}", *extra]
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f"search failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import yaml

    results = yaml.safe_load((sweep_dir / RESULTS_FILE).read_text())
    with open(sweep_dir / TRIALS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = 0
    for point in {r["point"] for r in rows if r["point"]}:
        metrics = run_folder.read_json(sweep_dir / point / run_folder.METRICS_FILE) or {}
        steps += int(metrics.get("global_step") or 0)
    return {
        "wall_s": wall,
        "steps": steps,
        "states": results["trials_by_state"],
        "best": results.get("best_value"),
        "best_params": results.get("best_params", {}),
    }


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.3g}" for k, v in p.items())


def table(full: dict[str, Any], pruned: dict[str, Any], trials: int) -> str:
    ratio = pruned["steps"] / full["steps"]
    gap = pruned["best"] - full["best"]  # eval_loss: lower is better, so a positive gap is pruning's loss
    states = lambda r: ", ".join(f"{n} {s}" for s, n in r["states"].items())  # noqa: E731
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    lines = [
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, no GPU; {time.strftime('%Y-%m-%d')}. {trials} trials each, TPE (seed 0) over "
        f"lr and beta, {MAX_STEPS} steps a trial, eval_loss every {EVAL_STEPS} steps.",
        "",
        "| measure | no pruning | successive_halving | ratio / gap | target |",
        "|---|---|---|---|---|",
        f"| training steps spent | {full['steps']} | {pruned['steps']} | {ratio:.2f} | <= {TARGET_STEPS_RATIO} "
        f"{ok(ratio <= TARGET_STEPS_RATIO)} |",
        f"| wall time | {full['wall_s']:.0f} s | {pruned['wall_s']:.0f} s | {pruned['wall_s'] / full['wall_s']:.2f} | |",
        f"| trials | {states(full)} | {states(pruned)} | | |",
        f"| best eval_loss | {full['best']:.4f} | {pruned['best']:.4f} | {gap:+.4f} | within {TARGET_BEST_GAP} "
        f"{ok(gap <= TARGET_BEST_GAP)} |",
        f"| best trial's parameters | {_params(full['best_params'])} | {_params(pruned['best_params'])} | | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "search.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        print(f"{args.trials}-trial search without pruning ...", flush=True)
        full = run_search(Path(tmp) / "full", args.trials, [])
        print(f"{args.trials}-trial search with successive_halving ...", flush=True)
        pruned = run_search(Path(tmp) / "pruned", args.trials, PRUNED)
    text = table(full, pruned, args.trials)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nWritten to {out}")


if __name__ == "__main__":
    main()
