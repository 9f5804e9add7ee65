"""Peak GPU memory of one DPO run, per GPU, estimated before submission (no torch: this runs on the login node).

    python -m dpo_sweeps.bench.memory          # the estimate against the GPU benchmark's measurements

What is counted (bytes per GPU; P = parameters, W = ranks an FSDP full shard spreads them over):
- weights: the policy in its load dtype (bf16 on a GPU for `dtype: auto`). 4-bit NF4 / int8 layers at their packed
  size; what bitsandbytes leaves unquantized (embeddings, LM head, norms) is fp32, because PEFT's
  `prepare_model_for_kbit_training` upcasts it. Under FSDP: fp32 master shards (accelerate upcasts trainable low-
  precision parameters when mixed precision is on) plus the all-gathered bf16 blocks in flight and the root module
  (the LM head and, untied, the input embeddings), which FSDP2 keeps gathered from forward to backward.
- reference: a second frozen copy, only for full-parameter DPO without the reference cache. LoRA's reference is the
  adapter-disabled policy; with the cache the reference log-probs come from disk.
- gradients and optimizer: without FSDP, HF's Trainer keeps no master copy: a model loaded in bf16 trains in bf16,
  and torch's AdamW keeps its two states in the parameter dtype (2 x 2 bytes per trainable parameter). The README's
  GPU measurement confirms it (the full runs differ from the LoRA run by 4 x 2P bytes). torch's foreach AdamW
  allocates one parameter-sized temporary during `step()` (`exp_avg_sq.sqrt()` for all tensors at once): at 1.5B
  parameters that step, not the backward pass, is the peak. DDP over several ranks adds its gradient buckets.
- activations: with gradient checkpointing, each layer's input (B x T x H) plus one recomputed layer and its
  backward temporaries; without it, every layer's saved tensors. Eager attention adds heads x T x T scores.
- logits: TRL 1.16 never materialises B x T x V logits: its fused LM head (trl/kernels/chunked_logprob.py) projects
  tiles of 4096 tokens x 32768 vocabulary entries and, when the head trains, accumulates its gradient in fp32
  (V x H x 4 bytes, 2 GB for Llama 3's 128k vocabulary at H=4096).
- buffers: cuBLAS workspaces, the batch, RoPE tables, losses (fixed, calibrated on the benchmark).
These make up what `torch.cuda.max_memory_allocated` reports (the calibration compares with it). The check adds the
overhead a GPU also pays: the CUDA context, NCCL buffers when distributed, and the caching allocator's fragmentation.

Sequences are taken as padded to `max_length` (an upper bound: batches pad to their longest pair). Not modelled:
the generation eval's KV cache (short answers, small next to training), CPU offload, DeepSpeed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
# TRL 1.16's fused LM head: tokens x vocabulary entries per projection tile.
HEAD_TILE_TOKENS, HEAD_TILE_VOCAB = 4096, 32768
# Calibrated on the README's GPU benchmark (full-parameter rows, whose peak is otherwise exact parameter arithmetic).
BUFFERS_GIB = 0.25
# Not in torch's allocated count: the CUDA context (~0.5-0.6 GiB on an H100 with torch 2.x), NCCL's buffers...
CUDA_CONTEXT_GIB = 0.6
NCCL_GIB = 1.0
# ...and what the caching allocator reserves beyond what is allocated (5-20% in training loops with varying shapes).
FRAGMENTATION = 0.10
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "bf16"}
# Optimizer state bytes per trainable parameter (x the parameter's bytes for the torch ones) and the step temporary.
ADAM_LIKE = {"adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused", "adam"}
EIGHT_BIT = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit"}


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's shape: the keys of its config.json, so a config block can be copied from one."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    # Biases on every attention projection (Llama's `attention_bias`); Qwen2 has them on q/k/v only (its model_type).
    attention_bias: bool = False
    # config.json's model_type (llama, qwen2, gemma, ...): the family's defaults for keys config.json leaves out.
    model_type: str = ""
    # A pre-quantized checkpoint's bits per linear weight, from config.json's quantization_config (load_in_4bit: 4,
    # load_in_8bit: 8, GPTQ/AWQ `bits`); None = not pre-quantized, or not said.
    quant_bits: int | None = None

    @classmethod
    def from_mapping(cls, values: Any) -> Arch:
        """From a config.json dict or a config's `arch` block; unknown keys are ignored, missing required ones named."""
        values = dict(values)
        values = dict(values.get("text_config") or {}, **values) if "text_config" in values else values
        model_type = values.get("model_type", "")
        values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
        # transformers' per-family defaults where config.json leaves a key out.
        values.setdefault("tie_word_embeddings", model_type.startswith("gemma") or not model_type)
        quant = values.get("quantization_config") or {}
        if values.get("quant_bits") is None and quant:
            bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else quant.get("bits")
            values["quant_bits"] = int(bits) if bits else None
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names[:6] if values.get(n) is None]
        if missing:
            raise ValueError(f"model architecture: {', '.join(missing)} missing (config.json keys of the model).")
        return cls(**{n: values[n] for n in names if values.get(n) is not None})

    @classmethod
    def from_config_json(cls, folder: str | Path) -> Arch:
        path = Path(folder) / "config.json"
        return cls.from_mapping(json.loads(path.read_text()))

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by its module name."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Per layer: the weights a 4/8-bit quantization packs."""
        return sum(a * b for a, b in self.linears().values())

    @property
    def layer_params(self) -> int:
        if self.model_type.startswith("qwen2"):
            bias = self.q_dim + 2 * self.kv_dim  # Qwen2's q/k/v always have biases, o_proj none
        else:
            bias = (self.q_dim + 2 * self.kv_dim + self.hidden_size) * self.attention_bias
        return self.linear_params + bias + 2 * self.hidden_size  # + the two RMSNorm weights

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        embeddings = self.head_params * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * self.layer_params + self.hidden_size

    def lora_params(self, rank: int, targets: Any) -> int:
        return self.num_hidden_layers * sum(rank * (a + b) for a, b in self.lora_modules(targets).values())

    def lora_modules(self, targets: Any) -> dict[str, tuple[int, int]]:
        if isinstance(targets, str):
            targets = list(self.linears()) if targets == "all-linear" else [targets]
        return {n: shape for n, shape in self.linears().items() if n in set(targets)}


