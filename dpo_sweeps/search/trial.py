"""The job side of a search trial: attach to the trial the driver asked for, report the objective at every evaluation,
stop when the pruner says so.

The driver passes each trial's number through `hydra.job.env_set` (the environment of that one job, with any
launcher): `DPO_SWEEPS_TRIAL=<number>`. Where the study is comes from the job's own Hydra config, which is the driver's
(`hydra.sweeper.study_name`, `hydra.sweeper.storage`; null = the journal in the sweep folder, the run folder's parent),
and so do the pruner's settings (`hydra.sweeper.pruner`): Optuna does not store the pruner in the journal, so every
process that loads the study passes it (else it would silently get MedianPruner).

Only global rank 0 opens the study and asks the pruner; under torch.distributed its answer is broadcast so that all
ranks stop at the same step. A pruned run keeps what it has (adapter or model, history, the last checkpoint) and its
status.json says `pruned` with the step and the value; the driver then tells the study PRUNED.

Imported by sweep.job, train.trainer and tracking in every run, search or not: nothing heavy at import (optuna, transformers
and torch are imported only once a trial is attached).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_sweeps.runs import folder as run_folder

log = logging.getLogger(__name__)

ENV_TRIAL = "DPO_SWEEPS_TRIAL"


class TrialPruned(Exception):  # noqa: N818  (Optuna's own name for the same event)
    """Training was stopped by the search's pruner; `metrics` is what the run has (written to metrics.json)."""

    def __init__(self, metrics: dict[str, Any]):
        self.metrics = metrics
        super().__init__(f"pruned at step {metrics.get('pruned_at_step')}")


@dataclass
class TrialContext:
    number: int
    study_name: str
    journal: str
    metric: str
    trial: Any = None  # optuna.trial.Trial on rank 0 once opened
    training: bool = False
    reported: set[int] = field(default_factory=set)
    pruned: tuple[int, float] | None = None
    last_eval: dict[str, float] = field(default_factory=dict)

    def status_fields(self) -> dict[str, Any]:
        return {"trial": {"number": self.number, "study": self.study_name, "journal": self.journal}}


_CURRENT: TrialContext | None = None


def current() -> TrialContext | None:
    return _CURRENT


def _sweeper_setting(key: str, default: Any = None) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    if not HydraConfig.initialized():
        return default
    value = OmegaConf.select(HydraConfig.get(), f"sweeper.{key}", default=default)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def from_environment(run_dir: Path, metric: str) -> TrialContext | None:
    """This job's trial, when a search driver launched it (None for any other run)."""
    global _CURRENT
    _CURRENT = None
    if not os.environ.get(ENV_TRIAL):
        return None
    from dpo_sweeps.search.study import journal_path

    _CURRENT = TrialContext(
        number=int(os.environ[ENV_TRIAL]),
        study_name=str(_sweeper_setting("study_name", "dpo_sweeps")),
        journal=str(journal_path(_sweeper_setting("storage"), Path(run_dir).parent)),
        metric=metric,
    )
    return _CURRENT


def counter(run_dir: Path, points: list[dict], num: int | None) -> tuple[int | None, int | None]:
    """(index, total) of a sweep point's `[n/N]` line: a grid's job number of its points; a search trial's place
    among the search's parameter sets (sweep_points.json, which lists a retry in the place of the trial it retries) of
    `n_trials`. The list grows a trial at a time: its length alone would say [1/1], [2/2], [3/3]."""
    total = len(points) or None
    if _CURRENT is None:
        return num, total
    names = [Path(str(p.get("run_dir") or "")).name for p in points]
    index = names.index(run_dir.name) if run_dir.name in names else num
    n_trials = _sweeper_setting("n_trials")
    return index, max(total or 0, n_trials) if isinstance(n_trials, int) else total


def _pruner_spec() -> dict[str, Any]:
    from dpo_sweeps.search.options import section

    # `hydra.sweeper.pruner=median`, the shorthand, is read as the driver reads it.
    return section(_sweeper_setting("pruner")) or {"type": "none"}


