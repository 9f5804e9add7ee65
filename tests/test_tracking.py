"""W&B tracking: identity, stable ids, rank 0 only, offline fallback, and what the real client wrote (read back)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from helpers import compose_config, read_json, run_cli, run_dirs
from wandb_files import find_offline_runs, read_offline_run

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.tracking import identity
from dpo_sweeps.tracking import wandb_run as tracking

pytest.importorskip("wandb")

FAKE_KEY = "x" * 40
TINY_WANDB = ["model=tiny_qwen", "dataset=toy", "training=smoke", "logger=wandb"]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B settings from the machine running the tests: no key, no netrc, files under tmp."""
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    return tmp_path / "wandb_dir"


def _cli_env(wandb_dir: Path, **extra: str) -> dict:
    env = {k: "" for k in os.environ if k.startswith("WANDB_")}
    env.update(WANDB_DIR=str(wandb_dir), WANDB_SILENT="true", **extra)
    return env


def test_identity_config_is_resolved_with_versions_and_commit(tmp_path):
    cfg = compose_config([*TINY_WANDB, "quantization=nf4", "logger.tags=[ablation]"])
    ident = identity.run_identity(cfg, tmp_path / "beta=0.1", run_id="abc12345")
    text = json.dumps(ident.config)
    assert "${" not in text
    assert ident.config["beta"] == 0.1 and ident.config["training"]["max_steps"] == 40
    assert ident.config["run"]["versions"]["trl"]
    assert len(ident.config["run"]["git_commit"]) == 40  # the tests run from a git checkout
    assert ident.job_type == "dpo-qlora" and "ablation" in ident.tags
    # Outside a Hydra job a run is its own group.
    assert ident.group == "beta=0.1" and ident.run_id == "abc12345"
    assert identity.job_type(compose_config([*TINY_WANDB, "lora=none"])) == "dpo-full"


def test_git_commit_outside_a_repository_is_empty(tmp_path):
    assert identity.git_commit(tmp_path) == {}


def test_run_id_is_created_once_and_kept_in_the_run_folder(tmp_path):
    first = identity.stable_run_id(tmp_path)
    assert (tmp_path / identity.RUN_ID_FILE).read_text().strip() == first
    assert identity.stable_run_id(tmp_path) == first
    assert identity.stable_run_id(tmp_path / "other") != first


def test_mode_follows_config_env_and_api_key(wandb_env, monkeypatch):
    cfg = compose_config(TINY_WANDB)
    assert tracking.requested_mode(cfg) == "offline"  # no key anywhere
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert tracking.requested_mode(cfg) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.requested_mode(cfg) == "disabled"
    assert tracking.requested_mode(compose_config([*TINY_WANDB, "logger.mode=offline"])) == "offline"


