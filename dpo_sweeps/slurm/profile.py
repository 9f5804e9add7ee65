"""`python -m dpo_sweeps.slurm.profile NAME`: a site profile written from what the cluster itself says.

Pointing the project at a new cluster used to mean reading `sinfo` by hand and copying the partition, GPU type and
count, CPUs, memory, account and QOS into a copy of launch/site_profiles/example_site.yaml. This reads them through
the one SLURM client (`client.site_nodes`, `site_config`, `user_accounting`) and writes
conf/hydra/launcher/NAME.yaml: the project's `slurm` launcher plus what this site differs in, each value with a
comment saying which command it came from and what to check. What the cluster cannot tell (setup lines, how long a
run takes) is named in the file and left at the `slurm` launcher's defaults. The profile asks for what the chosen
partition's smallest nodes have, so it passes the pre-launch cluster check (`resources.check_launcher`) as written.

Nothing is overwritten without --force; --out writes anywhere else. Import-light: the standard library and the
slurm package only (runs on a login node).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import re
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from dpo_sweeps.slurm import client
from dpo_sweeps.slurm.memory_check import GPU_TYPES_GIB, gpu_gib_of_type, gpu_types_in_gres
from dpo_sweeps.slurm.resources import gpus_in_gres, minutes
from dpo_sweeps.slurm.site import SlurmCommandError, parse_config

LAUNCHER_DIR = Path(__file__).resolve().parents[2] / "conf" / "hydra" / "launcher"
# The `slurm` launcher's wall-clock default (conf/hydra/launcher/slurm.yaml), kept unless the partition allows less.
DEFAULT_TIMEOUT_MIN = 240
# Leave the OS and SLURM's own daemons some of a node's memory: a job asking for all of RealMemory can fail to start.
MEM_SHARE = 0.9
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Nodes:
    """One line of `sinfo` in client.NODES_FORMAT: nodes of a partition that SLURM reports alike."""

    partition: str
    default: bool
    cpus: int
    memory_mb: int
    gres: str
    gpus: int
    time_limit: str
    count: int
    features: tuple[str, ...]


def _int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def parse_nodes(text: str) -> list[Nodes]:
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        name, cpus, mem, gres, limit, count, features = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        feats = tuple(f for f in features.split(",") if f and f != "(null)")
        rows.append(Nodes(name, default, _int(cpus), _int(mem), gres, gpus_in_gres(gres), limit, _int(count), feats))
    return rows


def gpu_memory(groups: list[Nodes]) -> tuple[float | None, str]:
    """GiB per GPU the profile may count on (the smallest of the partition's GPU types) and where that came from."""
    sizes, unknown = {}, []
    for g in groups:
        for gpu_type in gpu_types_in_gres(g.gres) or ["(untyped)"]:
            gib = gpu_gib_of_type(gpu_type) if gpu_type != "(untyped)" else None
            # A type sold in several sizes (a100) is often named with its size in the node features (a100_80gb).
            feature = next((f for f in g.features if gpu_type.lower() in f.lower() and gpu_gib_of_type(f)), None)
            if gib is None and feature:
                gib, gpu_type = gpu_gib_of_type(feature), f"{gpu_type} (node feature {feature})"
            if gib is None:
                unknown.append(gpu_type)
            else:
                sizes[gpu_type] = gib
    if unknown:
        return None, (
            f"sinfo's gres names GPU type(s) {', '.join(sorted(set(unknown)))} whose memory is not known here (a type "
            "sold in several sizes, e.g. a bare a100 (40 or 80 GB), or one missing from the table in "
            "dpo_sweeps/slurm/memory_check.py). CHECK: set the GiB of one GPU (nvidia-smi on a node), else the "
            "pre-launch memory check is skipped"
        )
    if not sizes:
        return None, "no GPUs in this partition"
    smallest = min(sizes.values())
    listed = ", ".join(f"{t} = {v:g} GiB" for t, v in sorted(sizes.items()))
    return smallest, f"GiB of one GPU, from sinfo: {listed} (GPU types: the table in slurm/memory_check.py)"


def choose_partition(rows: list[Nodes], wanted: str | None) -> tuple[str, str]:
    """(partition, why): the one asked for; else the default one if it has GPUs; else the one with most GPUs a node."""
    names = list(dict.fromkeys(r.partition for r in rows))
    if wanted:
        if wanted not in names:
            raise SystemExit(
                f"Error: --partition {wanted}: sinfo lists no such partition (it lists: {', '.join(names)})."
            )
        return wanted, "--partition"
    default = next((r.partition for r in rows if r.default), None)
    most = {p: min(r.gpus for r in rows if r.partition == p) for p in names}
    if default and most[default] > 0:
        return default, "the cluster's default partition (sinfo marks it with *)"
    if max(most.values()) > 0:
        best = max(names, key=lambda p: most[p])  # first listed among equals: sinfo's order
        why = "the partition whose nodes have the most GPUs"
        return best, why + (f" (the default partition, {default}, has none)" if default else "")
    if default:
        return default, "the cluster's default partition (sinfo marks it with *); no partition has GPUs"
    return names[0], "the first partition sinfo lists (no default partition, no GPUs)"


def _yaml(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, str) else f"{value:g}"


def _accounting(config: dict[str, str], default_text: str, assoc_text: str) -> tuple[str | None, str | None, str, str]:
    """(account, qos, why account, why qos)."""
    if "slurmdbd" not in config.get("AccountingStorageType", ""):
        why = "no accounting here (AccountingStorageType in scontrol show config): CHECK whether your site wants one"
        return None, None, why, why
    account = next((line.strip() for line in default_text.splitlines() if line.strip()), None)
    rows = [[*line.split("|"), "", "", ""][:4] for line in assoc_text.splitlines() if line.strip()]
    accounts = sorted({r[0] for r in rows if r[0]})
    why_account = (
        f"your default account (sacctmgr show user: DefaultAccount); your associations: {', '.join(accounts) or '-'}"
        if account
        else "sacctmgr shows no default account for you: CHECK with your site which account to charge"
    )
    mine = [r for r in rows if r[0] == account] or rows
    defaults = sorted({r[2] for r in mine if r[2]})
    allowed = sorted({q for r in mine for q in r[3].split(",") if q})
    if len(defaults) == 1:
        return (
            account,
            defaults[0],
            why_account,
            (
                f"the default QOS of your association (sacctmgr show assoc: DefaultQOS); allowed: {', '.join(allowed) or '-'}"
            ),
        )
    return (
        account,
        None,
        why_account,
        (f"left to SLURM (your association's default); allowed QOS (sacctmgr show assoc): {', '.join(allowed) or '-'}"),
    )


def build_profile(
    name: str,
    nodes_text: str,
    config_text: str,
    user_default_text: str = "",
    assoc_text: str = "",
    partition: str | None = None,
    origin: str = "",
) -> str:
    """The profile's YAML text, every value commented with its source; SystemExit when sinfo names no nodes."""
    rows = parse_nodes(nodes_text)
    if not rows:
        raise SystemExit("Error: sinfo lists no partitions: nothing to write a profile from. Is this the login node?")
    config = parse_config(config_text)
    part, why_part = choose_partition(rows, partition)
    groups = [r for r in rows if r.partition == part]
    shape = "sinfo; its node groups differ: the smallest" if len(groups) > 1 else "sinfo"
    gpus = min(g.gpus for g in groups)
    cpus = min(g.cpus for g in groups)
    memory_mb = min(g.memory_mb for g in groups)
    limit = groups[0].time_limit
    limit_min = (
        None if any(minutes(g.time_limit) is None for g in groups) else min(minutes(g.time_limit) for g in groups)
    )
    gpu_gib, why_gib = gpu_memory(groups) if gpus else (None, "CPU-only partition: no GPU memory to check")
    account, qos, why_account, why_qos = _accounting(config, user_default_text, assoc_text)
    select = config.get("SelectTypeParameters", "")
    timeout = DEFAULT_TIMEOUT_MIN if limit_min is None else min(DEFAULT_TIMEOUT_MIN, int(limit_min))
    header = (
        f"Written by `python -m dpo_sweeps.slurm.profile {name}`{origin} from sinfo, scontrol show config"
        + (" and sacctmgr. " if account or qos else ". ")
        + "Each value says where it came from; lines with CHECK need a person. Keep the file: every sweep on this "
        f"cluster names it (hydra/launcher={name}); any key can still be set per sweep (hydra.launcher.timeout_min=600)."
        f" Cluster {config.get('ClusterName', '?')}: MaxArraySize={config.get('MaxArraySize', '?')} (a larger sweep "
        f"is split into several arrays at submission), MaxJobCount={config.get('MaxJobCount', '?')}."
    )
    lines = [
        "# @package hydra.launcher",
        f"# python -m dpo_sweeps -m hydra/launcher={name} model=qwen1_5b beta=0.1,0.3 dry_run=true",
        *textwrap.wrap(header, width=118, initial_indent="# ", subsequent_indent="# "),
        "# Partitions (sinfo: nodes x CPUs, memory MB, gres, time limit, features):",
    ]
    for r in rows:
        star = "*" if r.default else ""
        feats = ",".join(r.features) or "-"
        lines.append(
            f"#   {r.partition}{star}: {r.count} x {r.cpus} CPUs, {r.memory_mb} MB, {r.gres}, {r.time_limit}, {feats}"
        )
    lines += [
        "defaults:",
        "  # The project's slurm launcher (requeue-friendly submitit settings); this file wins.",
        "  - slurm",
        "  - _self_",
        "",
    ]

    def value(key: str, val, why: str) -> None:
        lines.extend(textwrap.wrap(why, width=118, initial_indent="# ", subsequent_indent="#   "))
        lines.append(f"{key}: {_yaml(val)}")

    value("partition", part, f"{why_part}. CHECK: another partition: --partition when writing this, or edit here")
    value("account", account, why_account)
    value("qos", qos, why_qos)
    if gpus:
        gres_types = ",".join(sorted({t for g in groups for t in gpu_types_in_gres(g.gres)})) or "untyped"
        value(
            "gpus_per_node",
            gpus,
            f"all GPUs of a node (sinfo gres: {','.join(sorted({g.gres for g in groups}))}; type {gres_types}), one "
            f"training rank each. CHECK: fewer for small models (LoRA on a 1-8B model fits one GPU: set both to 1)",
        )
        value("tasks_per_node", gpus, "one task (torch.distributed rank) per GPU")
        value("gpu_mem_gb", gpu_gib, why_gib)
        per_task = max(1, cpus // gpus)
        value("cpus_per_task", per_task, f"the node's {cpus} CPUs ({shape}) shared by its {gpus} GPU tasks")
    else:
        value("gpus_per_node", None, f"no GPUs in partition {part} (sinfo gres: {groups[0].gres}): CPU jobs")
        value("tasks_per_node", 1, "one process per point on CPU")
        value("gpu_mem_gb", None, "CPU-only partition: no GPU memory to check")
        value(
            "cpus_per_task",
            cpus,
            f"a whole node's CPUs per point ({shape}). CHECK: fewer to run several points on one node",
        )
    if "MEMORY" not in select.upper():
        value(
            "mem_gb",
            None,
            f"memory is not a consumable resource here (SelectTypeParameters={select or '?'}): ask for none",
        )
    else:
        mem_gb = max(1, int(memory_mb / 1024 * MEM_SHARE))
        value("mem_gb", mem_gb, f"{MEM_SHARE:.0%} of the node's {memory_mb} MB ({shape}), per node")
    if limit_min is None:
        why_time = f"the slurm launcher's default; partition {part} has no time limit (sinfo: {limit})"
    else:
        why_time = f"partition {part} allows {limit} (sinfo); the slurm launcher's default is {DEFAULT_TIMEOUT_MIN}"
    value("timeout_min", timeout, f"{why_time}. CHECK: how long one run takes, above 10 (preemption, see slurm.yaml)")
    lines += [
        "# CHECK: shell lines the job needs before it starts (module load, the venv, HF_HOME on shared storage), e.g.",
        "#   - module load cuda/12.4",
        "#   - export HF_HOME=/shared/$USER/hf_cache     (where `python -m dpo_sweeps.fetch` put the models)",
        "setup: null",
        "",
    ]
    return "\n".join(lines)


def read_cluster() -> tuple[str, str, str, str]:
    """What build_profile needs, asked through the one SLURM client; SystemExit with one line when SLURM cannot be
    asked. sacctmgr failing (no slurmdbd) is not fatal: the accounting lines say so."""
    try:
        nodes, config = client.site_nodes(), client.site_config()
    except SlurmCommandError as exc:
        raise SystemExit(
            f"Error: cannot read the cluster: {exc}. Run this on a login node of the cluster "
            "(on the local cluster: `source /tmp/dpo_sweeps_slurm/env.sh` first). Nothing was written."
        ) from None
    default, assoc = "", ""
    if "slurmdbd" in parse_config(config).get("AccountingStorageType", ""):
        # Unanswered, the profile says sacctmgr showed no default account.
        with contextlib.suppress(SlurmCommandError):
            default, assoc = client.user_accounting(getpass.getuser())
    return nodes, config, default, assoc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_sweeps.slurm.profile",
        description="Write a SLURM site profile (a hydra/launcher option) from sinfo, scontrol and sacctmgr.",
        epilog=f"Known GPU types (GiB): {', '.join(f'{k}={v}' for k, v in GPU_TYPES_GIB.items())}; a type named with "
        "its size (a100_80g) too.",
    )
    parser.add_argument("name", help="the profile's name: use it as hydra/launcher=NAME")
    parser.add_argument("--out", type=Path, help=f"write here instead of {LAUNCHER_DIR}/NAME.yaml")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--partition", help="the partition to ask for (default: chosen from sinfo, see the file)")
    args = parser.parse_args(argv)
    if not NAME_RE.match(args.name):
        print(f"Error: profile name {args.name!r}: use letters, digits, '_', '-' or '.' only.", file=sys.stderr)
        return 2
    out = args.out or LAUNCHER_DIR / f"{args.name}.yaml"
    if out.exists() and not args.force:
        print(
            f"Error: {out} exists; nothing was written. --force replaces it, --out writes elsewhere.", file=sys.stderr
        )
        return 1
    try:
        origin = f" on {socket.gethostname()}, {time.strftime('%Y-%m-%d %H:%M %Z')},"
        text = build_profile(args.name, *read_cluster(), partition=args.partition, origin=origin)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"Wrote {out}. Read the lines marked CHECK, then compare it with sinfo (nothing is submitted):")
    print(f"  python -m dpo_sweeps -m hydra/launcher={args.name} <your sweep's overrides> dry_run=true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
