"""The host-memory (RAM) estimate of a node (slurm/host_memory.py): what each rank holds while loading and while
checkpointing, shown by dry_run=true next to the GPU estimate, and a job that asks for less refused before sbatch."""

from __future__ import annotations

import json
from dataclasses import replace

from omegaconf import OmegaConf

from dpo_sweeps.slurm.host_memory import PROCESS_GIB, estimate_host, host_lines_and_problems
from dpo_sweeps.slurm.memory import GIB
from dpo_sweeps.slurm.memory_check import SweepMemory, arch_for, run_settings
from tests.helpers import REPO, compose_config, run_cli


def _preset(*overrides: str):
    cfg = compose_config(["experiment=results_conservative", *overrides], return_hydra_config=True)
    arch = arch_for(cfg)[0]
    run, why = run_settings(cfg, world_size=8, arch=arch)
    assert run is not None, why
    return cfg, arch, run


def test_rank_0_alone_reads_the_model_and_builds_the_fp32_masters():
    _, arch, run = _preset()
    est = estimate_host(arch, run, ranks_per_node=8)
    policy, masters, process = arch.params * 2, arch.params * 4, PROCESS_GIB * GIB
    # cpu_ram_efficient_loading (FSDP2): the other ranks build the policy on the meta device (models/loading.py).
    assert est.loading == (process + policy + masters) + 7 * process
    # FULL_STATE_DICT: rank 0 gathers the fp32 model and AdamW's two states (12 bytes a parameter) to write them.
    assert est.checkpoint == process + arch.params * 12 + 7 * process
    summary = est.summary()
    assert "rank 0 process 3.0 + policy 15.0 + fp32 masters 29.9" in summary, summary
    assert "each of the other 7 rank(s): process 3.0;" in summary, summary
    # Without cpu_ram_efficient_loading every rank reads and upcasts its own copy; sharded checkpoints split the states.
    every = estimate_host(arch, replace(run, fsdp_cpu_ram_efficient_loading=False), 8)
    assert every.loading == est.loading + 7 * (policy + masters)
    assert "each of the other 7 rank(s): process 3.0 + policy 15.0 + fp32 masters 29.9" in every.summary()
    sharded = estimate_host(arch, replace(run, fsdp_full_state_dict=False), 8)
    assert sharded.checkpoint == 8 * (process + arch.params * 12 / 8)


def test_the_preset_asks_for_the_host_memory_it_needs_and_less_is_refused_with_the_fix():
    cfg, _, _ = _preset()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    memory = SweepMemory(launcher)
    memory.add(0, [], cfg)
    lines, problems = memory.host()
    assert problems == [] and lines[1].endswith(": fits"), lines
    small = SweepMemory({**launcher, "mem_gb": 64})
    small.add(0, [], cfg)
    (problem,) = small.host()[1]
    assert "does not fit in the host memory the job asks for (hydra.launcher.mem_gb=64)" in problem, problem
    assert "Fix: hydra.launcher.mem_gb=126 (or more)" in problem, problem


def test_a_quantized_lora_run_loads_onto_the_gpu_and_needs_little_host_memory():
    cfg = compose_config(["experiment=finance_qlora"], return_hydra_config=True)
    arch = arch_for(cfg)[0]
    run, _ = run_settings(cfg, world_size=1, arch=arch)
    group = type("G", (), {"arch": arch, "run": run, "points": [0], "overrides": []})
    lines, problems = host_lines_and_problems([group], {"mem_gb": 16, "tasks_per_node": 1}, lambda p: "point #0")
    assert problems == [] and "policy" not in lines[1], lines


def test_dry_run_shows_the_gpu_and_the_host_estimate_naming_what_each_rank_holds(tmp_path):
    # A local folder with Llama-3.1-8B's config.json and the fixture data: nothing to fetch from a hub.
    shape = {k: v for k, v in compose_config(["model=llama3_1_8b"]).model.arch.items() if v is not None}
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(shape))
    data = REPO / "tests" / "fixtures" / "datasets" / "ultrafeedback"
    proc = run_cli(
        [
            "experiment=results_conservative",
            "dry_run=true",
            f"model.name_or_path={tmp_path / 'llama'}",
            f"dataset.path={data}",
            f"hydra.sweep.dir={tmp_path / 's'}",
        ],
        env={"SLURM_CONF": str(tmp_path / "missing.conf")},
        timeout=180,
    )
    out = proc.stdout
    assert "GPU memory, estimated per GPU for 8 rank(s)" in out and "27.3 GiB per GPU" in out, out
    assert "Host memory per node (hydra.launcher.mem_gb=192), estimated for 8 rank(s)" in out, out
    assert "loading: rank 0 process 3.0 + policy 15.0 + fp32 masters 29.9" in out, out
    assert "checkpointing: rank 0 process 3.0 + fp32 model + AdamW states 89.7" in out and ": fits" in out, out
