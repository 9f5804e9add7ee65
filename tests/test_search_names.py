"""What a person sees of a search's trials (issue 26): readable trial folders (search/folders.py), the driver's internal
overrides kept off the console, and `[n/N]` counters that count to n_trials. The end-to-end checks are in
tests/test_hparams_search.py (a 3-trial search on the in-process launcher) and tests/test_search_async.py
(local_parallel, the submitting console's watcher)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from helpers import compose_config
from hydra.core.utils import filter_overrides

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.search import folders, settings, study
from dpo_sweeps.search.compat import FloatDistribution, TrialState, optuna
from dpo_sweeps.search.driver import Entry
from dpo_sweeps.sweep.watcher import SweepWatcher

LONG = ["beta=0.05611516415334506", "loss=sigmoid", "training.learning_rate=0.001432249371823025"]


def test_a_trial_folder_reads_as_its_number_and_rounded_parameters():
    assert folders.readable(7, LONG) == "trial_007-beta=0.0561,loss=sigmoid,lr=0.00143"
    # Integers, words, lists and short floats are kept as written; tiny floats stay in exponent notation.
    assert folders.readable(12, ["beta=1.5e-06", "training.max_steps=10", "x=[1,2]", "seed=3"]) == (
        "trial_012-beta=1.5e-06,seed=3,max_steps=10,x=[1,2]"
    )
    # Two keys that would shorten alike keep their full names.
    assert (
        folders.readable(1, ["lora.dropout=0.1", "model.dropout=0.2"]) == "trial_001-lora.dropout=0.1,model.dropout=0.2"
    )
    assert folders.readable(1000, []) == "trial_1000"


def test_parameters_that_round_alike_still_get_two_folders():
    a = folders.readable(3, ["training.learning_rate=0.0014322"])
    b = folders.readable(4, ["training.learning_rate=0.0014324"])
    assert a.endswith("lr=0.00143") and b.endswith("lr=0.00143") and a != b


def _study(path: Path) -> optuna.Study:
    return study.open_study(path, "s", ["maximize"], settings.sampler({"type": "random"}), None)


def test_a_new_study_numbers_its_folders_and_an_older_one_keeps_naming_them_by_overrides(tmp_path):
    new = _study(tmp_path / "new.log")
    assert folders.scheme(new) == folders.NUMBERED
    new.ask({"beta": FloatDistribution(0.01, 1.0)})  # trials later do not change a study's scheme
    assert folders.scheme(_study(tmp_path / "new.log")) == folders.NUMBERED

    # A study whose first trials were asked before trial folders were numbered (no `trial_folders` attribute).
    old = _study(tmp_path / "old.log")
    trial = old.ask({"beta": FloatDistribution(0.01, 1.0)})
    trial.set_user_attr(study.ATTR_RUN_DIR, str(tmp_path / "beta=0.5"))
    assert "trial_folders" not in old.user_attrs
    assert folders.scheme(old) == folders.BY_OVERRIDES
    assert folders.scheme(_study(tmp_path / "old.log")) == folders.BY_OVERRIDES, "decided once, kept"


def test_a_trial_with_an_earlier_trials_parameters_gets_its_folder(tmp_path):
    s = _study(tmp_path / "j.log")
    first = s.ask({"beta": FloatDistribution(0.01, 1.0)})
    first.set_user_attr(study.ATTR_OVERRIDES, ["beta=0.5", "loss=ipo"])
    first.set_user_attr(study.ATTR_RUN_DIR, str(tmp_path / "trial_000-beta=0.5,loss=ipo"))
    s.tell(first, state=TrialState.FAIL)
    trials = s.get_trials(deepcopy=False)
    assert folders.earlier_folder(trials, 5, ["loss=ipo", "beta=0.5"]) == "trial_000-beta=0.5,loss=ipo"
    assert folders.earlier_folder(trials, 5, ["loss=ipo", "beta=0.6"]) is None
    assert folders.earlier_folder(trials, 0, ["beta=0.5", "loss=ipo"]) is None, "not its own folder"


def test_the_drivers_own_overrides_are_hydra_overrides_that_work_and_are_not_printed():
    trial = optuna.create_study().ask()
    name = folders.readable(trial.number, LONG)
    entry = Entry(trial, list(LONG), Path("/s") / name, f"/s/{name}", subdir=name)
    launch = entry.launch_overrides
    # What Hydra's launchers (and ours) print of a job: the trial's parameters, nothing internal.
    assert list(filter_overrides(launch)) == LONG
    cfg = compose_config(launch, return_hydra_config=True)
    assert cfg.hydra.job.env_set["DPO_SWEEPS_TRIAL"] == str(trial.number)
    assert cfg.hydra.sweep.subdir == name
    assert list(cfg.hydra.overrides.task) == LONG, "the internal ones name no folder and are no task override"
    # Without the declaration in conf/config.yaml (a primary config of another make) the override adds the key.
    assert Entry(trial, list(LONG), Path("/s"), "/s", declared=False).launch_overrides[-1].startswith("++hydra.job.")


def test_the_watcher_counts_a_searchs_trials_to_n_trials(tmp_path):
    """A search's folders appear one trial at a time: the counter says [1/3], [2/3], not [1/1], [2/2]."""
    out = io.StringIO()
    watcher = SweepWatcher(tmp_path, stream=out, fed=True, expected=3).start()
    points = []
    for number in (0, 1):
        run_dir = tmp_path / folders.readable(number, [f"beta=0.{number + 1}"])
        run_dir.mkdir()
        run_folder.write_json_atomic(run_dir / run_folder.STATUS_FILE, {"state": "running"})
        points.append({"trial": number, "run_dir": str(run_dir), "overrides": []})
        (tmp_path / run_folder.SWEEP_POINTS_FILE).write_text(json.dumps(points))
        watcher.poll({})
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["[1/3]", "[2/3]"], lines
    # A grid (no n_trials) counts its points, as before.
    grid = io.StringIO()
    SweepWatcher(tmp_path, stream=grid, fed=True).poll({})
    assert grid.getvalue().splitlines()[0].startswith("[1/2] trial_000"), grid.getvalue()


def test_a_folder_another_study_trained_with_other_parameters_is_never_shared(tmp_path, monkeypatch):
    """Two studies in one sweep folder (hydra.sweeper.study_name=<new>) number their trials alike: a name that is taken
    by other parameters gets a digest; the same parameters reuse the folder (trained once, as before)."""
    monkeypatch.delenv("DPO_SWEEPS_SWEEP", raising=False)
    other = tmp_path / folders.readable(1, ["training.learning_rate=0.0014322"])
    other.mkdir()
    status = {"state": "completed", "overrides": ["model=tiny_qwen", "training.learning_rate=0.0014322"]}
    run_folder.write_json_atomic(other / run_folder.STATUS_FILE, status)
    assert folders.new_folder(tmp_path, [], 1, ["training.learning_rate=0.0014322"]) == other.name
    mine = folders.new_folder(tmp_path, [], 1, ["training.learning_rate=0.0014324"])
    assert mine.startswith(f"{other.name}-") and len(mine) == len(other.name) + 9, mine
    assert folders.new_folder(tmp_path, [], 2, ["training.learning_rate=0.0014324"]) == "trial_002-lr=0.00143"
