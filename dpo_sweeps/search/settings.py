"""The sweeper's settings (`hydra.sweeper.*`, conf/hydra/sweeper/dpo_optuna.yaml) and what is built from them.

Everything a search can get wrong in its settings is found here, all at once, before the first trial is asked for:
an unknown pruner or sampler, a pruner setting that belongs to another pruner, a pruner on a multi-objective study
(Optuna prunes single-objective studies only), an objective metric that the runs never log (or log only after
training, where a pruner cannot see it), n_trials / n_jobs / max_failure_rate out of range. Each problem names the
key, the value and the fix.

The pruner is built from these settings in the driver and again in every job (`pruner()`): Optuna's journal does not
store it, and a process that loads the study without one silently gets MedianPruner.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dpo_sweeps.search import constraints as constraints_mod
from dpo_sweeps.search.compat import optuna
from dpo_sweeps.search.options import PRUNER_KEYS, SAMPLER_KEYS, section

SWEEPER_KEYS = (
    "study_name",
    "storage",
    "n_trials",
    "n_jobs",
    "max_failure_rate",
    "retry_failed",
    "sampler",
    "pruner",
    "params",
)
DIRECTIONS = {"max": "maximize", "min": "minimize"}

# What a run writes into metrics.json (train/trainer.py), by where it comes from.
TRAIN_METRICS = (
    "train_loss",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "total_flos",
    "epoch",
    "global_step",
    "runtime_s",
)
# TRL's DPO evaluation (HF's eval_ prefix): logged at every evaluation during training and once after it.
EVAL_METRICS = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "entropy",
    "mean_token_accuracy",
    "num_tokens",
    "runtime",
    "samples_per_second",
    "steps_per_second",
)
# The generation eval after training (dpo_sweeps/eval/generation.py).
GEN_ALWAYS = ("gen/finished_before", "gen/finished_after", "gen/mean_tokens", "gen/mean_tokens_before", "gen/seconds")
GEN_SCORED = ("gen/score_before", "gen/score_after", "gen/win_rate_vs_ref")
GEN_KL = ("gen/kl_to_ref", "gen/kl_to_ref_before")
# Outside the KL regime (eval.temperature != 1) the same measure is logged as a log-ratio (eval/measures.py).
GEN_LOGRATIO = ("gen/logratio_to_ref", "gen/logratio_to_ref_before")


class SweeperSettingsError(ValueError):
    """Bad sweeper settings; nothing was asked or launched."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) with the search settings; no trial was run:\n{lines}")


@dataclass
class Objective:
    metric: str
    mode: str  # max / min

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.mode]


@dataclass
class Settings:
    study_name: str
    storage: str | None
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    params: dict[str, Any]
    objectives: list[Objective] = field(default_factory=list)
    # Times a failed trial is run again with the same parameters (search/retry.py).
    retry_failed: int = 1
    # Limits a trial must keep to count (objective.kl_budget, eval.max_fluency_drop: search/constraints.py).
    constraints: list[constraints_mod.Constraint] = field(default_factory=list)
    # The hparams_search preset chosen (None without one): dpo_kl_budget needs a budget.
    preset: str | None = None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def objectives(cfg: DictConfig) -> list[Objective]:
    """`objective.metric`/`mode` first, then `objective.extra` (the further objectives of a Pareto search)."""
    terms = [Objective(str(cfg.objective.metric), str(cfg.objective.mode))]
    for term in cfg.objective.get("extra") or []:
        terms.append(Objective(str(term.metric), str(term.mode)))
    return terms


