"""The reference log-prob cache: its key (both directions), the store under concurrency and crashes, and that a run
fed from the cache trains exactly like a run that computes its reference on the fly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpo_sweeps.train import ref_cache
from dpo_sweeps.train.ref_cache import COMPUTED, HIT, OFF, EntryStore
from tests.helpers import REPO, TINY, compose_config, read_json, run_cli, run_dirs

BASE = ["model=tiny_qwen", *TINY]


def _arrays(n: int = 5, offset: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "ref_chosen_logps": np.arange(n, dtype=np.float32) + offset,
        "ref_rejected_logps": -np.arange(n, dtype=np.float32) - offset,
    }


# ------------------------------------------------------------------------------------------------------------ key


@pytest.fixture(scope="module")
def base_identity(tiny_model_paths):
    return ref_cache.reference_identity(compose_config(BASE))


@pytest.mark.parametrize(
    "overrides",
    [
        ["beta=0.5"],
        ["training.learning_rate=1e-4"],
        ["seed=7"],
        ["lora.r=4", "lora.alpha=8"],
        ["lora=none"],
        ["loss=ipo"],
        ["training.max_steps=3", "training.per_device_train_batch_size=2"],
        ["name=other_sweep", "logger=wandb"],
    ],
    ids=lambda o: ",".join(o),
)
def test_identity_ignores_what_does_not_change_the_reference(base_identity, overrides):
    assert ref_cache.reference_identity(compose_config([*BASE, *overrides])) == base_identity


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny_llama"],
        ["model.dtype=bfloat16"],
        ["quantization=nf4"],
        ["dataset.max_length=64"],
        ["dataset.truncation_side=keep_end"],
        ["loss.ld_alpha=0.5"],
        ["training.precision=bf16"],
        ["model.attn_implementation=eager"],
    ],
    ids=lambda o: ",".join(o),
)
def test_identity_changes_with_what_changes_the_reference(base_identity, overrides):
    assert ref_cache.reference_identity(compose_config([*BASE, *overrides])) != base_identity


def test_local_weights_fingerprint_follows_content_not_location(tiny_model_paths, tmp_path):
    src = Path(tiny_model_paths["qwen2"])
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    original = ref_cache.local_weights_fingerprint(src)
    assert ref_cache.local_weights_fingerprint(copy) == original

    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert ref_cache.local_weights_fingerprint(copy) != original

    shutil.copy(src / "config.json", copy / "config.json")
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of one weight
    weights.write_bytes(bytes(data))
    assert ref_cache.local_weights_fingerprint(copy) != original


def test_large_local_weights_are_fingerprinted_by_stat(tiny_model_paths, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_paths["qwen2"], copy)
    before = ref_cache.local_weights_fingerprint(copy, content_max_bytes=0)
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert ref_cache.local_weights_fingerprint(copy, content_max_bytes=0) != before


def test_local_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path=.*ref_cache.enabled=false"):
        ref_cache.local_weights_fingerprint(tmp_path)


def test_hub_commit_comes_from_the_resolved_snapshot(tmp_path):
    commit, other = "a" * 40, "b" * 40
    repo = tmp_path / "models--org--model"
    for c in (commit, other):
        (repo / "snapshots" / c).mkdir(parents=True)
        (repo / "snapshots" / c / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v2").write_text(other)
    assert ref_cache.hub_commit("org/model", None, cache_dir=str(tmp_path)) == commit
    assert ref_cache.hub_commit("org/model", "v2", cache_dir=str(tmp_path)) == other
    assert ref_cache.hub_commit("org/model", "c" * 40, cache_dir=str(tmp_path)) == "c" * 40
    assert ref_cache.hub_commit("org/absent", None, cache_dir=str(tmp_path)) is None


def test_rows_digest_is_exact_on_token_ids_and_order():
    from datasets import Dataset, concatenate_datasets

    rows = [
        {"prompt_ids": [1, 2, i], "chosen_ids": [3] * (i + 1), "rejected_ids": [4, i], "prompt": "x"} for i in range(6)
    ]
    ds = Dataset.from_list(rows)
    digest = ref_cache.rows_digest(ds)
    # Same rows through other Arrow layouts (several chunks, an indices mapping), other text columns: same digest.
    chunked = concatenate_datasets([Dataset.from_list(rows[:2]), Dataset.from_list(rows[2:])])
    assert ref_cache.rows_digest(chunked) == digest
    assert ref_cache.rows_digest(Dataset.from_list(rows[::-1]).select(range(5, -1, -1))) == digest
    assert ref_cache.rows_digest(ds.map(lambda r: {"prompt": "other text"})) == digest
    # Any token, length or order change: a different digest.
    changed = [dict(r) for r in rows]
    changed[3] = {**changed[3], "chosen_ids": [3, 3, 3, 9]}
    assert ref_cache.rows_digest(Dataset.from_list(changed)) != digest
    assert ref_cache.rows_digest(Dataset.from_list(rows[::-1])) != digest
    assert ref_cache.rows_digest(ds.select(range(5))) != digest
    moved = [dict(r) for r in rows]
    moved[0] = {**moved[0], "prompt_ids": [1, 2], "chosen_ids": [0, 3]}  # same tokens, other prompt/completion split
    assert ref_cache.rows_digest(Dataset.from_list(moved)) != digest


def _build_trainer(cfg, run_dir: Path, tokenizer_hook=None):
    """The trainer exactly as `train.run_training` builds it (to read the keys it uses)."""
    from dpo_sweeps.models.loading import load_models
    from dpo_sweeps.train.trainer import build_trainer

    models = load_models(cfg, load_reference=ref_cache.needs_reference_model(cfg))
    if tokenizer_hook:
        tokenizer_hook(models.tokenizer)
    built = build_trainer(cfg, run_dir, models=models)
    return built.trainer, built.ref_info


def test_keys_follow_data_split_and_chat_template_but_not_sweep_knobs(tiny_model_paths, tmp_path):
    cache = [f"ref_cache.dir={tmp_path / 'cache'}"]
    _, base = _build_trainer(compose_config([*BASE, *cache]), tmp_path / "a")
    assert {e["state"] for e in base.entries.values()} == {COMPUTED}
    assert base.entries["train"]["key"] != base.entries["eval"]["key"]
    assert base.forward_batches > 0

    # A sweep's other knobs: both splits found in the cache, no reference forward at all.
    _, same = _build_trainer(compose_config([*BASE, *cache, "beta=0.9", "seed=3", "lora.r=4"]), tmp_path / "b")
    assert {n: e["state"] for n, e in same.entries.items()} == {"train": HIT, "eval": HIT}
    assert same.forward_batches == 0 and same.state == HIT

    # Another held-out split: another eval key (train stays).
    _, split = _build_trainer(compose_config([*BASE, *cache, "dataset.eval_fraction=0.25"]), tmp_path / "c")
    assert split.entries["eval"]["key"] != base.entries["eval"]["key"]

    # The toy set is conversational: a different chat template gives other token ids, hence other keys.
    def other_template(tokenizer):
        tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")

    _, template = _build_trainer(compose_config([*BASE, *cache]), tmp_path / "d", tokenizer_hook=other_template)
    assert template.entries["train"]["key"] != base.entries["train"]["key"]
    assert template.entries["train"]["state"] == COMPUTED


def test_reference_free_or_disabled_means_off():
    from dpo_sweeps.data.tokenize import prepared_data_trainer_class

    for overrides in (["ref_cache.enabled=false"], ["loss.type=sft"]):
        trainer_cls, info, args = ref_cache.prepare(compose_config([*BASE, *overrides]))
        # TRL's DPOTrainer, only taking the data prepared (tokenized once) as it is: no reference cache in the loop.
        assert trainer_cls is prepared_data_trainer_class() and args == {}
        assert info.metrics() == {"ref_cache": OFF}
    assert ref_cache.needs_reference_model(compose_config([*BASE, "lora=none"])) is False
    assert ref_cache.needs_reference_model(compose_config([*BASE, "lora=none", "ref_cache.enabled=false"])) is True


# ---------------------------------------------------------------------------------------------------------- store


def test_store_roundtrip_and_damaged_entries_are_recomputed(tmp_path):
    store = EntryStore(tmp_path, lock_timeout_s=5)
    key = "ab" + "0" * 62
    assert store.load(key) is None
    store.save(key, _arrays())
    np.testing.assert_array_equal(store.load(key, rows=5)["ref_chosen_logps"], _arrays()["ref_chosen_logps"])
    assert store.load(key, rows=6) is None  # the dataset changed length under the same key: never trust it

    store.entry_path(key).write_bytes(store.entry_path(key).read_bytes()[:40])  # cut short (disk full, copy)
    calls = []
    arrays, state = store.get_or_compute(key, lambda: calls.append(1) or _arrays(offset=1), rows=5)
    assert (state, calls) == (COMPUTED, [1])
    assert store.load(key, rows=5)["ref_chosen_logps"][0] == 1.0
    assert not list(store.entry_path(key).parent.glob("*.tmp")) and not store.lock_path(key).exists()


WORKER = r"""
import json, os, sys, time
import numpy as np
from dpo_sweeps.train.ref_cache import EntryStore
root, key, marker, go = sys.argv[1:5]
while not os.path.exists(go):
    time.sleep(0.002)
