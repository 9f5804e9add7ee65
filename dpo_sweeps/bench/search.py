"""Benchmark (`make bench-search`): the same search two ways, side by side.

    python -m dpo_sweeps.bench.search                   # both comparisons
    python -m dpo_sweeps.bench.search --only async      # batched vs asynchronous trials only
    python -m dpo_sweeps.bench.search --trials 8        # quicker, for a look

Every search runs through the CLI exactly as a user types it (`hparams_search=dpo_optuna`): TPE over the learning
rate and beta (log scales) on tiny_qwen and the toy set, 40 steps a trial with an evaluation every 4 steps,
minimising eval_loss, sampler seed fixed.

- `pruning`: local launcher (one process, one trial at a time), without and with
  `hydra.sweeper.pruner.type=successive_halving` (first rung at the first evaluation, a third promoted at each rung).
  Targets: pruning spends at most half the steps and its best is within 0.02 of the unpruned search's.
- `async`: local_parallel, `n_jobs=4` (4 processes), successive_halving pruning, once in batches of 4 (the next batch
  asked for when the whole batch has ended: the driver's behaviour before trials ran asynchronously, kept behind
  DPO_SWEEPS_SEARCH_BATCHES=1 for this baseline) and once asynchronously (the next trial started as soon as one ends).
  Target: asynchronous at least 1.3x faster in wall time at the same trial budget.

Measured: wall time of the command, training steps spent (each run folder's last step, pruned or not), trials per
state, the best eval_loss found and its parameters, and the machine's load (os.getloadavg) before and after. The
tables are printed and written to `--out` (markdown).
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
from dpo_sweeps.search.driver import BATCHES_ENV
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
N_JOBS = 4
PARALLEL = ["hydra/launcher=local_parallel", f"hydra.launcher.max_parallel={N_JOBS}", f"hydra.sweeper.n_jobs={N_JOBS}"]
TARGET_SPEEDUP = 1.3


def run_search(sweep_dir: Path, trials: int, extra: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dpo_sweeps", *SEARCH, f"hydra.sweeper.n_trials={trials}", *extra]
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    load_before = os.getloadavg()[0]
    tic = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    )
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
        "load": (load_before, os.getloadavg()[0]),
    }


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.3g}" for k, v in p.items())


def table(full: dict[str, Any], pruned: dict[str, Any], trials: int) -> str:
    ratio = pruned["steps"] / full["steps"]
    gap = pruned["best"] - full["best"]  # eval_loss: lower is better, so a positive gap is pruning's loss
    states = lambda r: ", ".join(f"{n} {s}" for s, n in r["states"].items())  # noqa: E731
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    lines = [
        _machine(trials),
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


def _machine(trials: int) -> str:
    return (
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, no GPU; {time.strftime('%Y-%m-%d')}. {trials} trials each, TPE (seed 0) over "
        f"lr and beta, {MAX_STEPS} steps a trial, eval_loss every {EVAL_STEPS} steps."
    )


def async_table(batched: dict[str, Any], live: dict[str, Any], trials: int) -> str:
    speedup = batched["wall_s"] / live["wall_s"]
    states = lambda r: ", ".join(f"{n} {s}" for s, n in r["states"].items())  # noqa: E731
    load = lambda r: f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}"  # noqa: E731
    lines = [
        f"{_machine(trials)} local_parallel, n_jobs={N_JOBS} (4 processes, 1 thread each), successive_halving.",
        "",
        f"| measure | batched (batches of {N_JOBS}) | asynchronous | ratio | target |",
        "|---|---|---|---|---|",
        f"| wall time | {batched['wall_s']:.0f} s | {live['wall_s']:.0f} s | {speedup:.2f}x faster | >= "
        f"{TARGET_SPEEDUP}x {'ok' if speedup >= TARGET_SPEEDUP else 'MISSED'} |",
        f"| training steps spent | {batched['steps']} | {live['steps']} | {live['steps'] / batched['steps']:.2f} | |",
        f"| trials | {states(batched)} | {states(live)} | | |",
        f"| best eval_loss | {batched['best']:.4f} | {live['best']:.4f} | {live['best'] - batched['best']:+.4f} | |",
        f"| best trial's parameters | {_params(batched['best_params'])} | {_params(live['best_params'])} | | |",
        f"| load average (1 min) before -> after | {load(batched)} | {load(live)} | | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--only", choices=("pruning", "async"), default=None, help="run one comparison only")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "search.md"))
    args = parser.parse_args(argv)
    texts = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        if args.only in (None, "pruning"):
            print(f"{args.trials}-trial search without pruning ...", flush=True)
            full = run_search(Path(tmp) / "full", args.trials, [])
            print(f"{args.trials}-trial search with successive_halving ...", flush=True)
            pruned = run_search(Path(tmp) / "pruned", args.trials, PRUNED)
            texts.append(table(full, pruned, args.trials))
        if args.only in (None, "async"):
            print(f"{args.trials}-trial search, n_jobs={N_JOBS}, in batches ...", flush=True)
            batched = run_search(Path(tmp) / "batched", args.trials, PARALLEL + PRUNED, {BATCHES_ENV: "1"})
            print(f"{args.trials}-trial search, n_jobs={N_JOBS}, asynchronous ...", flush=True)
            live = run_search(Path(tmp) / "async", args.trials, PARALLEL + PRUNED)
            texts.append(async_table(batched, live, args.trials))
    text = "\n".join(texts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nWritten to {out}")


if __name__ == "__main__":
    main()