def open_trial(ctx: TrialContext) -> None:
    """Load the study (with the pruner) and attach to the trial: rank 0 only."""
    from dpo_sweeps.search import settings
    from dpo_sweeps.search import study as study_mod

    if not Path(ctx.journal).is_file():
        raise FileNotFoundError(
            f"trial {ctx.number}: the study's journal {ctx.journal} is not there. The job must see the sweep folder "
            "(a filesystem shared with the node that runs the search)."
        )
    study = study_mod.open_study(
        Path(ctx.journal),
        ctx.study_name,
        directions=[],
        sampler=settings.sampler({"type": "random"}),
        pruner=settings.pruner(_pruner_spec()),
        create=False,
    )
    trials = study.get_trials(deepcopy=False)
    if not 0 <= ctx.number < len(trials):
        raise LookupError(f"trial {ctx.number} is not in the study {ctx.study_name!r} of {ctx.journal}.")
    ctx.trial = study_mod.attach(study, trials[ctx.number])


def training_callbacks() -> list:
    """The pruning callback when this job is a trial whose pruner is on (train.trainer.run_training adds these)."""
    ctx = _CURRENT
    if ctx is None or (_pruner_spec().get("type") or "none") == "none":
        return []
    # Global rank 0 only (torch.distributed's RANK, exported from SLURM by train.cluster before training starts).
    if int(os.environ.get("RANK", "0") or 0) == 0 and ctx.trial is None:
        open_trial(ctx)
    return [_make_callback(ctx)]


def _agree(decision: bool) -> bool:
    """Rank 0's decision, on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return decision
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def _make_callback(ctx: TrialContext):
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        """Reports `objective.metric` at each evaluation during training into the trial, and stops training when
        the pruner says so (at that evaluation's step)."""

        def on_train_begin(self, args, state, control, **kwargs):
            ctx.training = True

        def on_train_end(self, args, state, control, **kwargs):
            ctx.training = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            step = state.global_step
            if not ctx.training or step <= 0 or step in ctx.reported:
                return
            ctx.reported.add(step)
            value = (metrics or {}).get(ctx.metric)
            prune = False
            if state.is_world_process_zero and ctx.trial is not None:
                ctx.last_eval = {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float)}
                if isinstance(value, int | float) and math.isfinite(value):
                    ctx.trial.report(float(value), step)
                    prune = ctx.trial.should_prune()
                else:
                    log.warning(
                        "Trial %d: %s=%r at step %d is not a number; not reported.", ctx.number, ctx.metric, value, step
                    )
            if _agree(prune):
                ctx.pruned = (step, float(value) if isinstance(value, int | float) else math.nan)
                control.should_training_stop = True
                log.info("Trial %d pruned at step %d (%s=%s): stopping.", ctx.number, step, ctx.metric, value)

    return PruningCallback()


def was_pruned() -> bool:
    return _CURRENT is not None and _CURRENT.pruned is not None


def pruned_metrics() -> dict[str, Any]:
    """What metrics.json says of a pruned run, besides its training metrics: where it stopped and what it had."""
    ctx = _CURRENT
    assert ctx is not None and ctx.pruned is not None
    step, value = ctx.pruned
    return {
        "pruned_at_step": step,
        "pruned_value": value,
        "pruned_metric": ctx.metric,
        # The last evaluation's metrics, nested: a pruned run is not ranked with the completed ones on them.
        "last_eval": ctx.last_eval,
        "objective_metric": ctx.metric,
        "objective_value": None,
    }


def status_fields() -> dict[str, Any]:
    return _CURRENT.status_fields() if _CURRENT is not None else {}


def record_pruned(run_dir: Path, exc: TrialPruned, update_status) -> None:
    """status.json `pruned` with the step and the value, metrics.json with what the run has."""
    metrics = exc.metrics
    run_folder.write_json_atomic(Path(run_dir) / run_folder.METRICS_FILE, metrics)
    update_status(
        run_dir,
        state=run_folder.PRUNED,
        ended_at=run_folder.now_iso(),
        pruned={
            "step": metrics.get("pruned_at_step"),
            "value": metrics.get("pruned_value"),
            "metric": metrics.get("pruned_metric"),
        },
    )


def wandb_summary(state: str) -> dict[str, Any]:
    """Keys a trial's W&B run summary gets at its end: its number and how it ended (complete, pruned, failed)."""
    if _CURRENT is None:
        return {}
    return {"search/trial": _CURRENT.number, "search/state": state}


def wandb_identity() -> tuple[dict[str, Any], list[str]]:
    """(config section, tags) that say a W&B run is trial N of a study."""
    if _CURRENT is None:
        return {}, []
    return {"trial": _CURRENT.number, "study": _CURRENT.study_name}, [f"trial:{_CURRENT.number}"]
