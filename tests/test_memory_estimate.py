"""The GPU memory estimate (dpo_sweeps/slurm/memory.py): calibrated on the README's GPU measurements, monotone in
every setting, and the seed presets' verdicts. Pure arithmetic: no torch, fast."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dpo_sweeps.bench import memory as calibration
from dpo_sweeps.slurm.memory import GIB, Arch, RunSettings, estimate
from dpo_sweeps.slurm.memory_check import arch_for, check, fixes, gpu_gib, gpu_gib_of_type, gpu_types_in_gres
from dpo_sweeps.slurm.resources import ClusterUnavailable, parse_sinfo

CONF = Path(__file__).resolve().parents[1] / "conf"


def seed_arch(model: str) -> Arch:
    """A seed model's shape as its conf/model yaml carries it (what the pre-launch check reads)."""
    return Arch.from_mapping(yaml.safe_load((CONF / "model" / f"{model}.yaml").read_text())["arch"])


LLAMA3_1_8B = seed_arch("llama3_1_8b")
QWEN2_5_1_5B = calibration.bench_arch()
# experiment=results_conservative: full DPO, bf16, 2 pairs x 1024 tokens, eval batch 4, checkpointing, ref cache on.
RESULTS_CONSERVATIVE = RunSettings(micro_batch=2, seq_len=1024, eval_batch=4, reference_copy=False)
# experiment=qwen_dpo: full DPO of Qwen2.5-1.5B, 2 pairs x 1024 tokens, eval batch 8 (training=default).
QWEN_DPO = RunSettings(micro_batch=2, seq_len=1024, eval_batch=8, reference_copy=False)
GPU_80GB = 80


def total_gib(arch: Arch, run: RunSettings) -> float:
    return estimate(arch, run).total / GIB


@pytest.mark.parametrize("row", calibration.rows(), ids=lambda r: r["name"])
def test_calibration_rows_within_tolerance_and_not_below(row):
    # Measured values are rounded to 0.1 GiB: the estimate may sit at most that rounding below them.
    assert row["estimate"] >= row["measured"] - 0.05, row
    assert row["ratio"] <= 1 + calibration.TOLERANCE, row


def test_calibration_table_is_the_command_output(capsys):
    calibration.main([])
    out = capsys.readouterr().out
    for name, _, measured in calibration.MEASURED:
        assert f"| {name} |" in out and f"| {measured:.1f} |" in out


@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("llama3_2_1b", 1.24e9),
        ("llama3_1_8b", 8.03e9),
        ("llama3_1_8b_4bit", 8.03e9),
        ("qwen1_5b", 1.54e9),
        ("gemma_2b", 2.51e9),
        ("smollm2_135m", 134.5e6),
    ],
)
def test_seed_models_shapes_give_their_published_parameter_counts(model, published):
    assert seed_arch(model).params == pytest.approx(published, rel=0.005)


def test_the_calibration_ran_the_seed_qwen_shape():
    assert seed_arch("qwen1_5b") == QWEN2_5_1_5B


def test_full_dpo_peak_is_parameter_arithmetic():
    # bf16 weights, gradients, two AdamW states, the foreach step's temporary: 10 bytes per parameter at the step.
    est = estimate(QWEN2_5_1_5B, replace(calibration.BENCH, reference_copy=False))
    assert est.peak_phase == "optimizer step"
    assert est.allocated - est.buffers == pytest.approx(10 * QWEN2_5_1_5B.params)


