"""Generation-based evaluation of a run: what the model says on held-out prompts, before and after training.

Before training the policy *is* the reference (LoRA starts as a no-op, full DPO from the base weights, and a resumed
run loads its checkpoint only inside `train()`), so "before" is measured on the policy itself. For the first
`max(eval.gen_prompts, training.sample_completions)` held-out prompts it samples one answer each (fixed seed,
`eval.temperature`, at most `training.max_new_tokens` tokens), scores them (`scorers/`), and records in metrics.json
(`eval.gen_prompts=0` turns all of it off: nothing is generated):

    gen/score_before, gen/score_after   mean score of the reference's and the trained policy's answers
    gen/win_rate_vs_ref                 policy beats reference on the same prompt (ties count half)
    gen/kl_to_ref                       mean over the policy's own answers of log pi(y|x) - log pi_ref(y|x), in nats;
                                        gen/logratio_to_ref outside the KL regime (see below)
    gen/kl_to_ref_before                the same before training: ~0 (a check that the reference is the policy)
    gen/<metric>_se                     standard error of each mean over the prompts
    gen/ref_logprob_per_token_before, gen/ref_logprob_per_token_after   the reference's and the trained answers,
                                        both scored by the reference (nats per token): fluency a rule cannot see;
                                        gen/fluency_flag when the drop exceeds eval.max_fluency_drop (measures.py)
    gen/finished_before, gen/finished_after   share of answers that end with EOS within max_new_tokens
    gen/mean_tokens, gen/mean_tokens_before   answer length in tokens (EOS included)
    gen/seconds                         what the evaluation cost (generation, scoring, log-probs)

The KL regime: temperature 1 (the default) and no logits processor samples from the model's own distribution, which
makes the mean log-ratio an unbiased estimate of the sequence-level KL. Every processor is set off explicitly (a
model's generation_config defaults are not used), and the processed log-probs of the sampled tokens are checked
against the raw ones; greedy decoding (0), another temperature or a processor that still acted make the number a
log-ratio, named `gen/logratio_to_ref`, with `gen/kl_regime_note` saying why.
The reference is the adapter disabled (LoRA) or the loaded reference model (full DPO); full DPO with the reference
cache keeps no reference in memory, and then `gen/kl_to_ref_note` says why the KL (and the fluency measure) is
missing instead of a number.
Generation leaves every random generator (CPU and each CUDA device) as it found it: it forks them all.
The "before" results are kept in gen_before.json, so a requeued run does not lose (or recompute) them.

Sharded models (FSDP): every forward pass all-gathers parameters from every rank, so a model that one rank runs alone
waits forever for the others. With `synced=True` every rank runs the same evaluation (same prompts, same seed, so the
same answers; `generate` runs with `synced_gpus` so no rank stops early) and only the `main` rank writes files.
Imported inside the job only (torch).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dpo_sweeps.eval import measures, samples
from dpo_sweeps.eval.scorers import build_scorer
from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

BEFORE_FILE = "gen_before.json"


@dataclass
class Answers:
    """One answer per prompt, as generated (token ids up to and including the first EOS) and as text."""

    texts: list[str]
    completion_ids: list[list[int]]
    finished: list[bool]
    # log pi(y|x) of each answer under the model that wrote it, from the logits it sampled with.
    logprobs: list[float] = field(default_factory=list)
    scores: list[float] | None = None
    # log pi(y|x) - log pi_ref(y|x) per answer; None when no reference was available.
    log_ratios: list[float] | None = None
    # log pi_ref(y|x) per answer (the reference scoring these answers); None when no reference was available.
    ref_logprobs: list[float] | None = None
    # Whether the tokens were drawn from the model's raw distribution (sampling at temperature 1, no logits
    # processor acted): the condition for the mean log-ratio to be a KL estimate.
    sampled_from_model: bool = False
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


def n_prompts(cfg: DictConfig) -> int:
    """Prompts the generation eval answers: 0 when it is off (eval.gen_prompts=0), else enough for samples.jsonl too."""
    if cfg.eval.gen_prompts == 0:
        return 0
    return max(cfg.eval.gen_prompts, cfg.training.sample_completions)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def _eval_mode(model):
    """No dropout while generating or scoring; the training mode and every random generator (CPU and each CUDA
    device) come back afterwards, so a seed sweep's training streams stay its own on a GPU too."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=_cuda_devices(), device_type="cuda"), torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _seed_forked(seed: int) -> None:
    """Seed the generators `_eval_mode` forked (CPU and every CUDA device) and nothing else (not MPS/XPU, which it
    does not restore). Call inside `_eval_mode` only."""
    torch.random.default_generator.manual_seed(seed)
    if _cuda_devices():
        torch.cuda.manual_seed_all(seed)