@dataclass(frozen=True)
class RunSettings:
    """What of a run's config decides its memory. Defaults: a LoRA-free bf16 run on one GPU."""

    # Preference pairs per GPU per forward (training.per_device_train_batch_size): 2 sequences each.
    micro_batch: int
    # Tokens per sequence, prompt + completion (dataset.max_length).
    seq_len: int
    # Pairs per GPU in evaluation (training.per_device_eval_batch_size); 0 = no eval.
    eval_batch: int = 0
    # None = full-parameter DPO.
    lora_rank: int | None = None
    lora_targets: Any = ("q_proj", "k_proj", "v_proj", "o_proj")
    # 4 (NF4, also a pre-quantized checkpoint) or 8 (LLM.int8); None = not quantized.
    quant_bits: int | None = None
    double_quant: bool = True
    # The weights' load dtype and the autocast precision: bf16, fp16 or fp32.
    weights_dtype: str = "bf16"
    precision: str = "bf16"
    # Full DPO keeps a frozen copy unless the reference cache supplies its log-probs (ignored with LoRA).
    reference_copy: bool = True
    optimizer: str = "adamw_torch"
    # Ranks of one training (GPUs); fsdp=True shards parameters, gradients and optimizer state over them.
    world_size: int = 1
    fsdp: bool = False
    # FSDP2 frees each block's gathered parameters after its forward (full shard); False keeps them until backward.
    fsdp_reshard_after_forward: bool = True
    # Host memory only (host_memory.py): ranks > 0 skip the fp32 upcast; checkpoints gathered whole on rank 0.
    fsdp_cpu_ram_efficient_loading: bool = True
    fsdp_full_state_dict: bool = True
    gradient_checkpointing: bool = True
    # Eager attention (Gemma) keeps heads x T x T attention probabilities; sdpa keeps none.
    eager_attention: bool = False

    @property
    def full(self) -> bool:
        return self.lora_rank is None


