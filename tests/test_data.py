"""Preference data: hub schemas through fixture files, bad rows named, file errors located, chat-template quirks."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from helpers import REPO, compose_config

from dpo_sweeps.data import load_preference_data
from dpo_sweeps.data import sources as data_sources
from dpo_sweeps.data.sources import DataFileError, DatasetUnavailableError
from dpo_sweeps.data.validation import InvalidDataError

FIXTURES = REPO / "tests" / "fixtures" / "datasets"
HUB_FIXTURES = {
    "ultrafeedback": FIXTURES / "ultrafeedback",
    "hh_rlhf": FIXTURES / "hh_rlhf",
    "orca_dpo_pairs": FIXTURES / "orca_dpo_pairs",
}


@pytest.fixture(scope="module")
def tokenizers(tiny_model_paths):
    from transformers import AutoTokenizer

    return {arch: AutoTokenizer.from_pretrained(path) for arch, path in tiny_model_paths.items()}


def _load(overrides, tokenizer=None):
    return load_preference_data(compose_config(["model=tiny_qwen", *overrides]), tokenizer)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."} for i in range(10)]


# --- hub schemas: the fixture goes through the same path as the hub load -----------------------------------------


@pytest.mark.parametrize("name", sorted(HUB_FIXTURES))
def test_hub_schema_fixture_equals_simulated_hub_load(name, monkeypatch, tokenizers):
    """dataset.path=<copy> and the hub load give identical rows: only the source of the raw rows differs."""
    import datasets

    local = _load([f"dataset={name}", f"dataset.path={HUB_FIXTURES[name]}"], tokenizers["qwen2"])

    def fake_hub(hub_id, split):  # what `datasets.load_dataset(hub_id, split=...)` returns for the published files
        rows = [row for row, _ in data_sources.load_local(HUB_FIXTURES[name], split)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    hub = _load([f"dataset={name}"], tokenizers["qwen2"])
    assert hub.train.to_list() == local.train.to_list() and hub.eval.to_list() == local.eval.to_list()
    assert local.stats["train_rows"] == len(local.train) > 0


def test_ultrafeedback_splits_shared_turns_into_prompt():
    d = _load(["dataset=ultrafeedback", f"dataset.path={HUB_FIXTURES['ultrafeedback']}"])
    assert d.stats["eval_source"] == "test" and len(d.eval) == 3  # the test-*.parquet split
    row = d.train[0]
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
    assert row["chosen"] != row["rejected"]
    assert set(d.train.column_names) == {"prompt", "chosen", "rejected"}  # scores are not passed on


def test_hh_rlhf_transcripts_become_prompt_conversation_and_final_replies():
    d = _load(["dataset=hh_rlhf", f"dataset.path={HUB_FIXTURES['hh_rlhf']}"])
    assert d.stats["train_rows"] == 8 and d.stats["eval_rows"] == 4  # both tranches, train*/test* files
    multi = [r for r in d.train if len(r["prompt"]) == 3]
    assert multi, "multi-turn rows keep their history"
    assert [m["role"] for m in multi[0]["prompt"]] == ["user", "assistant", "user"]
    assert multi[0]["prompt"][0]["content"] == "Hi there."
    assert not any("Human:" in m["content"] or "Assistant:" in m["content"] for r in d.train for m in r["prompt"])


def test_hh_rlhf_one_tranche_folder(tmp_path):
    d = _load(["dataset=hh_rlhf", f"dataset.path={HUB_FIXTURES['hh_rlhf'] / 'helpful-base'}"])
    assert d.stats["train_rows"] == 5 and d.stats["eval_rows"] == 2


def test_orca_system_becomes_system_turn_and_single_file_is_train():
    d = _load(["dataset=orca_dpo_pairs", f"dataset.path={HUB_FIXTURES['orca_dpo_pairs'] / 'orca_rlhf.jsonl'}"])
    rows = d.train.to_list() + d.eval.to_list()
    assert len(rows) == 12 and d.stats["eval_source"] == "0.05 of train"
    with_system = [r for r in rows if r["prompt"][0]["role"] == "system"]
    assert len(with_system) == 8  # rows with an empty system string get no system turn
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)


def test_hub_unreachable_says_so_and_names_dataset_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError) as err:
        _load(["dataset=ultrafeedback"])
    msg = str(err.value)
    assert "trl-lib/ultrafeedback_binarized" in msg and "HF_HUB_OFFLINE" in msg
    assert "dataset.path=" in msg and "dataset=local" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no deep `datasets` traceback chained


# --- local files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz"])
def test_local_formats_load_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"prefs{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(path, GOOD)
    elif suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in GOOD).encode()))
    elif suffix == ".json":
        path.write_text(json.dumps(GOOD))
    elif suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
            w.writeheader()
            w.writerows(GOOD)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(GOOD), path)
    d = _load(["dataset=local", f"dataset.path={path}", "dataset.eval_fraction=0.2"])
    rows = sorted(d.train.to_list() + d.eval.to_list(), key=lambda r: r["prompt"])
    assert rows == sorted(GOOD, key=lambda r: r["prompt"]) and len(d.eval) == 2


def test_local_column_mapping_system_column_and_to_conversational(tmp_path):
    rows = [{"q": f"Q{i}?", "good": f"Yes {i}.", "bad": f"No {i}.", "sys": "Be brief."} for i in range(10)]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    cols = ["dataset.columns.prompt=q", "dataset.columns.chosen=good", "dataset.columns.rejected=bad"]
    d = _load(
        ["dataset=local", f"dataset.path={path}", *cols, "dataset.columns.system=sys", "dataset.to_conversational=true"]
    )
    r = d.train[0]
    assert [m["role"] for m in r["prompt"]] == ["system", "user"] and r["prompt"][0]["content"] == "Be brief."
    plain = _load(["dataset=local", f"dataset.path={path}", *cols])
    assert isinstance(plain.train[0]["prompt"], str) and plain.train[0]["prompt"].startswith("Q")


def test_local_conversational_implicit_prompt(tmp_path):
    rows = [
        {
            "chosen": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}!"}],
            "rejected": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Bye."}],
        }
        for i in range(10)
    ]
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    d = _load(["dataset=local", f"dataset.path={path}", "dataset.format=conversational", "dataset.columns.prompt=null"])
    assert d.train[0]["prompt"][0]["role"] == "user" and len(d.train[0]["prompt"]) == 1


def test_broken_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]) + "\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataFileError, match=r"bad\.jsonl line 3: not valid JSON"):
        _load(["dataset=local", f"dataset.path={path}"])


def test_broken_csv_and_parquet_are_named(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text('prompt,chosen,rejected\n"a","b","c"\n"d","e","f","extra"\n')
    with pytest.raises(DataFileError, match=r"bad\.csv line 3: more cells than the header"):
        _load(["dataset=local", f"dataset.path={csv_path}"])
    pq_path = tmp_path / "bad.parquet"
    pq_path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFileError, match=r"bad\.parquet: not a valid parquet file"):
        _load(["dataset=local", f"dataset.path={pq_path}"])


def test_missing_path_and_missing_split_are_explained(tmp_path):
    with pytest.raises(DataFileError, match="no such file or folder"):
        _load(["dataset=local", f"dataset.path={tmp_path / 'nope.jsonl'}"])
    (tmp_path / "data").mkdir()
    _write_jsonl(tmp_path / "data" / "test.jsonl", GOOD)
    with pytest.raises(DataFileError, match=r"no files for split 'train' \(found splits: \['test'\]\)"):
        _load(["dataset=ultrafeedback", f"dataset.path={tmp_path / 'data'}"])


# --- bad rows ---------------------------------------------------------------------------------------------------

BAD = [
    ({"prompt": "Q?", "rejected": "No."}, "chosen", "missing"),
    ({"prompt": "Q?", "chosen": None, "rejected": "No."}, "chosen", "null"),
    ({"prompt": "Q?", "chosen": "   ", "rejected": "No."}, "chosen", "empty text"),
    ({"prompt": "Q?", "chosen": 42, "rejected": "No."}, "chosen", "expected a string, got int"),
    ({"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}, "rejected", "identical to chosen"),
]


def test_bad_rows_are_named_with_file_row_field_and_counted(tmp_path):
    rows = GOOD[:3] + [b for b, _, _ in BAD] + GOOD[3:]
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(InvalidDataError) as err:
        _load(["dataset=local", f"dataset.path={path}", "dataset.eval_fraction=0.1", "dataset.max_errors_shown=10"])
    msg = str(err.value)
    assert "5 of 15 rows checked are invalid" in msg and "dataset.on_invalid=drop" in msg
    for i, (_, field, what) in enumerate(BAD):
        line = f"{path} row {3 + i} (line {4 + i}), field '{field}': "
        assert line in msg, (line, msg)
        assert what in msg.split(line, 1)[1].splitlines()[0]


def test_error_lists_first_rows_and_counts_all(tmp_path):
    rows = GOOD + [{"prompt": "Q?", "chosen": "", "rejected": "No."}] * 8
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(InvalidDataError) as err:
        _load(["dataset=local", f"dataset.path={path}"])
    msg = str(err.value)
    assert "8 of 18 rows" in msg and "empty_text: 8" in msg
    assert msg.count(" - ") == 5 and "... and 3 more" in msg  # dataset.max_errors_shown=5


def test_drop_mode_drops_logs_and_counts(tmp_path, caplog):
    rows = GOOD + [b for b, _, _ in BAD]
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        d = _load(["dataset=local", f"dataset.path={path}", "dataset.on_invalid=drop", "dataset.eval_fraction=0.2"])
    s = d.stats
    assert s["train_rows"] + s["eval_rows"] == 10
    assert s["train_rows_dropped"] + s["eval_rows_dropped"] == 5
    dropped = {k.split("_dropped_")[1]: 0 for k in s if "_dropped_" in k}
    for k, v in s.items():
        if "_dropped_" in k:
            dropped[k.split("_dropped_")[1]] += v
    assert dropped == {"missing_field": 2, "empty_text": 1, "wrong_type": 1, "identical_pair": 1}
    assert "dataset.on_invalid=drop: dropped" in caplog.text


def test_role_order_and_non_assistant_rejected(tmp_path):
    def conv(prompt_roles, rejected_role="assistant"):
        return {
            "prompt": [{"role": r, "content": f"{r} text"} for r in prompt_roles],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": rejected_role, "content": "bad"}],
        }

    good = [conv(["user"]) for _ in range(8)]
    bad = [conv(["user", "user"]), conv(["user"], rejected_role="user"), conv(["user", "system"]), conv(["assistant"])]
    path = _write_jsonl(tmp_path / "c.jsonl", good + bad)
    with pytest.raises(InvalidDataError) as err:
        _load(["dataset=local", f"dataset.path={path}", "dataset.format=conversational", "dataset.eval_fraction=0.1"])
    msg = str(err.value)
    assert "4 of 12" in msg and "role_order: 4" in msg
    assert "row 9 (line 10), field 'rejected[0]': is from 'user', expected 'assistant'" in msg
    assert "field 'prompt[1]': a system message is only allowed as the first turn" in msg


def test_hh_row_without_final_assistant_turn_is_named(tmp_path):
    lines = [
        {"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello {i}", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go"}
        for i in range(6)
    ]
    lines.append(
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: something else\n\nAssistant: go"}
    )
    lines.append({"chosen": "no markers at all", "rejected": "\n\nHuman: hi\n\nAssistant: go"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(InvalidDataError) as err:
        _load(["dataset=hh_rlhf", f"dataset.path={tmp_path}", "dataset.eval_split=null", "dataset.eval_fraction=0.1"])
    msg = str(err.value)
    assert "row 6 (line 7), field 'rejected': the conversation before the final reply differs" in msg
    assert "row 7 (line 8), field 'chosen': no '\\n\\nHuman:'" in msg


# --- lengths after templating and chat-template quirks ---------------------------------------------------------


def test_prompt_filling_max_length_is_caught_before_trl_drops_it(tmp_path, tokenizers):
    rows = GOOD + [{"prompt": "tell me about the weather " * 40, "chosen": "Sure.", "rejected": "No."}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    common = ["dataset=local", f"dataset.path={path}", "dataset.max_length=64", "dataset.to_conversational=true"]
    with pytest.raises(
        InvalidDataError,
        match=r"row 10 \(line 11\), field 'prompt': \d+ tokens after templating fill dataset.max_length=64",
    ):
        _load(common, tokenizers["qwen2"])
    d = _load([*common, "dataset.on_invalid=drop"], tokenizers["qwen2"])
    assert (
        d.stats["train_dropped_prompt_fills_max_length"] + d.stats.get("eval_dropped_prompt_fills_max_length", 0) == 1
    )


def test_too_long_pairs_are_counted_or_invalid(tmp_path, tokenizers):
    rows = GOOD + [{"prompt": "Q?", "chosen": "a long helpful answer " * 30, "rejected": "No."}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    common = ["dataset=local", f"dataset.path={path}", "dataset.max_length=64", "dataset.to_conversational=true"]
    d = _load(common, tokenizers["qwen2"])
    assert d.stats["train_rows_truncated"] + d.stats["eval_rows_truncated"] == 1
    with pytest.raises(InvalidDataError, match="dataset.on_too_long=invalid"):
        _load([*common, "dataset.on_too_long=invalid"], tokenizers["qwen2"])
    with pytest.raises(InvalidDataError, match="dataset.max_prompt_length=3"):
        _load([*common, "dataset.max_prompt_length=3"], tokenizers["qwen2"])


def test_gemma_system_turn_is_merged_or_named(tokenizers):
    """Gemma's template raises on a system role: merged with model.merge_system_into_user, else a named row error."""
    path = HUB_FIXTURES["orca_dpo_pairs"]
    cfg = compose_config(["model=tiny_gemma", "dataset=orca_dpo_pairs", f"dataset.path={path}"])
    d = load_preference_data(cfg, tokenizers["gemma"])
    rows = d.train.to_list() + d.eval.to_list()
    assert all(m["role"] != "system" for r in rows for m in r["prompt"])
    merged = [r for r in rows if r["prompt"][0]["content"].startswith("You are")]
    assert len(merged) == 8 and "\n\n" in merged[0]["prompt"][0]["content"]
    cfg = compose_config(
        ["model=tiny_gemma", "dataset=orca_dpo_pairs", f"dataset.path={path}", "model.merge_system_into_user=false"]
    )
    with pytest.raises(InvalidDataError) as err:
        load_preference_data(cfg, tokenizers["gemma"])
    msg = str(err.value)
    assert "8 of 12" in msg and "System role not supported" in msg and "model.merge_system_into_user=true" in msg


