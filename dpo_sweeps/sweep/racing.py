"""Seed racing (`racing.enabled=true` on a grid sweep with `seed` swept): the seeds run in waves, and a configuration
that is clearly worse than the best stops early.

    python -m dpo_sweeps -m beta=0.05,0.1,0.3 seed=1,2,3,4,5 racing.enabled=true

A configuration is every swept override except `seed`. Wave k holds the k-th seed of every configuration still in the
race; each wave is one `launch` of the sweep's launcher (the local launchers run it, the SLURM launcher submits it as
one array and waits for it). After each wave from `racing.min_seeds` on, while seeds are left, every configuration's
mean objective and its two-sided Student-t interval (`racing.confidence`, 0.95 = the report's CI95) over its seeds so
far are compared with the best configuration's: one whose interval lies entirely on the wrong side of the best one's
(below it for objective.mode=max, above for min) is out. Its remaining seeds get a status.json and nothing else: state
`skipped_by_racing`, the reason in words and the numbers (its mean, interval and seeds, the best's, the wave). Seeds
already run keep their results; the report and summary_by_config.csv mark the configuration as raced out.

A rerun of the same command keeps the decisions: a seed recorded `skipped_by_racing` stays skipped (and its
configuration out), unless rerun=true or racing.enabled=false, which train it.

Why in the launchers and not a sweeper: the grid is expanded and checked by Hydra's basic sweeper and our pre-launch
check as before; the launchers hand their whole point list here (`launch_in_waves`) and run each wave as they would
run a sweep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, flag_override

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs import reading
from dpo_sweeps.slurm import attach

log = logging.getLogger(__name__)

SEED_KEY = "seed"
SKIPPED = run_folder.SKIPPED_BY_RACING
# Launchers that run a sweep in waves (`launch_in_waves`); another launcher would run every seed at once.
LAUNCHERS = ("hydra_plugins.dpo_sweeps_launcher.local.", "hydra_plugins.dpo_sweeps_launcher.slurm.")
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
SEQUENTIAL_LAUNCHER = "hydra_plugins.dpo_sweeps_launcher.local.SequentialLauncher"


def enabled(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "racing.enabled", default=False))


def check(config: DictConfig) -> None:
    """Refuse, in one line naming the key and the fix, a racing sweep that cannot race (before anything runs)."""
    if not enabled(config):
        return
    racing = config.racing
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if not sweeper.endswith("BasicSweeper"):
        raise SystemExit(
            f"Error: racing.enabled=true races the seeds of a grid sweep; this sweep uses {sweeper or 'another'} "
            "sweeper (hparams_search=...). Drop racing.enabled=true, or sweep a grid without hparams_search."
        )
    if OmegaConf.select(config, "hydra.sweeper.max_batch_size", default=None):
        raise SystemExit(
            "Error: racing.enabled=true runs the grid in waves itself; hydra.sweeper.max_batch_size splits it into "
            "batches as well. Drop hydra.sweeper.max_batch_size."
        )
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if target == BASIC_LAUNCHER:
        # The default launcher (no hydra/launcher chosen): Hydra's basic launcher runs every point it is given; ours
        # under hydra/launcher=local is that launcher, plus the waves. Hydra builds the launcher from this config
        # after the callbacks have run, so the swap takes effect, and it changes nothing else about how points run.
        with flag_override(config.hydra.launcher, ["struct", "readonly"], [False, False]):
            config.hydra.launcher._target_ = SEQUENTIAL_LAUNCHER
        log.debug("racing: Hydra's basic launcher replaced by hydra/launcher=local (%s)", SEQUENTIAL_LAUNCHER)
        target = SEQUENTIAL_LAUNCHER
    if not target.startswith(LAUNCHERS):
        raise SystemExit(
            f"Error: racing.enabled=true runs on hydra/launcher=local, local_parallel or slurm (slurm_local); this "
            f"sweep's launcher is {target}. Pick one of those, or drop racing.enabled=true."
        )
    seeds = swept_seeds(list(config.hydra.overrides.task))
    if len(seeds) < 2:
        raise SystemExit(
            "Error: racing.enabled=true needs `seed` swept in the grid (it races each configuration's seeds), but "
            f"{'seed has one value' if seeds else 'seed is not swept'}: add e.g. seed=1,2,3,4,5 to the command, or "
            "drop racing.enabled=true."
        )
    if int(racing.min_seeds) < 2:
        raise SystemExit(
            f"Error: racing.min_seeds={racing.min_seeds}: must be >= 2 (an interval over seeds needs two values)."
        )
    if not 0 < float(racing.confidence) < 1:
        raise SystemExit(f"Error: racing.confidence={racing.confidence}: must be between 0 and 1, e.g. 0.95.")


def swept_keys(task_overrides: list[str]) -> list[str]:
    """The keys the command sweeps (`beta=0.1,0.3`, `lora=none,r16`, ranges)."""
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def swept_seeds(task_overrides: list[str]) -> list[str]:
    """The values of `seed` the command sweeps ([] when it does not sweep it)."""
    for override in OverridesParser.create().parse_overrides(task_overrides):
        if override.key_or_group == SEED_KEY and override.is_sweep_override():
            return [str(v) for v in override.sweep_string_iterator()]
    return []


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def config_of(overrides: Sequence[str]) -> tuple[str, ...]:
    """A point's configuration: its overrides except the seed."""
    return tuple(o for o in overrides if _key(o) != SEED_KEY)


