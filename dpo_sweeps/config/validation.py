"""Range checks and cross-group rules, all in one place, all reported at once.

The dataclass schemas (`schema.py`) reject unknown keys and wrong types while Hydra composes, except keys added
with `+` (checked here, `_check_unknown_keys`). This module checks what a type cannot say: ranges, allowed values, and
rules that span groups (quantization needs LoRA, a pre-quantized model takes no extra quantization, ...). Every message names the key, the value and the fix.
Never "fixes" a user's setting silently. Imports nothing heavy: it runs before any job is submitted.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.config import fsdp
from dpo_sweeps.config.typos import known_keys, unknown_key_message

TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
DATASET_ADAPTERS = ("toy", "opener", "greeting", "signoff", "local", "ultrafeedback", "hh_rlhf", "orca_dpo_pairs")
DTYPES = ("auto", "bfloat16", "float16", "float32")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANT_MODES = ("none", "nf4", "int8")
LOGGER_BACKENDS = ("wandb", "none")
WANDB_MODES = (None, "online", "offline", "disabled")


class ConfigError(ValueError):
    """One or more config problems; the message lists all of them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} config problem(s):\n{lines}")


def _one_of(problems: list[str], key: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        problems.append(f"{key}={value}: must be one of {shown}.")


def _check_model(cfg: DictConfig, problems: list[str]) -> None:
    m = cfg.model
    _one_of(problems, "model.dtype", m.dtype, DTYPES)
    if m.tiny_arch is not None:
        _one_of(problems, "model.tiny_arch", m.tiny_arch, ("llama", "qwen2", "gemma"))
    if m.gguf is not None:
        from dpo_sweeps.models.gguf import missing_packages

        try:
            missing = missing_packages(m.gguf)
        except ValueError as e:
            missing = str(e)
        if missing:
            problems.append(missing)
    if m.prequantized and cfg.quantization.mode != "none":
        problems.append(
            f"quantization={cfg.quantization.mode} with model.prequantized=true ({m.name_or_path}): the checkpoint is "
            "already quantized and cannot be quantized again. Fix: quantization=none."
        )
    if m.prequantized and not cfg.lora.enabled:
        problems.append(
            f"lora=none with a pre-quantized model ({m.name_or_path}): quantized weights cannot be trained directly. "
            "Fix: lora=r16 (or another LoRA option)."
        )


def _check_lora(cfg: DictConfig, problems: list[str]) -> None:
    lora = cfg.lora
    if not lora.enabled:
        return
    if lora.r < 1:
        problems.append(f"lora.r={lora.r}: the LoRA rank must be >= 1. Fix: lora.r=16, or lora=none for full DPO.")
    if lora.alpha <= 0:
        problems.append(f"lora.alpha={lora.alpha}: must be > 0 (2 x lora.r is usual).")
    if not 0 <= lora.dropout < 1:
        problems.append(f"lora.dropout={lora.dropout}: must be in [0, 1).")
    targets = lora.target_modules
    if isinstance(targets, str):
        if targets != "all-linear":
            problems.append(
                f"lora.target_modules={targets}: give a list of module names ([q_proj,v_proj]) or 'all-linear'."
            )
    elif not targets:
        problems.append("lora.target_modules=[]: LoRA needs at least one target module, or use lora=none.")
    _one_of(problems, "lora.bias", lora.bias, ("none", "all", "lora_only"))


def _check_quantization(cfg: DictConfig, problems: list[str]) -> None:
    q = cfg.quantization
    _one_of(problems, "quantization.mode", q.mode, QUANT_MODES)
    if q.mode != "none" and not cfg.lora.enabled:
        problems.append(
            f"quantization={q.mode} with lora=none: quantized base weights cannot be trained; quantization needs LoRA. "
            "Fix: lora=r16, or quantization=none for full-parameter DPO."
        )
    _one_of(problems, "quantization.compute_dtype", q.compute_dtype, DTYPES)


def _check_loss(cfg: DictConfig, problems: list[str]) -> None:
    loss = cfg.loss
    if cfg.beta <= 0:
        problems.append(f"beta={cfg.beta}: DPO's beta must be > 0 (0.01-0.5 is usual). Fix: beta=0.1.")
    for key, value in [("loss.type", loss.type), *[("loss.extra_types", t) for t in loss.extra_types]]:
        _one_of(problems, key, value, TRL_LOSS_TYPES)
    if loss.weights is not None and len(loss.weights) != 1 + len(loss.extra_types):
        problems.append(
            f"loss.weights={list(loss.weights)}: needs one weight per loss ({1 + len(loss.extra_types)}: loss.type "
            "plus loss.extra_types)."
        )
    if loss.type == "robust" and not 0 <= loss.label_smoothing < 0.5:
        problems.append(f"loss.label_smoothing={loss.label_smoothing}: robust DPO needs a flip rate in [0, 0.5).")
    elif not 0 <= loss.label_smoothing <= 0.5:
        problems.append(f"loss.label_smoothing={loss.label_smoothing}: must be in [0, 0.5].")
    if loss.type == "exo_pair" and loss.label_smoothing <= 0:
        problems.append(
            "loss.label_smoothing=0 with loss=exo_pair: EXO needs epsilon > 0. Fix: loss.label_smoothing=1e-3."
        )
    if loss.ld_alpha is not None and not 0 <= loss.ld_alpha <= 1:
        problems.append(f"loss.ld_alpha={loss.ld_alpha}: must be in [0, 1] (or null for plain DPO).")


def _check_training(cfg: DictConfig, problems: list[str]) -> None:
    t = cfg.training
    if t.learning_rate <= 0:
        problems.append(f"training.learning_rate={t.learning_rate}: must be > 0.")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if t[key] < 1:
            problems.append(f"training.{key}={t[key]}: must be >= 1.")
    if t.max_steps == 0 or (t.max_steps < 0 and t.num_train_epochs <= 0):
        problems.append(
            f"training.max_steps={t.max_steps}, training.num_train_epochs={t.num_train_epochs}: nothing to train. "
            "Set training.max_steps > 0, or max_steps=-1 with num_train_epochs > 0."
        )
    if t.cpu_threads is not None and t.cpu_threads < 1:
        problems.append(
            f"training.cpu_threads={t.cpu_threads}: must be >= 1, or null for the cores shared between the points "
            "running at once. Fix: training.cpu_threads=null."
        )
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"training.warmup_ratio={t.warmup_ratio}: a fraction of the total steps, in [0, 1).")
    _one_of(problems, "training.precision", t.precision, PRECISIONS)
    if t.use_cpu and t.precision in ("fp16",):
        problems.append("training.precision=fp16 with training.use_cpu=true: CPUs train in fp32 or bf16.")
    if t.padding_free:
        problems.append(
            "training.padding_free=true: TRL disabled padding-free DPO batching in 0.29 (it silently falls back to "
            "padding). Fix: training.padding_free=false."
        )
    if t.use_liger_kernel and t.use_cpu:
        problems.append("training.use_liger_kernel=true with training.use_cpu=true: Liger kernels need a GPU.")
    if t.use_liger_kernel and cfg.ref_cache.enabled and reference_needed(cfg):
        problems.append(
            "training.use_liger_kernel=true with ref_cache.enabled=true: Liger kernels cannot be combined with "
            "precomputed reference log-probs. Fix: ref_cache.enabled=false, or training.use_liger_kernel=false."
        )
    if t.save_merged and not cfg.lora.enabled:
        problems.append(
            "training.save_merged=true with lora=none: there is no adapter to merge; the full model is saved."
        )
    if t.logging_steps < 1:
        problems.append(f"training.logging_steps={t.logging_steps}: must be >= 1.")
    if t.eval_steps is not None and t.eval_steps < 1:
        problems.append(f"training.eval_steps={t.eval_steps}: must be >= 1, or null (eval only at the end).")
    if t.save_steps < 1:
        problems.append(f"training.save_steps={t.save_steps}: must be >= 1.")
    if t.sample_completions < 0:
        problems.append(f"training.sample_completions={t.sample_completions}: must be >= 0 (0 = off).")


