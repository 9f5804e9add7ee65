"""Generation-based evaluation: what a run's model *says* before and after training.

`generation` answers held-out prompts before and after training; `measures` turns the answers into numbers (score,
win rate, KL to the reference or a log-ratio outside the KL regime, fluency under the reference, the share of answers
that finish, each with its standard error over prompts); `scorers/` says how good an answer is (a rule, a reward
model); `samples` writes a few answers of the reference and the trained policy side by side (samples.jsonl, a W&B
table).
Imported inside the job only (torch), except `scorers`' registry, which validation reads.
"""

__all__ = ["GenerationEval", "n_prompts"]


def __getattr__(name: str):
    # Lazy: validation imports `dpo_sweeps.eval.scorers` on login nodes, which must not pull in torch.
    if name in __all__:
        from dpo_sweeps.eval import generation

        return getattr(generation, name)
    raise AttributeError(name)
