"""Faults a cluster has, provoked on the local SLURM cluster (launch/slurm-up.sh) for tests/test_faults.py: a small
full filesystem under a run folder, slurmctld stopped for a while, a node lost (its slurmd and its job processes
killed). Every daemon stopped here is started again exactly as slurm-up.sh starts it, in a `finally`, so a failing
test never leaves the shared cluster without it.

Root only (the local cluster needs it anyway). The daemons are found by the pid files slurm-up.sh names
(launch/pids.sh), never by process name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.slurm_support import SlurmCluster

# Cross-namespace mount: a clone of the tmpfs mount (open_tree) moved into another mount namespace (setns +
# move_mount); the two mounts share one filesystem. A mount made in our namespace does not reach the nodes' slurmd:
# each runs in a private mount namespace (launch/netns.sh). setns needs a single-threaded process: its own python.
_MOUNT_INTO = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, pid, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = libc.syscall(428, -100, src.encode(), 1 | 0o2000000)  # open_tree(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
if fd < 0: raise OSError(ctypes.get_errno(), "open_tree " + src)
if libc.setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), 0x00020000) != 0: raise OSError(ctypes.get_errno(), "setns")
os.chdir("/")
if libc.syscall(429, fd, b"", -100, dst.encode(), 4) != 0: raise OSError(ctypes.get_errno(), "move_mount " + dst)
"""


def _pid(pidfile: Path, name: str) -> int | None:
    """The daemon behind a pid file, only if it is the program named (launch/pids.sh our_pid)."""
    try:
        pid = int("".join(c for c in pidfile.read_text() if c.isdigit()))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if name.encode() in cmdline else None


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def node_names(cluster: SlurmCluster) -> list[str]:
    out = cluster.run("sinfo", "-h", "-N", "-o", "%N").stdout.split()
    return sorted(set(out))


def slurmd_pidfile(cluster: SlurmCluster, node: str) -> Path:
    run = cluster.state_dir / "run"
    return run / "slurmd.pid" if node == "localhost" else run / f"slurmd-{node}.pid"


def slurmd_pid(cluster: SlurmCluster, node: str) -> int | None:
    return _pid(slurmd_pidfile(cluster, node), "slurmd")


