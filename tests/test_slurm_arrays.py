"""Sweeps at size on SLURM (dpo_sweeps/slurm/): arrays split to fit MaxArraySize with `array_parallelism` kept for the
whole sweep, completed points skipped at submission, a sweep over the site's job limit refused before sbatch, sbatch
errors as one message, the stock launcher's job configs unchanged, and a task killed outright marked failed with
SLURM's state while the other points finish and the sweep exits 1 in bounded time."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_sweeps.slurm import plan, site
from tests.helpers import REPO, TINY, read_json, run_cli, start_sweep, trained_steps, wait_for_point
from tests.slurm_support import slurm_cluster  # noqa: F401  (the session fixture)

# The local cluster's profile: no GPU, one core per task, no memory request (conf/hydra/launcher/slurm_local.yaml).
LOCAL_SLURM = ["hydra/launcher=slurm_local"]
# A point that trains for real but briefly.
QUICK = [
    "model=tiny_qwen",
    *TINY,
    "training.max_steps=4",
    "training.logging_steps=1",
    "training.eval_before_training=false",
    "training.save_model=false",
]


# --- the split and the limits, without a cluster ---------------------------------------------------------------------


def _max_running(plans: list[plan.ArrayPlan]) -> int:
    """Points that can run at once: arrays chained in a lane never overlap, so the worst case is the largest %k of
    each lane, summed over the lanes."""
    lane_of: dict[int, int] = {}
    for i, p in enumerate(plans):
        lane_of[i] = lane_of[p.after] if p.after is not None else i
    worst: dict[int, int] = {}
    for i, p in enumerate(plans):
        worst[lane_of[i]] = max(worst.get(lane_of[i], 0), p.parallelism)
    return sum(worst.values())


@pytest.mark.parametrize(
    ("points", "max_per_array", "parallelism", "sizes"),
    [
        (1200, 1001, 16, [600, 600]),
        (64, 1001, 16, [64]),
        (10, 3, 2, [3, 3, 2, 2]),
        (7, 3, 16, [3, 2, 2]),
        (2001, 1000, 1, [667, 667, 667]),
    ],
)
def test_split_makes_near_equal_arrays_that_fit_and_keeps_parallelism_for_the_whole_sweep(
    points, max_per_array, parallelism, sizes
):
    plans = plan.split(points, max_per_array, parallelism)
    assert [p.size for p in plans] == sizes
    assert all(p.size <= max_per_array for p in plans)
    # Every point in exactly one array, in order.
    assert [i for p in plans for i in range(p.start, p.stop)] == list(range(points))
    assert _max_running(plans) <= parallelism, "array_parallelism bounds the whole sweep, not each array"
    assert all(p.parallelism >= 1 for p in plans)
    # No slot of the budget is wasted when the arrays can use it.
    assert _max_running(plans) == min(parallelism, points)
    for i, p in enumerate(plans):
        assert p.after is None or p.after < i, "an array waits only on an earlier one"


def test_too_many_arrays_for_the_budget_are_chained_in_lanes():
    plans = plan.split(10, 3, 2)  # 4 arrays, 2 points at once
    assert [p.after for p in plans] == [None, None, 0, 1]
    assert [p.parallelism for p in plans] == [1, 1, 1, 1]


def test_a_sweep_over_the_job_limits_is_refused_with_the_numbers_and_the_fix():
    limits = site.SiteLimits(max_array_size=1001, max_job_count=100, jobs_in_system=40)
    plan.check_fits(60, limits)  # exactly what fits
    with pytest.raises(plan.SweepTooLargeError) as err:
        plan.check_fits(61, limits, total_points=70)
    text = str(err.value)
    assert "would submit 61 SLURM job(s)" in text and "accepts only 60 more" in text
    assert "MaxJobCount=100" in text and "40 job(s) already held" in text
    assert "9 completed point(s) already left out" in text
    assert "Nothing was submitted" in text and "Fix:" in text

    per_user = site.SiteLimits(user_submit_limits=[(50, "MaxSubmitJobs of association me/lab")], user_jobs=45)
    with pytest.raises(plan.SweepTooLargeError, match=r"MaxSubmitJobs of association me/lab=50 with 45 of your job"):
        plan.check_fits(6, per_user)


def test_scontrol_config_is_parsed_into_the_limits_that_matter():
    text = "Configuration data as of ...\nMaxArraySize            = 3\nMaxJobCount             = 10000\n"
    text += "AccountingStorageType   = accounting_storage/slurmdbd\nSLURM_VERSION           = 22.05.8\n"
    config = site.parse_config(text)
    assert config["MaxArraySize"] == "3" and config["MaxJobCount"] == "10000"
    assert config["AccountingStorageType"].endswith("slurmdbd")


# --- on the real local cluster ---------------------------------------------------------------------------------------


def _cluster_limits() -> site.SiteLimits:
    return site.read_limits()  # the fixture exported SLURM_CONF


def _statuses(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sweep.glob("*/status.json")}


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_larger_than_max_array_size_is_split_every_point_runs_once_and_a_rerun_submits_only_the_missing(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    limits = _cluster_limits()
    if limits.max_array_size > 4:
        pytest.fail(
            f"this cluster's MaxArraySize is {limits.max_array_size}: the test needs a low one (launch/slurm-up.sh "
            "sets 3 unless DPO_SWEEPS_SLURM_MAX_ARRAY_SIZE says otherwise)",
            pytrace=False,
        )
    n = limits.max_array_size + 1
    sweep = tmp_path / "sweep"
    args = ["-m", *QUICK, *LOCAL_SLURM, f"seed=range(0,{n})", f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, timeout=600)
    out = first.stdout + first.stderr
    assert f"{n} point(s) to submit in 2 array job(s)" in out, out[-3000:]

    statuses = _statuses(sweep)
    assert sorted(statuses) == sorted(f"seed={i}" for i in range(n))
    assert all(s["state"] == "completed" and s["attempts"] == 1 for s in statuses.values()), statuses
    arrays = {s["slurm"]["array_job_id"] for s in statuses.values()}
    assert len(arrays) == 2, f"{n} points > MaxArraySize={limits.max_array_size}: two array jobs, got {arrays}"
    tasks = {(s["slurm"]["array_job_id"], s["slurm"]["array_task_id"]) for s in statuses.values()}
    assert len(tasks) == n, "every point is its own array task"
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == n, "each point ran exactly once"
    # `dpo_sweeps.status` maps points to tasks by the ids the launcher records, across both arrays.
    points = json.loads((sweep / "sweep_points.json").read_text())
    recorded = {Path(p["run_dir"]).name: p.get("slurm_job_id") for p in points}
    ran = {name: f"{s['slurm']['array_job_id']}_{s['slurm']['array_task_id']}" for name, s in statuses.items()}
    assert recorded == ran, (recorded, ran)
    # The sweep's own report and summary cover every point.
    assert f"Sweep summary: {n} completed" in out
    assert len(list((sweep).glob("summary.*"))) >= 1

    # Rerun with one point's folder gone: only that point is submitted; the others are not touched.
    shutil.rmtree(sweep / "seed=1")
    before = {k: v for k, v in _statuses(sweep).items()}
    second = run_cli(args, timeout=600)
    out2 = second.stdout + second.stderr
    assert "Submitted 1 point(s)" in out2 and f"{n - 1} completed point(s) skipped" in out2, out2[-3000:]
    after = _statuses(sweep)
    assert after["seed=1"]["state"] == "completed" and after["seed=1"]["attempts"] == 1
    assert after["seed=1"]["slurm"]["job_id"] not in {s["slurm"]["job_id"] for s in before.values()}
    for name, status in before.items():
        assert after[name] == status, f"{name} was completed and must not have run again"
    assert f"Sweep summary: {n} completed" in out2


@pytest.mark.slurm
def test_sweep_above_the_sites_job_limit_is_refused_before_anything_is_composed_or_submitted(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    limits = _cluster_limits()
    assert limits.max_job_count is not None, "scontrol show config reports MaxJobCount"
    if limits.max_job_count > 20000:
        pytest.fail(f"MaxJobCount={limits.max_job_count} is too large to exceed in a test", pytrace=False)
    n = limits.max_job_count + 1  # over the limit whatever else the cluster holds
    sweep = tmp_path / "sweep"
    name = f"i13_refused_{os.getpid()}"
    proc = run_cli(
        ["-m", *QUICK, *LOCAL_SLURM, f"seed=range(0,{n})", f"hydra.sweep.dir={sweep}", f"hydra.launcher.name={name}"],
        timeout=300,
        check=False,
        env={"HYDRA_FULL_ERROR": "0"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    assert f"would submit {n} SLURM job(s)" in out and f"MaxJobCount={limits.max_job_count}" in out
    assert "Nothing was submitted" in out and "Fix:" in out
    assert "Composed and validated" not in out, "refused before composing the points"
    assert slurm_cluster.run("squeue", "-h", "-n", name, "-o", "%i").stdout.strip() == ""
    assert not (sweep / ".submitit").exists()


@pytest.mark.slurm
def test_dry_run_shows_the_split_into_arrays_and_submits_nothing(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    limits = _cluster_limits()
    n = 2 * limits.max_array_size + 1
    if n > 2100:
        pytest.fail(f"MaxArraySize={limits.max_array_size} is too large for this test", pytrace=False)
    sweep = tmp_path / "sweep"
    out = run_cli(
        ["-m", *QUICK, *LOCAL_SLURM, f"seed=range(0,{n})", "hydra.launcher.array_parallelism=2", "dry_run=true"]
        + [f"hydra.sweep.dir={sweep}"],
        timeout=300,
    ).stdout
    assert f"SLURM: {n} point(s) to submit in 3 array job(s)" in out and f"MaxArraySize={limits.max_array_size}" in out
    # 3 arrays, 2 points at once: two lanes, the third array waits for the first.
    assert "array 3: points" in out and "%1, starts after array 1 has ended" in out
    assert "nothing was run or submitted" in out and not sweep.exists()


@pytest.mark.slurm
def test_an_sbatch_error_is_one_message_saying_what_was_not_submitted(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *QUICK, *LOCAL_SLURM, "seed=0,1", f"hydra.sweep.dir={sweep}", "hydra.launcher.partition=no_such_part"],
        timeout=120,
        check=False,
        # The pre-launch cluster check (slurm/resources.py) refuses an unknown partition before sbatch; turned off
        # here so that sbatch itself refuses, standing for any sbatch error that check cannot foresee.
        env={"HYDRA_FULL_ERROR": "0", "DPO_SWEEPS_CLUSTER_CHECK": "0"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    assert "sbatch refused array job 1 of 1 (sweep points #0..#1, 2 task(s))" in out
    assert "invalid partition" in out.lower(), "the cause, in sbatch's words"
    assert "Nothing was submitted: 2 point(s) not submitted" in out
    assert len([line for line in out.splitlines() if "sbatch: error" in line]) == 1, "said once, not echoed"


@pytest.mark.slurm
def test_an_sbatch_failure_after_some_arrays_cancels_those_and_says_so(
    slurm_cluster,  # noqa: F811
):
    from dpo_sweeps.slurm.launcher import SweepSlurmLauncher

    name = f"i13_partial_{os.getpid()}"
    submitted = slurm_cluster.run("sbatch", "--hold", "--parsable", "-J", name, "--wrap", "true").stdout
    first_array = submitted.strip().split(";")[0]
    plans = plan.split(5, 3, 16)  # two arrays: points 0-2, then 3-4
    entries = [(i, [f"seed={i}"], None) for i in range(5)]
    cause = RuntimeError("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy")
    message = SweepSlurmLauncher._sbatch_failure(cause, 1, plans, entries, [first_array])
    assert "sbatch refused array job 2 of 2 (sweep points #3..#4, 2 task(s)): sbatch: error: Batch job" in message
    assert f"({first_array}, 3 point(s)) were cancelled, so nothing of this sweep runs" in message
    assert "The other 2 point(s) were not submitted" in message
    assert slurm_cluster.squeue_states(first_array) in ([], ["CANCELLED"])


def _submitted(sweep: Path) -> dict[int, tuple]:
    """{job number: (launcher, args)} from the pickles submitit wrote for a sweep."""
    found = {}
    for path in (sweep / ".submitit").rglob("*_submitted.pkl"):
        with open(path, "rb") as f:
            delayed = pickle.load(f)
        found[delayed.args[2]] = (delayed.function, delayed.args)
    return found


def _submit_held(args: list[str], sweep: Path, name: str, count: int) -> dict[int, tuple]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps", *args, f"hydra.sweep.dir={sweep}", f"hydra.launcher.name={name}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((sweep / ".submitit").rglob("*_submitted.pkl"))) < count:
            assert proc.poll() is None and time.monotonic() < deadline, "the held sweep was not submitted"
            time.sleep(0.2)
        time.sleep(0.5)
        return _submitted(sweep)
    finally:
        subprocess.run(["scancel", "-n", name], check=False, timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slurm
def test_jobs_get_what_the_stock_launcher_gives_them(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    from hydra.core.singleton import Singleton
    from omegaconf import OmegaConf

    common = ["-m", *QUICK, *LOCAL_SLURM, "beta=0.1,0.2,0.3", "+hydra.launcher.additional_parameters.hold=true"]
    stock_target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    name = f"i13_same_{os.getpid()}"
    ours = _submit_held(common, tmp_path / "ours" / "sweep", name, 3)
    stock = _submit_held([*common, f"hydra.launcher._target_={stock_target}"], tmp_path / "stock" / "sweep", name, 3)
    assert sorted(ours) == sorted(stock) == [0, 1, 2]
    saved = Singleton.get_state()
    try:
        for num in range(3):
            (our_fn, our_args), (stock_fn, stock_args) = ours[num], stock[num]
            assert type(our_fn).__module__ == "hydra_plugins.dpo_sweeps_launcher.slurm"
            assert "_pickled_once" not in vars(our_fn), "the job gets the launcher without the submission cache"
            assert list(our_args[:4]) == list(stock_args[:4]), "same overrides, job number and ids"
            configs = []
            for fn, args in ((our_fn, our_args), (stock_fn, stock_args)):
                Singleton.set_state(args[4])
                cfg = fn.hydra_context.config_loader.load_sweep_config(fn.config, list(args[0]))
                container = OmegaConf.to_container(cfg, resolve=False)
                # The launcher class is the one intended difference (the stock run chose it with an override).
                container["hydra"]["launcher"].pop("_target_")
                hydra_overrides = container["hydra"]["overrides"]["hydra"]
                hydra_overrides[:] = [o for o in hydra_overrides if not o.startswith("hydra.launcher._target_=")]
                # The sweep folders differ (two sweeps); everything else must not.
                configs.append(str(container).replace(str(tmp_path / "stock"), str(tmp_path / "ours")))
            assert configs[0] == configs[1], f"job {num}: the composed job config differs from the stock launcher's"
    finally:
        Singleton.set_state(saved)
    our_script = next((tmp_path / "ours" / "sweep" / ".submitit").rglob("*_submission.sh")).read_text()
    stock_script = next((tmp_path / "stock" / "sweep" / ".submitit").rglob("*_submission.sh")).read_text()

    def sbatch_lines(text: str, root: Path) -> list[str]:
        return [line.replace(str(root), "ROOT") for line in text.splitlines() if line.startswith("#SBATCH")]

    assert sbatch_lines(our_script, tmp_path / "ours") == sbatch_lines(stock_script, tmp_path / "stock")


@pytest.mark.slurm
@pytest.mark.slow
# Its time bound covers the other point's whole run: another test's jobs in the queue would stretch it.
@pytest.mark.slurm_exclusive
def test_a_task_cancelled_mid_training_is_marked_cancelled_with_slurms_state_and_the_sweep_ends(
    slurm_cluster,  # noqa: F811
    tmp_path,
    tiny_model_paths,
):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model=tiny_qwen",
        *TINY,
        *LOCAL_SLURM,
        # The victim trains far longer than the test waits (30 tiny steps take ~3 s on an idle machine, so a point of
        # 30 could finish between the poll and the scancel); the other point finishes quickly.
        "training.max_steps=30,5000",
        "training.logging_steps=1",
        "training.eval_before_training=false",
        "training.save_model=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start_sweep(args)
    try:
        victim = wait_for_point(
            proc,
            sweep,
            trained_steps(1),
            "the point never started training",
            "training.max_steps=5000/metrics.jsonl",
            timeout=240,
        )
        slurm = read_json(victim / "status.json")["slurm"]
        task = f"{slurm['array_job_id']}_{slurm['array_task_id']}"
        slurm_cluster.run("scancel", task)  # no signal: killed outright, as an OOM kill or an admin would
        killed_at = time.monotonic()
        out, _ = proc.communicate(timeout=300)
        ended_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out[-4000:]
    assert ended_after < 150, f"the sweep took {ended_after:.0f} s to end after the kill"
    killed = read_json(victim / "status.json")
    assert killed["state"] == "cancelled", killed
    assert killed["slurm"]["state"] == "CANCELLED" and task in killed["error"] and "CANCELLED" in killed["error"]
    other = read_json(sweep / "training.max_steps=30" / "status.json")
    assert other["state"] == "completed"
    assert read_json(sweep / "training.max_steps=30" / "metrics.json")["global_step"] == 30
    assert "Sweep summary: 1 completed, 1 cancelled" in out
    assert "Traceback" not in out
