"""A local sweep, one point at a time against points in parallel (`make bench-local`, not part of the test suite).

    python -m dpo_sweeps.bench.local                                   # make demo's sweep, 2 repetitions
    python -m dpo_sweeps.bench.local --experiment smollm2_demo --reps 1   # make demo-real's (~20 min on 2 cores)
    python -m dpo_sweeps.bench.local --experiment smollm2_demo -- training.max_steps=4   # a shorter one

Runs `python -m dpo_sweeps experiment=<name>` under each variant, back to back, alternating their order from one
repetition to the next so that drift in the machine's load hits all of them:

- `sequential_1`: the points one after another in one process, one thread each (`hydra/launcher=local
  training.cpu_threads=1`: what make demo did before the local parallel launcher);
- `sequential_all`: one after another, each with all cores (`hydra/launcher=local training.cpu_threads=null`);
- `parallel`: the preset as it is (`hydra/launcher=local_parallel`: several points at once, cores shared).

Every run gets fresh caches (prepared data, reference log-probs) and its own sweep folder, so each pays what a first
`make demo` pays (the SmolLM2 conversion in ~/.cache/dpo_sweeps is made once beforehand and shared). For each run it
records the wall time, the CPU time of its processes, the load average before and after (the machine is shared),
the points' states, and how far each point's logged training losses and final metrics are from the first variant's
(same seeds: the same work). Prints a markdown table and writes it to `--out`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "sequential_1": ["hydra/launcher=local", "training.cpu_threads=1"],
    "sequential_all": ["hydra/launcher=local", "training.cpu_threads=null"],
    "parallel": [],
}
# Final metrics compared between variants (same seeds: the same work must give the same numbers).
COMPARED = ("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "gen/score_after")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _points(sweep_dir: Path) -> dict[str, dict]:
    """Per point folder name: state, logged losses by step, final metrics, threads."""
    out = {}
    for d in reading.point_dirs(sweep_dir):
        metrics = run_folder.read_json(d / run_folder.METRICS_FILE) or {}
        losses = {r["step"]: r["loss"] for r in run_folder.read_history(d) if "loss" in r}
        status = run_folder.read_status(d) or {}
        out[d.name] = {
            "state": status.get("state"),
            "losses": losses,
            "metrics": {k: metrics.get(k) for k in COMPARED},
            "threads": metrics.get("cpu_threads"),
        }
    return out


def run_variant(name: str, experiment: str, extra: list[str], work: Path) -> dict:
    root = work / name
    overrides = [
        f"experiment={experiment}",
        *VARIANTS[name],
        *extra,
        f"hydra.sweep.dir={root / 'sweep'}",
        f"ref_cache.dir={root / 'ref_cache'}",
        f"data_cache.dir={root / 'data_cache'}",
    ]
    load_before = os.getloadavg()
    cpu_before, started = _cpu_s(), time.perf_counter()
    with open(root.with_suffix(".log"), "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "dpo_sweeps", *overrides], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu_before
    points = _points(root / "sweep")
    return {
        "variant": name,
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
        "points": points,
        "log": str(root.with_suffix(".log")),
    }


def difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two runs' per-point losses and compared metrics (inf if the points or
    the logged steps differ)."""
    if set(a["points"]) != set(b["points"]):
        return float("inf")
    worst = 0.0
    for name, pa in a["points"].items():
        pb = b["points"][name]
        if set(pa["losses"]) != set(pb["losses"]):
            return float("inf")
        pairs = [(pa["losses"][s], pb["losses"][s]) for s in pa["losses"]]
        pairs += [(pa["metrics"][k], pb["metrics"][k]) for k in COMPARED if pa["metrics"][k] is not None]
        for x, y in pairs:
            if y is None:
                return float("inf")
            worst = max(worst, abs(float(x) - float(y)))
    return worst


def _table(runs: list[dict], experiment: str, extra: list[str]) -> str:
    lines = [
        f"`python -m dpo_sweeps experiment={experiment} {' '.join(extra)}`".replace(" `", "`"),
        f"on {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average (1 min) before/after each run shown: the machine is shared.",
        "",
        "| rep | variant | wall (s) | CPU (s) | threads per point | points completed | load before/after | "
        "max diff vs sequential_1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_rep: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_rep.setdefault(r["rep"], {})[r["variant"]] = r
    for rep, variants in sorted(by_rep.items()):
        base = variants.get("sequential_1")
        for name in VARIANTS:
            if name not in variants:
                continue
            r = variants[name]
            threads = sorted({p["threads"] for p in r["points"].values()}, key=str)
            done = sum(p["state"] == run_folder.COMPLETED for p in r["points"].values())
            diff = "-" if base is None or name == "sequential_1" else f"{difference(base, r):.2g}"
            lines.append(
                f"| {rep} | {name} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {', '.join(map(str, threads))} | "
                f"{done}/{len(r['points'])} | {r['load_before']:.1f}/{r['load_after']:.1f} | {diff} |"
            )
    medians = {
        name: statistics.median(r["wall_s"] for r in runs if r["variant"] == name)
        for name in VARIANTS
        if any(r["variant"] == name for r in runs)
    }
    if "sequential_1" in medians:
        lines.append("")
        lines.append(
            "Median wall time: "
            + ", ".join(
                f"{n} {s:.0f} s ({medians['sequential_1'] / s:.2f}x of sequential_1)" for n, s in medians.items()
            )
        )
    return "\n".join(lines)


def warm_model_cache(experiment: str, extra: list[str]) -> None:
    """Build what every variant would otherwise find built by the first one: the tiny model or the SmolLM2
    conversion in ~/.cache/dpo_sweeps (a user's second `make demo` finds them there too)."""
    from hydra import compose, initialize_config_dir

    from dpo_sweeps.cli import CONF_DIR
    from dpo_sweeps.models.loading import model_path

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", *extra])
    print(f"Model for {experiment}: {model_path(cfg)} (built once, outside the timings)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "local_sweep.md")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run (after --)")
    args = parser.parse_args(argv)
    warm_model_cache(args.experiment, args.overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_local_", dir=REPO / "outputs"))
    runs, table = [], ""
    for rep in range(args.reps):
        order = args.variants if rep % 2 == 0 else list(reversed(args.variants))
        for name in order:
            (work / f"{rep}").mkdir(exist_ok=True)
            r = run_variant(name, args.experiment, args.overrides, work / f"{rep}")
            r["rep"] = rep
            runs.append(r)
            print(
                f"rep {rep} {name}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, exit {r['rc']}, load "
                f"{r['load_before']:.1f} -> {r['load_after']:.1f} (log {r['log']})",
                flush=True,
            )
            # After every run: a long benchmark stopped half-way still leaves what it measured.
            table = _table(runs, args.experiment, args.overrides)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table + "\n")
    print(table)
    print(f"Written to {args.out}; runs kept in {work}")


if __name__ == "__main__":
    main()
