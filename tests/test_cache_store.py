"""The locked cache store on a shared filesystem (`cache_store.py`): lock age from the file server's clock, pid
liveness only on the holder's own machine, polling that backs off."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from dpo_sweeps import cache_store
from dpo_sweeps.cache_store import COMPUTED, STALE_LOCK_S, LockedStore, backoff_delays, machine_identity


def _lock(store: LockedStore, key: str, holder: dict, age_s: float = 0.0) -> None:
    path = store.lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "t", **holder}))
    if age_s:
        stamped = path.stat().st_mtime - age_s  # as the server stamped it, age_s seconds ago
        os.utime(path, (stamped, stamped))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("skew_s", [600.0, -600.0], ids=["host clock ahead", "host clock behind"])
def test_lock_age_is_read_on_the_file_servers_clock_not_this_hosts(tmp_path, monkeypatch, skew_s):
    store = LockedStore(tmp_path, lock_timeout_s=1)
    fresh, silent = "aa" + "1" * 62, "bb" + "2" * 62
    elsewhere = {"pid": 1, "host": "another-node", "boot_id": "b", "pidns": "p"}
    _lock(store, fresh, elsewhere)
    _lock(store, silent, elsewhere, age_s=STALE_LOCK_S + 5)
    real_time = time.time
    # This node's clock is ten minutes off the file server's (NTP broken on a compute node).
    monkeypatch.setattr(cache_store.time, "time", lambda: real_time() + skew_s)
    assert not store._lock_is_stale(fresh), "a live holder's lock broken because of this host's clock"
    assert store._lock_is_stale(silent), "a dead holder's lock waited on because of this host's clock"
    assert not list(tmp_path.rglob(".clock-probe-*")), "the probe file is removed"


def test_a_dead_pid_breaks_a_lock_only_on_the_holders_own_machine(tmp_path):
    store = LockedStore(tmp_path, lock_timeout_s=1)
    here, pid = machine_identity(), _dead_pid()
    assert here["boot_id"] and here["host"]
    cases = {
        "this machine": ({"pid": pid, **here}, True),
        # Same host name after a reboot, or another machine of the same name: the pid is someone else's.
        "another boot": ({"pid": pid, **here, "boot_id": "00000000-another-boot"}, False),
        # A container on this kernel: its pids are not ours.
        "another pid namespace": ({"pid": pid, **here, "pidns": "pid:[1]"}, False),
        # A lock of an older version (no boot id): only its heartbeat can tell.
        "no boot id": ({"pid": pid, "host": here["host"]}, False),
    }
    for i, (name, (holder, stale)) in enumerate(cases.items()):
        key = f"{i:02d}" + "3" * 62
        _lock(store, key, holder)
        assert store._lock_is_stale(key) is stale, name
    written = LockedStore(tmp_path / "own", lock_timeout_s=1)
    assert written._try_lock("cc" + "4" * 62)
    recorded = json.loads(written.lock_path("cc" + "4" * 62).read_text())
    assert {k: recorded[k] for k in ("host", "boot_id", "pidns")} == here and recorded["pid"] == os.getpid()


def test_waiting_for_another_job_backs_off(tmp_path):
    store = LockedStore(tmp_path, lock_timeout_s=4.0, poll_s=0.2)
    key = "dd" + "5" * 62
    _lock(store, key, {"pid": 1, "host": "another-node", "boot_id": "b", "pidns": "p"})  # alive, elsewhere
    looks: list[float] = []

    def load():
        looks.append(time.monotonic())
        return None

    value, state = store.get_or_compute_with(key, load, lambda: "computed here", "x.lock_timeout_s")
    assert (value, state) == ("computed here", COMPUTED)
    gaps = [b - a for a, b in zip(looks, looks[1:], strict=False)]
    # Polling every 0.2 s would look ~20 times in 4 s; doubling from 0.2 s looks about 6 times.
    assert len(looks) <= 8, gaps
    assert gaps[0] < 0.4 and max(gaps) > 1.2, gaps


def test_backoff_doubles_to_a_cap_with_jitter():
    delays = backoff_delays(0.2, max_s=5.0, rng=random.Random(0))
    got = [next(delays) for _ in range(10)]
    nominal = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert all(0.75 * n <= g <= 1.25 * n for g, n in zip(got, nominal, strict=True)), got
    assert len({round(g / n, 6) for g, n in zip(got, nominal, strict=True)}) > 1, "jittered"
