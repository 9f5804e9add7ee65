"""Data preparation at real sizes (`make bench-data`, not part of `make test`): the framework against bare TRL, doing
the same work.

    python -m dpo_sweeps.bench.data                               # 30k and 100k rows, 3 repeats (est. ~1.5 h, 2 cores)
    python -m dpo_sweeps.bench.data --rows 5000 --repeats 3       # one small size (22 min on 2 busy cores)

For each size, a generated local jsonl (prompt/chosen/rejected strings), tiny_llama + LoRA r16, 2 training steps, the
reference cache off, an eval split of EVAL_ROWS rows evaluated once at the end, no generation (the framework's
generation eval and sample completions are off: bare TRL generates nothing); every point is its own process, as a
SLURM job is:

- bare TRL: `load_dataset("json")` + `train_test_split(test_size=100)` + TRL's DPOTrainer, the way one writes it by
  hand, tokenizing in one process (`dataset_num_proc` unset: TRL's default). Run twice: first with an empty
  `datasets` cache (uncached), then again (its `map`s hit that cache).
- the framework, `run_training` twice on one prepared-data cache (point 1 prepares the data, point 2 reads it), in two
  conditions: tokenizing in one process (`dataset.num_proc=1`: the same work as bare TRL), and with its default
  (the machine's cores from PARALLEL_MIN_ROWS rows on).

Per point: wall time of the process (imports included), data preparation time (bare TRL: `load_dataset` + the split +
TRL's `_prepare_dataset`; the framework: `load_preference_data`, which includes TRL's tokenization on a miss) and the
peak memory of the whole process tree (the point and its tokenizer workers), polled every POLL_S from the parent:
summed RSS (counts pages forked workers share with their parent once per process) and summed PSS (each shared page
split between its sharers: the memory the tree really holds). Each condition runs `--repeats` times (fresh caches
each time, conditions interleaved so that a change in the machine's load hits all of them); the table gives medians.
Printed and written to `--out` (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Small on purpose: on CPU, evaluating is the slow part of a 2-step point (1000 pairs take ~100 s on tiny_llama),
# and this benchmark is about preparing the data.
EVAL_ROWS = 100
BETAS = (0.1, 0.2)
TARGETS = {"first": 1.3, "second": 1.5, "rss": 1.2}
POLL_S = 0.1
WORDS = [
    "the",
    "model",
    "answer",
    "question",
    "data",
    "train",
    "learn",
    "prefer",
    "reply",
    "user",
    "helpful",
    "careful",
    "short",
    "long",
    "because",
    "therefore",
    "however",
    "example",
    "value",
    "number",
    "result",
    "step",
    "first",
    "second",
    "then",
    "finally",
    "explain",
    "check",
    "simple",
    "clear",
]


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """Preference pairs of realistic-ish length: a 20-60 word prompt, 30-120 word replies."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    with open(path, "w") as f:
        for i in range(rows):
            row = {"prompt": f"Q{i}: {text(20, 60)}", "chosen": text(30, 120), "rejected": text(30, 120)}
            f.write(json.dumps(row) + "\n")
    return path


# ------------------------------------------------------------------------------------------ one point, in a child


