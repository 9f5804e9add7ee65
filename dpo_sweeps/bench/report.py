"""Reading a big sweep back: `status`, `report` and the summary page at 100, 1,000 and 10,000 points
(`make bench-report`, not part of the test suite).

    python -m dpo_sweeps.bench.report                          # trains make demo's 3 points once, then 100/1000/10000
    python -m dpo_sweeps.bench.report --source outputs/sweeps/demo --points 100 1000

The sweeps are built from real completed run folders (`--source`: a sweep folder or run folders; by default make
demo's sweep is trained into a temporary folder first): each synthetic point is a copy of one of them, its small
files (status.json, metrics.json, metrics.jsonl, progress.json, config.yaml, samples.jsonl) rewritten with its own
overrides (`beta` x `training.learning_rate`, two swept parameters, as a grid search has) and its numbers scaled a
little so that points differ. The adapter weights are not copied: no reader opens them. The sweep gets a
sweep_points.json as a launched sweep has. Each step runs as its own process, as a person runs it:

- `status`: `python -m dpo_sweeps.status <sweep> --no-slurm` (the run folders only);
- `report`: `python -m dpo_sweeps.report <sweep>` (summary.csv/md, every plot and summary.html);
- `page`: summary.html opened in headless chromium (where installed), driven in real time (report/cdp.py): when
  the table with every point is painted and the page answers clicks (`usable`, the page's own clock), how long a
  mouse click on a point then takes to show its answers, and when every plot is drawn (see `page_timings`).

Prints a markdown table (seconds and seconds per point) with the machine and its load average, and writes it to
`--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading

REPO = Path(__file__).resolve().parents[2]
# What a reader of a point opens; the adapter/model weights are left behind (nobody reads them back).
SMALL_FILES = (
    run_folder.CONFIG_FILE,
    run_folder.SAMPLES_FILE,
    run_folder.PROGRESS_FILE,
    run_folder.MODEL_CARD_FILE,
)
# Final metrics scaled per point (so that ranks, frontier and heatmap have something to show).
# A loaded machine can take minutes to start chromium and parse a 10,000-point page.
PAGE_TIMEOUT_S = 300
SCALED = ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss", "gen/score_after", "gen/kl_to_ref")


def source_runs(paths: list[Path]) -> list[Path]:
    """Completed run folders from the paths given (a sweep folder stands for its completed points)."""
    runs = []
    for path in paths:
        candidates = reading.all_point_dirs(path) if not (path / run_folder.STATUS_FILE).exists() else [path]
        runs += [d for d in candidates if (run_folder.read_status(d) or {}).get("state") == run_folder.COMPLETED]
    if not runs:
        raise SystemExit(
            f"error: no completed run folder in {', '.join(map(str, paths))}; give --source a sweep folder"
        )
    return runs


def train_demo(workdir: Path) -> Path:
    """make demo's 3 points into `workdir` (a few minutes on a loaded 2-core machine)."""
    sweep = workdir / "demo"
    cmd = [sys.executable, "-m", "dpo_sweeps", "experiment=demo", f"hydra.sweep.dir={sweep}"]
    print("training the source points:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return sweep


def grid(n: int) -> list[tuple[float, float]]:
    """n (beta, learning rate) pairs: a near-square grid, so that both swept parameters vary."""
    n_beta = max(1, round(math.sqrt(n)))
    n_lr = math.ceil(n / n_beta)
    betas = [round(0.01 + 0.99 * i / max(1, n_beta - 1), 6) for i in range(n_beta)]
    lrs = [float(f"{1e-5 * 10 ** (2 * j / max(1, n_lr - 1)):.4g}") for j in range(n_lr)]
    return [(b, lr) for lr in lrs for b in betas][:n]


def _gain(beta: float, lr: float, i: int) -> float:
    """A smooth bump over the grid (best near beta 0.3, lr 1e-4) plus a little per-point wobble."""
    return 1.0 + 0.3 * math.exp(-((beta - 0.3) ** 2) / 0.05 - (math.log10(lr) + 4) ** 2) + 0.02 * math.sin(i)


def synthetic(metrics: dict, beta: float, lr: float, i: int) -> dict:
    """Made-up final numbers with the shape a real sweep has (accuracies <= 1; the policy moves further from the
    reference with a higher learning rate and a lower beta, and its score saturates with that KL), so that the plots
    and the page have something to show; the bench measures reading and drawing, not these values."""
    gain = _gain(beta, lr, i)
    out = {k: v * gain for k, v in metrics.items() if k in SCALED and isinstance(v, int | float)}
    if "eval_rewards/accuracies" in out:
        out["eval_rewards/accuracies"] = min(1.0, 0.6 * gain + 0.05 * math.sin(3 * i))
    if "gen/kl_to_ref" in metrics:
        kl = 0.05 + 3.0 * math.sqrt(lr / 1e-3) / (1 + 4 * beta) * (1 + 0.1 * math.sin(7 * i))
        score = 0.9 * (1 - math.exp(-1.2 * kl)) - 0.15 * max(0.0, kl - 1.5) + 0.03 * math.sin(5 * i)
        out.update({"gen/kl_to_ref": kl, "gen/score_after": score, "gen/win_rate_vs_ref": 0.5 + score / 2.5})
    return out


def build_sweep(sources: list[Path], dest: Path, n: int) -> Path:
    """A sweep folder of `n` points copied from `sources` (round robin), each with its own overrides and numbers."""
    dest.mkdir(parents=True, exist_ok=True)
    templates = []
    for src in sources:
        status = run_folder.read_status(src) or {}
        metrics = run_folder.read_json(src / run_folder.METRICS_FILE) or {}
        history = run_folder.read_history(src)
        templates.append((src, status, metrics, history))
    points = []
    for i, (beta, lr) in enumerate(grid(n)):
        src, status, metrics, history = templates[i % len(templates)]
        overrides = [f"beta={beta}", f"training.learning_rate={lr}"]
        run_dir = dest / ",".join(sorted(overrides))
        run_dir.mkdir()
        for name in SMALL_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, run_dir / name)
        run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, {**metrics, **synthetic(metrics, beta, lr, i)})
        gain = _gain(beta, lr, i)
        lines = [
            json.dumps({k: (v * gain if k in ("loss", "eval_loss", "rewards/margins") else v) for k, v in row.items()})
            for row in history
        ]
        (run_dir / run_folder.HISTORY_FILE).write_text("".join(line + "\n" for line in lines))
        run_folder.write_json_atomic(
            run_dir / run_folder.STATUS_FILE, {**status, "overrides": overrides, "run_dir": str(run_dir)}
        )
        points.append({"run_dir": str(run_dir), "overrides": overrides})
    run_folder.write_json_atomic(dest / run_folder.SWEEP_POINTS_FILE, points)
    return dest


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command: on a shared machine the CPU time is the steadier figure."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 3):  # status: 3 = points still running (none here)
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed, _children_cpu_s() - cpu


