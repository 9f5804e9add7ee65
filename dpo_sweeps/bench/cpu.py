"""Benchmarks (`make bench`, not part of `make test`): what the framework costs and what the reference cache saves.

    python -m dpo_sweeps.bench                       # all three, 3 repetitions each, ~5 min on 2 CPU cores
    python -m dpo_sweeps.bench --only sweep --reps 5 # one section

1. sweep:   a 4-point beta sweep (tiny_qwen, toy set, two epochs, eval before and after) with the reference cache
            against the same sweep without it; wall time and reference forward batches.
2. trl:     `run_training` (ref_cache off) against a bare TRL script doing the same training (same model, data, seed, steps):
            seconds per step, total, and the largest difference between their logged losses.
3. startup: `python -m dpo_sweeps --help` against `trl dpo --help`, and a 64-point sweep composed, validated and
            listed by `dry_run=true` (the work done before anything is submitted).

Each figure is a ratio of two things measured side by side in the same process (alternating their order from one
repetition to the next, so that drift in the machine's load hits both), repeated `--reps` times; the table gives the
median. The table is printed and written to `--out` (markdown).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = ["model=tiny_qwen", "dataset=toy", "training=smoke", "logger=none"]
# Two epochs over the toy set (192 train rows, 48 steps of 8; `training=smoke` itself runs 40): the cache's precompute
# pass covers each row once, training reads it twice, and both evals (before, after) read the cached reference too.
# The tiny model's fixed per-run cost (load, tokenize, set up: ~1 s) dilutes the saving; at one epoch the sweep saves
# ~15% on a quiet machine, at two ~22%. On real models the reference forward is a larger share of the step.
SWEEP = [*TINY, "training.max_steps=-1", "training.num_train_epochs=2", "training.save_model=false"]
BETAS = (0.05, 0.1, 0.2, 0.4)
TARGETS = {"sweep": 0.85, "trl_step": 1.05}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from dpo_sweeps.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


class _RefForwardCounter:
    """Counts reference forward batches in runs without the cache: TRL runs one per `_compute_loss` call there."""

    def __init__(self):
        from trl import DPOTrainer

        self.calls = 0
        original = DPOTrainer._compute_loss

        def counting(trainer, *args, **kwargs):
            if not trainer.precompute_ref_logps:
                self.calls += 1
            return original(trainer, *args, **kwargs)

        DPOTrainer._compute_loss = counting


def _median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------------------------- 1. beta sweep


def bench_sweep(reps: int, work: Path) -> list[dict[str, Any]]:
    from dpo_sweeps.train.trainer import run_training

    counter = _RefForwardCounter()

    def sweep(with_cache: bool, rep: int) -> tuple[float, int, list[str]]:
        cache = work / f"cache-{rep}"
        shutil.rmtree(cache, ignore_errors=True)
        counter.calls, batches, states = 0, 0, []
        started = time.perf_counter()
        for beta in BETAS:
            run_dir = work / f"sweep-{with_cache}-{rep}-{beta}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            cfg = _compose([*SWEEP, f"beta={beta}", f"ref_cache.enabled={with_cache}", f"ref_cache.dir={cache}"])
            metrics = run_training(cfg, run_dir)
            batches += metrics.get("ref_cache/forward_batches", 0)
            states.append(metrics["ref_cache"])
        return time.perf_counter() - started, batches + counter.calls, states

    sweep(False, -1)  # warm-up: first-call costs (lazy imports, kernels) belong to neither side
    rows = []
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        result = {with_cache: sweep(with_cache, rep) for with_cache in order}
        (t_off, f_off, _), (t_on, f_on, states) = result[False], result[True]
        rows.append({"off_s": t_off, "on_s": t_on, "ratio": t_on / t_off, "fwd_off": f_off, "fwd_on": f_on})
        print(f"  sweep rep {rep}: off {t_off:.1f}s ({f_off} ref batches), cache {t_on:.1f}s ({f_on}, {states})")
    return rows


# ------------------------------------------------------------------------------------------ 2. framework vs TRL


def bare_trl(run_dir: Path) -> tuple[float, float, int, list[float]]:
    """The same training as `SMOKE` written as a plain TRL script, the way one would without the framework."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.models.tiny import ensure

    started = time.perf_counter()
    torch.set_num_threads(1)
    set_seed(42)
    path = str(ensure("qwen2"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    # The same rows in the same order as the framework's data path (its shuffle and hold-out): what is compared is
    # the training, not two ways of splitting the toy set.
    data = load_preference_data(_compose(TINY), tokenizer)
    args = DPOConfig(
        output_dir=str(run_dir / "checkpoints"),
        beta=0.1,
        max_length=128,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        # The framework's default optimizer (TRL's default, the fused AdamW, differs in the last float bits).
        optim="adamw_torch",
        max_steps=40,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        gradient_accumulation_steps=1,
        logging_steps=5,
        save_steps=20,
        save_total_limit=1,
        use_cpu=True,
        # TRL's DPOConfig defaults (gradient checkpointing on, bf16 on) do not suit a tiny fp32 CPU run.
        gradient_checkpointing=False,
        bf16=False,
        seed=42,
        data_seed=42,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
    )
    result = trainer.train()
    trainer.evaluate()
    trainer.save_model(str(run_dir / "adapter"))
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return time.perf_counter() - started, result.metrics["train_runtime"], trainer.state.global_step, losses


def framework(run_dir: Path) -> tuple[float, float, int, list[float]]:
    from dpo_sweeps.runs import folder as run_folder
    from dpo_sweeps.train.trainer import run_training

    started = time.perf_counter()
    # Same work as the bare script: no eval before training, no sample completions; the reference on the fly, as TRL
    # does by default.
    cfg = _compose(
        [*TINY, "training.eval_before_training=false", "training.sample_completions=0", "ref_cache.enabled=false"]
    )
    metrics = run_training(cfg, run_dir)
    run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, metrics)
    losses = [r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r]
    return time.perf_counter() - started, metrics["train_runtime"], metrics["global_step"], losses


def bench_trl(reps: int, work: Path) -> list[dict[str, Any]]:
    runners = {"trl": bare_trl, "ours": framework}
    rows = []
    for rep in range(-1, reps):  # rep -1: warm-up
        order = ("trl", "ours") if rep % 2 == 0 else ("ours", "trl")
        out = {}
        for name in order:
            run_dir = work / f"{name}-{rep}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            out[name] = runners[name](run_dir)
        if rep < 0:
            continue
        (total_t, train_t, steps_t, loss_t), (total_o, train_o, steps_o, loss_o) = out["trl"], out["ours"]
        assert steps_t == steps_o, (steps_t, steps_o)
        diff = max(abs(a - b) for a, b in zip(loss_t, loss_o, strict=True))
        rows.append(
            {
                "step_trl": train_t / steps_t,
                "step_ours": train_o / steps_o,
                "step_ratio": (train_o / steps_o) / (train_t / steps_t),
                "total_trl": total_t,
                "total_ours": total_o,
                "total_ratio": total_o / total_t,
                "loss_diff": diff,
                "steps": steps_o,
            }
        )
        print(
            f"  trl rep {rep}: step {train_t / steps_t * 1e3:.0f} ms vs ours {train_o / steps_o * 1e3:.0f} ms, "
            f"max |loss diff| {diff:.2e}"
        )
    return rows


# ------------------------------------------------------------------------------------------------ 3. start-up

# The user's path: a 64-point sweep (4 betas x 4 losses x 2 LoRA options x 2 seeds) composed, validated and listed
# by `dry_run=true`, which submits nothing; the check that no point imported torch is the `--help` test's.
SWEEP_64 = [
    "-m",
    "model=tiny_qwen",
    "dataset=toy",
    "logger=none",
    "beta=0.05,0.1,0.2,0.4",
    "loss=sigmoid,ipo,hinge,robust",
    "lora=r16,none",
    "seed=1,2",
    "dry_run=true",
]


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def bench_startup(reps: int) -> list[dict[str, Any]]:
    trl_cli = shutil.which("trl", path=str(Path(sys.executable).parent)) or "trl"
    rows = []
    for rep in range(reps):
        ours = _timed([sys.executable, "-m", "dpo_sweeps", "--help"])
        theirs = _timed([trl_cli, "dpo", "--help"])
        with tempfile.TemporaryDirectory() as sweep_dir:
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "dpo_sweeps", *SWEEP_64, f"hydra.sweep.dir={sweep_dir}"],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            compose_wall = time.perf_counter() - started
        if proc.returncode != 0 or "Sweep: 64 point(s)" not in proc.stdout:
            raise RuntimeError(f"the 64-point dry run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        rows.append(
            {
                "help_ours": ours,
                "help_trl": theirs,
                "help_ratio": ours / theirs,
                "compose64": compose_wall,
                "compose64_ratio": compose_wall / theirs,
            }
        )
        print(f"  startup rep {rep}: --help {ours:.2f}s vs trl dpo --help {theirs:.2f}s; 64 points {compose_wall:.2f}s")
    return rows