def _point_trl(data: Path, work: Path, beta: float) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from dpo_sweeps.models.tiny import ensure

    torch.set_num_threads(1)
    prep = 0.0
    original = DPOTrainer._prepare_dataset

    def timed(self, *args, **kwargs):
        nonlocal prep
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            prep += time.perf_counter() - t

    DPOTrainer._prepare_dataset = timed
    path = str(ensure("llama"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    t = time.perf_counter()
    split = load_dataset("json", data_files=str(data), split="train").train_test_split(test_size=EVAL_ROWS, seed=0)
    prep += time.perf_counter() - t
    args = DPOConfig(
        output_dir=str(work / "checkpoints"),
        beta=beta,
        max_length=1024,
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        use_cpu=True,
        gradient_checkpointing=False,
        bf16=False,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
    )
    from peft import LoraConfig

    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    trainer.evaluate()
    return {"prep_s": prep, "train_s": train_s, "eval_s": time.perf_counter() - t, "train_rows": len(split["train"])}


def _point_ours(data: Path, work: Path, beta: float, num_proc: int | None = None) -> dict[str, Any]:
    from dpo_sweeps.bench.cpu import _compose
    from dpo_sweeps.config.schema import register_schemas
    from dpo_sweeps.paths import register_path_resolvers
    from dpo_sweeps.train import trainer as train

    register_schemas()
    register_path_resolvers()
    prep = 0.0
    original = train.load_preference_data

    def timed(*args, **kwargs):
        nonlocal prep
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            prep += time.perf_counter() - t

    train.load_preference_data = timed
    cfg = _compose(
        [
            "model=tiny_llama",
            "dataset=local",
            f"dataset.path={data}",
            "training=smoke",
            "logger=none",
            "training.max_steps=2",
            "training.eval_before_training=false",
            # No generation: bare TRL generates nothing (eval.gen_prompts=0 alone turns the generation eval off once
            # it no longer takes max(gen_prompts, sample_completions); both are set so that it is off either way).
            "eval.gen_prompts=0",
            "training.sample_completions=0",
            "training.save_model=false",
            f"dataset.eval_max_rows={EVAL_ROWS}",
            "ref_cache.enabled=false",
            f"data_cache.dir={work.parent / 'data_cache'}",
            f"beta={beta}",
            *([f"dataset.num_proc={num_proc}"] if num_proc else []),
        ]
    )
    work.mkdir(parents=True, exist_ok=True)
    metrics = train.run_training(cfg, work)
    from dpo_sweeps.data.tokenize import num_proc as tokenizer_processes

    return {
        "num_proc": tokenizer_processes(cfg, metrics["data/train_rows"]) or 1,
        "prep_s": prep,
        "train_s": metrics["train_runtime"],
        "eval_s": metrics.get("eval_runtime"),
        "train_rows": metrics["data/train_rows"],
        "data_cache": metrics["data_cache"],
    }


def _child(which: str, data: str, work: str, beta: float) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if which == "trl":
        result = _point_trl(Path(data), Path(work), beta)
    else:  # "ours" (the framework's default processes) or "ours1" (one process, as bare TRL)
        result = _point_ours(Path(data), Path(work), beta, num_proc=1 if which == "ours1" else None)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------- the parent


def _tree_memory(pid: int) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of `pid` and all its descendants, read from /proc (psutil)."""
    import psutil

    rss = pss = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for proc in procs:
        try:
            full = proc.memory_full_info()  # smaps_rollup: pss too
            rss, pss = rss + full.rss, pss + full.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss / 2**20, pss / 2**20


def run_point(which: str, data: Path, work: Path, beta: float, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps.bench.data", "--child", which, str(data), str(work), str(beta)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        peak_rss = peak_pss = 0.0
        deadline = time.monotonic() + 3600
        while proc.poll() is None:
            rss, pss = _tree_memory(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{which} point failed:\n{stderr[-3000:]}")
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {"which": which, "wall_s": wall, "tree_rss_mb": peak_rss, "tree_pss_mb": peak_pss, **result}


def bench_once(data: Path, work: Path) -> dict[str, list[dict[str, Any]]]:
    """One repeat: bare TRL uncached + cached, the framework's first + second point with one process and with its
    default, each condition on fresh caches."""
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(work / "hf_datasets_cache"),  # bare TRL's first run starts with an empty cache
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(REPO),
    }
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "ours1": [], "ours": []}
    # Interleaved: first points of every condition, then second points.
    for i, beta in enumerate(BETAS):
        for which in runs:
            print(f"  {which} point {i + 1} ...", flush=True)
            runs[which].append(run_point(which, data, work / which / f"p{i}", beta, env))
    shutil.rmtree(work, ignore_errors=True)
    return runs


def bench_size(rows: int, work: Path, repeats: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    data = generate(work / f"prefs_{rows}.jsonl", rows)
    reps = []
    for r in range(repeats):
        print(f"{rows} rows, repeat {r + 1}/{repeats}:", flush=True)
        reps.append(bench_once(data, work / f"rep{r}"))
    return {"rows": rows, "repeats": reps}


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def _table(results: list[dict[str, Any]], repeats: int) -> str:
    def ok(ratio: float, target: float) -> str:
        return f"{ratio:.2f} (<= {target} {'ok' if ratio <= target else 'MISSED'})"

    lines = [
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}. Medians of {repeats} repeat(s).",
        "",
        "| rows | measure | bare TRL (1 process) | dpo_sweeps, 1 process | ratio (same work) | dpo_sweeps, default "
        "processes | ratio (each side's default) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = f"{r['rows'] // 1000}k" if r["rows"] >= 1000 else str(r["rows"])

        def row(measure: str, point: int, key: str, fmt: str, target: float | None = None, r=r, n=n) -> str:
            t, o1, o = (_median([rep[w][point][key] for rep in r["repeats"]]) for w in ("trl", "ours1", "ours"))
            ratio = (lambda x: ok(x, target)) if target else (lambda x: f"{x:.2f}")
            return (
                f"| {n} | {measure} | {fmt.format(t)} | {fmt.format(o1)} | {ratio(o1 / t)} | {fmt.format(o)} | "
                f"{ratio(o / t)} |"
            )

        procs = sorted({rep["ours"][0].get("num_proc") for rep in r["repeats"]} - {None})
        lines += [
            row("first point, wall (uncached)", 0, "wall_s", "{:.1f} s", TARGETS["first"]),
            row("second point, wall (cached)", 1, "wall_s", "{:.1f} s", TARGETS["second"]),
            row("data preparation, first point", 0, "prep_s", "{:.1f} s"),
            row("data preparation, second point", 1, "prep_s", "{:.2f} s"),
            row("train seconds, first point", 0, "train_s", "{:.1f} s"),
            row("eval seconds, first point", 0, "eval_s", "{:.1f} s"),
            row("peak RSS, whole process tree, first point", 0, "tree_rss_mb", "{:.0f} MB", TARGETS["rss"]),
            row("peak PSS, whole process tree, first point", 0, "tree_pss_mb", "{:.0f} MB", TARGETS["rss"]),
            row("peak PSS, whole process tree, second point", 1, "tree_pss_mb", "{:.0f} MB", TARGETS["rss"]),
        ]
        caches = {f"{rep['ours1'][0]['data_cache']}/{rep['ours1'][1]['data_cache']}" for rep in r["repeats"]}
        lines.append(f"| {n} | data cache, first/second point | | {', '.join(sorted(caches))} | | | |")
        if procs:
            lines.append(f"| {n} | tokenizer processes, default | 1 | 1 | | {procs} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2], argv[3], float(argv[4]))
        return
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="30000,100000", help="comma-separated dataset sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every condition; the table gives medians")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "data.md"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dpo_sweeps_bench_data_") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            results.append(bench_size(rows, Path(tmp) / str(rows), args.repeats))
    table = _table(results, args.repeats) + f"\nBench wall time: {time.perf_counter() - started:.0f} s.\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n" + table + f"\nWritten to {out} (raw runs: {out.with_suffix('.json')})")


if __name__ == "__main__":
    main()
