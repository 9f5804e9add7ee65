"""Generation-based evaluation of a run: what the model says on held-out prompts, before and after training.

Before training the policy *is* the reference (LoRA starts as a no-op, full DPO from the base weights, and a resumed
run loads its checkpoint only inside `train()`), so "before" is measured on the policy itself. For the first
`max(eval.gen_prompts, training.sample_completions)` held-out prompts it samples one answer each (fixed seed,
`eval.temperature`, at most `training.max_new_tokens` tokens), scores them (`scorers/`), and records in metrics.json:

    gen/score_before, gen/score_after   mean score of the reference's and the trained policy's answers
    gen/win_rate_vs_ref                 policy beats reference on the same prompt (ties count half)
    gen/kl_to_ref                       mean over the policy's own answers of log pi(y|x) - log pi_ref(y|x), in nats
    gen/kl_to_ref_before                the same before training: ~0 (a check that the reference is the policy)
    gen/finished_before, gen/finished_after   share of answers that end with EOS within max_new_tokens
    gen/mean_tokens, gen/mean_tokens_before   answer length in tokens (EOS included)
    gen/seconds                         what the evaluation cost (generation, scoring, log-probs)

Temperature 1 (the default) samples from the model's own distribution, which makes gen/kl_to_ref an unbiased
estimate of the sequence-level KL; 0 is greedy (reproducible text, but then the number is a log-ratio, not a KL).
The reference is the adapter disabled (LoRA) or the loaded reference model (full DPO); full DPO with the reference
cache keeps no reference in memory, and then `gen/kl_to_ref_note` says why the KL is missing instead of a number.
The "before" results are kept in gen_before.json, so a requeued run does not lose (or recompute) them.
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

from dpo_sweeps.eval import samples
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
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


def n_prompts(cfg: DictConfig) -> int:
    return max(cfg.eval.gen_prompts, cfg.training.sample_completions)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


@contextlib.contextmanager
def _eval_mode(model):
    """No dropout while generating or scoring; the training mode (and the global RNG) come back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(cfg: DictConfig, model, tokenizer, prompts: list[Any]) -> Answers:
    """Sample (or greedily decode) one answer per prompt, in left-padded batches of `eval.batch_size`."""
    e = cfg.eval
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    prompt_ids = [samples.prompt_ids(cfg, tokenizer, p)[0].tolist() for p in prompts]
    texts, completion_ids, finished, logprobs = [], [], [], []
    with _eval_mode(model):
        torch.manual_seed(e.seed)
        for start in range(0, len(prompt_ids), e.batch_size):
            batch = prompt_ids[start : start + e.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            sampling = {"do_sample": True, "temperature": e.temperature, "top_k": 0, "top_p": 1.0}
            greedy = {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=cfg.training.max_new_tokens,
                # Explicit: a model's generation_config may ask for top-k/top-p, which would bias the KL estimate.
                **(sampling if e.temperature > 0 else greedy),
                num_beams=1,
                pad_token_id=pad,
                # The raw logits of every step give log pi(y|x) of the answer for free (no second forward pass):
                # with temperature 1 and no top-k/top-p they are the distribution the tokens were drawn from.
                output_logits=True,
                return_dict_in_generate=True,
            )
            generated = out.sequences[:, width:]
            step_logprobs = torch.stack(
                [torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, i : i + 1])[:, 0]
                 for i, step in enumerate(out.logits)],
                dim=1,
            )  # fmt: skip
            for row, row_logprobs in zip(generated.tolist(), step_logprobs.tolist(), strict=True):
                # With pad == eos (SmolLM2) everything after the first EOS is padding: cut there.
                end = next((i for i, t in enumerate(row) if t in eos), None)
                finished.append(end is not None)
                ids = row if end is None else row[: end + 1]
                completion_ids.append(ids)
                logprobs.append(sum(row_logprobs[: len(ids)]))
                texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return Answers(texts=texts, completion_ids=completion_ids, finished=finished, logprobs=logprobs)


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


