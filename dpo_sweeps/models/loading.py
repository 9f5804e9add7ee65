"""Model and tokenizer loading: dtype, quantization, LoRA, pad token, and the reference model.

With LoRA the reference is the base model with the adapter disabled (no second copy in memory); without LoRA it is a
frozen copy loaded the same way as the policy. Imported only inside the job (torch/transformers/peft are heavy).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoadedModels:
    policy: Any  # PreTrainedModel or PeftModel
    reference: Any | None  # None with LoRA: the adapter is disabled to get the reference
    tokenizer: Any
    dtype: torch.dtype
    # The policy's parameters are on the meta device here: rank 0 alone read the weights (`rank_zero_loads`).
    empty_on_this_rank: bool = False


def uses_gpu(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and not cfg.training.use_cpu


def resolve_dtype(name: str, cfg: DictConfig) -> torch.dtype:
    """`auto`: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if name != "auto":
        return _DTYPES[name]
    if not uses_gpu(cfg):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def model_path(cfg: DictConfig) -> str:
    """The folder or hub id to load; tiny models are built, GGUF files converted, here on first use."""
    if cfg.model.tiny_arch:
        from dpo_sweeps.models.tiny import ensure

        return str(ensure(cfg.model.tiny_arch))
    if cfg.model.gguf:
        from dpo_sweeps.models import gguf as gguf_models

        return str(gguf_models.ensure(cfg.model.gguf))
    return cfg.model.name_or_path


