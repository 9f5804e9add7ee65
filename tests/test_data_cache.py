"""The prepared-data cache and tokenize-once: the key (both directions), racing points compute once, a hit trains
exactly like a miss, bad rows are still named on a hit, and the token ids are TRL's own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpo_sweeps.data import InvalidDataError, load_preference_data
from dpo_sweeps.data import cache as data_cache
from dpo_sweeps.data.cache import COMPUTED, HIT, OFF
from tests.helpers import REPO, TINY, compose_config

BASE = ["model=tiny_qwen", *TINY]


def _rows(n: int, bad: dict[int, dict] | None = None) -> list[dict]:
    rows = [
        {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i}."}
        for i in range(n)
    ]
    for i, patch in (bad or {}).items():
        rows[i] = {**rows[i], **patch}
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _local(path: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "model=tiny_qwen",
        "training=smoke",
        "logger=none",
        "dataset=local",
        f"dataset.path={path}",
        "dataset.to_conversational=true",
        "dataset.max_length=128",
        f"data_cache.dir={cache}",
        *extra,
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_paths["qwen2"])


def _state(overrides: list[str], tokenizer) -> str:
    return load_preference_data(compose_config(overrides), tokenizer).cache


# ------------------------------------------------------------------------------------------------------------ key


@pytest.mark.parametrize(
    "overrides",
    [["beta=0.5"], ["training.learning_rate=1e-4"], ["seed=7"], ["lora.r=4", "lora.alpha=8"], ["loss=ipo"]],
    ids=lambda o: ",".join(o),
)
def test_sweep_knobs_hit(tmp_path, tokenizer, overrides):
    data, cache = _write(tmp_path / "prefs.jsonl", _rows(30)), tmp_path / "cache"
    assert _state(_local(data, cache), tokenizer) == COMPUTED
    assert _state(_local(data, cache, *overrides), tokenizer) == HIT
    # Content, not time stamps: the same file written again (a fresh download, a copy step) is the same data.
    _write(data, _rows(30))
    assert _state(_local(data, cache, *overrides), tokenizer) == HIT


@pytest.mark.parametrize(
    "change",
    ["file", "tokenizer", "template", "max_length", "on_invalid", "truncation", "shuffle_seed", "columns"],
)
def test_what_changes_the_data_misses(tmp_path, tokenizer, tiny_model_paths, change):
    from transformers import AutoTokenizer

    data, cache = _write(tmp_path / "prefs.jsonl", _rows(30)), tmp_path / "cache"
    assert _state(_local(data, cache), tokenizer) == COMPUTED
    overrides, tok = _local(data, cache), tokenizer
    if change == "file":
        _write(data, _rows(30, bad={3: {"chosen": "It is six, surely."}}))
    elif change == "tokenizer":
        tok = AutoTokenizer.from_pretrained(tiny_model_paths["llama"])
    elif change == "template":
        tok = AutoTokenizer.from_pretrained(tiny_model_paths["qwen2"])
        tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    elif change == "max_length":
        overrides = _local(data, cache, "dataset.max_length=96")
    elif change == "on_invalid":
        overrides = _local(data, cache, "dataset.on_invalid=drop")
    elif change == "truncation":
        overrides = _local(data, cache, "dataset.truncation_side=keep_end")
    elif change == "shuffle_seed":
        overrides = _local(data, cache, "dataset.shuffle_seed=1")
    elif change == "columns":
        _write(data, [{"q": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in _rows(30)])
        overrides = _local(data, cache, "dataset.columns.prompt=q")
    assert _state(overrides, tok) == COMPUTED


def test_disabled_means_off_and_the_same_rows(tmp_path, tokenizer):
    data, cache = _write(tmp_path / "prefs.jsonl", _rows(30)), tmp_path / "cache"
    off = load_preference_data(compose_config(_local(data, cache, "data_cache.enabled=false")), tokenizer)
    assert off.cache == OFF and off.cache_metrics() == {"data_cache": OFF} and not cache.exists()
    on = load_preference_data(compose_config(_local(data, cache)), tokenizer)
    hit = load_preference_data(compose_config(_local(data, cache)), tokenizer)
    assert (on.cache, hit.cache) == (COMPUTED, HIT) and on.cache_key == hit.cache_key
    for d in (on, hit):
        assert d.train.to_list() == off.train.to_list() and d.eval.to_list() == off.eval.to_list()
        assert d.stats == off.stats
    # A hit is memory-mapped from the entry's Arrow files, not a copy in memory.
    assert hit.train.cache_files and all(str(cache) in f["filename"] for f in hit.train.cache_files)


def test_damaged_entry_is_recomputed(tmp_path, tokenizer):
    data, cache = _write(tmp_path / "prefs.jsonl", _rows(30)), tmp_path / "cache"
    first = load_preference_data(compose_config(_local(data, cache)), tokenizer).train.to_list()
    entry = next(cache.glob("*/*/meta.json")).parent
    arrow = next(entry.glob("train/*.arrow"))
    arrow.unlink()  # not rewritten in place: the first load still maps that file
    arrow.write_bytes(b"not arrow")  # a copy cut short, a manual edit
    again = load_preference_data(compose_config(_local(data, cache)), tokenizer)
    assert again.cache == COMPUTED and again.train.to_list() == first
    assert _state(_local(data, cache), tokenizer) == HIT
    # The damaged entry stays where it was (other jobs may have it memory-mapped); the new one is the next generation.
    assert arrow.read_bytes() == b"not arrow" and (entry / "meta.json").exists()
    assert again.train.cache_files[0]["filename"].startswith(f"{entry}.g1/")
    # prune removes it once its successor is old enough, never the newest.
    assert data_cache.prune(cache, older_than_s=3600) == []
    assert data_cache.prune(cache, older_than_s=-1) == [entry] and not entry.exists()
    assert data_cache.prune(cache, older_than_s=-1) == [] and _state(_local(data, cache), tokenizer) == HIT


def test_the_preparation_code_is_in_the_key(tmp_path, tokenizer, monkeypatch):
    import ast
    import shutil

    # What shapes an entry lives in the data package: it imports no other dpo_sweeps module but the cache store.
    for module in data_cache.CODE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("dpo_sweeps"):
                    assert name.startswith("dpo_sweeps.data") or name == "dpo_sweeps.cache_store", (module, name)

    data, cache = _write(tmp_path / "prefs.jsonl", _rows(30)), tmp_path / "cache"
    assert _state(_local(data, cache), tokenizer) == COMPUTED
    code = tmp_path / "code"
    shutil.copytree(data_cache.CODE_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    assert data_cache.code_identity(code) == data_cache.code_identity()
    monkeypatch.setattr(data_cache, "CODE_DIR", code)
    assert _state(_local(data, cache), tokenizer) == HIT
    for module in ("adapters.py", "validation.py", "tokenize.py", "sources.py", "prepare.py"):
        before = data_cache.code_identity()
        (code / module).write_text((code / module).read_text() + "\n# an upgrade changed this module\n")
        assert data_cache.code_identity() != before, module
    # An upgraded adapter (here: only its text) must not be served the old code's entry.
    assert _state(_local(data, cache), tokenizer) == COMPUTED


# -------------------------------------------------------------------------------------------------- tokenize once


def test_token_ids_are_trls_own_and_the_trainer_does_not_tokenize_again(tmp_path, tokenizer, tiny_model_paths):
    """The ids in the prepared data are what TRL's DPOTrainer computes from the same rows, and a trainer given the
    prepared data keeps it as it is (no second tokenization pass)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from dpo_sweeps.data.tokenize import TOKEN_COLUMNS, prepared_data_trainer_class

    data = _write(tmp_path / "prefs.jsonl", _rows(30))
    d = load_preference_data(compose_config(_local(data, tmp_path / "cache")), tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_paths["qwen2"])
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_length=128, report_to=[], use_cpu=True)
    text_only = Dataset.from_list(d.train.select_columns(["prompt", "chosen", "rejected"]).to_list())
    bare = DPOTrainer(model=model, args=args, train_dataset=text_only, processing_class=tokenizer)
    for col in TOKEN_COLUMNS:
        assert d.train[col] == bare.train_dataset[col], col
    ours = prepared_data_trainer_class()(model=model, args=args, train_dataset=d.train, processing_class=tokenizer)
    assert ours.train_dataset is d.train


