"""A folder of cache entries shared by the jobs of a sweep: atomic entries, one writer per entry, stale locks broken.

Used by the reference log-prob cache (`train/ref_cache.py`, one `.npz` file per entry) and the prepared-data cache
(`data/cache.py`, one folder of Arrow files per entry). What an entry holds is the user's business; this module
owns the discipline that makes sharing safe:

- an entry appears atomically (the user writes a temp file or folder and renames it into place), so a reader never
  sees half an entry and a crashed writer leaves only a temp name nobody reads; deleting the folder is always safe;
- concurrent jobs compute an entry once: the first takes `<key>.lock` (O_CREAT|O_EXCL, holding pid, host, boot id,
  pid namespace and a heartbeat mtime), the others wait up to `lock_timeout_s` for the entry and then compute it
  themselves, polling with exponential back-off (poll_s doubling up to MAX_POLL_S, with jitter: hundreds of array
  tasks polling a metadata server every 0.2 s load it);
- a lock whose holder died is broken by the next job: on the holder's own machine (same host name, boot id and pid
  namespace, so the pid means the same process) when its pid is gone; anywhere when its heartbeat is older than
  STALE_LOCK_S. That age compares two mtimes the file server wrote (the lock's and a probe file's touched next to
  it just now), never this host's clock with the server's: a node whose clock is off by minutes neither breaks a
  live lock nor waits on a dead one.

Imports only the standard library: the store runs on any node.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

# The holder touches its lock every HEARTBEAT_S; a lock untouched for STALE_LOCK_S is from a dead job (another host).
HEARTBEAT_S = 10.0
STALE_LOCK_S = 120.0
# Waiting for another job's entry: poll_s, doubled after every look up to this, each sleep jittered by +-25%.
MAX_POLL_S = 5.0
HIT, COMPUTED, OFF = "hit", "computed", "off"

T = TypeVar("T")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, read in 4 MiB blocks: what cache keys use to identify a source file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, marker: str = "config.json"):
    """Yields a temp folder beside `dest` to fill; renames it into place when the block ends without error. A
    concurrent writer that finished first wins (its folder, with `marker`, is identical by construction: keep it); a
    failed block leaves nothing under `dest`. For model folders that jobs build once and share (tiny models, the GGUF
    conversion)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by the jobs of several users
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / marker).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def machine_identity() -> dict[str, str | None]:
    """Where a pid means this process: the host name, the kernel's boot id (a reboot or another machine with the same
    name differs) and the pid namespace (a container on the same kernel differs)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pidns": pidns,
    }


def backoff_delays(first_s: float, max_s: float = MAX_POLL_S, rng: random.Random | None = None):
    """Endless sleeps for a poll loop: first_s, doubling up to max_s, each jittered by +-25%."""
    rng = rng or random.Random()
    delay = first_s
    while True:
        yield delay * rng.uniform(0.75, 1.25)
        delay = min(max_s, delay * 2)


class LockedStore:
    """Entries under `root/<key[:2]>/` and their locks (`<key>.lock`), safe for concurrent processes and hosts.

    `label` names the cache in log lines ("Reference cache", "Data cache")."""

    label = "Cache"

    def __init__(self, root: str | os.PathLike, lock_timeout_s: float, poll_s: float = 0.2):
        self.root = Path(root).expanduser()
        self.lock_timeout_s = lock_timeout_s
        self.poll_s = poll_s

    def lock_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lock"

    # ----- locking

    def _try_lock(self, key: str) -> str | None:
        """Create the lock file atomically; return our token, or None if another job holds it."""
        path = self.lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), **machine_identity(), "token": token, "since": time.time()}, f)
        return token

    def server_now(self, folder: Path) -> float:
        """The file server's clock, read as the mtime it gives a probe file this process writes now (in `folder`,
        next to the lock, so on the same server)."""
        probe = folder / f".clock-probe-{socket.gethostname()}-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0")  # a write: the server stamps the mtime with its own clock
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _lock_age(self, path: Path) -> float:
        """Seconds since the lock's last heartbeat, both ends stamped by the file server."""
        return self.server_now(path.parent) - path.stat().st_mtime

    def _lock_is_stale(self, key: str) -> bool:
        path = self.lock_path(key)
        try:
            age = self._lock_age(path)
            holder = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            return False
        except json.JSONDecodeError:
            # Created but not yet written by its holder (a few microseconds), or written by a job killed right then.
            return age > STALE_LOCK_S
        here = machine_identity()
        # The pid says something only on the holder's own machine and pid namespace; elsewhere only the heartbeat.
        same_machine = all(holder.get(k) is not None and holder.get(k) == here[k] for k in ("host", "boot_id"))
        same_machine = same_machine and holder.get("pidns") == here["pidns"]
        if same_machine and not pid_alive(int(holder.get("pid", -1))):
            return True
        return age > STALE_LOCK_S

    def _break_stale_lock(self, key: str) -> None:
        # Rename first (atomic, only one job wins), then delete: two jobs breaking the same stale lock at once do not
        # delete a fresh lock taken in between by a third.
        aside = self.lock_path(key).with_suffix(f".stale.{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.lock_path(key), aside)
            aside.unlink()
            log.warning("%s: broke the stale lock of %s (its holder died).", self.label, key)

    def _release(self, key: str, token: str) -> None:
        path = self.lock_path(key)
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if json.loads(path.read_text()).get("token") == token:
                path.unlink()

    @contextlib.contextmanager
    def _heartbeat(self, key: str):
        stop = threading.Event()

        def beat():
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.lock_path(key))

        thread = threading.Thread(target=beat, name=f"cache-heartbeat-{key[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def get_or_compute_with(
        self, key: str, load: Callable[[], T | None], compute_and_save: Callable[[], T], timeout_setting: str
    ) -> tuple[T, str]:
        """`load()`'s entry and HIT, or `compute_and_save()`'s (which stores it atomically) and COMPUTED.

        One job computes, the others wait for its entry; `timeout_setting` names the config key of `lock_timeout_s`
        in the message of a job that stops waiting."""
        deadline = time.monotonic() + self.lock_timeout_s
        waited = False
        delays = backoff_delays(self.poll_s)
        while True:
            found = load()
            if found is not None:
                return found, HIT
            token = self._try_lock(key)
            if token is not None:
                try:
                    # Another job may have finished between our load() and our lock.
                    found = load()
                    if found is not None:
                        return found, HIT
                    with self._heartbeat(key):
                        return compute_and_save(), COMPUTED
                finally:
                    self._release(key, token)
            if self._lock_is_stale(key):
                self._break_stale_lock(key)
                continue
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: waited %s=%s s for another job computing %s; computing it here too (the entry is written "
                    "atomically, so both results are safe).",
                    self.label,
                    timeout_setting,
                    self.lock_timeout_s,
                    key,
                )
                return compute_and_save(), COMPUTED
            if not waited:
                log.info("%s: another job is computing %s; waiting for it.", self.label, key[:12])
                waited = True
            time.sleep(max(0.0, min(next(delays), deadline - time.monotonic())))
