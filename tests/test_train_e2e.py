"""End to end on every tiny architecture: LoRA, full-parameter and nf4-quantized LoRA DPO really train.

Each run uses the real TRL DPOTrainer, PEFT and bitsandbytes on CPU, on the learnable toy set, so the tests can
assert that DPO moved the weights and the rewards in the right direction, not merely that it ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpo_sweeps.report.model_card import parse_front_matter
from dpo_sweeps.report.page import PROMPTS_PER_POINT
from dpo_sweeps.runs import folder as run_folder
from tests.helpers import TINY, compose_config, read_json, run_cli, run_dirs
from tests.test_summary_page import check_live_page

ARCH_MODELS = {"llama": "tiny_llama", "qwen2": "tiny_qwen", "gemma": "tiny_gemma"}
MODES = {
    "lora": ["lora=r16"],
    "full": ["lora=none"],
    "nf4": ["lora=r16", "quantization=nf4"],
}
STEPS = ["training.max_steps=20", "training.sample_completions=0"]


def _assert_learned(metrics: dict) -> None:
    before, after = metrics["initial_eval_rewards/accuracies"], metrics["eval_rewards/accuracies"]
    # The toy set is learnable: accuracy must end clearly above chance and clearly above where it started.
    assert after > 0.6, metrics
    assert after >= before + 0.3, (before, after)
    assert metrics["eval_rewards/margins"] > metrics["initial_eval_rewards/margins"]
    assert metrics["eval_rewards/chosen"] > metrics["eval_rewards/rejected"]
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arch", list(ARCH_MODELS))
def test_dpo_trains_each_architecture(tmp_path, tiny_model_paths, arch, mode):
    # Imported here, not at the top: torch, transformers, PEFT and TRL cost each xdist worker ~10 s of CPU when they
    # are imported while it collects the suite, before any test runs (docs/development.md, "The suite's budget").
    import torch
    from safetensors.torch import load_file

    from dpo_sweeps.train.trainer import run_training

    cfg = compose_config([f"model={ARCH_MODELS[arch]}", *TINY, *MODES[mode], *STEPS])
    metrics = run_training(cfg, tmp_path)
    _assert_learned(metrics)
    assert metrics["global_step"] == 20

    if mode == "full":
        trained = load_file(tmp_path / "model" / "model.safetensors")
        base = load_file(tiny_model_paths[arch] / "model.safetensors")
        changed = [k for k in base if k in trained and not torch.equal(base[k], trained[k])]
        assert len(changed) > len(base) // 2, "full DPO should update most weight tensors"
        assert not (tmp_path / "adapter").exists()
    else:
        adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
        lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
        assert lora_b, "the adapter holds no LoRA B matrices"
        # PEFT initialises B to zero: any non-zero B is the result of training.
        assert all(v.abs().sum() > 0 for v in lora_b.values())
        config = read_json(tmp_path / "adapter" / "adapter_config.json")
        assert config["r"] == 16 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert not (tmp_path / "model").exists()
    # The tokenizer travels with the weights so the folder loads on its own.
    saved = tmp_path / ("model" if mode == "full" else "adapter")
    assert (saved / "tokenizer_config.json").exists()


def test_cli_run_leaves_a_self_describing_folder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["model=tiny_llama", *TINY, "beta=0.2", "training.save_merged=true", f"hydra.run.dir={run_dir}"])

    # The console a person reads: progress lines and one line per evaluation, no raw log dicts (HF's PrinterCallback),
    # no tokenizer/map progress bars, no library FutureWarnings.
    console = proc.stdout + proc.stderr
    assert not [line for line in console.splitlines() if line.lstrip().startswith("{'")], console[-3000:]
    for noise in ("Tokenizing", "examples/s", "FutureWarning", "Loading weights", "kernels-community"):
        assert noise not in console, f"{noise!r} in the console:\n{console[-3000:]}"
    assert "eval before training: loss 0.6931" in console
    assert "step 40/40" in console and "eval at step 40: loss" in console
    assert "data train: " in console and "data eval: " in console
    progress = read_json(run_dir / "progress.json")
    assert (progress["step"], progress["max_steps"]) == (40, 40) and progress["loss"] > 0

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["beta"] == 0.2 and config["model"]["tiny_arch"] == "llama"
    assert "${" not in (run_dir / "config.yaml").read_text(), "config.yaml must be fully resolved"

    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed"
    assert status["started_at"] <= status["ended_at"] and status["host"]
    assert "beta=0.2" in status["overrides"] and status["error"] is None

    history = run_folder.read_history(run_dir)
    train_steps = [r["step"] for r in history if "loss" in r]
    assert train_steps == sorted(train_steps) and train_steps[-1] == 40
    assert [r["step"] for r in history if "eval_loss" in r] == [0, 40]

    metrics = read_json(run_dir / "metrics.json")
    _assert_learned(metrics)
    assert metrics["objective_metric"] == "eval_rewards/accuracies"
    assert metrics["objective_value"] == metrics["eval_rewards/accuracies"]

    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "merged" / "config.json").exists(), "training.save_merged=true writes the merged model"

    card = (run_dir / "README.md").read_text()
    front = parse_front_matter(card)
    assert front["library_name"] == "peft" and {"dpo", "trl", "lora"} <= set(front["tags"])
    assert front["base_model"] == "dpo_sweeps/tiny-llama"
    assert "| beta | 0.2 |" in card
    assert f"{metrics['eval_rewards/accuracies']:.4f}" in card


def test_cli_sweep_gives_one_folder_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["model=tiny_qwen", *TINY, "training.max_steps=5", "beta=0.1,0.3", f"hydra.sweep.dir={sweep}", "-m"])
    # One line per point as it starts and as it ends, in order, then the summary.
    events = [line for line in proc.stdout.splitlines() if line.startswith("[") and "/2] beta=" in line]
    assert [e.split(":")[0] + ":" + e.split(":")[1].split()[0] for e in events] == [
        "[1/2] beta=0.1:started",
        "[1/2] beta=0.1:completed",
        "[2/2] beta=0.3:started",
        "[2/2] beta=0.3:completed",
    ], proc.stdout
    assert proc.stdout.index(events[-1]) < proc.stdout.index("Sweep summary: 2 completed")
    points = run_dirs(sweep)
    assert [p.name for p in points] == ["beta=0.1", "beta=0.3"]
    for point, beta in zip(points, (0.1, 0.3), strict=True):
        assert read_json(point / "status.json")["state"] == "completed"
        assert yaml.safe_load((point / "config.yaml").read_text())["beta"] == beta
        assert read_json(point / "metrics.json")["global_step"] == 5


@pytest.mark.slow
def test_demo_preset_shows_dpo_working(tmp_path):
    # `make demo` runs exactly this preset; its promise is every point well above chance and a table at the end.
    proc = run_cli(["experiment=demo", f"hydra.sweep.dir={tmp_path / 'demo'}"])
    points = run_dirs(tmp_path / "demo")
    assert [p.name for p in points] == ["beta=0.05", "beta=0.1", "beta=0.5"]
    for point in points:
        metrics = read_json(point / "metrics.json")
        assert metrics["eval_rewards/accuracies"] > 0.6, (point.name, metrics["eval_rewards/accuracies"])
    assert "reward acc" in proc.stdout and "beta=0.5" in proc.stdout
    assert (tmp_path / "demo" / "summary.md").exists()
    # Its summary.html in a real browser (issue 25), on this sweep rather than another one trained for it.
    chosen = points[0]
    samples = [json.loads(line) for line in (chosen / run_folder.SAMPLES_FILE).read_text().splitlines()]
    page, png = tmp_path / "demo" / "summary.html", tmp_path / "demo.png"
    seen = check_live_page(page, [p.name for p in points], chosen.name, png)
    # prompt, reference answer, its score, trained answer, its score: each held-out prompt side by side
    assert [[row[0], row[1], row[3]] for row in seen["answers"]] == [
        [s["prompt"], s["reference"], s["policy"]] for s in samples[:PROMPTS_PER_POINT]
    ]
    assert seen["plotly"] == ["parcoords", "frontier", "curves"]


def test_sweep_with_default_folders_names_them_by_overrides_and_reports_success(tmp_path):
    # No hydra.sweep.dir: the folders are named by the overrides (the shared ones name the sweep, the swept ones the
    # points), identically in the pre-launch check, the jobs and the summary.
    fast = ["training.max_steps=2", "training.sample_completions=0", "training.save_model=false"]
    proc = run_cli(["-m", "model=tiny_qwen", *TINY, *fast, "beta=0.1,0.3"], cwd=tmp_path)
    sweep = (
        tmp_path
        / "outputs"
        / "sweeps"
        / (
            "dataset=toy,logger=none,model=tiny_qwen,training.max_steps=2,training.sample_completions=0,"
            "training.save_model=false,training=smoke"
        )
    )
    assert [p.name for p in run_dirs(sweep)] == ["beta=0.1", "beta=0.3"]
    assert "Sweep summary: 2 completed" in proc.stdout
    assert {p["run_dir"] for p in read_json(sweep / "sweep_points.json")} == {
        str(Path("outputs/sweeps") / sweep.name / b) for b in ("beta=0.1", "beta=0.3")
    }
