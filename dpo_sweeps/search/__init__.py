"""Hyperparameter search on Optuna 5 (`hparams_search=dpo_optuna`, `dpo_frontier`, `dpo_kl_budget`): our own sweeper.

The driver (the process that runs `python -m dpo_sweeps -m hparams_search=...`, often a login node) asks Optuna for
trials and keeps `n_jobs` of them in flight through the configured launcher (a process or a SLURM job per trial
with our launcher). The study lives in a journal file in the sweep folder, so running the same command again continues
it. Each trial's job attaches to its trial and reports its objective at every evaluation; the pruner stops it there.

    compat      the optuna import, its tested version range and the internal API we rely on (checked at import)
    space       Hydra's sweep syntax (choice, range, interval, tag(log, ...)) -> Optuna distributions, trial -> overrides
    options     what each sampler and pruner type takes, and the `pruner=median` shorthand (no Optuna import)
    settings    the sweeper's settings, pruner and sampler built from them, every check done before a trial runs
    study       the journal-backed study: open/create, a trial's outcome read from its run folder,
                optimization_results.yaml, trials.csv, pareto_front.csv (their names: `files`)
    driver      the ask -> start -> tell loop, continuing a stored study (what `hydra_plugins/dpo_sweeps_sweeper` runs)
    inflight    n_jobs trials in flight through any launcher: the next one started as soon as one ends
    liveness    a continued study's trials left RUNNING: waited for while their job runs, failed once it is gone
    folders     trial folders a person can read (trial_007-beta=0.0561,lr=0.00143), stable across a continued study
    retry       hydra.sweeper.retry_failed: failed trials rerun with their parameters; what counts toward n_trials
    constraints a search under limits (objective.kl_budget, eval.max_fluency_drop): Optuna constraint values per
                trial, feasibility, the study's stored limits
    corners     the checks before the first trial on the corners of the space (validation, objectives, GPU memory)
    trial       the job side: attach to the trial, the pruning TrainerCallback, TrialPruned (optuna and transformers
                are imported only once a trial with a pruner runs, inside the job)

May import `runs`, `config` (folder names, the reference rule), `eval.scorers` (whether answers get a score) and
`slurm` (`liveness`: whether a trial's job still runs, and its true end; `memory_check`: the corners' memory check).
`sweep`, `train` and `tracking` import `trial` (every run imports it: it is light until a trial is attached);
`sweep` and `report` read the names in `files` and `options` (no Optuna there); Hydra's plugin imports `driver`. Nothing heavy at
module level (no torch, transformers or TRL): the driver runs on a login node; optuna is imported by a search only.
"""
