"""How the suite runs its tests side by side (`make test` runs pytest-xdist: `-n N --dist loadgroup`).

Most of the suite's wall time is spent waiting (SLURM's queue and polls, job start-up, collective timeouts), so
`make test` runs more workers than the machine has cores. This plugin (conftest.py loads it) keeps that safe:

- threads: each worker's torch/OpenMP gets its share of the cores (cores // workers, at least 1), so workers do not
  oversubscribe the machine; the CLI runs the tests start inherit the share through the environment (a run with
  `training.cpu_threads: null` reads it from DPO_SWEEPS_POINTS_AT_ONCE, as the points of a local parallel sweep do);
- the local SLURM cluster: a test that uses it (marker `slurm`, added to every test that asks for a cluster fixture)
  holds the cluster *shared*, so several such tests submit jobs at once and SLURM queues them on its 4 CPUs; a test
  marked `slurm_exclusive` holds it *exclusively* (no other SLURM test runs meanwhile): jobs that need a whole node
  or both nodes, partition preemption, time bounds that another test's jobs in the queue would break, and tests
  that stop cluster daemons. They also share one xdist group, so they run one after another on one worker instead
  of idling several workers that wait for each other;
- the machine: a test marked `serial` runs with no other test at all (for timing that needs a quiet machine); the
  serial tests share one xdist group too;
- order (`order`): the exclusive group first (it starts at once on one worker, while the other workers take the
  slow tests that need no cluster instead of queueing for it), then slow tests, SLURM ones last among them, then
  the other SLURM tests, then the rest: the last minutes are short tests spread over every worker, not one long
  test. The serial group comes last: it waits for the tests running beside it to end (and stops new ones meanwhile),
  which at the end are short ones; at the start, a worker a moment quicker could begin a 5-minute test first.

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
SERIAL_GROUP = "serial"
# What train/cluster.py reads (a literal: importing dpo_sweeps.train here would import it before every test).
POINTS_AT_ONCE_ENV = "DPO_SWEEPS_POINTS_AT_ONCE"
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
        # training.cpu_threads=null sets torch's threads itself (train/cluster.py: cpu_threads), from the cores and
        # how many points run at once: tell it the workers are that many, or each such run takes every core (the
        # SmolLM2 test at 2 threads beside two busy workers ran ~3x slower than at 1; docs/local.md measured it).
        os.environ.setdefault(POINTS_AT_ONCE_ENV, str(worker_count()))


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
    """On the xdist controller: name the run, so that the lock folder is known here too and removed at the end. On a
    worker: put the grouped tests into their groups (_GroupNames)."""
    controller = getattr(config, "workerinput", None) is None
    if not controller:
        config.pluginmanager.register(_GroupNames(), "dpo_sweeps_group_names")
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
        if item.get_closest_marker("serial") and item.get_closest_marker("slurm"):
            raise pytest.UsageError(f"{item.nodeid}: a serial test cannot use the SLURM cluster (tests/parallel.py)")
        if grouping and item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
        elif exclusive and grouping:
            item.add_marker(pytest.mark.xdist_group(EXCLUSIVE_GROUP))
    # A stable sort: every worker collects the same order (xdist checks), and each file keeps its own order. xdist's
    # loadgroup hands out the work units (a test, or a whole group) in this order as workers free up.
    items.sort(key=order)


class _GroupNames:
    """xdist (3.8) puts a test into its xdist_group by appending "@<group>" to `item._nodeid`, which pytest 9 no longer
    reads (a node's id is `item._id` there): without this, `--dist loadgroup` runs every grouped test wherever, the
    exclusive tests on three workers that then wait for each other. Appends the group where xdist's did not stick."""

    @pytest.hookimpl(trylast=True)  # after xdist's own hook
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not config.getvalue("loadgroup"):
            return
        for item in items:
            marks = item.iter_markers("xdist_group")
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
            if names and "@" not in item.nodeid.rpartition("]")[2]:
                from _pytest.nodeid import NodeId  # pytest 9's; only reached where xdist's suffix did not stick

                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


def order(item: pytest.Item) -> int:
    """Where a test starts in the run: the exclusive group, slow tests without then with the cluster, other SLURM
    tests, the rest, the serial group (the module docstring says why)."""
    slow, slurm = item.get_closest_marker("slow") is not None, item.get_closest_marker("slurm") is not None
    if item.get_closest_marker("serial"):
        return 5
    if item.get_closest_marker("slurm_exclusive"):
        return 0
    if slow:
        return 2 if slurm else 1
    return 3 if slurm else 4


def _needs(item: pytest.Item | None) -> dict[str, str | None]:
    """How the test holds the machine and the cluster: "ex"clusive, "sh"ared, or (cluster) not at all."""
    if item is None:
        return {"machine": None, "cluster": None}
    cluster = None
    if item.get_closest_marker("slurm"):
        cluster = "ex" if item.get_closest_marker("slurm_exclusive") else "sh"
    return {"machine": "ex" if item.get_closest_marker("serial") else "sh", "cluster": cluster}


# This worker's locks between tests, per lock: an exclusive hold is kept while the next test needs the same (the
# exclusive group runs back to back without letting other SLURM tests in between); a shared hold never is, or it
# could starve a waiting exclusive one. Kept one by one, so the exclusive group does not hold the machine between its
# tests: a serial test waiting for the machine gets it between two of them instead of after the whole group.
_held: dict[str, tuple[str, contextlib.ExitStack]] = {}
# Always cluster first, then machine: one order for everyone, so no two tests wait in a cycle (the exclusive group
# holds the cluster while it takes the machine for its next test; a serial test never takes the cluster).
LOCKS = ("cluster", "machine")


def _release(name: str) -> None:
    if name in _held:
        _held.pop(name)[1].close()


def _take(folder: Path, name: str, mode: str | None) -> None:
    if mode is None or (name in _held and _held[name][0] == mode):
        return
    stack = contextlib.ExitStack()
    stack.enter_context(rw_lock(folder, name, exclusive=mode == "ex"))
    _held[name] = (mode, stack)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    folder = lock_dir(item.config)
    if folder is None:
        return (yield)
    needs = _needs(item)
    try:
        for name in reversed(LOCKS):  # what this test does not need as held: released, the last taken first
            if name in _held and _held[name][0] != needs[name]:
                _release(name)
        started = time.monotonic()
        for name in LOCKS:
            _take(folder, name, needs[name])
        waited = time.monotonic() - started
        if waited > REPORT_WAIT_S:
            item.user_properties.append(("lock_wait_s", round(waited, 1)))
        return (yield)
    finally:
        following = _needs(nextitem)
        for name in reversed(LOCKS):
            if needs[name] != "ex" or following[name] != "ex":
                _release(name)


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
