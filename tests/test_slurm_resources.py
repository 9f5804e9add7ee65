"""The pre-launch cluster check without a cluster: sinfo's output as real GPU and CPU clusters print it, the launcher
profiles as they compose, and a machine without SLURM clients (no sinfo on PATH)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dpo_sweeps.slurm.resources import check_launcher, gpus_in_gres, minutes, parse_sinfo
from tests.helpers import TINY, compose_config, run_cli

# `sinfo --noheader --exact --format '%P|%c|%m|%G|%l|%D'` on a GPU site: two node types in `gpu`, a CPU partition.
GPU_SITE = """\
cpu*|64|257000|(null)|2-00:00:00|40
gpu|32|515000|gpu:a100:4(S:0-1)|1-00:00:00|8
gpu|64|1031000|gpu:h100:8(S:0-1),shard:h100:64(S:0-1)|1-00:00:00|2
short|32|515000|gpu:a100:4(S:0-1)|30:00|2
"""
# The same from the local cluster of launch/slurm-up.sh.
LOCAL = "debug*|2|24105|(null)|infinite|1\nlow|2|24105|(null)|infinite|1\nhigh|2|24105|(null)|infinite|1\n"


def _launcher(profile: str, *overrides: str) -> dict:
    cfg = compose_config([f"hydra/launcher={profile}", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_sinfo_output_is_read_as_partitions_gpus_and_limits():
    site = parse_sinfo(GPU_SITE)
    assert site.default_partition == "cpu" and site.partitions == ["cpu", "gpu", "short"]
    assert [g.gpus for g in site.groups] == [0, 4, 8, 4]
    assert [g.time_limit_min for g in site.groups] == [2880, 1440, 1440, 30]
    assert gpus_in_gres("gpu") == 1 and gpus_in_gres("gpu:2,tmpdisk:100") == 2 and gpus_in_gres("(null)") == 0
    assert minutes("infinite") is None and minutes("1:30:00") == 90 and minutes("45") == 45


def test_the_default_slurm_profile_fits_a_gpu_partition_and_not_the_local_cluster():
    slurm = _launcher("slurm", "hydra.launcher.partition=gpu")
    assert check_launcher(slurm, parse_sinfo(GPU_SITE)) == []
    problems = check_launcher(_launcher("slurm"), parse_sinfo(LOCAL))
    keys = [p.split("=", 1)[0] for p in problems]
    assert keys == ["hydra.launcher.gpus_per_node", "hydra.launcher.cpus_per_task", "hydra.launcher.mem_gb"]
    assert "Set hydra.launcher.cpus_per_task=2" in problems[1] and "Set hydra.launcher.mem_gb=23" in problems[2]
    assert check_launcher(_launcher("slurm_local"), parse_sinfo(LOCAL)) == []


def test_too_many_one_cpu_tasks_for_a_node_asks_for_fewer_tasks_not_fewer_cpus():
    # Two ranks of one CPU each on nodes of one CPU (the two-node local cluster): fewer CPUs per task cannot help.
    one_cpu_nodes = LOCAL.replace("|2|", "|1|")
    problems = check_launcher(
        _launcher("slurm_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"),
        parse_sinfo(one_cpu_nodes),
    )
    assert len(problems) == 1, problems
    assert "Set hydra.launcher.tasks_per_node=1 (or fewer)" in problems[0] and "hydra.launcher.nodes" in problems[0]
    assert "cpus_per_task=0" not in problems[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # The default partition `cpu` has no GPUs.
        ([], "hydra.launcher.gpus_per_node=1: partition cpu (the default) has no GPUs (sinfo gres: (null))"),
        (["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=16"], "has at most 8 GPU(s) per node"),
        (["hydra.launcher.partition=gpu", "hydra.launcher.gres=gpu:a100:9"], "hydra.launcher.gres=gpu:a100:9:"),
        (["hydra.launcher.partition=gpus"], "no partition gpus (sinfo lists: cpu (default), gpu, short)"),
        (["hydra.launcher.partition=short"], "allows at most 30 minutes"),
        (["hydra.launcher.partition=gpu", "hydra.launcher.nodes=11"], "has 10 node(s). Set hydra.launcher.nodes=10"),
        (["hydra.launcher.partition=gpu", "hydra.launcher.tasks_per_node=9"], "72 CPUs per node"),
    ],
)
def test_each_mismatch_names_its_key_and_the_fix(overrides, expected):
    problems = check_launcher(_launcher("slurm", *overrides), parse_sinfo(GPU_SITE))
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("hydra.launcher.") for p in problems)


def test_without_sinfo_a_slurm_sweep_says_so_and_submits_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    # An empty PATH: no SLURM client tools (the CLI runs with the absolute path of this Python).
    proc = run_cli(
        ["-m", "hydra/launcher=slurm_local", "model=tiny_qwen", *TINY, f"hydra.sweep.dir={sweep}"],
        env={"PATH": str(tmp_path)},
        check=False,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # The first SLURM query (the site's limits, before any point is composed) finds the client tools missing.
    assert "is not installed or not on PATH. Nothing was submitted" in out, out
    assert "SLURM's client commands" in out
    assert "Traceback" not in out and not sweep.exists()


def test_dry_run_reports_a_mismatch_without_failing(tmp_path):
    """dry_run still needs no cluster; where there is none it says that it could not check."""
    proc = run_cli(
        ["-m", "hydra/launcher=slurm", "model=tiny_qwen", *TINY, "dry_run=true", f"hydra.sweep.dir={tmp_path}/s"],
        env={"SLURM_CONF": str(tmp_path / "missing.conf")},
        timeout=120,
    )
    assert f"Cluster check: cannot submit to SLURM: SLURM_CONF={tmp_path}/missing.conf does not exist" in proc.stdout
    assert "dry_run=true: nothing was run or submitted." in proc.stdout


def test_slurm_local_only_changes_the_local_clusters_resources():
    slurm, local = _launcher("slurm"), _launcher("slurm_local")
    changed = {k for k in slurm if slurm[k] != local.get(k)}
    assert changed == {"gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"}
    assert local["_target_"].endswith("SlurmLauncher") and local["timeout_min"] > 10
