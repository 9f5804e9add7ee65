"""`python -m dpo_sweeps.slurm.profile`: a site profile written from sinfo / scontrol / sacctmgr passes the pre-launch
cluster check as written, on the local cluster and on a GPU site's recorded answers (tests/fixtures/slurm_site_gpu:
stand-in commands on PATH print the recorded columns a command asks for)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dpo_sweeps.slurm import profile
from dpo_sweeps.slurm.resources import check_launcher, parse_sinfo
from tests.helpers import REPO, compose_config, run_cli

SITE = REPO / "tests" / "fixtures" / "slurm_site_gpu"
# The recorded sinfo's columns, in the order of its --format.
SINFO_CODES = "PcmGlDf"

STANDIN = textwrap.dedent(
    f"""\
    #!{sys.executable}
    # A SLURM client that answers from recorded files: the columns asked for (--format / format=), nothing else.
    import re, sys
    from pathlib import Path
    site, cmd, args = Path({str(SITE)!r}), Path(sys.argv[0]).name, sys.argv[1:]
    def table(name):
        rows = [line.split("|") for line in (site / name).read_text().splitlines() if line.strip()]
        return rows[0], rows[1:]
    if cmd == "sinfo":
        fmt = args[args.index("--format") + 1]
        for line in (site / "sinfo.txt").read_text().splitlines():
            cols = line.split("|")
            print("|".join(cols[{SINFO_CODES!r}.index(c)] for c in re.findall(r"%(\\w)", fmt)))
    elif cmd == "scontrol" and args[:2] == ["show", "config"]:
        print((site / "scontrol_show_config.txt").read_text(), end="")
    elif cmd == "squeue":
        pass
    elif cmd == "sacctmgr":
        entity = args[args.index("show") + 1]
        header, rows = table(f"sacctmgr_{{entity}}.txt")
        wanted = next(a for a in args if a.startswith("format=")).split("=", 1)[1].split(",")
        names = [a for a in args[args.index("show") + 2:] if "=" not in a]
        for row in rows:
            if entity == "qos" and names and row[0] not in names:
                continue
            print("|".join(row[header.index(w)] for w in wanted))
    else:
        print(f"{{cmd}}: stand-in: not recorded", file=sys.stderr)
        sys.exit(1)
    """
)


def recorded(name: str) -> str:
    return (SITE / name).read_text()


def projected(fields: str) -> str:
    """sacctmgr's answer for `format=<fields>` from a recorded table (what client.user_accounting asks for)."""
    name = "sacctmgr_user.txt" if fields == "DefaultAccount" else "sacctmgr_assoc.txt"
    header, *rows = [line.split("|") for line in recorded(name).splitlines() if line.strip()]
    return "\n".join("|".join(row[header.index(f)] for f in fields.split(",")) for row in rows) + "\n"


def gpu_site_profile(**kwargs) -> dict:
    text = profile.build_profile(
        "bigiron",
        recorded("sinfo.txt"),
        recorded("scontrol_show_config.txt"),
        projected("DefaultAccount"),
        projected("Account,Partition,DefaultQOS,QOS"),
        **kwargs,
    )
    return yaml.safe_load(text), text


def fits(values: dict) -> list[str]:
    """The pre-launch check's answer for this profile on the recorded site (sinfo's first six columns)."""
    six = "\n".join("|".join(line.split("|")[:6]) for line in recorded("sinfo.txt").splitlines())
    return check_launcher(values, parse_sinfo(six))


def test_gpu_site_profile_asks_for_a_whole_gpu_node_that_fits():
    values, text = gpu_site_profile()
    # The default partition (cpu) has no GPUs: the first one with 8 GPUs a node, in sinfo's order.
    assert values["partition"] == "gpu"
    assert values["gpus_per_node"] == values["tasks_per_node"] == 8
    # A bare `a100` is sold in two sizes: the node feature a100_80gb says which.
    assert values["gpu_mem_gb"] == 80
    assert values["cpus_per_task"] == 8  # 64 CPUs / 8 GPUs
    assert values["mem_gb"] == int(1031000 / 1024 * 0.9)  # memory is consumable (CR_CORE_MEMORY)
    assert values["timeout_min"] == 240  # the partition allows 2 days
    assert (values["account"], values["qos"]) == ("lab_smith", "normal")
    assert values["defaults"] == ["slurm", "_self_"]
    assert fits(values) == []
    # Every value carries the comment that says where it came from.
    lines = text.splitlines()
    for key in ("partition", "account", "qos", "gpus_per_node", "gpu_mem_gb", "cpus_per_task", "mem_gb", "timeout_min"):
        line = next(i for i, text_line in enumerate(lines) if text_line.startswith(f"{key}:"))
        assert lines[line - 1].startswith("# "), key
    assert "feature a100_80gb" in text and "MaxArraySize=10001" in text
    assert "#   h100: 8 x 96 CPUs, 2063000 MB, gpu:h100:8(S:0-1), 2-00:00:00" in text