def log_ratios(cfg: DictConfig, policy, reference, tokenizer, prompts: list[Any], answers: Answers) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) for each answer (tokens up to and including EOS); [] without a reference.
    log pi(y|x) comes from generation (`Answers.logprobs`); the reference scores the answers in one pass each."""
    prompt_ids = [samples.prompt_ids(cfg, tokenizer, p)[0].tolist() for p in prompts]
    pairs = [(p, c) for p, c in zip(prompt_ids, answers.completion_ids, strict=True)]
    with _eval_mode(policy), reference_of(policy, reference) as ref:
        if ref is None:
            return []
        with _eval_mode(ref):
            ref_lp = [_sequence_logprob(ref, p, c) if c else 0.0 for p, c in pairs]
    return [a - b for a, b in zip(answers.logprobs, ref_lp, strict=True)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class GenerationEval:
    """Held-out prompts, the scorer, and the "before" answers of one run (see the module docstring)."""

    def __init__(self, cfg: DictConfig, tokenizer, eval_dataset, run_dir: Path):
        self.cfg, self.tokenizer, self.run_dir = cfg, tokenizer, Path(run_dir)
        self.rows = eval_dataset.select(range(min(n_prompts(cfg), len(eval_dataset))))
        self.prompts = [row["prompt"] for row in self.rows]
        self.scorer, self.scorer_reason = build_scorer(cfg) if len(self.rows) else (None, "no prompts")
        self.before: Answers | None = None
        self.samples: list[dict[str, Any]] = []

    def _measure(self, model, reference, tokenizer) -> Answers:
        started = time.time()
        answers = generate(self.cfg, model, tokenizer, self.prompts)
        if self.scorer is not None:
            answers.scores = self.scorer.score(self.prompts, answers.texts)
        ratios = log_ratios(self.cfg, model, reference, tokenizer, self.prompts, answers)
        answers.log_ratios = ratios or None
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
        if saved and len(saved.get("texts", [])) == len(self.prompts):
            self.before = Answers(**saved)
            log.info("Generation eval before training: kept from %s (a resumed run)", BEFORE_FILE)
        else:
            self.before = self._measure(policy, reference, self.tokenizer)
            self.before.metrics = self._summary(self.before, "before")
            run_folder.write_json_atomic(self.run_dir / BEFORE_FILE, asdict(self.before))
        return self.before.metrics

    def _summary(self, answers: Answers, when: str) -> dict[str, Any]:
        m: dict[str, Any] = {
            f"gen/finished_{when}": _mean([float(f) for f in answers.finished]),
            f"gen/mean_tokens{'_before' if when == 'before' else ''}": _mean(
                [float(len(c)) for c in answers.completion_ids]
            ),
        }
        if answers.scores is not None:
            m[f"gen/score_{when}"] = _mean(answers.scores)
        if answers.log_ratios is not None:
            m[f"gen/kl_to_ref{'_before' if when == 'before' else ''}"] = _mean(answers.log_ratios)
        return m

    def run_after(self, policy, reference=None) -> dict[str, Any]:
        """Measure the trained policy against the "before" answers; write samples.jsonl; return the gen/ metrics."""
        assert self.before is not None, "run_before() first"
        after = self._measure(policy, reference, self.tokenizer)
        metrics = {**self.before.metrics, **self._summary(after, "after")}
        if after.scores is not None and self.before.scores is not None:
            wins = [
                1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after.scores, self.before.scores, strict=True)
            ]
            metrics["gen/win_rate_vs_ref"] = _mean(wins)
            metrics["gen/scorer"] = self.scorer.name
        else:
            metrics["gen/score_note"] = f"answers not scored: {self.scorer_reason}"
        if after.log_ratios is None:
            metrics["gen/kl_to_ref_note"] = (
                "no reference model in memory (full DPO with the reference cache): KL not computed. Set "
                "ref_cache.enabled=false to keep the reference loaded, or use LoRA."
            )
        metrics.update(
            {
                "gen/prompts": len(self.prompts),
                "gen/max_new_tokens": self.cfg.training.max_new_tokens,
                "gen/temperature": self.cfg.eval.temperature,
                "gen/seconds": round(self.before.seconds + after.seconds, 3),
            }
        )
        self.samples = samples.sample_rows(self.cfg, self.rows, self.before, after)
        samples.write(self.run_dir, self.samples)
        return metrics
