"""What a SLURM launcher profile asks for, against what the cluster has (`sinfo`), before anything is submitted.

Without this check a profile asking for a GPU on a CPU-only cluster fails inside sbatch with a raw submitit
traceback ("Invalid generic resource (gres) specification"), and one asking for a longer time limit than the partition
allows is accepted and then pends forever (reason PartitionTimeLimit). `check_launcher` compares the profile's
partition, GPUs, CPUs per task, memory, node count and time limit with one `sinfo` call and returns one problem per
mismatched key, each naming the `hydra.launcher.<key>` to change and what would fit.

Set DPO_SWEEPS_CLUSTER_CHECK=0 to skip it (a site whose sinfo does not describe where the jobs run, e.g. a
multi-cluster setup). Import-light: the standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

# sinfo answers in well under a second; a controller that does not answer should not hang the submitting shell.
SINFO_TIMEOUT_S = 15
# One line per partition and group of identical nodes (-e: exact values, not "8+"), fields separated by "|".
SINFO_FORMAT = "%P|%c|%m|%G|%l|%D"
SKIP_ENV = "DPO_SWEEPS_CLUSTER_CHECK"
LOCAL_HINT = (
    "for the local cluster: `make slurm-up`, then `source ${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/env.sh`"
)


class ClusterUnavailable(Exception):
    """sinfo is missing or did not answer: nothing can be submitted from here."""


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one partition that sinfo reports alike."""

    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    gres: str
    time_limit_min: float | None  # None: infinite
    count: int


@dataclass(frozen=True)
class Cluster:
    groups: tuple[NodeGroup, ...]
    default_partition: str | None

    @property
    def partitions(self) -> list[str]:
        return list(dict.fromkeys(g.partition for g in self.groups))

    def describe_partitions(self) -> str:
        return ", ".join(p + (" (default)" if p == self.default_partition else "") for p in self.partitions)


def _int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def gpus_in_gres(gres: str | None) -> int:
    """GPUs in a gres string, sinfo's ("gpu:a100:4(S:0-1),shard:8") or sbatch's ("gpu:2", "gpu"); 0 for none."""
    total = 0
    for item in (gres or "").split(","):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def minutes(limit: str) -> float | None:
    """A SLURM time limit as sinfo prints it ("infinite", "1-00:00:00", "4:00:00", "30:00" = 30 min) in minutes."""
    limit = limit.strip()
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in limit:
        day_text, limit = limit.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in limit.split(":")]
    if len(parts) == 3:
        hours, mins, secs = parts
    elif len(parts) == 2:  # sinfo prints minutes:seconds below an hour
        hours, (mins, secs) = 0, parts
    else:
        hours, mins, secs = 0, parts[0], 0
    return days * 1440 + hours * 60 + mins + secs / 60


def parse_sinfo(text: str) -> Cluster:
    groups, default = [], None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, cpus, mem, gres, limit, count = fields
        if name.endswith("*"):
            name = name[:-1]
            default = name
        groups.append(NodeGroup(name, _int(cpus), _int(mem), gpus_in_gres(gres), gres, minutes(limit), _int(count)))
    return Cluster(tuple(groups), default)


