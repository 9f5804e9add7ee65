"""One DPO training run with TRL's DPOTrainer: build, evaluate before, train, evaluate after, save.

Imported inside the job only. Writes into the run folder (see `runs/folder.py`): metrics.jsonl as training logs,
checkpoints under checkpoints/, the adapter or model, metrics.json, the model card.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import TrainerCallback

from dpo_sweeps import console
from dpo_sweeps.config import fsdp
from dpo_sweeps.data import load_preference_data
from dpo_sweeps.models.loading import LoadedModels, load_models, resolve_dtype
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import trial as trial_job
from dpo_sweeps.tracking import wandb_run as tracking
from dpo_sweeps.train import checkpoints, cluster, progress
from dpo_sweeps.train.precision import precision_flags

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# The headline metrics every run reports (TRL's names, with the eval_ prefix of HF's Trainer).
HEADLINE_EVAL_KEYS = (
    "eval_loss",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
)


class HistoryCallback(TrainerCallback):
    """Appends every log event (train and eval) to metrics.jsonl, independent of any tracker."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        run_folder.append_history(
            self.run_dir, {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        )


class NonFiniteLossGuard(TrainerCallback):
    """Stops a run whose loss turned NaN/inf instead of training on garbage for hours."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise FloatingPointError(
                f"Training loss became {loss} at step {state.global_step}. Lower training.learning_rate, check the "
                "data for empty completions, or use a more stable precision (training.precision=bf16/fp32)."
            )


class InitialEvalAtStart(TrainerCallback):
    """The evaluation before training, run by HF at the start of `train()` (`eval_on_start`) rather than before it.
    Two reasons: FSDP2 shards the model together with its optimizer inside `train()`, and accelerate refuses to
    prepare the model alone for an earlier `evaluate()`; and an `evaluate()` before `train()` changed what DDP
    trained on (measured: step-1 gradient norm 2.148 with it, 1.735 without, 2 ranks), so training.eval_before_training
    changed the results. Keeps the metrics (initial_eval_*) and writes initial_metrics.json on rank 0."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.metrics: dict[str, Any] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.metrics or state.global_step != 0:
            return
        self.metrics = {
            k.replace("eval_", "initial_eval_", 1): v for k, v in (metrics or {}).items() if k.startswith("eval_")
        }
        if state.is_world_process_zero:
            run_folder.write_json_atomic(self.run_dir / "initial_metrics.json", self.metrics)


class GenerationBeforeTraining(TrainerCallback):
    """The generation eval before training, run at the start of `train()` once accelerate has prepared the model: under
    FSDP the Trainer neither moves the model to the device nor shards it before `train()`, so an earlier `generate`
    would run the whole model on CPU on every rank, and its synced all-reduce of a CPU tensor is refused by NCCL. HF
    calls `on_train_begin` after preparing (and, on a resume, after loading the checkpoint); a resumed run reads the
    answers from gen_before.json, which the first attempt wrote before its first step, so no checkpoint predates it."""

    def __init__(self, trainer, gen_eval, reference):
        self.trainer, self.gen_eval, self.reference = trainer, gen_eval, reference

    def on_train_begin(self, args, state, control, **kwargs):
        # trainer.model is the prepared one (FSDP: sharded in place); TRL prepared its reference at construction.
        ref = getattr(self.trainer, "ref_model", None)
        self.gen_eval.run_before(self.trainer.model, ref if ref is not None else self.reference)