@dataclass(frozen=True)
class Estimate:
    """Per-GPU bytes of each part at its own peak; the run's peak is the largest of its phases' sums."""

    weights: float
    reference: float
    gradients: float
    optimizer: float
    optimizer_step: float
    activations: float
    logits: float
    eval: float
    buffers: float
    # What the backward pass holds while the LM head's gradient is computed: the layer checkpoints (or, without
    # checkpointing, every layer's saved tensors).
    held_at_head: float
    world_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def phases(self) -> dict[str, float]:
        static = self.weights + self.reference + self.optimizer + self.buffers
        return {
            "optimizer step": static + self.gradients + self.optimizer_step,
            "backward": static + self.gradients + self.activations,
            "LM head backward": static + self.gradients + self.held_at_head + self.logits,
            "eval": static + self.eval,
        }

    @property
    def peak_phase(self) -> str:
        phases = self.phases
        return max(phases, key=phases.__getitem__)

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated would report, in bytes."""
        return self.phases[self.peak_phase]

    @property
    def overhead(self) -> float:
        nccl = NCCL_GIB * GIB if self.world_size > 1 else 0.0
        return CUDA_CONTEXT_GIB * GIB + nccl + FRAGMENTATION * self.allocated

    @property
    def total(self) -> float:
        """What one GPU must have, in bytes."""
        return self.allocated + self.overhead

    def parts(self) -> list[tuple[str, float]]:
        """(name, GiB) of what coincides at the peak; they sum to `allocated`."""
        phase = self.peak_phase
        extra = {
            "optimizer step": [("gradients", self.gradients), ("optimizer step", self.optimizer_step)],
            "backward": [("gradients", self.gradients), ("activations", self.activations)],
            "LM head backward": [
                ("gradients", self.gradients),
                ("activations", self.held_at_head),
                ("logits", self.logits),
            ],
            "eval": [("eval forward", self.eval)],
        }[phase]
        static = [("weights", self.weights), ("reference", self.reference), ("optimizer", self.optimizer)]
        return [(name, b / GIB) for name, b in [*static, *extra, ("buffers", self.buffers)] if b > 0]

    def summary(self) -> str:
        """One line: the total, the parts that coincide at the peak, the phase, the overhead."""
        parts = " + ".join(f"{name} {gib:.1f}" for name, gib in self.parts() if gib >= 0.05)
        nccl = ", NCCL" if self.world_size > 1 else ""
        return (
            f"{self.total / GIB:.1f} GiB per GPU = {parts} (peak: {self.peak_phase}) + overhead {self.overhead / GIB:.1f}"
            f" (CUDA context{nccl}, {FRAGMENTATION:.0%} fragmentation)"
        )


def _weights(arch: Arch, run: RunSettings) -> tuple[float, float, int]:
    """(frozen weight bytes, trainable parameters, bytes per trainable parameter) of the policy, unsharded."""
    w = BYTES[run.weights_dtype]
    if run.quant_bits == 4:
        packed = 0.5 + (1 / 64 + 4 / (64 * 256) if run.double_quant else 4 / 64)  # + absmax per 64-weight block
    else:
        packed = 1.0 if run.quant_bits == 8 else w
    linear = arch.num_hidden_layers * arch.linear_params
    # PEFT's kbit preparation upcasts what bitsandbytes leaves unquantized (embeddings, LM head, norms) to fp32.
    base = linear * packed + (arch.params - linear) * (4 if run.quant_bits else w)
    if run.full:
        return 0.0, arch.params, w
    # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype) on a bf16/fp16 base.
    return base, arch.lora_params(run.lora_rank, run.lora_targets), 4


def _optimizer(name: str, trainable: float, per_param: int) -> tuple[float, float, str | None]:
    """(state bytes, step temporary bytes, note) for an HF `optim` name."""
    if name in EIGHT_BIT:
        return trainable * 2, 0.0, None
    if name == "sgd":
        return 0.0, 0.0, None
    if name.startswith("adafactor"):
        return trainable * per_param * 0.1, 0.0, None  # factored second moments (rows + columns), no momentum
    note = None if name in ADAM_LIKE else f"training.optim={name} is not modelled: counted as AdamW (2 states)."
    # The fused AdamW updates in one kernel; foreach allocates sqrt(exp_avg_sq) for all parameters at once.
    step = 0.0 if name.endswith("_fused") else trainable * per_param
    return trainable * 2 * per_param, step, note


def _layer_bytes_per_token(arch: Arch, run: RunSettings, a: int) -> float:
    """Saved for backward by one decoder layer, per token (bf16 a=2, fp32 a=4)."""
    h, i, q = arch.hidden_size, arch.intermediate_size, arch.q_dim
    norm = 4 * h + a * h  # HF's RMSNorm: the fp32 upcast input and the normalised output
    # q after RoPE, k and v repeated to every head (transformers' sdpa path), the attention output, o_proj's input.
    attention = norm + a * (q + 2 * q + q + q)
    mlp = norm + 4 * a * i  # gate, act(gate), up, act(gate) * up
    # LoRA dropout on each adapted module's input: its output and its mask.
    lora = 0 if run.full else sum(1.5 * a * d_in for d_in, _ in arch.lora_modules(run.lora_targets).values())
    eager = arch.num_attention_heads * run.seq_len * (4 + a) if run.eager_attention else 0  # fp32 softmax + probs
    return attention + mlp + lora + eager


def estimate(arch: Arch, run: RunSettings) -> Estimate:
    """Per-GPU peak memory of one DPO training run with these settings (see the module docstring)."""
    w = BYTES[run.weights_dtype]
    a = w if run.precision == "fp32" else BYTES[run.precision]  # activations: autocast's dtype
    h, i, ranks = arch.hidden_size, arch.intermediate_size, max(1, run.world_size)
    frozen, trainable, per_param = _weights(arch, run)
    shard = run.fsdp and ranks > 1
    reference = arch.params * w if run.full and run.reference_copy else 0.0
    if shard and run.precision != "fp32" and not run.quant_bits:
        per_param = 4  # accelerate upcasts trainable parameters to fp32 masters for FSDP mixed precision
    states, step, note = _optimizer(run.optimizer, trainable, per_param)
    weights, gradients = frozen + trainable * per_param, trainable * per_param
    if shard:
        blocks = 2 * arch.layer_params  # the block being computed and the prefetched one, gathered
        gathered = blocks if run.fsdp_reshard_after_forward else arch.num_hidden_layers * arch.layer_params
        # FSDP2's root and tail units (accelerate: embeddings, final norm and LM head) stay gathered between forward
        # and backward: the LM head, and the input embeddings when they are a separate matrix.
        root = arch.head_params * (1 if arch.tie_word_embeddings else 2)
        weights = weights / ranks + gathered * a + root * a
        reference = reference / ranks + blocks * a if reference else 0.0
        gradients = gradients / ranks + blocks * 4  # + unsharded block gradients before the reduce-scatter
        states, step = states / ranks, step / ranks
    elif ranks > 1:
        gradients *= 2  # DDP's gradient buckets
    tokens = 2 * run.micro_batch * run.seq_len
    per_token = _layer_bytes_per_token(arch, run, a)
    # The backward temporaries of one layer (its MLP's gradients), and with 4/8 bits one dequantised weight.
    working = 2 * a * i * tokens + (max(x * y for x, y in arch.linears().values()) * a if run.quant_bits else 0)
    if run.gradient_checkpointing:
        # Each layer's input, plus one layer recomputed at a time.
        held_at_head = arch.num_hidden_layers * a * h * tokens
        activations = held_at_head + per_token * tokens + working
    else:
        held_at_head = arch.num_hidden_layers * per_token * tokens
        activations = held_at_head + working
    head_weight = 4 if run.quant_bits else per_param if run.full else w
    logits = (
        min(tokens, HEAD_TILE_TOKENS) * HEAD_TILE_VOCAB * a  # the projection tile
        + tokens * h * (4 + a)  # the fp32 gradient of the hidden states, the saved hidden states
        + (arch.head_params * 4 if run.full else 0)  # fp32 accumulator of the head's own gradient
        + (HEAD_TILE_VOCAB * h * a if head_weight != a else 0)  # a slice of the head cast to the compute dtype
    )
    eval_tokens = 2 * run.eval_batch * run.seq_len
    # No grad: the residual stream, its normalised copy and the MLP's widest moment (act, up, product).
    eval_bytes = eval_tokens * a * (2 * h + 3 * i)
    if eval_tokens:
        eval_bytes += min(eval_tokens, HEAD_TILE_TOKENS) * HEAD_TILE_VOCAB * a
    if run.eager_attention:
        eval_bytes += 2 * run.eval_batch * arch.num_attention_heads * run.seq_len**2 * (4 + 2 * a)
    return Estimate(
        weights=weights,
        reference=reference,
        gradients=gradients,
        optimizer=states,
        optimizer_step=step,
        activations=activations,
        logits=logits,
        eval=eval_bytes,
        buffers=BUFFERS_GIB * GIB,
        held_at_head=held_at_head,
        world_size=ranks,
        notes=[note] if note else [],
    )
