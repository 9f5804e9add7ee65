"""The memory check before submission, through the real CLI: dry_run=true prints each point's estimate and what it
asks the launcher for; a point that cannot fit its GPUs is refused before sbatch, naming the fix.

SLURM's client tools are stand-ins on PATH (a GPU site's sinfo, scontrol, squeue, and an sbatch that only records
that it ran), so the whole submission path runs up to sbatch without a GPU cluster."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import pytest

from dpo_sweeps.bench import memory as bench_memory
from dpo_sweeps.cli import CONF_DIR
from tests.helpers import run_cli

# One GPU, unsharded: FSDP on one rank is refused by validation before the memory check (config/fsdp.py).
ONE_GPU = ["hydra.launcher.gpus_per_node=1", "hydra.launcher.tasks_per_node=1", "training.fsdp.enabled=false"]
# `sinfo --noheader --exact --format '%P|%c|%m|%G|%l|%D'` on a site with 8 x H100 80GB nodes.
SINFO = "gpu*|128|2000000|gpu:h100:8(S:0-1)|2-00:00:00|4"
SCONTROL = "MaxArraySize = 1001\nMaxJobCount = 10000\nAccountingStorageType = accounting_storage/none"


def fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment, sbatch's marker file): SLURM clients that answer like a GPU site; sbatch fails after recording."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "sbatch_ran"
    bin_dir.mkdir()
    scripts = {
        "sinfo": f"echo '{SINFO}'",
        "scontrol": f"printf '%s\\n' '{SCONTROL}'",
        "squeue": "true",
        "sbatch": f"echo \"$@\" >> {marker}; echo 'sbatch: error: stand-in sbatch' >&2; exit 1",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text("# stand-in\n")
    # The presets name hub models this machine has neither cached nor can reach: the hub check (tested in
    # test_fetch_offline.py) would refuse them before the memory check and sbatch these tests are about.
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_CONF": str(conf), "DPO_SWEEPS_HUB_CHECK": "0"}
    return env, marker


def test_dry_run_prints_the_estimate_and_the_whole_node_request_without_a_cluster(tmp_path):
    proc = run_cli(
        [
            "-m",
            "experiment=results_conservative",
            "hydra/launcher=slurm",
            "dry_run=true",
            f"hydra.sweep.dir={tmp_path}/s",
        ],
        env={"SLURM_CONF": str(tmp_path / "missing.conf")},
        timeout=180,
    )
    out = proc.stdout
    assert "tasks_per_node=8, gpus_per_node=8" in out, out
    assert "GPU memory, estimated per GPU for 8 rank(s) (nodes=1 x tasks_per_node=8)" in out, out
    assert re.search(r"point #0 \(model\.arch, FSDP\): 27\.\d GiB per GPU = weights", out), out
    # No cluster, no gpu_mem_gb: it says that it could not compare, and does not guess.
    assert "GPU memory unknown" in out and "not checked" in out
    assert "dry_run=true: nothing was run or submitted." in out and not (tmp_path / "s").exists()


def test_dry_run_reads_the_gpu_size_from_sinfo_and_shows_the_refusal(tmp_path):
    env, marker = fake_slurm(tmp_path)
    proc = run_cli(
        ["-m", "experiment=results_conservative", *ONE_GPU, "dry_run=true", f"hydra.sweep.dir={tmp_path}/s"],
        env=env,
        timeout=180,
    )
    out = proc.stdout
    assert "GPUs of 80 GiB (sinfo: h100 in partition gpu)" in out, out
    assert "83.1 GiB per GPU" in out and "DOES NOT FIT" in out and "would be REFUSED" in out, out
    assert proc.returncode == 0 and not marker.exists()


def test_one_gpu_is_refused_before_sbatch_with_the_fix(tmp_path):
    env, marker = fake_slurm(tmp_path)
    proc = run_cli(
        ["-m", "experiment=results_conservative", *ONE_GPU, f"hydra.sweep.dir={tmp_path}/s"],
        env=env,
        check=False,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "cannot fit in GPU memory; nothing was submitted" in out, out
    # The estimate, its parts, and the fix as overrides to type.
    for text in ("83.1 GiB per GPU", "weights 15.0", "optimizer 29.9", "gradients 15.0", "1 GPU of 80 GiB"):
        assert text in out, (text, out)
    # Unsharded on one GPU: the fix is FSDP over the fewest GPUs that fit (the root module counted gathered).
    fix = "shard with FSDP over 4 GPUs (training.fsdp.enabled=true hydra.launcher.gpus_per_node=4 "
    assert fix + "hydra.launcher.tasks_per_node=4): 47.8 GiB" in out, out
    assert "Traceback" not in out and not marker.exists()


def test_the_whole_node_passes_the_check_and_reaches_sbatch(tmp_path):
    # The control: the preset as shipped fits, so submission goes on to sbatch (here a stand-in that fails).
    env, marker = fake_slurm(tmp_path)
    proc = run_cli(["-m", "experiment=results_conservative", f"hydra.sweep.dir={tmp_path}/s"], env=env, check=False)
    out = proc.stdout + proc.stderr
    assert "cannot fit in GPU memory" not in out, out
    assert marker.exists(), out


def test_the_check_can_be_turned_off(tmp_path):
    env, marker = fake_slurm(tmp_path)
    env["DPO_SWEEPS_MEMORY_CHECK"] = "0"
    proc = run_cli(
        ["-m", "experiment=results_conservative", *ONE_GPU, f"hydra.sweep.dir={tmp_path}/s"],
        env=env,
        check=False,
    )
    assert "cannot fit in GPU memory" not in proc.stdout + proc.stderr and marker.exists()


@functools.cache
def _preset_rows() -> dict[str, dict]:
    return {row["name"]: row for row in bench_memory.preset_rows()}


# The preset names, not their rows: composing every preset (~3 s of CPU) at import would cost each xdist worker that
# much in collection; the rows are composed once per worker, by the first of these tests it runs.
@pytest.mark.parametrize("name", sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_preset_header_states_the_gpus_it_needs(name):
    row = _preset_rows()[name]
    header = "\n".join(
        line for line in (CONF_DIR / "experiment" / f"{row['name']}.yaml").read_text().splitlines() if line[:1] == "#"
    )
    if row["gib"] is None:
        assert "CPU only" in header
        return
    stated = re.search(r"Estimated peak ([\d.]+) GiB", header)
    assert stated and abs(float(stated.group(1)) - row["gib"]) < 0.05, (row, header)
    assert re.search(rf"GPUs: (one|one whole node, {row['ranks']} GPUs)", header), header


def test_the_calibrations_sequence_length_is_the_benchmarks(tiny_model_paths, tmp_path):
    """bench/gpu.py's pairs, templated and tokenized as that run does (tiny Qwen tokenizer, Qwen's chat template):
    the longest sequence is the length the calibration pads to."""
    import json

    from transformers import AutoTokenizer

    from dpo_sweeps.bench.gpu import write_data

    tok = AutoTokenizer.from_pretrained(tiny_model_paths["qwen2"])
    write_data(tmp_path / "pairs.jsonl", rows=30 * 4 + 16, words=300)  # bench/gpu.py's defaults
    longest = 0
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        for answer in (row["chosen"], row["rejected"]):
            chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
            longest = max(longest, len(tok(tok.apply_chat_template(chat, tokenize=False))["input_ids"]))
    assert longest == bench_memory.BENCH_SEQ_LEN


def test_a_points_settings_as_the_job_will_run_them():
    from dpo_sweeps.slurm.memory_check import arch_for, run_settings
    from tests.helpers import compose_config

    run, _ = run_settings(compose_config(["experiment=qwen_dpo"]), world_size=1)
    assert (run.micro_batch, run.seq_len, run.eval_batch, run.lora_rank) == (2, 1024, 8, None)
    # The reference cache is on by default: no frozen copy; bf16 (dtype auto on a GPU), checkpointing, AdamW.
    assert not run.reference_copy and run.weights_dtype == run.precision == "bf16"
    assert run.gradient_checkpointing and run.optimizer == "adamw_torch" and not run.fsdp
    copy, _ = run_settings(compose_config(["experiment=qwen_dpo", "ref_cache.enabled=false"]), world_size=1)
    assert copy.reference_copy
    finance = compose_config(["experiment=finance_qlora"])
    qlora, _ = run_settings(finance, world_size=1, arch=arch_for(finance)[0])
    assert qlora.quant_bits == 4 and qlora.lora_rank == 16
    gemma, _ = run_settings(compose_config(["experiment=gemma_fashion"]), world_size=1)
    assert gemma.eager_attention
    unbounded, why = run_settings(compose_config(["model=qwen1_5b", "dataset.max_length=null"]), world_size=1)
    assert unbounded is None and "dataset.max_length=null" in why


def test_points_share_an_estimate_unless_a_setting_that_matters_differs():
    from dpo_sweeps.slurm.memory_check import SweepMemory
    from tests.helpers import compose_config

    memory = SweepMemory({"_target_": "x.SlurmLauncher", "gpus_per_node": 1, "tasks_per_node": 1, "gpu_mem_gb": 20})
    for number, overrides in enumerate(
        [
            ["experiment=qwen_dpo", "beta=0.1"],
            ["experiment=qwen_dpo", "beta=0.3", "training.learning_rate=1e-6"],
            ["experiment=qwen_dpo", "training.per_device_train_batch_size=16"],
            ["experiment=qwen_dpo", "training.use_cpu=true"],
        ]
    ):
        memory.add(number, overrides, compose_config(overrides))
    assert [g.points for g in memory.groups.values()] == [[0, 1], [2]]
    assert memory.skipped == {"CPU job: no GPU memory to check": [3]}
    lines = memory.lines()
    assert "GPUs of 20 GiB (hydra.launcher.gpu_mem_gb)" in lines[0]
    assert "points #0, #1" in lines[1] and lines[1].endswith("GiB to spare)")
    # 16 pairs of 1024 tokens do not fit 20 GiB (21.2 estimated): the problem names that configuration's points.
    (problem,) = memory.problems()
    assert problem.startswith("point #2 [experiment=qwen_dpo training.per_device_train_batch_size=16]")


def test_gpu_mem_gb_is_for_the_check_only_and_never_reaches_sbatch(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.dpo_sweeps_launcher.slurm import SlurmLauncher
    from tests.helpers import compose_config

    launcher = compose_config(["hydra/launcher=slurm", "hydra.launcher.gpu_mem_gb=80"], return_hydra_config=True)
    params = OmegaConf.to_container(launcher.hydra.launcher, resolve=False)
    params.update(submitit_folder=str(tmp_path), max_num_timeout=3)
    params.pop("_target_")
    executor = SlurmLauncher(**params)._executor()  # submitit refuses a parameter it does not know
    assert executor.parameters["gpus_per_node"] == 1 and not any("gpu_mem" in k for k in executor.parameters)


@pytest.mark.parametrize(("quantization_config", "bits"), [({"load_in_8bit": True}, 8), ({"load_in_4bit": True}, 4)])
def test_a_prequantized_models_bit_width_comes_from_its_config(tmp_path, quantization_config, bits):
    from dpo_sweeps.slurm.memory_check import arch_for, run_settings
    from tests.helpers import compose_config

    shape = {k: v for k, v in compose_config(["model=llama3_1_8b"]).model.arch.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps({**shape, "quantization_config": quantization_config}))
    cfg = compose_config([f"model.name_or_path={tmp_path}", "model.prequantized=true", "lora=r16"])
    run, why = run_settings(cfg, world_size=1, arch=arch_for(cfg)[0])
    assert run is not None and run.quant_bits == bits, why
    # Neither config.json nor model.arch says: no estimate rather than a guess of 4 bits.
    unknown = compose_config(["model=llama3_1_8b", "model.prequantized=true", "lora=r16"])
    run, why = run_settings(unknown, world_size=1, arch=arch_for(unknown)[0])
    assert run is None and "bit width is unknown" in why and "model.arch.quant_bits" in why
