"""Dataclass schemas for every config group: the contract behind the plain-YAML interface.

Registered in Hydra's ConfigStore as `dpo_sweeps_schema`, the first entry of the primary config's defaults list, so a misspelled key or a value of the wrong type fails at compose time, before any model is built or job submitted.
Range checks and cross-group rules live in `validation.py`. Imports nothing heavy: this runs on login nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ArchConfig:
    """A model's shape, as its config.json has it: what the pre-launch memory check (dpo_sweeps/slurm/memory.py)
    needs without downloading the model. Copy the keys from the model's config.json."""

    # llama, qwen2, gemma, ...: the family's defaults for what config.json leaves out (tied embeddings, biases).
    model_type: str = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING
    vocab_size: int = MISSING
    # null = hidden_size / num_attention_heads.
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # A pre-quantized checkpoint's bits per linear weight (config.json's quantization_config: load_in_4bit -> 4).
    quant_bits: int | None = None


@dataclass
class ModelConfig:
    # Hub id or local folder. Tiny models are built locally; their folder is found from `tiny_arch`.
    name_or_path: str = MISSING
    # Architecture of a tiny random-initialised model to materialise locally (llama, qwen2, gemma); null for real ones.
    tiny_arch: str | None = None
    # A GGUF file shipped inside an installed Python package, "<package>:<file>": converted once into an HF folder
    # in the dpo_sweeps cache (dpo_sweeps/models/gguf.py) and loaded from there. null = load name_or_path.
    gguf: str | None = None
    revision: str | None = None
    # auto = bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU.
    dtype: str = "auto"
    # null = transformers' choice (sdpa). Gemma needs eager: sdpa gives NaN with padded batches.
    attn_implementation: str | None = None
    # Token to use for padding when the tokenizer has none (Llama). null = the tokenizer's own pad token.
    pad_token: str | None = None
    # The checkpoint is already quantized (bitsandbytes weights on the hub): it must not be quantized again.
    prequantized: bool = False
    # Gemma's chat template has no system role: merge a system message into the first user turn.
    merge_system_into_user: bool = False
    trust_remote_code: bool = False
    # The model's shape for the pre-launch GPU memory check; null = read config.json of a local model folder (a hub
    # model without it is not checked, and the check says so).
    arch: ArchConfig | None = None
    # The decoder layer class FSDP wraps as one unit (LlamaDecoderLayer, Qwen2DecoderLayer, GemmaDecoderLayer);
    # training.fsdp.wrap_class overrides it. null = transformers' default (the model's _no_split_modules).
    fsdp_wrap_class: str | None = None


@dataclass
class DatasetColumns:
    # null = no prompt column: chosen/rejected are whole conversations and their shared leading turns are the prompt.
    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    # Optional system-prompt column (orca_dpo_pairs); null = none.
    system: str | None = None


@dataclass
class DatasetConfig:
    # Adapter that turns the source schema into prompt/chosen/rejected: toy, local, ultrafeedback, hh_rlhf, orca_dpo_pairs.
    name: str = MISSING
    # Hub dataset id; null for toy and local.
    hub_id: str | None = None
    # A local file or folder with the same schema as the hub version (compute nodes often have no internet).
    path: str | None = None
    # standard = strings, conversational = lists of {role, content} messages (used by `local`).
    format: str = "standard"
    # `local` with format=standard: wrap the strings as one user turn (+ system) and one assistant turn, so the
    # model's chat template is applied (what an instruct model expects). false = plain text, as TRL treats strings.
    to_conversational: bool = False
    columns: DatasetColumns = field(default_factory=DatasetColumns)
    train_split: str = "train"
    # null = hold out `eval_fraction` of the training split.
    eval_split: str | None = None
    eval_fraction: float = 0.1
    # At most this many rows held out for eval (null = no cap): 1000 pairs measure reward accuracy to about +-3 points
    # (95%), and a 100k-row set would otherwise evaluate 10k pairs at every eval. Logged and in the model card.
    eval_max_rows: int | None = 1000
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    shuffle_seed: int = 0
    # error = stop with the first offending rows named; drop = drop them, count them in metrics.json.
    on_invalid: str = "error"
    # Tokens after chat templating; longer pairs are truncated (truncation_side) or counted invalid (on_too_long=invalid).
    # A prompt that alone fills max_length is always invalid (TRL 1.16 would drop it silently).
    max_length: int | None = 1024
    # Rows whose templated prompt / longer completion exceeds these are invalid (null = no limit).
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    # keep_start (cut the end) or keep_end (cut the start) when prompt + completion > max_length.
    truncation_side: str = "keep_start"
    # truncate = train on the truncated pair (counted in metrics.json); invalid = treat it as a bad row (on_invalid).
    on_too_long: str = "truncate"
    # How many offending rows an error message lists before summarising.
    max_errors_shown: int = 5
    # Processes that tokenize the data; null = the job's CPUs (SLURM's allocation, else this machine's cores).
    num_proc: int | None = None


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # A list of module names, or "all-linear".
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class QuantizationConfig:
    # none, nf4 (4-bit, bitsandbytes) or int8 (8-bit LLM.int8).
    mode: str = "none"
    double_quant: bool = True
    # auto = the model's compute dtype.
    compute_dtype: str = "auto"