def test_tokenizer_without_pad_token_gets_reserved_one_logged(caplog):
    from dpo_sweeps.models.loading import load_tokenizer

    cfg = compose_config(["model=tiny_llama", "model.pad_token=null"])
    with caplog.at_level(logging.INFO, logger="dpo_sweeps.models.loading"):
        tok = load_tokenizer(cfg)
    assert tok.pad_token == "<|finetune_right_pad_id|>" and tok.pad_token_id != tok.eos_token_id
    assert "has no pad token: padding with its reserved token '<|finetune_right_pad_id|>'" in caplog.text


def test_tokenizer_without_any_reserved_token_falls_back_to_eos_with_warning(tiny_model_paths, caplog):
    from transformers import AutoTokenizer

    from dpo_sweeps.models.loading import RESERVED_PAD_TOKENS, choose_pad_token

    tok = AutoTokenizer.from_pretrained(tiny_model_paths["qwen2"])
    tok.pad_token = None
    assert not set(RESERVED_PAD_TOKENS) & set(tok.get_vocab())
    with caplog.at_level(logging.WARNING, logger="dpo_sweeps.models.loading"):
        assert choose_pad_token(tok, "tiny-qwen") == tok.eos_token
    assert "padding with the EOS token" in caplog.text


def test_sample_limits_and_seed(tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}."} for i in range(50)]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["dataset=local", f"dataset.path={path}", "dataset.max_train_samples=7", "dataset.max_eval_samples=3"]
    a, b = _load(args), _load(args)
    c = _load([*args, "dataset.shuffle_seed=1"])
    assert len(a.train) == 7 and len(a.eval) == 3
    assert a.train.to_list() == b.train.to_list() and a.train.to_list() != c.train.to_list()
    assert not {r["prompt"] for r in a.train} & {r["prompt"] for r in a.eval}