def query_cluster(env: dict[str, str] | None = None) -> Cluster:
    """The cluster as `sinfo` sees it (one call). Raises ClusterUnavailable saying why and what to do."""
    env = dict(os.environ if env is None else env)
    sinfo = shutil.which("sinfo", path=env.get("PATH"))
    if sinfo is None:
        raise ClusterUnavailable(
            "`sinfo` is not installed here, so this machine cannot submit SLURM jobs (sbatch is missing too). Run the "
            f"sweep on a login node of your cluster, or {LOCAL_HINT}. For a sweep on this machine without SLURM use "
            "hydra/launcher=local or hydra/launcher=submitit_local."
        )
    conf = env.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # sinfo itself would retry for 60 s before saying so
        raise ClusterUnavailable(f"SLURM_CONF={conf} does not exist: no cluster to submit to; {LOCAL_HINT}.")
    try:
        out = subprocess.run(
            [sinfo, "--noheader", "--exact", "--format", SINFO_FORMAT],
            env=env,
            capture_output=True,
            text=True,
            timeout=SINFO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ClusterUnavailable(
            f"`sinfo` did not answer within {SINFO_TIMEOUT_S} s: is slurmctld up and SLURM_CONF right? {LOCAL_HINT}."
        ) from None
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()
        raise ClusterUnavailable(f"`sinfo` failed ({why[-1] if why else f'exit {out.returncode}'}); {LOCAL_HINT}.")
    cluster = parse_sinfo(out.stdout)
    if not cluster.groups:
        raise ClusterUnavailable(f"`sinfo` reports no partitions: the cluster has nowhere to run jobs; {LOCAL_HINT}.")
    return cluster


def _requested_gpus(launcher: dict[str, Any]) -> tuple[int, str, Any]:
    """GPUs per node the profile asks for, the key that asks for the most, and that key's value."""
    extra = launcher.get("additional_parameters") or {}
    tasks = launcher.get("tasks_per_node") or 1
    candidates = [
        (_as_count(launcher.get("gpus_per_node")), "gpus_per_node", launcher.get("gpus_per_node")),
        (_as_count(launcher.get("gpus_per_task")) * tasks, "gpus_per_task", launcher.get("gpus_per_task")),
        (gpus_in_gres(launcher.get("gres")), "gres", launcher.get("gres")),
        (gpus_in_gres(extra.get("gres")), "additional_parameters.gres", extra.get("gres")),
        (_as_count(extra.get("gpus_per_node")), "additional_parameters.gpus_per_node", extra.get("gpus_per_node")),
        (_as_count(extra.get("gpus")), "additional_parameters.gpus", extra.get("gpus")),
    ]
    return max(candidates, key=lambda c: c[0])


def requested_gpus(launcher: dict[str, Any]) -> int:
    """GPUs per node the profile asks for (0 for CPU jobs)."""
    return _requested_gpus(launcher)[0]


def _as_count(value: Any) -> int:
    """3, "3" or "a100:3" (sbatch --gpus-per-node accepts a type) -> 3; None -> 0."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return _int(str(value).rsplit(":", 1)[-1])


def _mem_mb(value: Any) -> int | None:
    """sbatch memory ("64G", "500M", "1T", or a number of MB) in MB."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value).upper())
    if not match:
        return None
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return int(float(match.group(1)) * factor)


def check_launcher(launcher: dict[str, Any], cluster: Cluster) -> list[str]:
    """One problem per launcher key that this cluster cannot satisfy; [] when the profile fits."""
    problems: list[str] = []
    partition = launcher.get("partition")
    if partition:
        wanted = [p.strip() for p in str(partition).split(",") if p.strip()]
        unknown = [p for p in wanted if p not in cluster.partitions]
        if unknown:
            problems.append(
                f"hydra.launcher.partition={partition}: the cluster has no partition {', '.join(unknown)} "
                f"(sinfo lists: {cluster.describe_partitions()}). Set hydra.launcher.partition to one of those, "
                "or to null for the default partition."
            )
            return problems
    elif cluster.default_partition is None:
        problems.append(
            "hydra.launcher.partition=null: the cluster has no default partition "
            f"(sinfo lists: {cluster.describe_partitions()}). Set hydra.launcher.partition to one of those."
        )
        return problems
    else:
        wanted = [cluster.default_partition]
    groups = [g for g in cluster.groups if g.partition in wanted]
    where = f"partition {','.join(wanted)}"
    if not partition:
        where += " (the default)"

    gpus, gpu_key, shown = _requested_gpus(launcher)
    have_gpus = max(g.gpus for g in groups)
    if gpus > have_gpus:
        if have_gpus == 0:
            gres = ",".join(sorted({g.gres for g in groups}))
            fix = (
                f"Set hydra.launcher.{gpu_key}=null for CPU jobs (on the local cluster: hydra/launcher=slurm_local), "
                "or pick a partition with GPUs."
            )
            problems.append(f"hydra.launcher.{gpu_key}={shown}: {where} has no GPUs (sinfo gres: {gres}). {fix}")
        else:
            problems.append(
                f"hydra.launcher.{gpu_key}={shown}: {where} has at most {have_gpus} GPU(s) per node. "
                f"Ask for {have_gpus} or fewer per node (and more nodes with hydra.launcher.nodes), or another partition."
            )

    tasks = launcher.get("tasks_per_node") or 1
    cpus_per_task = launcher.get("cpus_per_task")
    have_cpus = max(g.cpus for g in groups)
    if cpus_per_task and cpus_per_task * tasks > have_cpus:
        fit = have_cpus // tasks
        # With one CPU per task already, fewer CPUs per task cannot help: fewer tasks per node (more nodes) can.
        fix = (
            f"Set hydra.launcher.cpus_per_task={fit} (or fewer)."
            if fit >= 1
            else f"Set hydra.launcher.tasks_per_node={have_cpus // cpus_per_task} (or fewer) and spread the ranks over "
            "more nodes with hydra.launcher.nodes."
        )
        problems.append(
            f"hydra.launcher.cpus_per_task={cpus_per_task}: with tasks_per_node={tasks} that is "
            f"{cpus_per_task * tasks} CPUs per node, but the nodes of {where} have at most {have_cpus}. {fix}"
        )
    elif tasks > have_cpus:
        problems.append(
            f"hydra.launcher.tasks_per_node={tasks}: the nodes of {where} have at most {have_cpus} CPUs, one per task "
            f"at least. Set hydra.launcher.tasks_per_node={have_cpus} (or fewer)."
        )

    have_mem = max(g.memory_mb for g in groups)
    mem_gb = launcher.get("mem_gb")
    if mem_gb is not None and have_mem and mem_gb * 1024 > have_mem:
        problems.append(
            f"hydra.launcher.mem_gb={mem_gb}: the nodes of {where} have at most {have_mem} MB "
            f"({have_mem / 1024:.1f} GB). Set hydra.launcher.mem_gb={max(have_mem // 1024, 1)} (or less), "
            "or null for the partition's default."
        )
    mem_per_cpu = _mem_mb(launcher.get("mem_per_cpu"))
    if mem_per_cpu and have_mem and mem_per_cpu * (cpus_per_task or 1) * tasks > have_mem:
        problems.append(
            f"hydra.launcher.mem_per_cpu={launcher.get('mem_per_cpu')}: times {(cpus_per_task or 1) * tasks} CPUs "
            f"that exceeds the {have_mem} MB of the nodes of {where}. Lower it, or set it to null."
        )

    nodes = launcher.get("nodes") or 1
    have_nodes = sum(g.count for g in groups)
    if nodes > have_nodes:
        problems.append(
            f"hydra.launcher.nodes={nodes}: {where} has {have_nodes} node(s). "
            f"Set hydra.launcher.nodes={have_nodes} (or fewer)."
        )

    timeout_min = launcher.get("timeout_min")
    limits = [g.time_limit_min for g in groups]
    longest = None if any(limit is None for limit in limits) else max(limits)
    if timeout_min and longest is not None and timeout_min > longest:
        problems.append(
            f"hydra.launcher.timeout_min={timeout_min}: {where} allows at most {longest:g} minutes, so the jobs would "
            f"wait forever (PartitionTimeLimit). Set hydra.launcher.timeout_min={int(longest)} (or less), "
            "or pick a partition with a longer limit."
        )
    return problems


def is_slurm_launcher(launcher: dict[str, Any]) -> bool:
    """Any launcher that submits through sbatch (hydra-submitit-launcher's SlurmLauncher, or a subclass of ours)."""
    return "slurm" in str(launcher.get("_target_", "")).rsplit(".", 1)[-1].lower()


def cluster_problems(launcher: dict[str, Any]) -> list[str]:
    """The pre-launch check: [] when the profile fits the cluster (or is not a SLURM one, or the check is off)."""
    if not is_slurm_launcher(launcher) or os.environ.get(SKIP_ENV, "1") == "0":
        return []
    try:
        cluster = query_cluster()
    except ClusterUnavailable as err:
        return [f"cannot submit to SLURM: {err}"]
    return check_launcher(launcher, cluster)
