"""Tiny random-initialised models of the seed architectures (Llama, Qwen2, Gemma), built locally, no download.

Each has a byte-level BPE tokenizer trained with `tokenizers` on a small corpus and the chat template and special
tokens of its family, including the quirks the real models have (Llama: no pad token; Gemma: no system role, eager
attention). Builds are deterministic (fixed seeds) and cached under `paths.cache_dir()`; concurrent sweep jobs build
into a temp folder and rename it into place, so nobody reads half a model.

    python -m dpo_sweeps.models.tiny            # build all three, print their folders
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dpo_sweeps.cache_store import atomic_folder
from dpo_sweeps.paths import tiny_model_dir

ARCHS = ("llama", "qwen2", "gemma")

# Llama 3's template, shortened: header tokens around each role, <|eot_id|> after each turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2.5's ChatML template, including its default system prompt.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's template, verbatim in behaviour: a system message raises, roles must alternate, the assistant is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

SPECIAL_TOKENS = {
    # Llama 3 Instruct: no pad token (the model config pads with <|finetune_right_pad_id|>), EOS is <|eot_id|>.
    "llama": {
        "tokens": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ],
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": None,
        "template": LLAMA3_TEMPLATE,
    },
    "qwen2": {
        "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "template": QWEN_TEMPLATE,
    },
    "gemma": {
        "tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "template": GEMMA_TEMPLATE,
    },
}
VOCAB_SIZE = 1024
# Small enough that a 20-step DPO run takes seconds on one CPU core; 2 layers so LoRA targets exist at several depths.
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128


def _train_tokenizer(arch: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dpo_sweeps.data.toy import toy_corpus

    spec = SPECIAL_TOKENS[arch]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=spec["tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(toy_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos_token"],
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        additional_special_tokens=[t for t in spec["tokens"] if t not in (spec["bos_token"], spec["eos_token"])],
    )
    tokenizer.chat_template = spec["template"]
    # Llama and Gemma prepend BOS through their chat templates; plain-text prompts get it from the tokenizer.
    return tokenizer


def _model_config(arch: str, tokenizer):
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    common = {
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 512,
        **ids,
    }
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    return GemmaConfig(**common, head_dim=HIDDEN // HEADS, hidden_act="gelu_pytorch_tanh")


def build(arch: str, dest: str | os.PathLike) -> Path:
    """Build the tiny `arch` model and its tokenizer into `dest` (atomically), deterministic for a given version."""
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"Unknown tiny architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    dest = Path(dest)
    with atomic_folder(dest) as tmp:
        tokenizer = _train_tokenizer(arch)
        config = _model_config(arch, tokenizer)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


def ensure(arch: str) -> Path:
    """The folder of the tiny `arch` model, built on first use."""
    dest = Path(tiny_model_dir(arch))
    if not (dest / "config.json").exists():
        build(arch, dest)
    return dest


def build_reward_model(dest: str | os.PathLike) -> Path:
    """A tiny random reward model (Llama, one output label, the tiny Llama's tokenizer and chat template), atomically:
    what `eval.scorer=reward_model` loads in tests and CPU runs. Its scores are arbitrary but deterministic."""
    import torch
    from transformers import AutoModelForSequenceClassification

    dest = Path(dest)
    with atomic_folder(dest) as tmp:
        tokenizer = _train_tokenizer("llama")
        tokenizer.pad_token = "<|finetune_right_pad_id|>"
        config = _model_config("llama", tokenizer)
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(1)
        AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


def ensure_reward_model() -> Path:
    dest = Path(tiny_model_dir("llama_reward"))
    if not (dest / "config.json").exists():
        build_reward_model(dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    archs = (argv if argv is not None else sys.argv[1:]) or list(ARCHS)
    for arch in archs:
        print(f"{arch}: {ensure(arch)}")


if __name__ == "__main__":
    main()