def page_timings(html: Path) -> dict[str, float] | None:
    """summary.html in headless chromium, in real time (seconds since navigation, from the page's own clock):
    `usable`: the table with every point painted; `click`: from then, a mouse click on the last row's point until
    its answers are shown (the plots are being drawn meanwhile: a click waits for the drawing step under way);
    `ready`: every plot drawn and painted. None where chromium is not installed."""
    from dpo_sweeps.report.browser import chromium_path
    from dpo_sweeps.report.cdp import BrowserError, live_page

    if not chromium_path():
        return None
    try:
        with live_page(html) as tab:
            usable = float(tab.wait_for("document.body?.dataset.usableMs", timeout=PAGE_TIMEOUT_S)) / 1000
            rows = tab.evaluate("document.querySelectorAll('#rows tr').length")
            last = tab.evaluate("document.querySelector('#rows tr:last-child').dataset.point")
            start = time.perf_counter()
            tab.click('#rows tr:last-child a[href^="#point="]')
            shown = f"document.getElementById('detail-name')?.textContent === {json.dumps(last)}"
            tab.wait_for(shown, timeout=PAGE_TIMEOUT_S, every=0.01)
            click = time.perf_counter() - start
            ready = float(tab.wait_for("document.body?.dataset.readyMs", timeout=PAGE_TIMEOUT_S)) / 1000
            errors = tab.evaluate("document.getElementById('errors').textContent")
    except BrowserError as e:
        print(f"  (chromium on {html}: {e})", flush=True)
        return None
    if errors or rows != len(reading.all_point_dirs(html.parent)):
        print(f"  ({html}: {rows} rows in the table; script errors: {errors.strip() or 'none'})", flush=True)
    return {"usable": usable, "click": click, "ready": ready, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, nargs="*", help="completed run folders or sweep folders to copy")
    parser.add_argument("--points", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_report.md")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic sweeps (printed) instead of deleting")
    args = parser.parse_args(argv)

    (REPO / "outputs").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_report_", dir=REPO / "outputs"))
    sources = source_runs(args.source or [train_demo(work)])
    load_before = os.getloadavg()
    rows = []
    for n in args.points:
        sweep = build_sweep(sources, work / f"sweep_{n}", n)
        status = timed([sys.executable, "-m", "dpo_sweeps.status", str(sweep), "--no-slurm"])
        report = timed([sys.executable, "-m", "dpo_sweeps.report", str(sweep)])
        print(f"{n} points: status {status[0]:.2f} s ({status[1]:.2f} CPU), report {report[0]:.2f} s "
              f"({report[1]:.2f} CPU)", flush=True)  # fmt: skip
        page = page_timings(sweep / "summary.html")
        rows.append((n, status, report, page, (sweep / "summary.html").stat().st_size / 1e6))
        print(f"{n} points: page {page}", flush=True)
        if not args.keep:
            shutil.rmtree(sweep)
    load_after = os.getloadavg()
    lines = [
        f"Machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (1 min). Source points: {len(sources)} completed "
        f"run folder(s) of {sources[0].parent}. Wall seconds (CPU seconds of the process in brackets).",
        "",
        "| points | status (s) | status s/point | report (s) | report s/point | page usable (s) | click to answers (s) "
        "| all plots drawn (s) | page size (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, (sw, sc), (rw, rc), page, mb in rows:
        seen = ["-"] * 3 if page is None else [f"{page[k]:.2f}" for k in ("usable", "click", "ready")]
        lines.append(
            f"| {n} | {sw:.2f} ({sc:.2f}) | {sw / n:.5f} | {rw:.2f} ({rc:.2f}) | {rw / n:.5f} | {' | '.join(seen)} "
            f"| {mb:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    if args.keep:
        print(f"synthetic sweeps kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