@contextlib.contextmanager
def small_tmpfs(cluster: SlurmCluster, mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mountpoint`, seen by this process and by every node's jobs (the same filesystem in each
    slurmd's mount namespace); unmounted everywhere on the way out."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True)
    entered: list[int] = []
    try:
        for node in node_names(cluster):
            pid = slurmd_pid(cluster, node)
            if pid is None or _ns(pid, "mnt") == _ns("self", "mnt") or pid in entered:
                continue
            subprocess.run(["nsenter", "-t", str(pid), "-m", "mkdir", "-p", str(mountpoint)], check=True)
            subprocess.run([sys.executable, "-c", _MOUNT_INTO, str(mountpoint), str(pid), str(mountpoint)], check=True)
            entered.append(pid)
        yield mountpoint
    finally:
        for pid in entered:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", "-l", str(mountpoint)], check=False)
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of `folder` until `leave_bytes` are free; returns the filler file (remove it to free)."""
    filler = folder / "filler.bin"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def log_fault(what: str) -> None:
    """Say on stderr, and in the file DPO_SWEEPS_FAULT_LOG names (the log that people sharing a development cluster
    read), that a daemon of the cluster is about to be stopped: whoever else uses it then knows why their jobs stall."""
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    line = f"FAULT {stamp} UTC (tests/test_faults.py): {what}"
    print(line, file=sys.stderr)
    path = os.environ.get("DPO_SWEEPS_FAULT_LOG")
    if path:
        with contextlib.suppress(OSError), open(path, "a") as log:
            log.write(line + "\n")


def _daemon_env(cluster: SlurmCluster) -> dict[str, str]:
    # slurm-up.sh exports both before starting the daemons: DPO_SWEEPS_SLURM_DIR marks them (and their slurmstepd) as
    # this cluster's for slurm-down.sh's stray search.
    return {**os.environ, **cluster.env, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _nodes_up(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=15)
        states = out.stdout.split()
        if out.returncode == 0 and states and all(s.startswith(("idle", "mix", "alloc", "complet")) for s in states):
            return
        time.sleep(0.5)
    raise AssertionError(f"the cluster's nodes are not back after {timeout:.0f} s: {out.stdout or out.stderr}")


def start_slurmctld(cluster: SlurmCluster) -> None:
    """As launch/slurm-up.sh does: `slurmctld -f CONF` (it daemonizes, recovers its state from StateSaveLocation)."""
    with open(cluster.log_dir / "slurmctld.out", "a") as out:
        subprocess.run(
            ["slurmctld", "-f", str(cluster.conf)], env=_daemon_env(cluster), stdout=out, stderr=out, check=True
        )


@contextlib.contextmanager
def slurmctld_stopped(cluster: SlurmCluster, seconds: float) -> Iterator[None]:
    """slurmctld stopped (SIGTERM, as slurm-down.sh does) while the block runs; started again on the way out, however
    the block ends, and waited for until every node answers."""
    pid = _pid(cluster.state_dir / "run" / "slurmctld.pid", "slurmctld")
    assert pid is not None, "slurmctld of the local cluster is not running"
    log_fault(f"stopping slurmctld (pid {pid}) of {cluster.state_dir} for ~{seconds:.0f} s, then restarting it")
    os.kill(pid, signal.SIGTERM)
    try:
        _wait_gone(pid, 10)
        yield
    finally:
        start_slurmctld(cluster)
        _nodes_up(cluster, 120)


def start_slurmd(cluster: SlurmCluster, node: str) -> None:
    """As launch/slurm-up.sh does: `slurmd -f CONF -N localhost` on the one-node cluster, else net_start_slurmd (its
    node's network namespace, own hostname and /etc/hosts; launch/netns.sh)."""
    sdir = cluster.state_dir
    env = _daemon_env(cluster)
    with open(cluster.log_dir / f"slurmd{'' if node == 'localhost' else '-' + node}.out", "a") as out:
        if node == "localhost":
            cmd = ["slurmd", "-f", str(cluster.conf), "-N", "localhost"]
        else:
            netns = Path(__file__).resolve().parent.parent / "launch" / "netns.sh"
            prefix = os.environ.get("DPO_SWEEPS_SLURM_NETNS_PREFIX", "dposlurm")
            script = f'source "{netns}" && net_start_slurmd "$1" "$2" "$3" "$4"'
            cmd = ["bash", "-c", script, "bash", node, f"{prefix}-{node}", str(sdir / "hosts"), str(cluster.conf)]
        subprocess.run(cmd, env=env, stdout=out, stderr=out, check=True)


def _processes_of_node(slurmd: int) -> list[int]:
    """Every process in the network namespace of a node's slurmd (multi-node cluster: slurmd, slurmstepd, jobs); on
    the one-node cluster, slurmd and its descendants (the slurmstepds and their jobs)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if _ns(slurmd, "net") != _ns("self", "net"):
        found = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if _ns(pid, "net") == _ns(slurmd, "net"):
                    found.append(pid)
        return found
    parents, tree = {}, {slurmd}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            # slurmstepd daemonizes (its parent is init): this cluster's carry its marker (slurm-down.sh's strays).
            marker = f"DPO_SWEEPS_SLURM_DIR={os.environ.get('DPO_SWEEPS_SLURM_DIR', '')}".encode()
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"slurmstepd") and marker in Path(
                f"/proc/{pid}/environ"
            ).read_bytes().split(b"\0"):
                tree.add(pid)
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        grew = bool(more)
        tree |= more
    return sorted(tree)


@contextlib.contextmanager
def node_lost(cluster: SlurmCluster, node: str) -> Iterator[None]:
    """What a node that dies does: its slurmd and every process of its jobs killed at once (SIGKILL), the node back
    after the block (slurmd started as slurm-up.sh does: a rebooted node). slurmctld learns at the node's
    registration that the job it ran is gone: NODE_FAIL."""
    pid = slurmd_pid(cluster, node)
    assert pid is not None, f"slurmd of node {node} is not running"
    log_fault(
        f"killing slurmd (pid {pid}) and the job processes of node {node} of {cluster.state_dir}; slurmd back in ~10 s"
    )
    victims = _processes_of_node(pid)
    for victim in [pid, *victims]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    try:
        _wait_gone(pid, 10)
        yield
    finally:
        if slurmd_pid(cluster, node) is None:
            start_slurmd(cluster, node)
        _nodes_up(cluster, 120)