def label(config: tuple[str, ...], swept: set[str]) -> str:
    """The configuration in words: its swept overrides (all of them when none is swept but the seed)."""
    shown = [o for o in config if _key(o) in swept]
    return " ".join(shown) or "all points"


# ---------------------------------------------------------------------------------------------------- statistics


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile: P(|T| <= q) = confidence with `df` degrees of freedom (bisection on the CDF,
    integrated with Simpson's rule: no SciPy needed for a handful of numbers)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def central(x: float, n: int = 2000) -> float:  # P(-x <= T <= x)
        h = x / n
        total = sum((4 if i % 2 else 2) * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(1, n))
        return 2 * c * h / 3 * (1 + total + (1 + x * x / df) ** (-(df + 1) / 2))

    lo, hi = 0.0, 1.0
    while central(hi) < confidence:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central(mid) < confidence else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Interval:
    mean: float
    half: float | None  # None below two values
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci": self.half, "interval": [self.low, self.high], "n": self.n}

    def words(self) -> str:
        return f"{self.mean:.4g} ± {self.half:.2g} ([{self.low:.4g}, {self.high:.4g}], {self.n} seeds)"


def interval(values: list[float], confidence: float) -> Interval | None:
    values = [v for v in values if reading.finite(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return Interval(mean, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return Interval(mean, t_quantile(confidence, len(values) - 1) * sd / math.sqrt(len(values)), len(values))


def worse(candidate: Interval, best: Interval, mode: str) -> bool:
    """Whether `candidate`'s interval lies entirely on the wrong side of `best`'s (touching is not enough)."""
    if candidate.half is None or best.half is None:
        return False
    return candidate.high < best.low if mode == "max" else candidate.low > best.high


# ---------------------------------------------------------------------------------------------------------- waves


@dataclass
class Entry:
    """One configuration in the race: its points (in seed order), which wave put it out and why."""

    points: list[dict]
    out: dict | None = None  # the decision (status.json's `racing`), once it is out
    skipped: list[dict] = field(default_factory=list)


def _objective(run_dir: str) -> float:
    value = reading.number((run_folder.read_json(Path(run_dir) / run_folder.METRICS_FILE) or {}).get("objective_value"))
    return value if value is not None else math.nan


def _nan(overrides: list[str]) -> JobReturn:
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=math.nan)


def launch(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    launch_batch: Callable[[list[list[str]], int], Sequence[JobReturn]],
) -> Sequence[JobReturn]:
    """A racing launcher's `launch`: the points in waves when racing is on, else all at once through `launch_batch`
    (the launcher's own launch). The points the pre-launch check handed over (its `handoff`) say which seeds an
    earlier run already decided."""
    if launcher.config is None or not enabled(launcher.config):
        return launch_batch(job_overrides, initial_job_idx)
    checked = getattr(launcher, "handoff", None)
    known = {tuple(p["overrides"]): p for p in (checked.points if checked else [])}
    return launch_in_waves(launcher.config, job_overrides, initial_job_idx, launch_batch, known)


def launch_in_waves(
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    launch: Callable[[list[list[str]], int], Sequence[JobReturn]],
    known: dict[tuple[str, ...], dict],
) -> list[JobReturn]:
    """Run the points wave by wave through `launch(overrides, first job number)` (the launcher's own launch of a
    batch) and race the configurations (see the module doc); the results in `job_overrides`' order (NaN for a
    skipped seed). Job numbers count the points in the order they are launched."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    rerun = bool(config.get("rerun"))
    min_seeds, confidence = int(config.racing.min_seeds), float(config.racing.confidence)
    metric, mode = str(config.objective.metric), str(config.objective.mode)
    swept = set(swept_keys(list(config.hydra.overrides.task))) - {SEED_KEY}
    points = [attach.point_for(sweep_dir, list(o), known) for o in job_overrides]
    entries: dict[tuple[str, ...], Entry] = {}
    for point in points:
        entries.setdefault(config_of(point["overrides"]), Entry([])).points.append(point)
    if not rerun:
        _keep_earlier_decisions(entries)
    results: dict[int, JobReturn] = {}
    index = {id(p): i for i, p in enumerate(points)}
    next_num = initial_job_idx
    waves = max(len(e.points) for e in entries.values())
    for wave in range(waves):
        batch = [e.points[wave] for e in entries.values() if wave < len(e.points)]
        run_now = [p for p in batch if not _is_skipped(p, entries)]
        for p in batch:
            if p not in run_now:
                results[index[id(p)]] = _nan(p["overrides"])
        if run_now:
            log.info("Racing: wave %d of %d, %d point(s)", wave + 1, waves, len(run_now))
            returned = launch([list(p["overrides"]) for p in run_now], next_num)
            next_num += len(run_now)
            for p, r in zip(run_now, returned, strict=True):
                results[index[id(p)]] = r
        if wave + 1 >= min_seeds and wave + 1 < waves:
            _decide(entries, wave + 1, swept, metric, mode, confidence)
    return [results[i] for i in range(len(points))]


def _is_skipped(point: dict, entries: dict[tuple[str, ...], Entry]) -> bool:
    return any(point is s for s in entries[config_of(point["overrides"])].skipped)


def _keep_earlier_decisions(entries: dict[tuple[str, ...], Entry]) -> None:
    """A configuration an earlier invocation raced out stays out: its seeds recorded skipped stay skipped, and a seed
    added to the grid since is skipped with the same decision."""
    for entry in entries.values():
        decided = None
        for p in entry.points:
            status = run_folder.read_status(p["run_dir"]) or {}
            if status.get("state") == SKIPPED:
                decided = status.get("racing") or {}
                break
        if decided is None:
            continue
        entry.out = decided
        for p in entry.points:
            if (run_folder.read_status(p["run_dir"]) or {}).get("state") in (SKIPPED, None):
                entry.skipped.append(p)
                if not (Path(p["run_dir"]) / run_folder.STATUS_FILE).exists():
                    _record_skipped(p, decided)
        print(
            f"Racing: {len(entry.skipped)} seed(s) of [{' '.join(config_of(entry.points[0]['overrides']))}] stay "
            "skipped (raced out by an earlier run of this sweep; rerun=true or racing.enabled=false trains them)",
            flush=True,
        )


def _decide(entries: dict, wave: int, swept: set[str], metric: str, mode: str, confidence: float) -> None:
    """After `wave` waves: put out every configuration clearly worse than the best one still in the race."""
    racing = {cfg: e for cfg, e in entries.items() if e.out is None}
    stats = {}
    for cfg, e in racing.items():
        run = [p for p in e.points[:wave]]
        found = interval([_objective(p["run_dir"]) for p in run], confidence)
        if found is not None:
            stats[cfg] = found
    if len(stats) < 2:
        return
    best_cfg = (max if mode == "max" else min)(stats, key=lambda c: stats[c].mean)
    best = stats[best_cfg]
    pct = f"{confidence * 100:g}%"
    for cfg, mine in stats.items():
        if cfg == best_cfg or not worse(mine, best, mode):
            continue
        entry = entries[cfg]
        side = "below" if mode == "max" else "above"
        reason = (
            f"raced out after wave {wave}: {metric} {mine.words()} lies entirely {side} the best configuration's "
            f"[{label(best_cfg, swept)}] {best.words()} ({pct} Student-t intervals, objective.mode={mode})"
        )
        entry.out = {
            "reason": reason,
            "wave": wave,
            "metric": metric,
            "mode": mode,
            "confidence": confidence,
            "config": label(cfg, swept),
            **mine.as_dict(),
            "seeds_run": [_seed(p) for p in entry.points[:wave]],
            "best": {"config": label(best_cfg, swept), **best.as_dict()},
        }
        entry.skipped = entry.points[wave:]
        for p in entry.skipped:
            _record_skipped(p, entry.out)
        print(f"Racing: [{label(cfg, swept)}] {reason}; {len(entry.skipped)} seed(s) skipped", flush=True)


def _seed(point: dict) -> str:
    return next((o.split("=", 1)[1] for o in point["overrides"] if _key(o) == SEED_KEY), "")


def _record_skipped(point: dict, decision: dict) -> None:
    """The skipped seed's status.json, and nothing else in its folder (no checkpoint, no W&B run, no config)."""
    now = run_folder.now_iso()
    Path(point["run_dir"]).mkdir(parents=True, exist_ok=True)
    run_folder.update_status(
        point["run_dir"],
        state=SKIPPED,
        overrides=list(point["overrides"]),
        run_dir=point["run_dir"],
        ended_at=now,
        error=None,
        traceback=None,
        reason=decision.get("reason"),
        racing=decision,
        objective={"metric": decision.get("metric"), "mode": decision.get("mode")},
    )