@dataclass
class LossConfig:
    # A TRL DPO loss type (sigmoid, ipo, hinge, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired,
    # apo_zero, apo_down, discopop, sigmoid_norm, sft).
    type: str = "sigmoid"
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    # LD-DPO verbosity weight in [0, 1]; null = plain DPO.
    ld_alpha: float | None = None
    # Weighted sum of several losses (MPO-style): extra types and weights; empty = just `type`.
    extra_types: list[str] = field(default_factory=list)
    weights: list[float] | None = None


@dataclass
class FsdpConfig:
    """FSDP over the ranks of one training (one per GPU): HF TrainingArguments' fsdp / fsdp_config (config/fsdp.py)."""

    # Shard parameters, gradients and optimizer state over the job's ranks (ZeRO-3); false = DDP with several ranks.
    enabled: bool = False
    # 2 = FSDP2 (per-parameter sharding, what the tests run); 1 = the FlatParameter FSDP, deprecated in transformers 5.
    version: int = 2
    # The layer class wrapped as one FSDP unit; null = model.fsdp_wrap_class (each model family's yaml sets it).
    wrap_class: str | None = None
    # FULL_STATE_DICT: checkpoints and the saved model are ordinary HF folders, gathered on rank 0;
    # SHARDED_STATE_DICT: one file per rank (faster for big models; a resume needs the same number of ranks).
    state_dict_type: str = "FULL_STATE_DICT"
    # Recompute each wrapped layer in backward (FSDP's own checkpointing, without the extra all-gather of the
    # Trainer's); null = training.gradient_checkpointing.
    activation_checkpointing: bool | None = None
    # true: free each layer's gathered parameters after its forward (least memory); false: keep them until its
    # backward (one all-gather less per layer, the whole model gathered at the peak).
    reshard_after_forward: bool = True
    # Only rank 0 reads the checkpoint from disk, the others receive it (saves ranks x model size of host memory).
    cpu_ram_efficient_loading: bool = True


@dataclass
class TrainingConfig:
    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    # auto = bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU.
    precision: str = "auto"
    gradient_checkpointing: bool = True
    # Liger kernels (GPU only, needs liger-kernel installed).
    use_liger_kernel: bool = False
    # Disabled in TRL since 0.29 (it falls back to padding): rejected by validation rather than silently ignored.
    padding_free: bool = False
    logging_steps: int = 10
    # Evaluate every N steps (null = only before and after training).
    eval_steps: int | None = None
    eval_before_training: bool = True
    save_steps: int = 200
    save_total_limit: int = 2
    dataloader_num_workers: int = 0
    # Force CPU even where a GPU exists (tests, demo).
    use_cpu: bool = False
    # Also save the adapter merged into the base model (for deployment); LoRA only.
    save_merged: bool = False
    # Save the final adapter/model at all (off for quick sweeps where only metrics matter).
    save_model: bool = True
    # How many of the generation eval's answers go to samples.jsonl (reference vs trained policy); 0 = none.
    sample_completions: int = 4
    # Longest answer the generation eval (and samples.jsonl) lets a model write, in tokens (training=default: 128).
    max_new_tokens: int = 128
    # Torch threads per run; null = auto: the machine's cores divided by the sweep's points running at once (and
    # this node's ranks), at least one (dpo_sweeps/train/cluster.py: cpu_threads).
    cpu_threads: int | None = None
    # Sharding over the job's ranks (full-parameter DPO of big models); off = DDP when a job has several ranks.
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    # Minutes a torch.distributed collective may wait for a peer before the job fails (HF's ddp_timeout). A rank
    # that died leaves the others in a collective: torch's default of 30 minutes is 30 minutes of idle GPUs. Raise it
    # only for a single step or save that takes longer than this on a slow filesystem.
    dist_timeout_min: float = 5.0


@dataclass
class LoggerConfig:
    # wandb or none.
    backend: str = "none"
    # null = WANDB_PROJECT, else "dpo_sweeps".
    project: str | None = None
    entity: str | None = None
    # null = online when an API key is configured, offline otherwise; online, offline or disabled to force.
    mode: str | None = None
    tags: list[str] = field(default_factory=list)
    # Seconds to wait for W&B before falling back to offline.
    init_timeout_s: int = 30
    log_model: bool = False


@dataclass
class ObjectiveTerm:
    metric: str = MISSING
    mode: str = "max"


