"""Headless chromium, to check the pages we write the way a person sees them (the suite, `make bench-report`).

    dump_dom(page, fragment="point=beta=0.1")   # the page's DOM after its scripts ran, opened at page#<fragment>
    screenshot(page, out_png)

Runs Debian's `chromium` as root-safe as it gets in a container (--no-sandbox) with a fresh profile each time, no
GPU, no network services (no sync, no component updates). The page's console messages go to the returned stderr
(--enable-logging=stderr), so a caller can look for script errors there too.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 90


def chromium_path() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def chromium_args(profile: str) -> list[str]:
    """Our switches, `profile` a fresh user data folder."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        # WebGL (Plotly's parallel coordinates) in software, without the deprecation notice on every page.
        "--enable-unsafe-swiftshader",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
    ]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        cmd = [binary, *chromium_args(profile), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def url(page: str | Path, fragment: str = "") -> str:
    """A file:// URL for a local page, or `page` itself when it already is a URL."""
    base = page if isinstance(page, str) and "://" in page else Path(page).absolute().as_uri()
    return base + (f"#{fragment}" if fragment else "")


def dump_dom(page: str | Path, fragment: str = "", budget_ms: int = 5000, timeout: float = TIMEOUT_S) -> str:
    """The DOM once the page's scripts ran (`--virtual-time-budget` lets timers and promises finish)."""
    return dump_dom_and_log(page, fragment, budget_ms, timeout)[0]


def dump_dom_and_log(
    page: str | Path, fragment: str = "", budget_ms: int = 5000, timeout: float = TIMEOUT_S
) -> tuple[str, str]:
    """(DOM, chromium's stderr with the page's console messages)."""
    proc = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url(page, fragment)], timeout)
    return proc.stdout, proc.stderr


def screenshot(
    page: str | Path, out: Path, fragment: str = "", size: str = "1400,1000", timeout: float = TIMEOUT_S
) -> Path:
    out = Path(out).absolute()
    _run(["--virtual-time-budget=5000", f"--window-size={size}", f"--screenshot={out}", url(page, fragment)], timeout)
    return out


def script_errors(log: str) -> list[str]:
    """The page's uncaught script errors from chromium's console log lines."""
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