def dpo_config(cfg: DictConfig, run_dir: Path, dtype: torch.dtype, **overrides: Any):
    """TRL's DPOConfig from our config groups: the single place where our keys map onto TRL's."""
    from trl import DPOConfig

    t, loss, d = cfg.training, cfg.loss, cfg.dataset
    loss_types = [loss.type, *loss.extra_types]
    kwargs: dict[str, Any] = {
        "output_dir": str(run_dir / CHECKPOINT_DIR),
        "beta": float(cfg.beta),
        "loss_type": loss_types,
        "loss_weights": list(loss.weights) if loss.weights is not None else None,
        "label_smoothing": loss.label_smoothing,
        "discopop_tau": loss.discopop_tau,
        "ld_alpha": loss.ld_alpha,
        "max_length": d.max_length,
        "truncation_mode": d.truncation_side,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        # transformers 5 takes a float in [0, 1) in warmup_steps as a ratio of the total steps.
        "warmup_steps": float(t.warmup_ratio),
        "weight_decay": t.weight_decay,
        "optim": t.optim,
        "max_grad_norm": t.max_grad_norm,
        "max_steps": t.max_steps,
        "num_train_epochs": t.num_train_epochs,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        # transformers 5 renamed gradient_checkpointing*; the new names avoid its deprecation warning.
        "activation_checkpointing": t.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        "use_liger_kernel": t.use_liger_kernel,
        "logging_steps": t.logging_steps,
        "eval_strategy": "steps" if t.eval_steps else "no",
        "eval_steps": t.eval_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        # Rotation is ours (checkpoints.CheckpointCommit): HF's deletes file by file and can leave a half-deleted
        # checkpoint that looks complete to a resuming job.
        "save_total_limit": None,
        # A dead peer ends the job after this long instead of torch's 30 minutes (see cluster.setup_distributed).
        "ddp_timeout": max(1, round(t.dist_timeout_min * 60)),
        # torch.distributed on CPU (tests, the local SLURM cluster) needs gloo; GPUs get accelerate's default (nccl).
        "ddp_backend": "gloo" if cluster.distributed() and (t.use_cpu or not torch.cuda.is_available()) else None,
        "dataloader_num_workers": t.dataloader_num_workers,
        "use_cpu": t.use_cpu or not torch.cuda.is_available(),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": [],
        "disable_tqdm": True,
        **precision_flags(cfg, dtype),
        # FSDP for full-parameter DPO of large models over several GPUs (training.fsdp); {} when off.
        **fsdp.trainer_args(cfg),
    }
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def parallelism(trainer) -> dict[str, Any]:
    """What actually ran, for metrics.json: accelerate's distributed type (NO, MULTI_CPU/MULTI_GPU = DDP, FSDP), the
    world size and the FSDP version. Set FSDP on a machine where accelerate does not enable it (CPUs) and this says
    DDP: the run warns (see `run_training`) rather than let a user believe the model was sharded."""
    state = trainer.accelerator.state
    out: dict[str, Any] = {"type": str(state.distributed_type.value), "world_size": state.num_processes}
    if trainer.is_fsdp_enabled:
        out["fsdp_version"] = state.fsdp_plugin.fsdp_version
    return out


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint (one with the COMPLETE marker, see checkpoints.py)."""
    return checkpoints.last_complete(run_dir / CHECKPOINT_DIR)


def _eval_metrics(trainer, prefix: str) -> dict[str, float]:
    metrics = trainer.evaluate()
    return {k.replace("eval_", f"{prefix}_", 1): v for k, v in metrics.items() if k.startswith("eval_")}


def save_outputs(cfg: DictConfig, trainer, tokenizer, run_dir: Path) -> dict[str, str]:
    """Save the adapter (LoRA) or model (full), with the tokenizer; optionally the merged model. Returns paths.

    Called on every rank: Trainer.save_model gathers FSDP/DeepSpeed shards collectively and writes on rank 0 only."""
    if not cfg.training.save_model:
        return {}
    kind = "adapter" if cfg.lora.enabled else "model"
    target = run_dir / kind
    trainer.save_model(str(target))  # saves the processing class (tokenizer) alongside
    if not trainer.is_world_process_zero():
        return {}
    saved = {kind: str(target)}
    if cfg.lora.enabled and cfg.training.save_merged:
        quantized = cfg.quantization.mode != "none" or cfg.model.prequantized
        if quantized:
            log.warning("training.save_merged=true with quantized weights: merging into 4/8-bit weights is lossy.")
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(run_dir / "merged")
        tokenizer.save_pretrained(run_dir / "merged")
        saved["merged"] = str(run_dir / "merged")
    return saved


@dataclass
class BuiltTrainer:
    trainer: Any
    models: LoadedModels
    data: Any  # PreferenceData
    ref_info: Any  # ref_cache.RefCacheInfo


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list | tuple = (), models: LoadedModels | None = None
) -> BuiltTrainer:
    """The DPO trainer of a run, with the reference cache wired in when the loss uses one. `models` lets a caller
    load (and adjust) the models itself; by default they are loaded from `cfg`."""
    from dpo_sweeps.train import ref_cache

    trainer_cls, ref_info, ref_args = ref_cache.prepare(cfg)
    if models is None:
        models = load_models(cfg, load_reference=ref_cache.needs_reference_model(cfg))
    data = load_preference_data(cfg, models.tokenizer)
    args = dpo_config(cfg, run_dir, resolve_dtype(cfg.model.dtype, cfg), **ref_args)
    trainer = trainer_cls(
        model=models.policy,
        ref_model=models.reference,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=models.tokenizer,
        callbacks=list(callbacks),
    )
    if models.empty_on_this_rank and not trainer.is_fsdp_enabled:
        raise RuntimeError(
            "This rank built the policy without its weights for rank-0-only loading, but accelerate does not run FSDP "
            f"here ({trainer.accelerator.state.distributed_type}), so nothing would broadcast them. "
            "Fix: training.fsdp.cpu_ram_efficient_loading=false."
        )
    return BuiltTrainer(trainer=trainer, models=models, data=data, ref_info=ref_info)


def run_training(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from transformers import set_seed

    started = time.time()
    torch.set_num_threads(cluster.cpu_threads(cfg.training.cpu_threads))
    set_seed(cfg.seed)
    if cfg.training.use_cpu or not torch.cuda.is_available():
        cluster.init_cpu_process_group(cfg.training.dist_timeout_min)
    built = build_trainer(
        cfg,
        run_dir,
        callbacks=[
            HistoryCallback(run_dir),
            NonFiniteLossGuard(),
            *cluster.training_callbacks(cfg.training.save_total_limit),
            # A search trial with a pruner: report the objective at each evaluation, stop when pruned.
            *trial_job.training_callbacks(),
        ],
    )
    trainer, models, data, ref_info = built.trainer, built.models, built.data, built.ref_info
    # A progress display and progress.json instead of HF's raw dict per logging step (console.py, progress.py).
    progress.install(trainer, run_dir)
    ran = parallelism(trainer)
    if cfg.training.fsdp.enabled and not trainer.is_fsdp_enabled:
        log.warning(
            "training.fsdp.enabled=true, but accelerate runs %s (it enables FSDP only on GPUs): the model is NOT "
            "sharded. metrics.json records what ran (parallelism/type).",
            ran["type"],
        )
    if trainer.is_world_process_zero():
        sizes = {"train": len(data.train), **({"eval": len(data.eval)} if data.eval is not None else {})}
        print("\n".join(console.data_lines(data.stats, sizes)), flush=True)
    # Started once the data passed validation: a run refused for bad rows opens no W&B run.
    tracker = tracking.start(cfg, run_dir)
    trainer.add_callback(tracking.make_callback(tracker))
    resume_from = last_checkpoint(run_dir)
    metrics: dict[str, Any] = {}
    initial_eval: InitialEvalAtStart | None = None
    if resume_from:
        log.info("Resuming from %s", resume_from)
        step = int(resume_from.rsplit("-", 1)[-1])
        if trainer.is_world_process_zero():
            run_folder.truncate_history_after(run_dir, step)
        previous = run_folder.read_json(run_dir / "initial_metrics.json") or {}
        metrics.update(previous)
        metrics["resumed_from_step"] = step
    elif cfg.training.eval_before_training:
        initial_eval = InitialEvalAtStart(run_dir)
        trainer.add_callback(initial_eval)
        trainer.args.eval_on_start = True
    from dpo_sweeps.eval import GenerationEval, n_prompts

    # Rank 0 answers the held-out prompts before training (at its start, on the prepared model; kept in gen_before.json
    # across requeues) and after. A sharded model answers only with every rank taking part: then all ranks run it
    # and rank 0 alone writes.
    sharded = trainer.is_fsdp_enabled and trainer.accelerator.num_processes > 1
    main = trainer.is_world_process_zero()
    gen_eval = (
        GenerationEval(cfg, models.tokenizer, data.eval, run_dir, main=main, synced=sharded)
        if (main or sharded) and n_prompts(cfg) > 0
        else None
    )
    if gen_eval:
        trainer.add_callback(GenerationBeforeTraining(trainer, gen_eval, models.reference))
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    cluster.after_train()  # stopped for a preemption: requeue now (does not return)
    if initial_eval is not None:
        metrics.update(initial_eval.metrics)
    if trial_job.was_pruned():  # stopped by the search's pruner: keep what it has, skip the final evaluations
        metrics.update({**train_result.metrics, "global_step": trainer.state.global_step, **trial_job.pruned_metrics()})
        metrics["outputs"] = save_outputs(cfg, trainer, models.tokenizer, run_dir)
        tracker.finish({**metrics, **trial_job.wandb_summary("pruned")})
        metrics["tracking"] = tracker.info()
        raise trial_job.TrialPruned(metrics)
    metrics.update({k: v for k, v in train_result.metrics.items()})
    metrics["global_step"] = trainer.state.global_step
    metrics.update(_eval_metrics(trainer, "eval"))
    metrics.update({f"data/{k}": v for k, v in data.stats.items()})
    metrics.update(data.cache_metrics())  # "data_cache": hit | computed | off
    metrics.update(ref_info.metrics())
    if gen_eval:
        ref = getattr(trainer, "ref_model", None)
        gen_metrics = gen_eval.run_after(trainer.model, ref if ref is not None else models.reference)
        metrics.update(gen_metrics)
        if main:
            run_folder.append_history(run_dir, {"step": trainer.state.global_step, "time": time.time(), **gen_metrics})
            tracker.log_metrics(gen_metrics, trainer.state.global_step)
            tracker.log_samples(gen_eval.samples)
    metrics["outputs"] = save_outputs(cfg, trainer, models.tokenizer, run_dir)
    if torch.cuda.is_available() and not cfg.training.use_cpu:
        # What a user sizes the next job by: the peak this process's GPU held over the whole run.
        metrics["gpu/peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    metrics.update({f"parallelism/{k}": v for k, v in ran.items()})
    metrics["runtime_s"] = round(time.time() - started, 3)
    if cfg.model.gguf:
        from dpo_sweeps.models.gguf import source_description

        # name_or_path names the hub checkpoint; what was trained is its quantized GGUF copy, dequantized.
        metrics["base_model_source"] = source_description(cfg.model.gguf)
    metrics["cpu_threads"] = torch.get_num_threads()
    # What `hydra.launcher.mem_gb` of a parallel local sweep is sized by: this process's peak resident memory.
    metrics["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    metrics["objective_metric"] = cfg.objective.metric
    metrics["objective_value"] = metrics.get(cfg.objective.metric)
    tracker.finish({**metrics, **trial_job.wandb_summary("complete")})
    metrics["tracking"] = tracker.info()
    return metrics