def test_gpu_site_profile_for_another_partition_and_a_gpu_whose_size_is_unknown():
    values, _ = gpu_site_profile(partition="h100")
    assert (values["gpu_mem_gb"], values["cpus_per_task"]) == (80, 12)
    assert fits(values) == []
    values, _ = gpu_site_profile(partition="debug")
    assert values["timeout_min"] == 60  # the partition's limit, below the launcher's 240
    assert fits(values) == []
    # Without the size feature a bare a100 is not guessed: null, and the file says what to do.
    sinfo = recorded("sinfo.txt").replace(",a100_80gb", "")
    text = profile.build_profile("x", sinfo, recorded("scontrol_show_config.txt"))
    values = yaml.safe_load(text)
    assert values["gpu_mem_gb"] is None and "a bare a100 (40 or 80 GB)" in re.sub(r"\n#\s+", " ", text)
    # Without accounting: no account or QOS asked for.
    assert (values["account"], values["qos"]) == (None, None)
    with pytest.raises(SystemExit, match="no such partition"):
        gpu_site_profile(partition="gpuu")


def standins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sinfo", "scontrol", "squeue", "sacctmgr", "sbatch"):
        (bin_dir / name).write_text(STANDIN)
        (bin_dir / name).chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text("# stand-in\n")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_CONF": str(conf)}


def write_profile(name: str, out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.slurm.profile", name, "--out", str(out), *extra],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_on_the_recorded_gpu_site_then_a_dry_run_passes_its_checks(tmp_path):
    env = standins(tmp_path)
    out = tmp_path / "conf" / "hydra" / "launcher" / "bigiron.yaml"
    proc = write_profile("bigiron", out, env)
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote {out}" in proc.stdout and yaml.safe_load(out.read_text())["gpu_mem_gb"] == 80
    # Not overwritten without --force: exit 1, one line, the file as it was.
    out.write_text(out.read_text() + "# mine\n")
    again = write_profile("bigiron", out, env)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert out.read_text().endswith("# mine\n")
    assert write_profile("bigiron", out, env, "--force").returncode == 0
    assert not out.read_text().endswith("# mine\n")
    # Used as hydra/launcher=bigiron: the cluster check and the memory check pass, the array split is read.
    dry = run_cli(
        ["-m", "hydra/launcher=bigiron", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny_qwen"]
        + ["dataset=toy", "beta=0.1,0.3", "dry_run=true"],
        cwd=tmp_path,
        env=env,
    )
    assert "Cluster check" not in dry.stdout, dry.stdout
    assert "tasks_per_node=8, gpus_per_node=8, cpus_per_task=8" in dry.stdout, dry.stdout
    assert "GPUs of 80 GiB" in dry.stdout and "fits" in dry.stdout, dry.stdout
    assert "MaxArraySize=10001" in dry.stdout, dry.stdout
    assert not (tmp_path / "outputs").exists()


def test_cli_without_slurm_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x.yaml"
    proc = write_profile("x", out, {"PATH": str(Path(sys.executable).parent), "SLURM_CONF": ""})
    assert proc.returncode == 1 and proc.stderr.startswith("Error: cannot read the cluster")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slurm
def test_profile_of_the_local_cluster_passes_the_pre_launch_check(slurm_cluster, tmp_path):
    out = tmp_path / "conf" / "hydra" / "launcher" / "local_site.yaml"
    proc = write_profile("local_site", out, {})
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(out.read_text())
    # The local nodes: no GPUs, memory not consumable (CR_Core), accounting on.
    assert values["gpus_per_node"] is None and values["mem_gb"] is None and values["partition"] == "debug"
    assert values["account"]
    launcher = compose_config(
        ["hydra/launcher=local_site", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"], return_hydra_config=True
    ).hydra.launcher
    assert launcher.partition == "debug" and launcher.cpus_per_task == values["cpus_per_task"]
    dry = run_cli(
        ["-m", "experiment=demo", "hydra/launcher=local_site", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
        + ["dry_run=true"],
        cwd=tmp_path,
    )
    assert "Cluster check" not in dry.stdout, dry.stdout
    assert "accounting on" in dry.stdout and "partition=debug" in dry.stdout, dry.stdout


def test_the_docs_show_what_the_command_writes_for_the_recorded_site():
    _, text = gpu_site_profile(origin=" on login01, 2026-12-07 20:44 UTC,")
    assert f"```yaml\n{text.rstrip()}\n```" in (REPO / "docs" / "slurm.md").read_text()
