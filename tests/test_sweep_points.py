"""sweep_points.json, written by two threads of one search: the driver (each new trial, its state) and the SLURM
launcher's threads (each trial's task id, `_record_job_ids`). Both rewrite the file from what they read; neither may
lose the other's change."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.slurm.launcher import _record_job_ids

TRIALS = 60


def test_the_driver_and_the_launcher_threads_never_lose_each_others_changes(tmp_path):
    run_folder.write_json_atomic(tmp_path / run_folder.SWEEP_POINTS_FILE, [])
    added = [threading.Event() for _ in range(TRIALS)]

    def driver() -> None:  # as search/driver.py does: a new trial's point, keeping what the file holds
        for n in range(TRIALS):
            point = {"trial": n, "overrides": [f"beta={n}"], "run_dir": str(tmp_path / f"t{n}"), "skip": False}
            run_folder.update_sweep_points(tmp_path, lambda stored, p=point: [*(stored or []), p])
            added[n].set()

    def launcher(first: int) -> None:  # one launcher thread per trial in flight, each recording its task id
        for n in range(first, TRIALS, 2):
            added[n].wait(10)
            entry = (None, [f"beta={n}"], None)
            _record_job_ids(tmp_path, [entry], [SimpleNamespace(job_id=f"100_{n}")])

    threads = [threading.Thread(target=driver), *(threading.Thread(target=launcher, args=(i,)) for i in (0, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    points = run_folder.read_sweep_points(tmp_path)
    assert [p["trial"] for p in points] == list(range(TRIALS)), "a trial the driver added was written over"
    missing = [p["trial"] for p in points if p.get("slurm_job_id") != f"100_{p['trial']}"]
    assert missing == [], f"task ids the launcher recorded were written over: trials {missing}"
