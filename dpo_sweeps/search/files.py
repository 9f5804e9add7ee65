"""The files a search leaves in its sweep folder (names only: the sweep summary and the report read them without
importing Optuna)."""

# The study: Optuna's JournalStorage, one JSON operation per line (its lock file sits next to it while a process writes).
JOURNAL_FILE = "optuna_journal.log"
# The best trial (or the Pareto solutions), the objectives, trials per state.
RESULTS_FILE = "optimization_results.yaml"
# Every trial: number, state, objective values, parameters, last reported step and value, run folder, error.
TRIALS_CSV = "trials.csv"
# A multi-objective search's non-dominated completed trials, with their parameters and values.
PARETO_CSV = "pareto_front.csv"