# ------------------------------------------------------------------------------------------- bad rows on a hit


def test_bad_rows_are_named_with_file_row_and_field_on_a_hit(tmp_path, tokenizer, caplog):
    rows = _rows(40, bad={7: {"rejected": ""}, 21: {"chosen": None}})
    rows[30]["prompt"] = " ".join(["word"] * 200)  # fills dataset.max_length=128 after templating
    data, cache = _write(tmp_path / "prefs.jsonl", rows), tmp_path / "cache"
    messages = []
    for expected in (COMPUTED, HIT):
        caplog.clear()
        with caplog.at_level(logging.INFO), pytest.raises(InvalidDataError) as err:
            load_preference_data(compose_config(_local(data, cache)), tokenizer)
        assert f"{expected} (" in caplog.text  # "Prepared data (...): hit (<key>...)"
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    msg = messages[1]
    assert "3 of 40 rows checked are invalid" in msg
    assert f"{data} row 7 (line 8), field 'rejected[0].content': empty text" in msg
    assert f"{data} row 21 (line 22), field 'chosen': column 'chosen' is null" in msg
    assert f"{data} row 30 (line 31), field 'prompt'" in msg and "fill dataset.max_length=128" in msg

    # on_invalid=drop: the same rows dropped, counted and the first one named, on the hit as on the miss.
    dropped = []
    for expected in (COMPUTED, HIT):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            d = load_preference_data(compose_config(_local(data, cache, "dataset.on_invalid=drop")), tokenizer)
        assert d.cache == expected
        warning = next(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
        assert str(data) in warning and "field" in warning
        dropped.append((d.stats, len(d.train) + len(d.eval)))
    assert dropped[0] == dropped[1] and dropped[1][1] == 37
    stats = dropped[1][0]
    assert stats["train_rows_dropped"] + stats["eval_rows_dropped"] == 3


# -------------------------------------------------------------------------------------------- racing points

RACER = r"""
import json, os, sys, time
from transformers import AutoTokenizer
from dpo_sweeps.data import load_preference_data
from tests.helpers import compose_config
overrides, tok_path, go = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(tok_path)
cfg = compose_config(overrides)
while not os.path.exists(go):
    time.sleep(0.002)
d = load_preference_data(cfg, tokenizer)
print(json.dumps({"state": d.cache, "key": d.cache_key, "train": d.train["prompt_ids"][:3], "n": len(d.train)}))
"""


@pytest.mark.slow
def test_racing_points_prepare_once(tmp_path, tiny_model_paths):
    """Three jobs of a sweep asking for the same data at the same moment: one prepares, two wait and read it."""
    data, cache, go = _write(tmp_path / "prefs.jsonl", _rows(3000)), tmp_path / "cache", tmp_path / "go"
    overrides = _local(data, cache, "dataset.num_proc=1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, json.dumps(overrides), str(tiny_model_paths["qwen2"]), str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(12)  # all three imported transformers and spin on the start file
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["state"] for r in results) == [COMPUTED, HIT, HIT]
    assert len({r["key"] for r in results}) == 1 and len({json.dumps(r["train"]) for r in results}) == 1
    assert len(list(cache.glob("*/*/meta.json"))) == 1 and not list(cache.rglob("*.lock"))
    assert not list(cache.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------- same training


def _train(overrides: list[str], run_dir: Path) -> tuple[dict, list[float], dict]:
    import torch
    from safetensors.torch import load_file

    from dpo_sweeps.runs import folder as run_folder
    from dpo_sweeps.train.trainer import run_training

    run_dir.mkdir(parents=True)
    metrics = run_training(compose_config(overrides), run_dir)
    run_folder.write_json_atomic(run_dir / run_folder.METRICS_FILE, metrics)
    losses = [r["loss"] for r in run_folder.read_history(run_dir) if "loss" in r]
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return metrics, losses, {k: v.to(torch.float32) for k, v in weights.items()}


@pytest.mark.slow
def test_a_hit_trains_identically_to_a_miss(tiny_model_paths, tmp_path):
    common = [
        *BASE,
        "training.max_steps=6",
        "training.logging_steps=1",
        "training.sample_completions=0",
        "ref_cache.enabled=false",
        f"data_cache.dir={tmp_path / 'cache'}",
    ]
    runs = {
        "off": _train([*common, "data_cache.enabled=false"], tmp_path / "off"),
        "computed": _train(common, tmp_path / "computed"),
        "hit": _train(common, tmp_path / "hit"),
    }
    ref_metrics, ref_losses, ref_weights = runs["off"]
    assert len(ref_losses) == 6 and ref_metrics["eval_rewards/margins"] != 0
    for state, (metrics, losses, weights) in runs.items():
        assert metrics["data_cache"] == state
        assert json.loads((tmp_path / state / "metrics.json").read_text())["data_cache"] == state
        assert losses == ref_losses, state  # bit for bit: the same rows, ids and order
        for k in ("eval_loss", "eval_rewards/margins", "data/train_rows", "data/eval_rows"):
            assert metrics[k] == ref_metrics[k], (state, k)
        for name, w in ref_weights.items():
            np.testing.assert_array_equal(weights[name].numpy(), w.numpy(), err_msg=f"{state} {name}")


# ------------------------------------------------------------------------------------- eval split, processes


def test_held_out_eval_is_capped_and_said(tmp_path, tokenizer, caplog):
    data, cache = _write(tmp_path / "prefs.jsonl", _rows(400)), tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        d = load_preference_data(compose_config(_local(data, cache, "dataset.eval_max_rows=25")), tokenizer)
    assert len(d.eval) == 25 and len(d.train) == 375
    assert "25 rows held out of train" in d.stats["eval_source"] and "eval_max_rows=25" in d.stats["eval_source"]
    assert "Eval split: 25 rows held out" in caplog.text
    uncapped = load_preference_data(compose_config(_local(data, cache, "dataset.eval_max_rows=null")), tokenizer)
    assert len(uncapped.eval) == 40 and uncapped.stats["eval_source"] == "0.1 of train"
    assert compose_config(BASE).dataset.eval_max_rows == 1000  # the default: 100k rows evaluate 1000 pairs, not 10k


def test_tokenizer_processes_follow_the_allocation(monkeypatch):
    from dpo_sweeps.data.tokenize import PARALLEL_MIN_ROWS, num_proc

    cfg = compose_config(BASE)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert num_proc(cfg, 100_000) == 6
    assert num_proc(cfg, PARALLEL_MIN_ROWS - 1) is None  # small sets: worker start-up costs more than it saves
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert num_proc(cfg, 100_000) == 2  # the node's cores shared by its 4 ranks
    assert num_proc(compose_config([*BASE, "dataset.num_proc=3"]), 10) == 3


def test_validation_names_bad_data_cache_settings():
    from dpo_sweeps.config.validation import find_problems

    problems = find_problems(
        compose_config([*BASE, "data_cache.dir=''", "data_cache.lock_timeout_s=-1", "dataset.eval_max_rows=0"])
    )
    assert any(p.startswith("data_cache.dir is empty") for p in problems)
    assert any(p.startswith("data_cache.lock_timeout_s=-1") for p in problems)
    assert any(p.startswith("dataset.eval_max_rows=0") for p in problems)