def test_only_rank_zero_talks_to_wandb(wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    tracker = tracking.start(compose_config(TINY_WANDB), tmp_path / "run")
    assert tracker.mode == "off" and tracker.run is None
    assert not (tmp_path / "run" / identity.RUN_ID_FILE).exists()
    assert find_offline_runs(wandb_env) == []


def _start_and_log(cfg, run_dir: Path):
    started = time.monotonic()
    tracker = tracking.start(cfg, run_dir)
    elapsed = time.monotonic() - started
    tracker.log_metrics({"loss": 0.5, "eval_rewards/accuracies": 0.75}, 5)
    tracker.finish({"eval_rewards/accuracies": 0.75})
    return tracker, elapsed


# Times wandb's service start-up against a few-second bound: a busy machine would break it, not the code.
@pytest.mark.serial
def test_unreachable_server_falls_back_to_offline_quickly(wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = compose_config([*TINY_WANDB, "logger.init_timeout_s=5"])
    tracker, elapsed = _start_and_log(cfg, tmp_path / "run")
    assert tracker.mode == "offline" and "Logging offline instead" in tracker.warnings[0]
    # wandb.init alone retries for ~13 s against a refused port; the reachability probe answers at once.
    assert elapsed < 10, elapsed
    run = read_offline_run(tracker.sync_dir)
    assert run.run_id == (tmp_path / "run" / identity.RUN_ID_FILE).read_text().strip()
    assert run.series("train/loss") == [(0, 0.5)] and run.summary["eval_rewards/accuracies"] == 0.75


# Times wandb's service start-up against a few-second bound: a busy machine would break it, not the code.
@pytest.mark.serial
def test_server_that_never_answers_is_abandoned_after_init_timeout(wandb_env, monkeypatch, tmp_path):
    # Accepts TCP connections (the kernel's backlog) but never replies: a hung proxy or overloaded server.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        cfg = compose_config([*TINY_WANDB, "logger.init_timeout_s=3", "logger.mode=online"])
        tracker, elapsed = _start_and_log(cfg, tmp_path / "run")
    finally:
        server.close()
    assert tracker.mode == "offline" and "init_timeout_s=3" in tracker.warnings[0]
    assert elapsed < 3 + 12, elapsed  # the timeout plus starting wandb's service twice
    assert read_offline_run(tracker.sync_dir).series("train/loss") == [(0, 0.5)]


def test_model_card_links_offline_run_and_url():
    offline = tracking.model_card_links(
        {"tracking": {"mode": "offline", "run_id": "abc", "group": "g", "sync_command": "wandb sync /x"}}
    )
    assert offline["wandb_url"] is None and "offline run `abc`" in offline["tracking_note"]
    assert "wandb sync /x" in offline["tracking_note"]
    online = tracking.model_card_links({"tracking": {"mode": "online", "url": "https://wandb.ai/e/p/runs/abc"}})
    assert online == {"wandb_url": "https://wandb.ai/e/p/runs/abc", "tracking_note": None}
    assert tracking.model_card_links({}) == {"wandb_url": None, "tracking_note": None}


@pytest.mark.slow
def test_sweep_logs_one_grouped_offline_run_per_point_and_a_requeue_continues_it(tmp_path):
    """A 2-point beta sweep through the CLI: each point's W&B run (read back from the .wandb file) carries the sweep
    as group, its overrides as name, the resolved config, the logged history and the samples table; then a requeued
    point runs again and continues the same W&B run id."""
    sweep_dir, wandb_dir = tmp_path / "sweep", tmp_path / "wandb"
    wandb_dir.mkdir()
    args = ["-m", *TINY_WANDB, "beta=0.1,0.5", f"hydra.sweep.dir={sweep_dir}"]
    run_cli(args, env=_cli_env(wandb_dir, WANDB_MODE="offline"))
    points = run_dirs(sweep_dir)
    assert len(points) == 2
    all_runs = [read_offline_run(p) for p in find_offline_runs(wandb_dir)]
    runs = {r.run_id: r for r in all_runs if r.job_type != "sweep-summary"}
    assert len(runs) == 2
    # The sweep report's table, as one more run of the group (its id kept in the sweep folder).
    (summary,) = [r for r in all_runs if r.job_type == "sweep-summary"]
    assert summary.group == sweep_dir.name and summary.run_id == (sweep_dir / identity.RUN_ID_FILE).read_text().strip()
    assert summary.summary["sweep_summary/nrows"] == 2 and summary.summary["points"] == 2
    for point in points:
        metrics = read_json(point / run_folder.METRICS_FILE)
        run_id = (point / identity.RUN_ID_FILE).read_text().strip()
        assert metrics["tracking"]["run_id"] == run_id and metrics["tracking"]["mode"] == "offline"
        run = runs[run_id]
        assert run.group == sweep_dir.name and run.name == point.name
        assert run.job_type == "dpo-lora"
        assert {"model:tiny_qwen", "dataset:toy", "loss:sigmoid", "lora:r16", "quantization:none"} <= set(run.tags)
        assert run.config["beta"] == float(point.name.split("beta=")[1].split(",")[0])
        assert run.config["run"]["overrides"] == read_json(point / run_folder.STATUS_FILE)["overrides"]
        assert run.config["run"]["choices"]["model"] == "tiny_qwen"
        steps = [r["train/global_step"] for r in run.history if "train/loss" in r]
        assert steps == [5, 10, 15, 20, 25, 30, 35, 40]
        assert run.summary["eval_rewards/accuracies"] == metrics["eval_rewards/accuracies"]
        # The generation eval: in the summary and as a history row of its own section.
        assert run.summary["gen/kl_to_ref"] == metrics["gen/kl_to_ref"]
        assert [r["gen/score_after"] for r in run.history if "gen/score_after" in r] == [metrics["gen/score_after"]]
        # Fluency under the reference, the flag and the standard errors reach the same gen/ section.
        gen_row = next(r for r in run.history if "gen/score_after" in r)
        for key in ("gen/ref_logprob_per_token_before", "gen/ref_logprob_per_token_after", "gen/fluency_drop",
                    "gen/kl_to_ref_se", "gen/score_after_se", "gen/win_rate_vs_ref_se"):  # fmt: skip
            assert gen_row[key] == pytest.approx(metrics[key]), key
        assert gen_row["gen/fluency_flag"] == metrics["gen/fluency_flag"] and gen_row["gen/kl_regime"] is True
        assert run.summary["samples/nrows"] == 2 and run.summary["samples/_type"] == "table-file"
        assert run.exit_code == 0
        card = (point / run_folder.MODEL_CARD_FILE).read_text()
        assert f"offline run `{run_id}`" in card and "wandb sync" in card
        samples = [json.loads(line) for line in (point / run_folder.SAMPLES_FILE).read_text().splitlines()]
        assert len(samples) == 2 and all(s["prompt"] and "reference" in s and "policy" in s for s in samples)
        assert any(s["policy"] != s["reference"] for s in samples), samples

    # A SLURM requeue: the point is not completed, so it runs again from its last checkpoint, same W&B run id.
    requeued = points[0]
    run_id = (requeued / identity.RUN_ID_FILE).read_text().strip()
    run_folder.update_status(requeued, state=run_folder.REQUEUED)
    run_cli(args, env=_cli_env(wandb_dir, WANDB_MODE="offline"))
    assert read_json(requeued / run_folder.STATUS_FILE)["state"] == run_folder.COMPLETED
    after = [r for r in map(read_offline_run, find_offline_runs(wandb_dir)) if r.job_type != "sweep-summary"]
    assert len(after) == 3  # the completed point was skipped: no new run
    assert after[-1].run_id == run_id and after[-1].group == sweep_dir.name


@pytest.mark.slow
def test_run_with_unreachable_wandb_completes_with_metrics_on_disk(tmp_path):
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = _cli_env(
        wandb_dir, WANDB_MODE="online", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL="http://127.0.0.1:9", NETRC="/dev/null"
    )
    started = time.monotonic()
    # The refused port is found at once; the timeout only bounds the offline start that follows, which takes more
    # than 5 s on a busy machine (`make test` runs tests side by side).
    proc = run_cli([*TINY_WANDB, "logger.init_timeout_s=30", f"hydra.run.dir={run_dir}"], env=env, timeout=300)
    elapsed = time.monotonic() - started
    assert "Logging offline instead" in proc.stdout + proc.stderr + (run_dir / "cli.log").read_text()
    assert read_json(run_dir / run_folder.STATUS_FILE)["state"] == run_folder.COMPLETED
    metrics = read_json(run_dir / run_folder.METRICS_FILE)
    assert metrics["tracking"]["mode"] == "offline" and metrics["global_step"] == 40
    history_steps = [r["step"] for r in run_folder.read_history(run_dir) if "loss" in r]
    assert history_steps == [5, 10, 15, 20, 25, 30, 35, 40]
    assert read_offline_run(find_offline_runs(wandb_dir)[0]).series("train/loss")[-1][1] == pytest.approx(
        [r for r in run_folder.read_history(run_dir) if "loss" in r][-1]["loss"]
    )
    assert elapsed < 240, elapsed
