"""torch.distributed from SLURM's variables (train/cluster.py): the rendezvous every rank of a job computes alone.

The nodelist and the node addresses come from the real `scontrol` of the local cluster (a nodelist is expanded by
scontrol without the nodes having to exist; NodeAddr needs a real node)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.train import cluster
from tests import slurm_support
from tests.helpers import (
    FORCE_FSDP,
    TINY,
    preempt_at_step,
    read_json,
    run_cli,
    start_sweep,
    wait_for_point,
)
from tests.slurm_support import QUEUE_WAIT_S, SlurmCluster, slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm


def _checkpoints():
    """train/checkpoints.py, imported when a test reads checkpoints: it imports transformers, which at the top of this
    module would cost every xdist worker ~8 s of CPU while it collects the suite (docs/development.md)."""
    from dpo_sweeps.train import checkpoints

    return checkpoints


def test_a_compressed_nodelist_expands_in_slurms_order(slurm_cluster):  # noqa: F811
    assert cluster.job_hostnames("gpu[07-09,11],login1") == ["gpu07", "gpu08", "gpu09", "gpu11", "login1"]
    assert cluster.job_hostnames("localhost") == ["localhost"]


def test_master_address_is_the_first_hosts_nodeaddr_and_the_node_rank_is_slurm_nodeid(slurm_cluster):  # noqa: F811
    (node,) = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N").stdout.split()[:1]
    addr = slurm_cluster.run("scontrol", "show", "node", node, "-o").stdout.split("NodeAddr=")[1].split()[0]
    # The fourth task of a job, the second one on its node: global rank 3, node rank 1, local rank 1.
    env = {
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": node,
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
    }
    rdzv = cluster.slurm_rendezvous(env)
    assert rdzv["MASTER_ADDR"] == addr, "the NodeAddr (what peers reach), not the node's name"
    assert rdzv["MASTER_PORT"] == str(cluster.rendezvous_port(4242))
    assert (rdzv["RANK"], rdzv["WORLD_SIZE"], rdzv["LOCAL_RANK"], rdzv["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert rdzv["NODE_RANK"] == rdzv["GROUP_RANK"] == "1", "the node's rank, not the task's"
    assert rdzv["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert rdzv["_nodes"] == [node]
    # A MASTER_PORT the submitting shell exported reaches every job (sbatch --export=ALL): it is not the job's port.
    assert cluster.slurm_rendezvous({**env, "MASTER_PORT": "29555"})["MASTER_PORT"] == str(
        cluster.rendezvous_port(4242)
    )


def test_an_unknown_node_is_a_clear_error(slurm_cluster):  # noqa: F811
    with pytest.raises(RuntimeError, match="scontrol show node nosuchnode7"):
        cluster.node_address("nosuchnode7")


def test_rendezvous_ports_differ_between_jobs_and_stay_below_the_ephemeral_range():
    ports = [cluster.rendezvous_port(job) for job in range(1000, 1100)]
    assert len(set(ports)) == len(ports), "consecutive jobs on one node must not share a port"
    assert cluster.rendezvous_port("1234") == cluster.rendezvous_port(1234), "every rank computes the same port"
    assert all(1024 < p < 32768 for p in ports + [cluster.rendezvous_port(10**9 + 7)])


def test_a_port_held_on_the_node_is_never_the_jobs_port():
    derived = cluster.rendezvous_port(4242)
    with socket.socket() as held:  # another job's store, or any server, already listening on the derived port
        held.bind(("", derived))
        held.listen()
        port = cluster.free_port(derived)
        assert port != derived and cluster.port_is_free(port), port
        assert cluster.RDZV_PORT_BASE <= port < cluster.RDZV_PORT_BASE + cluster.RDZV_PORT_SPAN
    assert cluster.free_port(derived) == derived, "a free derived port is kept"


def test_ranks_of_a_submitit_local_task():
    env = {"SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}
    rdzv = cluster.local_rendezvous({**env, "SUBMITIT_LOCAL_JOB_ID": "31337"})
    assert (rdzv["RANK"], rdzv["WORLD_SIZE"], rdzv["LOCAL_RANK"], rdzv["LOCAL_WORLD_SIZE"]) == ("1", "2", "1", "2")
    assert rdzv["MASTER_ADDR"] == "127.0.0.1" and rdzv["NODE_RANK"] == "0"


@pytest.mark.parametrize(
    ("cores", "on_node", "threads"),
    [
        (8, "64", 8),  # SLURM bound each of the 8 tasks to its 8 CPUs: the affinity is the task's own share
        (64, "64", 8),  # not bound (every task sees the node's 64): share them between the 8 ranks
    ],
)
def test_cpu_threads_under_slurm_binding_are_the_tasks_own_cpus(monkeypatch, cores, on_node, threads):
    monkeypatch.setattr(cluster, "available_cores", lambda: cores)
    for key, value in {"SLURM_CPUS_ON_NODE": on_node, "SLURM_PROCID": "3", "LOCAL_WORLD_SIZE": "8"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(cluster.POINTS_AT_ONCE_ENV, raising=False)
    assert cluster.cpu_threads(None) == threads


@pytest.mark.slow
def test_a_two_task_job_from_a_shell_exporting_torch_variables_still_gets_its_own_ranks_and_port(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    # A shell after a torchrun: every job inherits these through sbatch --export=ALL.
    shell = {"MASTER_PORT": "12345", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "10.9.9.9"}
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "model=tiny_qwen",
            *TINY,
            "hydra/launcher=slurm_local",
            "hydra.launcher.tasks_per_node=2",
            "training.max_steps=2",
            "training.eval_before_training=false",
            "training.save_model=false",
            "eval.gen_prompts=0",
            f"hydra.sweep.dir={sweep}",
        ],
        env=shell,
        timeout=420,
    )
    (run_dir,) = [p.parent for p in sweep.glob("*/status.json")]
    status, metrics = read_json(run_dir / "status.json"), read_json(run_dir / "metrics.json")
    assert status["state"] == "completed" and status["world_size"] == 2, status
    assert metrics["parallelism/world_size"] == 2 and metrics["parallelism/type"] == "MULTI_CPU", metrics
    addr, port = status["master"].rsplit(":", 1)
    assert addr == cluster.node_address(status["nodes"][0]) and port != shell["MASTER_PORT"], status


@pytest.mark.slow
def test_a_two_task_submitit_local_job_trains_as_ranks_0_and_1(tmp_path, tiny_model_paths):
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "model=tiny_qwen",
            *TINY,
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            "training.max_steps=2",
            "training.logging_steps=1",
            "training.eval_before_training=false",
            "training.save_model=false",
            "eval.gen_prompts=0",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=420,
    )
    (run_dir,) = [p.parent for p in sweep.glob("*/status.json")]
    status, metrics = read_json(run_dir / "status.json"), read_json(run_dir / "metrics.json")
    # One training of two ranks, not two rank-0 copies writing one folder.
    assert status["state"] == "completed" and status["world_size"] == 2 and status["attempts"] == 1, status
    assert metrics["parallelism/world_size"] == 2 and metrics["parallelism/type"] == "MULTI_CPU", metrics
    assert status["master"].startswith("127.0.0.1:"), status
    losses = [r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r]
    assert len(losses) == 2, "each step logged once, by rank 0"


# --- a rank that dies -------------------------------------------------------------------------------------------


def _task_pid(job_id: str, procid: int) -> int | None:
    """The process of one task (rank) of a running job on this machine, found by its SLURM environment."""
    want = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={procid}".encode()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if want <= environ and b"submitit" in cmdline:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_fails_the_point_and_a_rerun_resumes(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model=tiny_qwen",
        *TINY,
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        "training.max_steps=60",
        "training.save_steps=10",
        "training.logging_steps=5",
        "training.eval_before_training=false",
        "training.save_model=false",
        "training.dist_timeout_min=1",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start_sweep(args)
    try:
        run_dir = wait_for_point(
            proc,
            sweep,
            lambda d: _checkpoints().last_complete(d / "checkpoints") is not None,
            "job ended or stalled before the kill",
            timeout=QUEUE_WAIT_S,
        )
        job_id = read_json(run_dir / "status.json")["slurm"]["job_id"]
        pid = _task_pid(job_id, 1)
        assert pid is not None, f"no process of rank 1 of job {job_id}"
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = proc.communicate(timeout=240)
        ended_in = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-4000:]
    assert ended_in < 60, f"the sweep took {ended_in:.0f} s to end after a rank died"
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed", status
    error = status["error"]
    assert "rank 1" in error and status["slurm"]["node"] in error and "SIGKILL" in error, error
    assert max(_steps(run_dir)) < 60

    run_cli(args[:-1] + [f"hydra.sweep.dir={sweep}"], timeout=QUEUE_WAIT_S)
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["global_step"] == 60 and 10 <= metrics["resumed_from_step"] < 60
    assert read_json(run_dir / "status.json")["state"] == "completed"


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_job_after_the_collective_timeout(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    """SIGSTOP: the peer neither answers nor closes its connections, so only the timeout can end the wait."""
    sweep = tmp_path / "sweep"
    timeout_s = 30
    args = [
        "-m",
        "model=tiny_qwen",
        *TINY,
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        "training.max_steps=400",
        "training.eval_before_training=false",
        "training.save_model=false",
        f"training.dist_timeout_min={timeout_s / 60}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start_sweep(args)
    try:
        run_dir = wait_for_point(
            proc,
            sweep,
            lambda d: max(_steps(d)) >= 10,
            "job ended or stalled before the stop",
            "*/metrics.jsonl",
            timeout=QUEUE_WAIT_S,
        )
        pid = _task_pid(read_json(run_dir / "status.json")["slurm"]["job_id"], 1)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, _ = proc.communicate(timeout=timeout_s + 150)
        ended_in = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-4000:]
    assert timeout_s * 0.8 < ended_in < timeout_s + 60, f"ended {ended_in:.0f} s after the stop ({timeout_s} s timeout)"
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and max(_steps(run_dir)) < 400
    # Rank 0 timed out and exited non-zero first; srun then ended the stopped rank.
    assert status["dead_rank"]["rank"] == "0", status
    assert "timeout" in status["error"].lower() or "timed out" in status["error"].lower(), status["error"]


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in run_folder.read_history(run_dir) if "loss" in r] or [0]


# --- several nodes (make slurm-up NODES=2) ------------------------------------------------------------------------


def _sweep_point(tmp_path: Path, name: str, overrides: list[str], env: dict | None = None) -> Path:
    sweep = tmp_path / name
    run_cli(["-m", *overrides, f"hydra.sweep.dir={sweep}"], env=env, timeout=600)
    (run_dir,) = [p.parent for p in sweep.glob("*/status.json")]
    return run_dir


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r}


@pytest.fixture
def two_node_cluster(monkeypatch) -> tuple[SlurmCluster, list[str]]:
    """The local cluster of DPO_SWEEPS_SLURM_DIR and its usable nodes when it has two or more (`slurm_cluster` probes
    the one-node cluster's node `localhost`); skipped otherwise. A node busy with other jobs counts: the test's jobs
    queue for it (a node still finishing another test's job must not turn this test into a skip)."""
    sdir = slurm_support.state_dir()
    env = {"SLURM_CONF": str(sdir / "slurm.conf"), "DPO_SWEEPS_SLURM_DIR": str(sdir)}
    cluster_ = SlurmCluster(state_dir=sdir, env=env)
    try:
        out = cluster_.run("sinfo", "-h", "-N", "-o", "%N %T", timeout=15).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no local SLURM cluster in {sdir}: {exc}")
    up = ("idle", "mix", "alloc", "complet")
    nodes = {n: state for n, state in (line.split() for line in out.splitlines())}
    idle = sorted(n for n, state in nodes.items() if state.startswith(up))
    if len(idle) < 2 and len(nodes) >= 2 and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the two-node test must run, but the cluster's nodes are {nodes}", pytrace=False)
    if len(idle) < 2:
        pytest.skip(
            f"needs a two-node local cluster (the one in {sdir} has {idle or 'no usable nodes'}): "
            "DPO_SWEEPS_SLURM_NODE_CPUS=2 make slurm-up NODES=2 (2 CPUs a node: the one-node, two-task baseline fits)"
        )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cluster_, idle


@pytest.mark.slow
@pytest.mark.slurm_exclusive  # both nodes at once
def test_one_training_across_two_nodes_matches_two_tasks_on_one_node_ddp_and_fsdp2(
    two_node_cluster,
    tmp_path,
    tiny_model_paths,
):
    slurm_cluster, nodes = two_node_cluster  # noqa: F811
    common = [
        "model=tiny_llama",
        *TINY,
        "lora=none",
        "hydra/launcher=slurm_local",
        "training.use_cpu=false",
        "training.max_steps=6",
        "training.logging_steps=1",
        "training.save_steps=3",
    ]
    two_nodes = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1"]
    one = _sweep_point(tmp_path, "one_node", [*common, "hydra.launcher.tasks_per_node=2"])
    two = _sweep_point(tmp_path, "two_nodes", [*common, *two_nodes])
    fsdp = _sweep_point(tmp_path, "two_nodes_fsdp", [*common, *two_nodes, "training.fsdp.enabled=true"], env=FORCE_FSDP)

    one_status = read_json(one / "status.json")
    assert one_status["world_size"] == 2 and len(one_status["nodes"]) == 1
    for run_dir in (two, fsdp):
        status = read_json(run_dir / "status.json")
        assert status["state"] == "completed" and status["world_size"] == 2
        assert len(set(status["nodes"])) == 2 and set(status["nodes"]) <= set(nodes), status["nodes"]
        # The first host's NodeAddr (its own network namespace's address, not 127.0.0.1) and the job's port.
        job_id = status["slurm"]["job_id"]
        assert status["master"] == f"{cluster.node_address(status['nodes'][0])}:{cluster.rendezvous_port(job_id)}"
        accounted = slurm_cluster.run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "NNodes,NodeList").stdout
        assert accounted.split("\n")[0].split("|")[0] == "2", accounted
        assert [r["step"] for r in run_folder.read_history(run_dir) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert read_json(fsdp / "metrics.json")["parallelism/type"] == "FSDP"
    ref = _losses(one)
    for run_dir in (two, fsdp):
        got = _losses(run_dir)
        worst = max(abs(got[s] - ref[s]) for s in ref)
        assert worst < 1e-5, f"{run_dir.parent.name}: losses differ from one node's by {worst:.2e}: {got} vs {ref}"


@pytest.mark.slow
@pytest.mark.slurm_exclusive  # both nodes at once, and the requeued job needs them again
def test_a_preempted_two_node_job_checkpoints_once_is_requeued_and_resumes_to_the_same_losses(
    two_node_cluster,
    tmp_path,
    tiny_model_paths,
):
    slurm_cluster, nodes = two_node_cluster  # noqa: F811
    common = [
        "model=tiny_llama",
        *TINY,
        "lora=none",
        "hydra/launcher=slurm_local",
        "training.use_cpu=false",
        "training.max_steps=40",
        # Between two save points: a checkpoint before step 20 can only come from the signal.
        "training.save_steps=20",
        "training.logging_steps=1",
        "training.eval_before_training=false",
    ]
    two_nodes = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1"]
    baseline = _sweep_point(tmp_path, "uninterrupted", [*common, *two_nodes])

    sweep = tmp_path / "preempted"
    proc = start_sweep(["-m", *common, *two_nodes, f"hydra.sweep.dir={sweep}"])
    try:
        run_dir = preempt_at_step(proc, sweep, slurm_cluster, 5)  # USR2 to the job's steps on both nodes
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "completed" and status["requeues"] == 1 and status["world_size"] == 2, status
    assert len(set(status["nodes"])) == 2 and set(status["nodes"]) <= set(nodes), status["nodes"]
    complete = _checkpoints().complete_checkpoints(run_dir / "checkpoints")
    saved_on_signal = [c for c in complete if 5 <= int(c.name.rsplit("-", 1)[1]) < 20]
    assert len(saved_on_signal) <= 1, f"checkpointed more than once on one signal: {complete}"
    metrics = read_json(run_dir / "metrics.json")
    assert 5 <= metrics["resumed_from_step"] < 20, "resumed from the checkpoint saved on the signal"
    assert metrics["global_step"] == 40
    ref, got = _losses(baseline), _losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(1, 41))
    worst = max(abs(got[s] - ref[s]) for s in ref)
    assert worst < 1e-5, f"the resumed two-node run's losses differ from the uninterrupted one's by {worst:.2e}"
