"""How the suite runs its tests side by side (`make test` runs pytest-xdist: `-n N --dist loadgroup`).

Most of the suite's wall time is spent waiting (SLURM's queue and polls, job start-up, collective timeouts), so
`make test` runs more workers than the machine has cores. This plugin (conftest.py loads it) keeps that safe:

- threads: each worker's torch/OpenMP gets its share of the cores (cores // workers, at least 1), so workers do not
  oversubscribe the machine; the CLI runs the tests start inherit the share through the environment;
- the local SLURM cluster: a test that uses it (marker `slurm`, added to every test that asks for a cluster fixture)
  holds the cluster *shared*, so several such tests submit jobs at once and SLURM queues them on its 4 CPUs; a test
  marked `slurm_exclusive` holds it *exclusively* (no other SLURM test runs meanwhile): jobs that need a whole node
  or both nodes, partition preemption, time bounds that another test's jobs in the queue would break, and tests
  that stop cluster daemons. They also share one xdist group, so they run one after another on one worker instead
  of idling several workers that wait for each other;
- the machine: a test marked `serial` runs with no other test at all (for timing that needs a quiet machine);
- order: slow tests, then SLURM tests, start first, so the last minutes are not one long test on one worker.

The locks are reader-writer file locks with writer preference (a waiting exclusive holder stops new shared ones, so
it is not starved), in a folder of this run only (keyed by xdist's run id). Without xdist nothing is locked: one
process runs one test at a time anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures that reach the local SLURM cluster: a test that asks for one is a SLURM test.
CLUSTER_FIXTURES = ("slurm_cluster", "two_node_cluster")
EXCLUSIVE_GROUP = "slurm_exclusive"
# Waits for a lock longer than this are reported at the end of the run (how much the locks cost).
REPORT_WAIT_S = 5.0


def worker_count() -> int:
    """The number of xdist workers of this run; 1 without xdist."""
    return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))


def threads_per_worker() -> int:
    """Each worker's share of the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // worker_count())


def cap_threads() -> None:
    """Under xdist, give torch/OpenMP/MKL each worker's share of the cores, unless the caller set them. Runs when
    this plugin is imported (conftest's pytest_plugins): before any test module imports torch, which reads
    OMP_NUM_THREADS once."""
    if worker_count() > 1:
        share = str(threads_per_worker())
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, share)


cap_threads()


def lock_dir(config: pytest.Config) -> Path | None:
    """The folder of this xdist run's locks (shared by its workers), None outside an xdist worker. Asks the config,
    not the environment: a pytest that a test starts inherits PYTEST_XDIST_* but is no worker, and must not queue
    for locks its parent test holds."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    folder = Path(tempfile.gettempdir()) / f"dpo_sweeps_tests_{workerinput['testrunuid']}"
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def rw_lock(folder: Path, name: str, exclusive: bool) -> Iterator[None]:
    """A reader-writer lock across processes. flock alone lets new shared holders pass a waiting exclusive one
    forever; the gate (held by an exclusive holder from the moment it waits) makes them queue behind it."""
    with open(folder / f"{name}.gate", "a+") as gate, open(folder / f"{name}.lock", "a+") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            if exclusive:
                fcntl.flock(lock, fcntl.LOCK_EX)
            else:
                fcntl.flock(lock, fcntl.LOCK_SH)
                fcntl.flock(gate, fcntl.LOCK_UN)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def pytest_configure(config: pytest.Config) -> None:
    """On the xdist controller: name the run, so that the lock folder is known here too and removed at the end."""
    controller = getattr(config, "workerinput", None) is None
    if controller and getattr(config.option, "numprocesses", None) and not config.getoption("testrunuid", None):
        config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    run = getattr(config.option, "testrunuid", None)
    if getattr(config, "workerinput", None) is None and run:
        shutil.rmtree(Path(tempfile.gettempdir()) / f"dpo_sweeps_tests_{run}", ignore_errors=True)


def uses_cluster(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in CLUSTER_FIXTURES)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouping = config.pluginmanager.hasplugin("xdist")
    for item in items:
        exclusive = item.get_closest_marker("slurm_exclusive") is not None
        if (exclusive or uses_cluster(item)) and not item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slurm)
        if exclusive and grouping:
            item.add_marker(pytest.mark.xdist_group(EXCLUSIVE_GROUP))
    # A stable sort: every worker collects the same order (xdist checks), and each file keeps its own order.
    items.sort(key=lambda item: (not item.get_closest_marker("slow"), not item.get_closest_marker("slurm")))


def _needs(item: pytest.Item) -> tuple[str, str | None]:
    """How the test holds the machine and the cluster: "ex"clusive, "sh"ared, or (cluster) not at all."""
    machine = "ex" if item.get_closest_marker("serial") else "sh"
    if not item.get_closest_marker("slurm"):
        return machine, None
    return machine, "ex" if item.get_closest_marker("slurm_exclusive") else "sh"


# This worker's locks between tests: an exclusive hold is kept while the next test needs the same (the exclusive
# group runs back to back without letting other tests in between); a shared hold never is, or it could starve a
# waiting exclusive one.
_held: dict = {"needs": None, "stack": None}


def _release() -> None:
    if _held["stack"] is not None:
        _held["stack"].close()
    _held.update(needs=None, stack=None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    folder = lock_dir(item.config)
    if folder is None:
        return (yield)
    needs = _needs(item)
    try:
        if _held["needs"] != needs:
            _release()
            started = time.monotonic()
            stack = contextlib.ExitStack()
            _held.update(needs=needs, stack=stack)
            # Always machine first, then cluster: one order for everyone, so no two tests wait in a cycle.
            stack.enter_context(rw_lock(folder, "machine", exclusive=needs[0] == "ex"))
            if needs[1] is not None:
                stack.enter_context(rw_lock(folder, "cluster", exclusive=needs[1] == "ex"))
            waited = time.monotonic() - started
            if waited > REPORT_WAIT_S:
                item.user_properties.append(("lock_wait_s", round(waited, 1)))
        return (yield)
    finally:
        if nextitem is None or _needs(nextitem) != needs or "ex" not in needs:
            _release()


_waits: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller: the lock waits the workers recorded (they travel with the setup report)."""
    for key, value in report.user_properties:
        if key == "lock_wait_s" and report.when == "setup":
            _waits[report.nodeid] = value


def pytest_terminal_summary(terminalreporter) -> None:
    if _waits:
        longest = max(_waits, key=_waits.__getitem__)
        terminalreporter.write_line(
            f"xdist locks: {len(_waits)} test(s) waited {sum(_waits.values()):.0f} s in all for the cluster or the "
            f"machine (longest {_waits[longest]:.0f} s: {longest})"
        )
