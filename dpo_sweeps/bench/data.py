"""Data preparation at real sizes (`make bench-data`, not part of `make test`): the framework against bare TRL.

    python -m dpo_sweeps.bench.data                      # 30k and 100k rows, ~10 min on 2 busy CPU cores
    python -m dpo_sweeps.bench.data --rows 30000         # one size

For each size, a generated local jsonl (prompt/chosen/rejected strings), tiny_llama, 2 training steps, the reference
cache off, an eval split of EVAL_ROWS rows evaluated once at the end; every point is its own process, as a SLURM job is:

- bare TRL: `load_dataset("json")` + `train_test_split(test_size=100)` + TRL's DPOTrainer, the way one writes it by
  hand. Run twice: first with an empty `datasets` cache (uncached), then again (its `map`s hit that cache).
- the framework: `run_training` for a 4-point beta sweep sharing one prepared-data cache (point 1 prepares the data,
  points 2-4 read it).

Per point: wall time of the process (imports included), data preparation time (bare TRL: `load_dataset` + the
split + TRL's `_prepare_dataset`; the framework: `load_preference_data`, which includes TRL's tokenization on a miss)
and peak RSS (the process's ru_maxrss). The table is printed and written to `--out` (markdown).
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
BETAS = (0.1, 0.2, 0.3, 0.4)
TARGETS = {"first": 1.3, "second": 1.5, "rss": 1.2}
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


def _point_ours(data: Path, work: Path, beta: float) -> dict[str, Any]:
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
            "training.sample_completions=0",
            "training.save_model=false",
            f"dataset.eval_max_rows={EVAL_ROWS}",
            "ref_cache.enabled=false",
            f"data_cache.dir={work.parent / 'data_cache'}",
            f"beta={beta}",
        ]
    )
    work.mkdir(parents=True, exist_ok=True)
    metrics = train.run_training(cfg, work)
    return {
        "prep_s": prep,
        "train_s": metrics["train_runtime"],
        "eval_s": metrics.get("eval_runtime"),
        "train_rows": metrics["data/train_rows"],
        "data_cache": metrics["data_cache"],
    }


def _child(which: str, data: str, work: str, beta: float) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    import resource

    fn = {"trl": _point_trl, "ours": _point_ours}[which]
    result = fn(Path(data), Path(work), beta)
    # ru_maxrss is in KiB on Linux. Tokenizer worker processes (dataset_num_proc) are reported apart: forked from
    # this process, they share most of its pages, so adding the two would count those twice.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------- the parent


def run_point(which: str, data: Path, work: Path, beta: float, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps.bench.data", "--child", which, str(data), str(work), str(beta)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{which} point failed:\n{err[-3000:]}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {"which": which, "wall_s": wall, **result}


def bench_size(rows: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    data = generate(work / f"prefs_{rows}.jsonl", rows)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(work / "hf_datasets_cache"),  # bare TRL's first run starts with an empty cache
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(REPO),
    }
    # Interleaved, so that a change in the machine's load between the start and the end hits both sides.
    print(f"{rows} rows: bare TRL, uncached ...", flush=True)
    trl_first = run_point("trl", data, work / "trl1", BETAS[0], env)
    ours = []
    for i, beta in enumerate(BETAS):
        if i == 1:
            print(f"{rows} rows: bare TRL, cached ...", flush=True)
            trl_second = run_point("trl", data, work / "trl2", BETAS[1], env)
        print(f"{rows} rows: framework point {i + 1} (beta={beta}) ...", flush=True)
        ours.append(run_point("ours", data, work / f"ours{i}", beta, env))
    shutil.rmtree(work / "hf_datasets_cache", ignore_errors=True)
    return {"rows": rows, "trl": [trl_first, trl_second], "ours": ours}


def _table(results: list[dict[str, Any]]) -> str:
    def ok(ratio: float, target: float) -> str:
        return f"<= {target} {'ok' if ratio <= target else 'MISSED'}"

    lines = [
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "",
        "| rows | measure | bare TRL | dpo_sweeps | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        (t1, t2), ours = r["trl"], r["ours"]
        n = f"{r['rows'] // 1000}k"
        first, second = ours[0]["wall_s"] / t1["wall_s"], ours[1]["wall_s"] / t2["wall_s"]
        rss = max(o["peak_rss_mb"] for o in ours) / max(t["peak_rss_mb"] for t in (t1, t2))
        sweep_prep = sum(o["prep_s"] for o in ours)
        lines += [
            f"| {n} | train / eval seconds, first point | {t1['train_s']:.1f} / {t1['eval_s']:.1f} s | "
            f"{ours[0]['train_s']:.1f} / {ours[0]['eval_s']:.1f} s | | |",
            f"| {n} | first point, wall (uncached) | {t1['wall_s']:.1f} s | {ours[0]['wall_s']:.1f} s | {first:.2f} | "
            f"{ok(first, TARGETS['first'])} |",
            f"| {n} | second point, wall (cached) | {t2['wall_s']:.1f} s | {ours[1]['wall_s']:.1f} s | {second:.2f} | "
            f"{ok(second, TARGETS['second'])} |",
            f"| {n} | data preparation, first / second point | {t1['prep_s']:.1f} / {t2['prep_s']:.1f} s | "
            f"{ours[0]['prep_s']:.1f} / {ours[1]['prep_s']:.1f} s | | |",
            f"| {n} | 4-point beta sweep, total preparation (vs the first point's) | | {sweep_prep:.1f} s "
            f"({ours[0]['prep_s']:.1f} s) | {sweep_prep / ours[0]['prep_s']:.2f} | about 1 |",
            f"| {n} | peak RSS (largest point) | {max(t['peak_rss_mb'] for t in (t1, t2)):.0f} MB | "
            f"{max(o['peak_rss_mb'] for o in ours):.0f} MB | {rss:.2f} | {ok(rss, TARGETS['rss'])} |",
            f"| {n} | data cache per point; tokenizer workers' peak RSS | | "
            f"{', '.join(o['data_cache'] for o in ours)}; {max(o['workers_peak_rss_mb'] for o in ours):.0f} MB | | |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2], argv[3], float(argv[4]))
        return
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="30000,100000", help="comma-separated dataset sizes")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "data.md"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dpo_sweeps_bench_data_") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            results.append(bench_size(rows, Path(tmp) / str(rows)))
    table = _table(results) + f"\nBench wall time: {time.perf_counter() - started:.0f} s.\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print("\n" + table + f"\nWritten to {out}")


if __name__ == "__main__":
    main()