LORA = dict(lora_rank=16)


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        # Where activations decide the peak (LoRA): batch, length, eval batch, checkpointing.
        ({**LORA, "micro_batch": 1}, {**LORA, "micro_batch": 4}),
        ({**LORA, "seq_len": 512}, {**LORA, "seq_len": 4096}),
        ({**LORA, "micro_batch": 1, "eval_batch": 8}, {**LORA, "micro_batch": 1, "eval_batch": 64}),
        ({**LORA, "gradient_checkpointing": True}, {**LORA, "gradient_checkpointing": False}),
        ({**LORA, "eager_attention": False}, {**LORA, "eager_attention": True}),
        ({**LORA, "quant_bits": 4}, {**LORA, "quant_bits": 8}),
        ({**LORA, "quant_bits": 8}, LORA),
        (LORA, {"lora_rank": 64, "lora_targets": "all-linear"}),
        # Where the parameters decide it (full DPO): LoRA, reference, sharding, optimizer, dtype.
        (LORA, {}),
        ({"reference_copy": False}, {"reference_copy": True}),
        ({"fsdp": True, "world_size": 8}, {"fsdp": True, "world_size": 2}),
        ({"fsdp": True, "world_size": 4}, {}),
        ({"fsdp": True, "world_size": 8}, {"fsdp": True, "world_size": 8, "fsdp_reshard_after_forward": False}),
        ({"world_size": 1}, {"world_size": 2}),  # DDP: gradient buckets, NCCL
        ({"optimizer": "adamw_bnb_8bit"}, {"optimizer": "adamw_torch"}),
        ({"optimizer": "adamw_torch_fused"}, {"optimizer": "adamw_torch"}),
        ({}, {"weights_dtype": "fp32", "precision": "fp32"}),
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "full",
)
def test_monotone(smaller, larger):
    base = RunSettings(micro_batch=2, seq_len=1024, eval_batch=4)
    for arch in (QWEN2_5_1_5B, LLAMA3_1_8B):
        assert total_gib(arch, replace(base, **smaller)) < total_gib(arch, replace(base, **larger))