def load_tokenizer(cfg: DictConfig):
    from transformers import AutoTokenizer

    m = cfg.model
    tokenizer = AutoTokenizer.from_pretrained(
        model_path(cfg), revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    if m.pad_token is not None:
        pad_id = tokenizer.convert_tokens_to_ids(m.pad_token)
        # A token that maps to the unknown token's id is not in the vocabulary, unless it *is* the unknown token
        # (SmolLM2's <|endoftext|>).
        if pad_id is None or (pad_id == tokenizer.unk_token_id and m.pad_token != tokenizer.unk_token):
            raise ValueError(
                f"model.pad_token={m.pad_token!r} is not a token of {m.name_or_path}'s tokenizer. "
                "Pick a token from its vocabulary (a reserved special token is best)."
            )
        if tokenizer.pad_token != m.pad_token:
            log.info("Padding with %r (model.pad_token); the tokenizer had %r.", m.pad_token, tokenizer.pad_token)
        tokenizer.pad_token = m.pad_token
    elif tokenizer.pad_token is None:
        choose_pad_token(tokenizer, m.name_or_path)
    return tokenizer


# Reserved tokens that the model families ship for padding, in order of preference (Llama 3: finetune_right_pad_id).
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<|reserved_special_token_0|>")


def choose_pad_token(tokenizer, name: str) -> str:
    """A tokenizer without a pad token gets one explicitly, logged: a reserved pad token of its vocabulary, else EOS."""
    vocab = tokenizer.get_vocab()
    reserved = next((t for t in RESERVED_PAD_TOKENS if t in vocab and t != tokenizer.eos_token), None)
    if reserved is not None:
        log.info(
            "%s has no pad token: padding with its reserved token %r (set model.pad_token to choose).", name, reserved
        )
        tokenizer.pad_token = reserved
    else:
        # Said out loud, not silent: EOS as padding is common but masks real EOS tokens if a collator keys on ids.
        log.warning(
            "%s has no pad token, none of %s is in its vocabulary and model.pad_token is null: padding with the EOS "
            "token %r. Set model.pad_token to a reserved special token to avoid that.",
            name,
            ", ".join(RESERVED_PAD_TOKENS),
            tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token


def _quantization_config(cfg: DictConfig, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if q.mode == "nf4":
        compute = dtype if q.compute_dtype == "auto" else _DTYPES[q.compute_dtype]
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
    if q.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _load_causal_lm(cfg: DictConfig, dtype: torch.dtype, quantization_config):
    from transformers import AutoModelForCausalLM

    m = cfg.model
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": m.revision, "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # bitsandbytes places weights at load time: on the job's GPU, or the CPU.
        kwargs["device_map"] = {"": torch.cuda.current_device() if uses_gpu(cfg) else "cpu"}
    return AutoModelForCausalLM.from_pretrained(model_path(cfg), **kwargs)


def accelerate_shards(cfg: DictConfig) -> bool:
    """Whether accelerate will shard this run with FSDP: it turns FSDP on only for GPU backends and several ranks
    (STACK_NOTES "FSDP on CPU"); tests/force_fsdp forces this answer together with accelerate's."""
    return bool(cfg.training.fsdp.enabled) and uses_gpu(cfg) and int(os.environ.get("WORLD_SIZE") or 1) > 1


def rank_zero_loads(cfg: DictConfig) -> bool:
    """Whether this rank builds the policy without reading its weights (training.fsdp.cpu_ram_efficient_loading):
    transformers 5.25 reads the whole checkpoint on every rank, whatever ACCELERATE_USE_FSDP and
    FSDP_CPU_RAM_EFFICIENT_LOADING say, while accelerate 1.15's FSDP2 prepare (fsdp2_prepare_model) moves ranks > 0 to
    meta and broadcasts rank 0's state dict into the shards (fsdp2_load_full_state_dict): ranks > 0 need only the
    shapes. FSDP2 only: FSDP1's path (sync_module_states) is untested here."""
    fsdp = cfg.training.fsdp
    return (
        bool(fsdp.cpu_ram_efficient_loading)
        and fsdp.version == 2
        and accelerate_shards(cfg)
        and int(os.environ.get("RANK") or 0) > 0
    )


def _empty_causal_lm(cfg: DictConfig, dtype: torch.dtype):
    """The policy's modules with every parameter on the meta device, as `_load_causal_lm` would build them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    m, path = cfg.model, model_path(cfg)
    config = AutoConfig.from_pretrained(path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    # Buffers stay real: accelerate re-registers the non-persistent ones (rotary inv_freq), which are not in rank 0's
    # state dict, from each rank's own model after the broadcast.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    # Under init_empty_weights transformers 5.25 leaves tied weights untied (SmolLM2: a separate meta lm_head), and
    # accelerate's FSDP2 prepare then finds no lm_head.weight to map.
    model.tie_weights()
    # As from_pretrained does: the generation eval reads it, and every rank must sample alike. Without a
    # generation_config.json both keep the one derived from config.json.
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(path, revision=m.revision)
    return model.eval()


def _keep_4bit_training_layout_on_cpu(model) -> None:
    """bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 CPUs at the first no-grad forward (our evaluation
    before training) and never unpacks them: backward through the packed path then fails on layers with a bias
    (Qwen2's q/k/v). Training on CPU keeps the plain layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def lora_config(cfg: DictConfig):
    from peft import LoraConfig

    lora = cfg.lora
    targets = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(OmegaConf.to_container(targets)),
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )


def load_models(cfg: DictConfig, load_reference: bool = True) -> LoadedModels:
    """`load_reference=False`: no frozen copy for full DPO (the reference cache supplies its log-probs)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    dtype = resolve_dtype(cfg.model.dtype, cfg)
    tokenizer = load_tokenizer(cfg)
    quantized = cfg.quantization.mode != "none" or cfg.model.prequantized
    empty = rank_zero_loads(cfg)
    policy = _empty_causal_lm(cfg, dtype) if empty else _load_causal_lm(cfg, dtype, _quantization_config(cfg, dtype))
    policy.config.pad_token_id = tokenizer.pad_token_id
    reference = None
    if quantized and not uses_gpu(cfg):
        _keep_4bit_training_layout_on_cpu(policy)
    if cfg.lora.enabled:
        if quantized:
            # Casts norms to fp32 and enables input grads, so gradients reach LoRA through frozen 4/8-bit layers.
            policy = prepare_model_for_kbit_training(
                policy,
                use_gradient_checkpointing=cfg.training.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        policy = get_peft_model(policy, lora_config(cfg))
    elif load_reference:
        reference = _load_causal_lm(cfg, dtype, None)
        reference.config.pad_token_id = tokenizer.pad_token_id
        reference.eval().requires_grad_(False)
    return LoadedModels(policy=policy, reference=reference, tokenizer=tokenizer, dtype=dtype, empty_on_this_rank=empty)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters (to show that training changed them)."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