def from_sweeper(sweeper: dict[str, Any], cfg: DictConfig) -> Settings:
    """Settings from the sweeper's constructor arguments (or the `hydra.sweeper` node) and the task config."""
    get = lambda key, default=None: _plain(sweeper.get(key, default))  # noqa: E731
    return Settings(
        study_name=str(get("study_name") or "dpo_sweeps"),
        storage=get("storage"),
        n_trials=get("n_trials"),
        n_jobs=get("n_jobs"),
        max_failure_rate=get("max_failure_rate", 1.0),
        sampler=section(get("sampler")),
        pruner=section(get("pruner")) or {"type": "none"},
        params=dict(get("params") or {}),
        objectives=objectives(cfg),
        retry_failed=get("retry_failed", 1),
        constraints=constraints_mod.from_config(cfg),
        preset=_preset(cfg),
    )


def _preset(cfg: DictConfig) -> str | None:
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    return None if choices is None else choices.get("hparams_search")


# ------------------------------------------------------------------------------------------------- builders


def _given(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "type" and v is not None}


def pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The Optuna pruner of `hydra.sweeper.pruner` (checked settings: see `problems`)."""
    spec = section(spec)
    kind = str(spec.get("type") or "none")
    args = _given(spec)
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**args)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**args)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**args)
    raise ValueError(f"unknown pruner {kind!r}")


def sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    spec = section(spec)
    kind = str(spec.get("type") or "tpe")
    args = {k: v for k, v in _given(spec).items() if k in SAMPLER_KEYS.get(kind, ())}
    if kind == "tpe":
        return optuna.samplers.TPESampler(**args)
    if kind == "random":
        return optuna.samplers.RandomSampler(**args)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(**args)
    raise ValueError(f"unknown sampler {kind!r}")


# ------------------------------------------------------------------------------------------------- checks


def logged_metrics(cfg: DictConfig) -> dict[str, str]:
    """metric -> when a run with this config logs it: "training" (at every evaluation, so a pruner sees it) or
    "end" (once, in metrics.json after training)."""
    from dpo_sweeps.config.validation import reference_needed

    when: dict[str, str] = {m: "end" for m in TRAIN_METRICS}
    for m in EVAL_METRICS:
        when[f"eval_{m}"] = "training" if cfg.training.eval_steps else "end"
        if cfg.training.eval_before_training:
            when[f"initial_eval_{m}"] = "end"
    if cfg.eval.gen_prompts > 0:
        when.update({m: "end" for m in GEN_ALWAYS})
        if _scorer(cfg) is not None:
            when.update({m: "end" for m in GEN_SCORED})
        if cfg.lora.enabled or not (cfg.ref_cache.enabled and reference_needed(cfg)):
            # The KL is estimated only from answers sampled from the model itself (eval/generation.py).
            when.update({m: "end" for m in (GEN_KL if float(cfg.eval.temperature) == 1.0 else GEN_LOGRATIO)})
            # Fluency needs the reference only, in any regime (eval/generation.py).
            when[constraints_mod.FLUENCY_METRIC] = "end"
    return when


def _scorer(cfg: DictConfig) -> str | None:
    from dpo_sweeps.eval.scorers import resolve_scorer_name

    return resolve_scorer_name(cfg)[0]


def _metric_problem(key: str, metric: str, cfg: DictConfig, logged: dict[str, str]) -> str | None:
    if metric in logged or metric.startswith("data/"):
        return None
    needs_ref = (*GEN_KL, constraints_mod.FLUENCY_METRIC)  # measured with the reference model in memory
    if metric in GEN_ALWAYS + GEN_SCORED + GEN_LOGRATIO + needs_ref and cfg.eval.gen_prompts <= 0:
        return f"{key}={metric!r} comes from the generation eval, which is off (eval.gen_prompts=0): set eval.gen_prompts=8."
    if metric in GEN_SCORED:
        from dpo_sweeps.eval.scorers import resolve_scorer_name

        return f"{key}={metric!r} needs a scorer for the answers: {resolve_scorer_name(cfg)[1]}."
    if metric in GEN_KL and float(cfg.eval.temperature) != 1.0:
        return (
            f"{key}={metric!r} is measured only in the KL regime (answers sampled at eval.temperature=1); with "
            f"eval.temperature={cfg.eval.temperature} the runs log gen/logratio_to_ref instead and every trial would "
            "fail. Set eval.temperature=1 (or drop the KL objective)."
        )
    if metric in needs_ref:
        return (
            f"{key}={metric!r}: full DPO with the reference cache keeps no reference model in memory, so the KL "
            "(and fluency under the reference) is not measured: set ref_cache.enabled=false or use LoRA."
        )
    if metric.startswith("initial_eval_"):
        return f"{key}={metric!r} needs training.eval_before_training=true."
    close = difflib.get_close_matches(metric, list(logged), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    common = (
        "eval_rewards/accuracies, eval_rewards/margins, eval_loss, gen/score_after, gen/win_rate_vs_ref, gen/kl_to_ref"
    )
    return (
        f"{key}={metric!r} is never logged by these runs: {hint}the objective must be a key of a run's metrics.json "
        f"(e.g. {common})."
    )


def problems(s: Settings, cfg: DictConfig) -> list[str]:
    """Every problem with the settings, each naming the key and the fix (empty: good to go)."""
    out: list[str] = []
    if not isinstance(s.n_trials, int) or isinstance(s.n_trials, bool) or s.n_trials < 1:
        out.append(f"hydra.sweeper.n_trials={s.n_trials!r}: the number of trials in the study, an integer >= 1.")
    if not isinstance(s.n_jobs, int) or isinstance(s.n_jobs, bool) or s.n_jobs < 1:
        out.append(f"hydra.sweeper.n_jobs={s.n_jobs!r}: trials launched at once, an integer >= 1.")
    if not isinstance(s.max_failure_rate, int | float) or not 0.0 <= float(s.max_failure_rate) <= 1.0:
        out.append(
            f"hydra.sweeper.max_failure_rate={s.max_failure_rate!r}: a share of the last n_jobs trials to end, in [0, 1]."
        )
    if not isinstance(s.retry_failed, int) or isinstance(s.retry_failed, bool) or s.retry_failed < 0:
        out.append(
            f"hydra.sweeper.retry_failed={s.retry_failed!r}: times a failed trial is run again with the same "
            "parameters, an integer >= 0 (0 = never)."
        )
    if s.storage is not None and "://" in str(s.storage):
        out.append(
            f"hydra.sweeper.storage={s.storage!r}: the study is kept in a journal file (no database needed, safe on "
            "a shared filesystem). Give a file path, or null for <sweep folder>/optuna_journal.log."
        )
    # Objectives.
    for i, term in enumerate(s.objectives):
        key = "objective" if i == 0 else f"objective.extra[{i - 1}]"
        if term.mode not in DIRECTIONS:
            out.append(f"{key}.mode={term.mode!r}: use max or min.")
    logged = logged_metrics(cfg)
    for i, term in enumerate(s.objectives):
        key = "objective.metric" if i == 0 else f"objective.extra[{i - 1}].metric"
        problem = _metric_problem(key, term.metric, cfg, logged)
        if problem:
            out.append(problem)
    metrics = [t.metric for t in s.objectives]
    if len(set(metrics)) < len(metrics):
        out.append(f"objective: the same metric twice in {metrics}; each objective needs its own metric.")
    out += _constraint_problems(s, cfg, logged)
    out += _sampler_problems(s)
    out += _pruner_problems(s, cfg, logged)
    return out


def _constraint_problems(s: Settings, cfg: DictConfig, logged: dict[str, str]) -> list[str]:
    """A budget needs its metrics measured by every trial: the KL regime, a reference in memory, the generation eval."""
    if s.preset == "dpo_kl_budget" and not s.constraints:
        return [
            "hparams_search=dpo_kl_budget needs objective.kl_budget=<nats>: the most KL to the reference "
            "(gen/kl_to_ref) the best trial may have, e.g. objective.kl_budget=15 (measure a few points first: "
            "hparams_search=dpo_frontier shows the whole reward-KL trade-off)."
        ]
    out = []
    for c in s.constraints:
        problem = _metric_problem("metric", c.metric, cfg, logged)
        if problem is None:
            continue
        why = problem.removeprefix(f"metric={c.metric!r}").lstrip(": ")
        out.append(f"{c.key}={c.limit:g} limits each trial's {c.metric}, and {why}")
    return out


def _section_problems(
    section: str, spec: dict[str, Any], keys: dict[str, tuple[str, ...]], default: str, foreign_ok: bool = False
) -> list[str]:
    """Unknown type or key; a key of another type is a problem too unless `foreign_ok` (then it is ignored)."""
    kind = spec.get("type") or default
    if kind not in keys:
        return [f"hydra.sweeper.{section}.type={kind!r} is not a {section}: use one of {', '.join(keys)}."]
    out = []
    known = {k for ks in keys.values() for k in ks}
    for key, value in spec.items():
        if key == "type" or value is None:
            continue
        if key not in known:
            out.append(
                f"hydra.sweeper.{section}.{key}: no {section} takes this setting (known: {', '.join(sorted(known))})."
            )
        elif key not in keys[kind] and not foreign_ok:
            takes = ", ".join(keys[kind]) or "no settings"
            owners = ", ".join(k for k, ks in keys.items() if key in ks)
            out.append(
                f"hydra.sweeper.{section}.{key}={value!r} is a setting of {owners}, not of {section}.type={kind} "
                f"(which takes {takes}): remove it or change {section}.type."
            )
    return out


def ignored_sampler_settings(spec: dict[str, Any]) -> list[str]:
    """Sampler settings of another sampler type than the chosen one (the presets set TPE's; `sampler.type=random`
    on the command line then ignores them, with a warning from the driver)."""
    kind = spec.get("type") or "tpe"
    mine = SAMPLER_KEYS.get(kind, ())
    return [f"{k}={v!r}" for k, v in spec.items() if k != "type" and v is not None and k not in mine]


def _sampler_problems(s: Settings) -> list[str]:
    out = _section_problems("sampler", s.sampler, SAMPLER_KEYS, "tpe", foreign_ok=True)
    if not out:
        try:
            sampler(s.sampler)
        except (TypeError, ValueError) as exc:
            out.append(f"hydra.sweeper.sampler: {exc}")
    return out


def _pruner_problems(s: Settings, cfg: DictConfig, logged: dict[str, str]) -> list[str]:
    out = _section_problems("pruner", s.pruner, PRUNER_KEYS, "none")
    kind = s.pruner.get("type") or "none"
    if out or kind == "none":
        return out
    if s.multi_objective:
        return [
            f"hydra.sweeper.pruner.type={kind}: Optuna prunes single-objective studies only, and this one has "
            f"{len(s.objectives)} objectives ({', '.join(t.metric for t in s.objectives)}). Set "
            "hydra.sweeper.pruner.type=none (as hparams_search=dpo_frontier does), or drop objective.extra."
        ]
    metric = s.objectives[0].metric
    if logged.get(metric) == "end" and not metric.startswith("eval_"):
        out.append(
            f"hydra.sweeper.pruner.type={kind}: objective.metric={metric!r} is measured once, after training, so no "
            "trial can be stopped early on it. Use an eval_* metric (e.g. eval_rewards/accuracies, eval_loss) or "
            "hydra.sweeper.pruner.type=none."
        )
    elif not cfg.training.eval_steps:
        out.append(
            f"hydra.sweeper.pruner.type={kind}: trials report their objective at each evaluation during training, "
            "and training.eval_steps is null (no evaluation until the end). Set training.eval_steps (e.g. a tenth "
            "of training.max_steps)."
        )
    try:
        pruner(s.pruner)
    except (TypeError, ValueError) as exc:
        out.append(f"hydra.sweeper.pruner: {exc}")
    return out