@pytest.mark.parametrize("field", ["micro_batch", "seq_len", "eval_batch"])
def test_full_dpo_never_needs_less_with_more_tokens(field):
    # Full DPO's peak is the optimizer step: more tokens may not raise it, but never lower it.
    base = RunSettings(micro_batch=2, seq_len=1024, eval_batch=4)
    sizes = [total_gib(QWEN2_5_1_5B, replace(base, **{field: getattr(base, field) * f})) for f in (1, 2, 4, 8, 16)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_more_fsdp_ranks_never_need_more():
    sizes = [total_gib(LLAMA3_1_8B, replace(RESULTS_CONSERVATIVE, fsdp=True, world_size=n)) for n in (2, 4, 8, 16)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 3


def test_fsdp_over_two_gpus_is_no_better_than_one():
    # Under FSDP, accelerate keeps fp32 masters (16 bytes per parameter with AdamW, sharded); unsharded, HF trains
    # pure bf16 (8 bytes). Two shards of the former are no smaller than the latter.
    one = total_gib(LLAMA3_1_8B, RESULTS_CONSERVATIVE)
    assert total_gib(LLAMA3_1_8B, replace(RESULTS_CONSERVATIVE, fsdp=True, world_size=2)) > one
    assert total_gib(LLAMA3_1_8B, replace(RESULTS_CONSERVATIVE, fsdp=True, world_size=4)) < one


def test_results_conservative_does_not_fit_one_80gb_gpu_unsharded():
    problems = check(LLAMA3_1_8B, RESULTS_CONSERVATIVE, GPU_80GB)
    assert len(problems) == 1
    # The message gives the estimate, its parts and the fix.
    for word in ("GiB per GPU", "weights", "optimizer", "gradients", "FSDP", "hydra.launcher.gpus_per_node="):
        assert word in problems[0], word
    # Even the reference cache (already on) is not enough: without it the copy adds 15 GiB more.
    assert check(LLAMA3_1_8B, replace(RESULTS_CONSERVATIVE, reference_copy=True), GPU_80GB)


@pytest.mark.parametrize("reference_copy", [False, True], ids=["ref cache", "sharded reference copy"])
def test_results_conservative_fits_8x80gb_with_fsdp(reference_copy):
    run = replace(RESULTS_CONSERVATIVE, fsdp=True, world_size=8, reference_copy=reference_copy)
    assert check(LLAMA3_1_8B, run, GPU_80GB) == []
    # With room to spare: under half of each GPU.
    assert total_gib(LLAMA3_1_8B, run) < GPU_80GB / 2


def test_eight_gpus_without_fsdp_do_not_help():
    # DDP replicates everything (and adds gradient buckets): only sharding divides the state.
    assert check(LLAMA3_1_8B, replace(RESULTS_CONSERVATIVE, world_size=8), GPU_80GB)


@pytest.mark.parametrize("reference_copy", [False, True])
def test_qwen_dpo_fits_one_80gb_gpu(reference_copy):
    assert check(QWEN2_5_1_5B, replace(QWEN_DPO, reference_copy=reference_copy), GPU_80GB) == []


@pytest.mark.parametrize(
    ("model", "run", "gpu", "fix"),
    [
        # Full DPO of 8B on 1 GPU: FSDP over the fewest GPUs that fit (and when FSDP is on: only the GPUs).
        ("llama", RESULTS_CONSERVATIVE, 80, "shard with FSDP over 4 GPUs (training.fsdp.enabled=true"),
        ("llama", replace(RESULTS_CONSERVATIVE, fsdp=True), 80, "shard over 4 GPUs (hydra.launcher.gpus_per_node=4"),
        # A frozen copy pushes a small full run over: the cache fixes it.
        ("qwen", replace(QWEN_DPO, reference_copy=True, micro_batch=1), 18, "ref_cache.enabled=true"),
        # Long sequences without checkpointing.
        ("llama", RunSettings(2, 2048, lora_rank=16, gradient_checkpointing=False), 24, "checkpointing=true"),
        # A big micro-batch of LoRA: the largest micro-batch that fits is named.
        ("llama", RunSettings(micro_batch=16, seq_len=2048, lora_rank=16), 24, "per_device_train_batch_size="),
    ],
    ids=["fsdp", "fsdp-on-one-rank", "ref-cache", "checkpointing", "micro-batch"],
)
def test_problem_names_the_fix(model, run, gpu, fix):
    arch = {"llama": LLAMA3_1_8B, "qwen": QWEN2_5_1_5B}[model]
    problems = check(arch, run, gpu)
    assert problems and fix in problems[0], problems
    # And the fix it names does fit.
    named = [f for f in fixes(arch, run, gpu) if fix in f.text]
    assert named and named[0].gib <= gpu and check(arch, named[0].run, gpu) == []


def test_micro_batch_fix_is_the_largest_that_fits():
    run = RunSettings(micro_batch=16, seq_len=2048, lora_rank=16)
    (fix,) = [f for f in fixes(LLAMA3_1_8B, run, 24) if f.kind == "micro_batch"]
    assert check(LLAMA3_1_8B, fix.run, 24) == []
    assert check(LLAMA3_1_8B, replace(run, micro_batch=fix.run.micro_batch * 2), 24)


def test_nothing_fits_says_so():
    problems = check(LLAMA3_1_8B, RunSettings(micro_batch=1, seq_len=256, lora_rank=16, quant_bits=4), 2)
    assert "No change the estimate knows of makes it fit" in problems[0]


def test_arch_from_a_local_config_json(tmp_path):
    config = {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert Arch.from_config_json(tmp_path) == QWEN2_5_1_5B
    del config["vocab_size"], config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_size, vocab_size missing"):
        Arch.from_config_json(tmp_path)


def test_imports_no_torch():
    # It runs on the login node, before submission.
    code = (
        "import sys, dpo_sweeps.slurm.memory_check, dpo_sweeps.bench.memory; "
        "heavy = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(
    ("name", "gib"),
    [
        ("h100", 80),
        ("a100_80g", 80),
        ("a100-sxm4-40gb", 40),
        ("nvidia_h100_80gb_hbm3", 80),
        ("v100_32g", 32),
        ("H200", 141),
        ("tesla-t4", 16),
        # Sold in several sizes: unknown without the size in the name, never a guess.
        ("a100", None),
        ("v100", None),
        ("gh200", None),
        ("my_site_gpu", None),
    ],
)
def test_gpu_memory_from_the_gres_type(name, gib):
    assert gpu_gib_of_type(name) == gib


def test_gpu_types_in_a_gres_string():
    assert gpu_types_in_gres("gpu:a100_80g:4(S:0-1),gpu:h100:2,shard:8") == ["a100_80g", "h100"]
    assert gpu_types_in_gres("gpu:4") == [] and gpu_types_in_gres("(null)") == []


GPU_SITE = """\
cpu*|64|257000|(null)|2-00:00:00|40
gpu|32|515000|gpu:a100:4(S:0-1)|1-00:00:00|8
h100|64|1031000|gpu:h100:8(S:0-1),shard:h100:64(S:0-1)|1-00:00:00|2
big|64|1031000|gpu:a100_80g:8(S:0-1)|1-00:00:00|2
big|64|1031000|gpu:a100_40g:8(S:0-1)|1-00:00:00|2
"""


@pytest.mark.parametrize(
    ("launcher", "gib", "source"),
    [
        # An explicit size wins over everything.
        ({"gpu_mem_gb": 94, "partition": "h100"}, 94, "hydra.launcher.gpu_mem_gb"),
        # The profile's own request names the type.
        ({"additional_parameters": {"gres": "gpu:h200:4"}}, 141, "hydra.launcher.additional_parameters.gres"),
        ({"gpus_per_node": "a100_80g:8"}, 80, "hydra.launcher.gpus_per_node"),
        # Else sinfo's gres for the partition; mixed node types: the smallest GPU.
        ({"partition": "h100", "gpus_per_node": 8}, 80, "sinfo: h100 in partition h100"),
        ({"partition": "big", "gpus_per_node": 8}, 40, "sinfo: a100_40g, a100_80g in partition big"),
        # a100 comes as 40 and 80 GB: unknown, never a guess; a CPU partition has none.
        ({"partition": "gpu", "gpus_per_node": 4}, None, "gpu:a100:4(S:0-1)) names no known GPU size"),
        ({"gpus_per_node": 1}, None, "partition cpu (no GPUs)"),
    ],
)
def test_gpu_memory_of_a_launcher_profile(launcher, gib, source):
    found, why = gpu_gib(launcher, query_cluster=lambda: parse_sinfo(GPU_SITE))
    assert found == gib and source in why, why


def test_gpu_memory_without_sinfo_says_why(monkeypatch):
    def unavailable():
        raise ClusterUnavailable("`sinfo` is not installed here")

    assert gpu_gib({"gpus_per_node": 8}, query_cluster=unavailable) == (
        None,
        "no sinfo answers here and hydra.launcher.gpu_mem_gb is not set",
    )
    monkeypatch.setenv("DPO_SWEEPS_CLUSTER_CHECK", "0")
    assert gpu_gib({"gpus_per_node": 8}, query_cluster=unavailable)[0] is None


def test_a_local_folder_s_config_json_wins_over_the_arch_block(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN2_5_1_5B.__dict__, "model_type": "qwen2"}))
    block = yaml.safe_load((CONF / "model" / "llama3_1_8b.yaml").read_text())["arch"]
    local = OmegaConf.create({"model": {"name_or_path": str(tmp_path), "arch": block}})
    assert arch_for(local) == (QWEN2_5_1_5B, f"{tmp_path}/config.json")
    hub = OmegaConf.create({"model": {"name_or_path": "org/model", "arch": block}})
    assert arch_for(hub) == (LLAMA3_1_8B, "model.arch")
    unknown = OmegaConf.create({"model": {"name_or_path": "org/model", "arch": None}})
    assert arch_for(unknown) == (None, "model.name_or_path=org/model is no local folder and model.arch is not set")


def test_fsdp2_counts_the_root_modules_gathered_embeddings_and_head():
    # FSDP2 keeps its root/tail units (input embeddings, LM head) gathered from forward to backward: two V x H matrices
    # when untied, one when tied, in the compute dtype, on top of the fp32 master shards.
    run = RunSettings(micro_batch=1, seq_len=512, world_size=8, fsdp=True, reference_copy=False)
    for tied in (False, True):
        arch = replace(LLAMA3_1_8B, tie_word_embeddings=tied)
        gathered = estimate(arch, run).weights - arch.params * 4 / 8 - 2 * arch.layer_params * 2
        assert gathered == arch.head_params * 2 * (1 if tied else 2), (tied, gathered / arch.head_params)