def _check_dataset(cfg: DictConfig, problems: list[str]) -> None:
    d = cfg.dataset
    _one_of(problems, "dataset.name", d.name, DATASET_ADAPTERS)
    _one_of(problems, "dataset.format", d.format, ("standard", "conversational"))
    _one_of(problems, "dataset.on_invalid", d.on_invalid, ("error", "drop"))
    _one_of(problems, "dataset.truncation_side", d.truncation_side, ("keep_start", "keep_end"))
    _one_of(problems, "dataset.on_too_long", d.on_too_long, ("truncate", "invalid"))
    if (
        d.name == "toy"
        and not d.path
        and dict(d.columns) != {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": None}
    ):
        problems.append(
            "dataset.columns.* with dataset=toy: the bundled toy set has fixed columns, so the mapping would be ignored. "
            "Fix: dataset=local dataset.path=<your file> for your own columns."
        )
    if d.name == "local" and not d.path:
        problems.append("dataset=local needs a file: dataset.path=<file.jsonl|.json|.parquet|.csv or a folder>.")
    if d.name == "local" and d.format == "standard" and d.columns.prompt is None:
        problems.append(
            "dataset.columns.prompt=null with dataset.format=standard: strings need a prompt column. Name it, or use "
            "dataset.format=conversational (whole conversations in chosen/rejected, the shared turns are the prompt)."
        )
    if d.eval_split is None and not 0 < d.eval_fraction < 1:
        problems.append(
            f"dataset.eval_fraction={d.eval_fraction}: with no dataset.eval_split, a fraction in (0, 1) of the "
            "training split is held out for evaluation."
        )
    for key in (
        "max_train_samples",
        "max_eval_samples",
        "max_length",
        "max_prompt_length",
        "max_completion_length",
        "eval_max_rows",
        "num_proc",
    ):
        if d[key] is not None and d[key] < 1:
            problems.append(f"dataset.{key}={d[key]}: must be >= 1, or null for no limit.")
    if d.max_length is not None and d.max_prompt_length is not None and d.max_prompt_length >= d.max_length:
        problems.append(
            f"dataset.max_prompt_length={d.max_prompt_length} >= dataset.max_length={d.max_length}: no room is left "
            "for the completions."
        )


def _check_logger(cfg: DictConfig, problems: list[str]) -> None:
    _one_of(problems, "logger.backend", cfg.logger.backend, LOGGER_BACKENDS)
    _one_of(problems, "logger.mode", cfg.logger.mode, WANDB_MODES)
    if cfg.logger.init_timeout_s < 1:
        problems.append(f"logger.init_timeout_s={cfg.logger.init_timeout_s}: must be >= 1.")


def _check_objective(cfg: DictConfig, problems: list[str]) -> None:
    _one_of(problems, "objective.mode", cfg.objective.mode, ("max", "min"))
    budget = cfg.objective.get("kl_budget")
    if budget is not None and not budget > 0:
        problems.append(
            f"objective.kl_budget={budget}: the most KL to the reference (nats, gen/kl_to_ref) a trial may have, a "
            "number > 0 (e.g. objective.kl_budget=15), or null for no budget."
        )
    if cfg.resume.max_requeues < 0:
        problems.append(f"resume.max_requeues={cfg.resume.max_requeues}: must be >= 0.")
    if cfg.resume.max_replans < 0:
        problems.append(f"resume.max_replans={cfg.resume.max_replans}: must be >= 0 (0 = no re-plan after an OOM).")


def _check_distributed(cfg: DictConfig, problems: list[str]) -> None:
    t = cfg.training
    if t.dist_timeout_min <= 0:
        problems.append(
            f"training.dist_timeout_min={t.dist_timeout_min}: must be > 0 (minutes a collective waits for a peer)."
        )
    fsdp.check(cfg, problems)


def _check_ref_cache(cfg: DictConfig, problems: list[str]) -> None:
    rc = cfg.ref_cache
    if rc.enabled and not str(rc.dir).strip():
        problems.append(
            "ref_cache.dir is empty: give a folder all jobs of the sweep can write, or ref_cache.enabled=false."
        )
    if rc.lock_timeout_s < 0:
        problems.append(
            f"ref_cache.lock_timeout_s={rc.lock_timeout_s}: seconds to wait for another job computing the same "
            "reference log-probs; must be >= 0 (0 = never wait)."
        )


def _unknown_keys(node: DictConfig, prefix: str, problems: list[str]) -> None:
    known = known_keys(node)
    if known is None:
        return  # a free-form dict: any key is the user's
    for key in node:
        key = str(key)
        if prefix == "" and key == "hydra":
            continue  # the sweep-level config carries Hydra's own node next to ours
        full = f"{prefix}{key}"
        if key not in known:
            value = OmegaConf.to_container(node, resolve=False).get(key)
            problems.append(unknown_key_message(full, value, known, added=True))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _unknown_keys(child, f"{full}.", problems)


def _check_unknown_keys(cfg: DictConfig, problems: list[str]) -> None:
    """Hydra applies `+group.key=value` inside open_dict, so a typo added with `+` slips past the dataclass schema
    (which refuses the same key without `+`). Every key is checked against its group's schema here."""
    _unknown_keys(cfg, "", problems)


def _check_data_cache(cfg: DictConfig, problems: list[str]) -> None:
    dc = cfg.data_cache
    if dc.enabled and not str(dc.dir).strip():
        problems.append(
            "data_cache.dir is empty: give a folder all jobs of the sweep can write, or data_cache.enabled=false."
        )
    if dc.lock_timeout_s < 0:
        problems.append(
            f"data_cache.lock_timeout_s={dc.lock_timeout_s}: seconds to wait for another job preparing the same "
            "data; must be >= 0 (0 = never wait)."
        )


def _check_eval(cfg: DictConfig, problems: list[str]) -> None:
    from dpo_sweeps.eval.scorers import SCORER_CHOICES
    from dpo_sweeps.eval.scorers.rules import RULES, RULES_WITH_ARG, dataset_rules

    e = cfg.eval
    _one_of(problems, "eval.scorer", e.scorer, SCORER_CHOICES)
    for key in ("gen_prompts", "seed"):
        if e[key] < 0:
            problems.append(f"eval.{key}={e[key]}: must be >= 0.")
    if e.batch_size < 1:
        problems.append(f"eval.batch_size={e.batch_size}: must be >= 1.")
    if e.temperature < 0:
        problems.append(f"eval.temperature={e.temperature}: must be >= 0 (0 = greedy, 1 = the model's distribution).")
    if e.max_fluency_drop < 0:
        problems.append(
            f"eval.max_fluency_drop={e.max_fluency_drop}: nats per token the trained answers may lose under the "
            "reference before the run is flagged; must be >= 0 (default 0.3)."
        )
    if cfg.training.max_new_tokens < 1:
        problems.append(f"training.max_new_tokens={cfg.training.max_new_tokens}: must be >= 1.")
    if e.rule is not None:
        _one_of(problems, "eval.rule", e.rule, tuple(RULES))
        if e.rule in RULES_WITH_ARG and not e.rule_arg:
            problems.append(f"eval.rule={e.rule} needs eval.rule_arg=<text> (what the answers are checked for).")
    if e.scorer == "reward_model" and not e.reward_model:
        problems.append(
            "eval.scorer=reward_model needs eval.reward_model=<folder or hub id of a one-label reward model>."
        )
    if e.scorer == "rule" and e.rule is None and (cfg.dataset.path or cfg.dataset.name not in dataset_rules()):
        problems.append(
            f"eval.scorer=rule with dataset={cfg.dataset.name}: it has no bundled rule. Set eval.rule=<"
            + ", ".join(RULES)
            + "> (and eval.rule_arg), or eval.scorer=reward_model."
        )


def reference_needed(cfg: DictConfig) -> bool:
    """Whether the loss reads reference log-probs at all. Every TRL 1.16 DPO loss does, except plain `sft`."""
    types = {cfg.loss.type, *cfg.loss.extra_types}
    return types != {"sft"}


CHECKS: tuple[Callable[[DictConfig, list[str]], None], ...] = (
    _check_unknown_keys,
    _check_model,
    _check_lora,
    _check_quantization,
    _check_loss,
    _check_training,
    _check_dataset,
    _check_logger,
    _check_objective,
    _check_distributed,
    _check_ref_cache,
    _check_data_cache,
    _check_eval,
)


def find_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    for check in CHECKS:
        check(cfg, problems)
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem in `cfg` (all at once), or return silently."""
    problems = find_problems(cfg)
    if problems:
        raise ConfigError(problems)