def compute():
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    return {"ref_chosen_logps": np.arange(5, dtype=np.float32), "ref_rejected_logps": np.ones(5, dtype=np.float32)}
arrays, state = EntryStore(root, lock_timeout_s=60, poll_s=0.02).get_or_compute(key, compute, rows=5)
print(json.dumps({"state": state, "chosen": arrays["ref_chosen_logps"].tolist()}))
"""


def test_concurrent_processes_compute_an_entry_once(tmp_path):
    key, marker, go = "cd" + "1" * 62, tmp_path / "computed_by", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "cache"), key, str(marker), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(1.5)  # all three imported and spinning on the start file
    go.touch()
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert sorted(r["state"] for r in results) == [COMPUTED, HIT, HIT]
    assert len(marker.read_text().split()) == 1
    assert all(r["chosen"] == [0, 1, 2, 3, 4] for r in results)


CRASHING_WRITER = r"""
import os, sys
from dpo_sweeps.train.ref_cache import EntryStore
store = EntryStore(sys.argv[1], lock_timeout_s=60)
key = sys.argv[2]
assert store._try_lock(key)
tmp = store.entry_path(key).parent / f".{key}.half.tmp"
tmp.write_bytes(b"PK\x03\x04 half of an npz")
os._exit(9)  # killed mid-write: no cleanup, no lock release
"""


def test_a_crashed_writer_leaves_nothing_readable_and_its_lock_is_broken(tmp_path):
    key = "ef" + "2" * 62
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(tmp_path), key], cwd=REPO, check=False)
    store = EntryStore(tmp_path, lock_timeout_s=30)
    assert store.lock_path(key).exists() and store.load(key) is None
    started = time.monotonic()
    arrays, state = store.get_or_compute(key, _arrays, rows=5)
    assert state == COMPUTED and time.monotonic() - started < 5  # no waiting for a dead holder
    assert store.load(key, rows=5) is not None and not store.lock_path(key).exists()


def test_locks_of_other_hosts_are_waited_for_or_broken_when_silent(tmp_path):
    store = EntryStore(tmp_path, lock_timeout_s=0.5, poll_s=0.05)
    alive, silent = "aa" + "3" * 62, "bb" + "4" * 62
    for key in (alive, silent):
        store.lock_path(key).parent.mkdir(parents=True, exist_ok=True)
        store.lock_path(key).write_text(json.dumps({"pid": 1, "host": "another-node", "token": "t"}))
    old = time.time() - ref_cache.STALE_LOCK_S - 5
    os.utime(store.lock_path(silent), (old, old))

    started = time.monotonic()
    _, state = store.get_or_compute(alive, _arrays, rows=5)
    # A live holder elsewhere: wait lock_timeout_s, then compute here too; its lock is not ours to remove.
    assert state == COMPUTED and time.monotonic() - started >= 0.5 and store.lock_path(alive).exists()

    started = time.monotonic()
    _, state = store.get_or_compute(silent, _arrays, rows=5)
    assert state == COMPUTED and time.monotonic() - started < 0.5 and not store.lock_path(silent).exists()


# ----------------------------------------------------------------------------------------------- same training


def _train(overrides: list[str], run_dir: Path) -> tuple[dict, list[float]]:
    from dpo_sweeps.runs import folder as run_folder
    from dpo_sweeps.train.trainer import run_training

    run_dir.mkdir(parents=True)
    metrics = run_training(compose_config(overrides), run_dir)
    losses = [r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r]
    return metrics, losses


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["r16", "none"])
def test_cached_reference_trains_like_the_on_the_fly_reference(tiny_model_paths, tmp_path, lora):
    common = [
        *BASE,
        f"lora={lora}",
        "training.max_steps=8",
        "training.logging_steps=1",
        "training.save_model=false",
        f"ref_cache.dir={tmp_path / 'cache'}",
    ]
    runs = {"off": _train([*common, "ref_cache.enabled=false"], tmp_path / "off")}
    runs["computed"] = _train(common, tmp_path / "computed")
    if lora == "r16":
        runs["hit"] = _train(common, tmp_path / "hit")
    ref_metrics, ref_losses = runs["off"]
    assert ref_metrics["ref_cache"] == OFF and len(ref_losses) == 8
    for state, (metrics, losses) in runs.items():
        assert metrics["ref_cache"] == state
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-6, err_msg=state)
        for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
            np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-4, atol=1e-6, err_msg=f"{state} {key}")
    # The toy set is learnable: the comparison is between runs that actually moved the rewards.
    assert ref_metrics["eval_rewards/margins"] > 0.1


@pytest.mark.slow
def test_two_concurrent_sweep_jobs_share_one_computation(tiny_model_paths, tmp_path):
    """Two real training jobs of one sweep started together: each split's reference is computed by one of them."""
    cache = tmp_path / "cache"
    common = [*BASE, "training.max_steps=4", "training.save_model=false", f"ref_cache.dir={cache}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dpo_sweeps", *common, f"beta={beta}", f"hydra.run.dir={tmp_path / str(beta)}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for beta in (0.1, 0.3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]
    metrics = [read_json(tmp_path / str(beta) / "metrics.json") for beta in (0.1, 0.3)]
    for split in ("train", "eval"):
        assert sorted(m[f"ref_cache/{split}"] for m in metrics) == [COMPUTED, HIT]
    # Together they ran the reference over each split once: ceil(rows / batch size) batches per split.
    m = metrics[0]
    once = -(-m["data/train_rows"] // 8) - (-m["data/eval_rows"] // 16)  # smoke: train batch 8, eval batch 16
    assert sum(m["ref_cache/forward_batches"] for m in metrics) == once
    assert len(list(cache.rglob("*.npz"))) == 2 and not list(cache.rglob("*.lock"))


@pytest.mark.slow
def test_sweep_records_computed_then_hit(tiny_model_paths, tmp_path):
    """The basic launcher runs a sweep's points one after the other: the first fills the cache, the rest hit it."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            *BASE,
            "training.max_steps=2",
            "training.save_model=false",
            "training.eval_before_training=false",
            f"ref_cache.dir={tmp_path / 'cache'}",
            "beta=0.1,0.2,0.3",
            f"hydra.sweep.dir={sweep}",
            "-m",
        ]
    )
    states = [read_json(d / "metrics.json")["ref_cache"] for d in run_dirs(sweep)]
    assert sorted(states) == [COMPUTED, HIT, HIT]


def test_validation_names_bad_ref_cache_settings():
    from dpo_sweeps.config.validation import find_problems

    problems = find_problems(compose_config([*BASE, "ref_cache.dir=''", "ref_cache.lock_timeout_s=-1"]))
    assert any(p.startswith("ref_cache.dir is empty") for p in problems)
    assert any(p.startswith("ref_cache.lock_timeout_s=-1") for p in problems)
    assert not [p for p in find_problems(compose_config(BASE)) if "ref_cache" in p]