@dataclass
class ObjectiveConfig:
    # The metrics.json key a sweeper optimises and the report sorts by.
    metric: str = "eval_rewards/accuracies"
    # max or min.
    mode: str = "max"
    # Further objectives of a multi-objective search (hparams_search=dpo_frontier): the search finds the Pareto front
    # of `metric` and these, e.g. [{metric: gen/kl_to_ref, mode: min}].
    extra: list[ObjectiveTerm] = field(default_factory=list)
    # Nats: the most KL to the reference (gen/kl_to_ref) a trial of a search may have (hparams_search=dpo_kl_budget).
    # A trial over it, or over eval.max_fluency_drop, is infeasible: never the search's best. null = no budget.
    kl_budget: float | None = None


@dataclass
class RefCacheConfig:
    # Share reference log-probs across the runs of a sweep (skipped for reference-free losses).
    enabled: bool = True
    # A folder every job of the sweep can read and write (a shared filesystem on a cluster).
    dir: str = "outputs/.ref_cache"
    # Seconds a job waits for another job computing the same entry before computing it itself.
    lock_timeout_s: int = 1800


@dataclass
class DataCacheConfig:
    # Prepare (read, validate, tokenize) the data once per sweep and share it between points and requeues.
    enabled: bool = True
    # A folder every job of the sweep can read and write (a shared filesystem on a cluster).
    dir: str = "outputs/.data_cache"
    # Seconds a job waits for another job preparing the same data before preparing it itself.
    lock_timeout_s: int = 1800


@dataclass
class EvalConfig:
    # Generation eval (dpo_sweeps/eval/): held-out prompts answered before and after training, scored, KL to the
    # reference. Cost: 2 x max(gen_prompts, training.sample_completions) answers of at most training.max_new_tokens
    # tokens. 0 = off: nothing is generated, no gen/ metrics and no samples.jsonl.
    gen_prompts: int = 8
    # 1.0 = sample from the model's own distribution (gen/kl_to_ref is then a KL estimate); 0 = greedy; anything but
    # 1.0 reports gen/logratio_to_ref instead (a log-ratio, not a KL).
    temperature: float = 1.0
    # Nats per token: flag a run (gen/fluency_flag, a warning, the report, the model card) whose answers, scored by the
    # reference model, are this much less likely than the reference's own answers (0.3: each token ~26% less likely).
    max_fluency_drop: float = 0.3
    # Sampling seed: the same run gives the same answers; before and after use the same one.
    seed: int = 0
    # Prompts generated at once (left-padded).
    batch_size: int = 8
    # auto (the dataset's bundled rule, else eval.reward_model if set, else none), rule, reward_model or none.
    scorer: str = "auto"
    # A rule of dpo_sweeps/eval/scorers/rules.py (starts_with, contains, toy_helpful); null = the dataset's own.
    rule: str | None = None
    # The rule's argument, e.g. the text an answer must start with.
    rule_arg: str | None = None
    # Folder or hub id of a one-label AutoModelForSequenceClassification reward model (eval.scorer=reward_model).
    reward_model: str | None = None


@dataclass
class ResumeConfig:
    # Requeues after preemption/time limit before the run is marked failed.
    max_requeues: int = 3
    # Resubmissions of a point that died of memory, each with a plan that fits (slurm/replan.py: GPU out of memory ->
    # micro-batch halved, gradient accumulation doubled, or gradient checkpointing on; killed over its host memory
    # request -> mem_gb doubled, up to a node of the partition). 0 = a point that runs out of memory just fails.
    max_replans: int = 1


@dataclass
class RacingConfig:
    # python -m dpo_sweeps -m beta=0.05,0.1,0.3 seed=1,2,3,4,5 racing.enabled=true   (see docs/search.md, "Seed racing")
    # Run a grid's seeds in waves (every configuration's first seed, then the next) and stop a configuration whose
    # confidence interval on the objective lies entirely on the wrong side of the best one's; needs `seed` swept.
    enabled: bool = False
    # Waves run before the first decision (2: an interval needs two values).
    min_seeds: int = 2
    # Two-sided confidence of the Student-t intervals compared (0.95: the report's CI95).
    confidence: float = 0.95


@dataclass
class DpoSweepsConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    lora: LoraConfig = MISSING
    quantization: QuantizationConfig = MISSING
    loss: LossConfig = MISSING
    training: TrainingConfig = MISSING
    logger: LoggerConfig = MISSING
    beta: float = 0.1
    seed: int = 42
    # Sweep name: the folder under outputs/sweeps and the W&B group. null = derived from the command's overrides.
    name: str | None = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    ref_cache: RefCacheConfig = field(default_factory=RefCacheConfig)
    data_cache: DataCacheConfig = field(default_factory=DataCacheConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    racing: RacingConfig = field(default_factory=RacingConfig)
    # Compose and validate every point, print the job grid, run nothing.
    dry_run: bool = False
    # Run a point again even if its status.json says completed (the old folder is moved aside, never overwritten).
    rerun: bool = False


def register_schemas() -> None:
    """Store the primary schema where `conf/config.yaml`'s defaults list finds it: every group merged over it is typed."""
    ConfigStore.instance().store(name="dpo_sweeps_schema", node=DpoSweepsConfig)