# Every logits processor generate() knows, off. Passed explicitly: a model's generation_config may set any of them.
PROCESSORS_OFF: dict[str, Any] = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "sequence_bias": None,
    "guidance_scale": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "num_beams": 1,
}


@contextlib.contextmanager
def _without_model_generation_defaults(model):
    """generate() fills every setting passed as None from the model's generation_config (a hub model may ship top_k,
    top_p, a repetition penalty, ...). Swap in one that holds only the special token ids while we generate."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT copies it from the base
    saved = getattr(inner, "generation_config", None)
    if saved is None:
        yield
        return
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    inner.generation_config = GenerationConfig(
        **{k: getattr(saved, k) for k in ids if getattr(saved, k, None) is not None}
    )
    try:
        yield
    finally:
        inner.generation_config = saved


@torch.no_grad()
def generate(cfg: DictConfig, model, tokenizer, prompts: list[Any], synced: bool = False) -> Answers:
    """Sample (or greedily decode) one answer per prompt, in left-padded batches of `eval.batch_size`. `synced`: every
    rank of a sharded model calls this together (see the module docstring)."""
    e = cfg.eval
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    prompt_ids = [samples.prompt_ids(cfg, tokenizer, p)[0].tolist() for p in prompts]
    texts, completion_ids, finished, logprobs = [], [], [], []
    # Largest gap between the processed (what was sampled from) and raw log-prob of a sampled token.
    processed_gap = 0.0
    with _eval_mode(model), _without_model_generation_defaults(model):
        _seed_forked(e.seed)
        for start in range(0, len(prompt_ids), e.batch_size):
            batch = prompt_ids[start : start + e.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=cfg.training.max_new_tokens,
                # Explicit: a model's generation_config may ask for top-k/top-p/..., which would bias the KL estimate.
                **PROCESSORS_OFF,
                do_sample=e.temperature > 0,
                temperature=e.temperature if e.temperature > 0 else 1.0,
                pad_token_id=pad,
                # transformers detects only its own FSDP wrapping, not accelerate's: say it, or a rank whose answers
                # all ended would stop joining the others' all-gathers.
                synced_gpus=synced,
                # The raw logits of every step give log pi(y|x) of the answer for free (no second forward pass); the
                # processed scores are what the tokens were drawn from: equal in the KL regime.
                output_logits=True,
                output_scores=True,
                return_dict_in_generate=True,
            )
            generated = out.sequences[:, width:]
            step_logprobs, processed = (
                torch.stack(
                    [torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, i : i + 1])[:, 0]
                     for i, step in enumerate(steps)],
                    dim=1,
                )
                for steps in (out.logits, out.scores)
            )  # fmt: skip
            for row, row_logprobs, row_processed in zip(
                generated.tolist(), step_logprobs.tolist(), processed.tolist(), strict=True
            ):
                # With pad == eos (SmolLM2) everything after the first EOS is padding: cut there.
                end = next((i for i, t in enumerate(row) if t in eos), None)
                finished.append(end is not None)
                ids = row if end is None else row[: end + 1]
                gaps = [abs(a - b) for a, b in zip(row_logprobs[: len(ids)], row_processed[: len(ids)], strict=True)]
                processed_gap = max([processed_gap, *gaps])
                completion_ids.append(ids)
                logprobs.append(sum(row_logprobs[: len(ids)]))
                texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    sampled_from_model = e.temperature == 1.0 and processed_gap < 1e-4
    return Answers(texts, completion_ids, finished, logprobs, sampled_from_model=sampled_from_model)


def _sequence_logprob(model, prompt: list[int], completion: list[int]) -> float:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + completion], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    target = torch.tensor(completion, device=device)
    return float(torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum())


@contextlib.contextmanager
def reference_of(policy, reference):
    """The reference model: the loaded one (full DPO), the policy with its adapter disabled (LoRA), else None."""
    if reference is not None:
        yield reference
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            yield policy
    else:
        yield None


def reference_logprobs(
    cfg: DictConfig, policy, reference, tokenizer, prompts: list[Any], answers: Answers
) -> list[float]:
    """log pi_ref(y|x) of each answer (tokens up to and including EOS), one pass each; [] without a reference."""
    prompt_ids = [samples.prompt_ids(cfg, tokenizer, p)[0].tolist() for p in prompts]
    pairs = [(p, c) for p, c in zip(prompt_ids, answers.completion_ids, strict=True)]
    with _eval_mode(policy), reference_of(policy, reference) as ref:
        if ref is None:
            return []
        with _eval_mode(ref):
            return [_sequence_logprob(ref, p, c) if c else 0.0 for p, c in pairs]


class GenerationEval:
    """Held-out prompts, the scorer, and the "before" answers of one run (see the module docstring)."""

    def __init__(
        self, cfg: DictConfig, tokenizer, eval_dataset, run_dir: Path, main: bool = True, synced: bool = False
    ):
        self.cfg, self.tokenizer, self.run_dir = cfg, tokenizer, Path(run_dir)
        # `main` writes gen_before.json and samples.jsonl; `synced`: all ranks of a sharded model run this together.
        self.main, self.synced = main, synced
        self.rows = eval_dataset.select(range(min(n_prompts(cfg), len(eval_dataset))))
        self.prompts = [row["prompt"] for row in self.rows]
        self.scorer, self.scorer_reason = build_scorer(cfg) if len(self.rows) else (None, "no prompts")
        self.before: Answers | None = None
        self.samples: list[dict[str, Any]] = []

    def _measure(self, model, reference, tokenizer) -> Answers:
        started = time.time()
        answers = generate(self.cfg, model, tokenizer, self.prompts, synced=self.synced)
        if self.scorer is not None:
            answers.scores = self.scorer.score(self.prompts, answers.texts)
        ref_lp = reference_logprobs(self.cfg, model, reference, tokenizer, self.prompts, answers)
        if ref_lp:
            # log pi(y|x) comes from generation (`Answers.logprobs`).
            answers.ref_logprobs = ref_lp
            answers.log_ratios = [a - b for a, b in zip(answers.logprobs, ref_lp, strict=True)]
        answers.seconds = round(time.time() - started, 3)
        log.info(
            "Generation eval: %d answers of <= %d tokens in %.1f s (scorer: %s)",
            len(answers.texts),
            self.cfg.training.max_new_tokens,
            answers.seconds,
            self.scorer.name if self.scorer else "none",
        )
        return answers

    def run_before(self, policy, reference=None) -> dict[str, Any]:
        """Measure the untrained policy (= the reference), or reload what a previous attempt of this run measured."""
        saved = run_folder.read_json(self.run_dir / BEFORE_FILE)
        if self.synced:  # every rank must take the same branch (measuring is collective): the main rank decides
            saved = _from_rank_zero(saved)
        if saved and len(saved.get("texts", [])) == len(self.prompts):
            self.before = Answers(**saved)
            log.info("Generation eval before training: kept from %s (a resumed run)", BEFORE_FILE)
        else:
            self.before = self._measure(policy, reference, self.tokenizer)
            self.before.metrics = measures.summary(self.before, "before")
            if self.main:
                run_folder.write_json_atomic(self.run_dir / BEFORE_FILE, asdict(self.before))
        return self.before.metrics

    def run_after(self, policy, reference=None) -> dict[str, Any]:
        """Measure the trained policy against the "before" answers; write samples.jsonl; return the gen/ metrics."""
        assert self.before is not None, "run_before() first"
        after = self._measure(policy, reference, self.tokenizer)
        kl_regime = self.before.sampled_from_model and after.sampled_from_model
        # The ratio's name depends on the regime of both sets of answers: decided here, not kept from run_before.
        kept = {
            k: v for k, v in self.before.metrics.items() if not k.startswith((measures.KL_KEY, measures.LOGRATIO_KEY))
        }
        metrics = {**kept, **measures.summary(after, "after"), **measures.log_ratio(self.before, after, kl_regime)}
        metrics["gen/kl_regime"] = kl_regime
        note = measures.regime_note(self.cfg.eval.temperature, kl_regime)
        if note:
            metrics["gen/kl_regime_note"] = note
        if after.scores is not None and self.before.scores is not None:
            metrics.update(measures.win_rate(self.before.scores, after.scores))
            metrics["gen/scorer"] = self.scorer.name
        else:
            metrics["gen/score_note"] = f"answers not scored: {self.scorer_reason}"
        if after.log_ratios is None:
            metrics["gen/kl_to_ref_note"] = (
                "no reference model in memory (full DPO with the reference cache): KL and the fluency measure "
                "(gen/ref_logprob_per_token_*) not computed. Set ref_cache.enabled=false to keep the reference "
                "loaded, or use LoRA."
            )
            metrics["gen/fluency_note"] = "no reference model in memory: fluency under the reference not measured"
        fluency, warning = measures.fluency(metrics, self.cfg.eval.max_fluency_drop)
        metrics.update(fluency)
        if warning:
            log.warning(warning)
        metrics.update(
            {
                "gen/prompts": len(self.prompts),
                "gen/max_new_tokens": self.cfg.training.max_new_tokens,
                "gen/temperature": self.cfg.eval.temperature,
                "gen/seconds": round(self.before.seconds + after.seconds, 3),
            }
        )
        self.samples = samples.sample_rows(self.cfg, self.rows, self.before, after)
        if self.main:
            samples.write(self.run_dir, self.samples)
        return metrics


def _from_rank_zero(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (torch.distributed is initialised whenever `synced` is set)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