# --------------------------------------------------------------------------------------------------- the table


def _table(results: dict[str, list[dict[str, Any]]], reps: int) -> str:
    med = {name: {k: _median([r[k] for r in rows]) for k in rows[0]} for name, rows in results.items() if rows}
    lines = [
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, no GPU. Medians of {reps} repetitions (each column and each ratio separately: the "
        "ratio is the median of per-repetition ratios, both sides measured back to back in one process).",
        "",
        "| benchmark | without / baseline | with / ours | ratio | target |",
        "|---|---|---|---|---|",
    ]
    if "sweep" in med:
        m = med["sweep"]
        lines += [
            f"| 4-point beta sweep, wall time | {m['off_s']:.1f} s | {m['on_s']:.1f} s | {m['ratio']:.2f} | "
            f"<= {TARGETS['sweep']} {'ok' if m['ratio'] <= TARGETS['sweep'] else 'MISSED'} |",
            f"| 4-point beta sweep, reference forward batches | {m['fwd_off']:.0f} | {m['fwd_on']:.0f} | "
            f"{m['fwd_on'] / m['fwd_off']:.2f} | |",
        ]
    if "trl" in med:
        m = med["trl"]
        lines += [
            f"| time per training step, bare TRL vs framework | {m['step_trl'] * 1e3:.0f} ms | "
            f"{m['step_ours'] * 1e3:.0f} ms | {m['step_ratio']:.3f} | <= {TARGETS['trl_step']} "
            f"{'ok' if m['step_ratio'] <= TARGETS['trl_step'] else 'MISSED'} |",
            f"| total ({m['steps']:.0f} steps + eval + save), bare TRL vs framework | {m['total_trl']:.1f} s | "
            f"{m['total_ours']:.1f} s | {m['total_ratio']:.2f} | |",
            f"| largest train-loss difference, bare TRL vs framework | | {max(r['loss_diff'] for r in results['trl']):.1e} "
            "| | identical |",
        ]
    if "startup" in med:
        m = med["startup"]
        lines += [
            f"| `--help`: `trl dpo --help` vs `python -m dpo_sweeps --help` | {m['help_trl']:.2f} s | "
            f"{m['help_ours']:.2f} s | {m['help_ratio']:.2f} | |",
            f"| `python -m dpo_sweeps -m <64 points> dry_run=true` (compose + validate + list) vs one `trl dpo --help` | {m['help_trl']:.2f} s | "
            f"{m['compose64']:.2f} s | {m['compose64_ratio']:.2f} | |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpo_sweeps.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="sweep,trl,startup", help="comma-separated: sweep, trl, startup")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "latest.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from dpo_sweeps.config.schema import register_schemas
    from dpo_sweeps.paths import register_path_resolvers

    register_schemas()
    register_path_resolvers()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo_sweeps_bench_") as tmp:
        work = Path(tmp)
        if "startup" in sections:
            print("start-up ...")
            results["startup"] = bench_startup(args.reps)
        if "sweep" in sections:
            print("beta sweep with and without the reference cache ...")
            results["sweep"] = bench_sweep(args.reps, work / "sweep")
        if "trl" in sections:
            print("framework against bare TRL ...")
            results["trl"] = bench_trl(args.reps, work / "trl")
    table = _table(results, args.reps) + f"\nBench wall time: {time.perf_counter() - started:.0f} s.\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print("\n" + table + f"\nWritten to {out}")


if __name__ == "__main__":
    main()
