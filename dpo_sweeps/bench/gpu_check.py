"""`make gpu-check`: the GPU-only path, run for real on one NVIDIA GPU (under 8 minutes on an H100/H200).

    python -m dpo_sweeps.bench.gpu_check            # prints a table; outputs/bench/gpu_check.md
    python -m dpo_sweeps.bench.gpu_check --steps 20

The CPU suite forces FSDP onto gloo and checks NCCL's rules from test code (docs/distributed.md); this runs what it
cannot: SmolLM2-135M-Instruct (from its PyPI package, no hub) through the normal CLI on CUDA,
1. full DPO with FSDP2 on NCCL, one rank under torchrun, nothing forced, with the generation eval before and after
   training (on the prepared model: the eval NCCL would refuse on an unprepared one);
2. LoRA, full, and full with the reference cache: peak GPU memory (`torch.cuda.max_memory_allocated`, metrics.json)
   against the estimator (dpo_sweeps/slurm/memory.py), and seconds per step;
3. bare TRL on the same model, data, batch and steps: seconds per step.
Without a GPU it says so and exits 0 at once (no torch import: it looks for the NVIDIA driver first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NO_GPU = "make gpu-check: no NVIDIA GPU on this machine ({why}); nothing was run. It needs one CUDA GPU."
CONFIGS = {
    "LoRA r16": ["lora=r16"],
    "full": ["lora=none", "ref_cache.enabled=false"],
    "full + ref cache": ["lora=none", "ref_cache.enabled=true"],
}
WARMUP = 3


def gpu_missing() -> str | None:
    """Why there is no GPU here, or None: the driver first (instant), then torch."""
    if not (shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists()):
        return "no NVIDIA driver: neither nvidia-smi nor /dev/nvidia0"
    import torch

    return None if torch.cuda.is_available() else "torch.cuda.is_available() is False"


def common(work: Path, steps: int, batch: int) -> list[str]:
    return [
        "model=smollm2_135m",
        "model.dtype=bfloat16",
        "dataset=opener",
        "logger=none",
        f"training.max_steps={steps}",
        f"training.per_device_train_batch_size={batch}",
        "training.gradient_accumulation_steps=1",
        "training.logging_steps=1",
        "training.save_model=false",
        f"training.save_steps={steps * 10}",
        "eval.gen_prompts=8",
        f"ref_cache.dir={work / 'ref_cache'}",
        f"data_cache.dir={work / 'data_cache'}",
    ]


def run_point(name: str, argv: list[str], run_dir: Path) -> dict:
    started = time.time()
    proc = subprocess.run([*argv, f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stdout + proc.stderr)[-3000:]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    train = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    window = train[WARMUP:]
    per_step = (window[-1]["time"] - window[0]["time"]) / max(1, window[-1]["step"] - window[0]["step"])
    return {"name": name, "s_per_step": per_step, "metrics": metrics, "wall_s": time.time() - started}


def estimate_gib(overrides: list[str], world: int = 1) -> float | None:
    """The estimator's allocated GiB (what max_memory_allocated reports) for this point's config."""
    from hydra import compose, initialize_config_dir

    from dpo_sweeps.cli import CONF_DIR
    from dpo_sweeps.slurm.memory import GIB, estimate
    from dpo_sweeps.slurm.memory_check import arch_for, run_settings

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    arch, _ = arch_for(cfg)
    run, _ = run_settings(cfg, world, arch) if arch else (None, "")
    return estimate(arch, run).allocated / GIB if run else None


def bare_trl_s_per_step(work: Path, steps: int, batch: int) -> float:
    """Plain TRL on the same model, data (the framework's prepared split) and batch: seconds per optimizer step."""
    import torch
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dpo_sweeps.cli import CONF_DIR
    from dpo_sweeps.data import load_preference_data
    from dpo_sweeps.models.loading import load_tokenizer, model_path

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*common(work, steps, batch), "lora=none"])
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(model_path(cfg), dtype=torch.bfloat16)
    data = load_preference_data(cfg, tokenizer)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            stamps.append(time.time())

    args = DPOConfig(
        output_dir=str(work / "bare_trl"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        max_length=cfg.dataset.max_length,
        bf16=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    DPOTrainer(
        model=model, args=args, train_dataset=data.train, processing_class=tokenizer, callbacks=[Stamp()]
    ).train()
    window = stamps[WARMUP:]
    return (window[-1] - window[0]) / max(1, len(window) - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench" / "gpu_check.md"))
    args = parser.parse_args(argv)
    why = gpu_missing()
    if why:
        print(NO_GPU.format(why=why), flush=True)
        return 0
    import torch

    work = Path(tempfile.mkdtemp(prefix="dpo_gpu_check_"))
    base = common(work, args.steps, args.batch)
    cli = [sys.executable, "-m", "dpo_sweeps"]
    # 1. FSDP2 on NCCL: torchrun makes the one process a rank of a real process group (no forcing anywhere).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "-m", "dpo_sweeps"]
    fsdp = ["lora=none", "training.fsdp.enabled=true", "ref_cache.enabled=false"]
    rows = [run_point("full, FSDP2 on NCCL (torchrun, 1 rank)", [*torchrun, *base, *fsdp], work / "fsdp")]
    rows += [run_point(name, [*cli, *base, *extra], work / name.replace(" ", "_")) for name, extra in CONFIGS.items()]
    bare = bare_trl_s_per_step(work, args.steps, args.batch)
    gpu = torch.cuda.get_device_name(0)
    lines = [
        f"make gpu-check: SmolLM2-135M-Instruct (bf16), batch {args.batch}, {args.steps} steps, {gpu}, "
        f"torch {torch.__version__}.",
        "",
        "| run | s / step | bare TRL s / step | peak GPU GiB | estimate GiB | FSDP | gen eval before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = False
    for extra, row in zip([fsdp, *CONFIGS.values()], rows, strict=True):
        if "error" in row:
            failed = True
            lines.append(f"| {row['name']} | FAILED: {row['error'].strip().splitlines()[-1]} | | | | | |")
            continue
        m = row["metrics"]
        est = estimate_gib([*base, *extra])
        gen = f"{m.get('gen/score_before', '?')} -> {m.get('gen/score_after', m.get('gen/score', '?'))}"
        kind = f"{m.get('parallelism/type')} v{m.get('parallelism/fsdp_version', '-')}"
        lines.append(
            f"| {row['name']} | {row['s_per_step']:.3f} | {bare:.3f} | {m.get('gpu/peak_memory_gb', float('nan')):.2f} "
            f"| {est if est is None else round(est, 2)} | {kind} | {gen} |"
        )
    table = "\n".join(lines)
    print(table, flush=True)
    for row in rows:
        if "error" in row:
            print(f"\n{row['name']} failed:\n{row['error']}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
