"""A page open in headless chromium that a script can talk to (the DevTools protocol over a pipe), for what a dumped
DOM cannot tell: real-time timings and real clicks (`make bench-report`, the browser tests).

    with live_page("summary.html") as tab:
        tab.wait_for("document.body?.dataset.usableMs")    # polls the expression until it is truthy
        tab.click("#rows tr a")                              # a mouse press and release at the element's centre
        tab.evaluate("document.getElementById('detail-name').textContent")
        tab.screenshot(out_png); tab.errors                  # the page's uncaught exceptions, console errors

Why not `--dump-dom --virtual-time-budget` (browser.py) for timings: under virtual time the page's clock stands still
while its tasks run once the page has loaded, so anything drawn after load reads as taking no time at all.
The protocol is JSON messages ended by a NUL byte: we write to the browser's fd 3 and read from its fd 4
(`--remote-debugging-pipe`). No network port is opened.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpo_sweeps.report.browser import TIMEOUT_S, chromium_args, chromium_path, url


class BrowserError(RuntimeError):
    """The browser answered with an error, died, or did not answer in time."""


class Tab:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.to_browser, self.from_browser = proc, to_browser, from_browser
        self.next_id, self.buffer, self.session = 0, b"", None
        self.errors: list[str] = []  # the page's uncaught exceptions and console.error lines, as they arrive

    def send(self, method: str, params: dict | None = None, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """One command; its result (events that arrive in between are dropped: nothing here listens to them)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):  # those go to the browser itself
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                self._note(reply)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error'].get('message')}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise BrowserError(f"{method}: no answer from chromium within {timeout:.0f} s")
            if select.select([self.from_browser], [], [], min(left, 1.0))[0]:
                self.buffer += os.read(self.from_browser, 1 << 20)

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))

    def screenshot(self, out: Path) -> Path:
        """What the page shows now, as a PNG."""
        out = Path(out)
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return out

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (promises awaited); a script exception raises BrowserError."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def _evaluate_while_loading(self, expression: str) -> Any:
        try:
            return self.evaluate(expression)
        except BrowserError as e:  # the page being navigated to replaces the one the expression ran in: not yet
            if "context" in str(e).lower():
                return None
            raise

    def wait_for(self, expression: str, timeout: float = TIMEOUT_S, every: float = 0.05) -> Any:
        """Polls `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self._evaluate_while_loading(expression)):
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(every)
        return value

    def click(self, selector: str) -> None:
        """Scrolls the element into view and clicks its centre with the mouse, as a person would."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing on the page matches {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})  # fmt: skip


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered 10 or above, so that moving the pipes to 3 and 4 in the child cannot clobber them."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


@contextlib.contextmanager
def live_page(page: str | Path, fragment: str = "", size: str = "1400,1000") -> Iterator[Tab]:
    """`page` opened in a fresh headless chromium, with a Tab to talk to it; the browser is gone afterwards."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install -y chromium)")
    to_read, to_write = (_high_fd(fd) for fd in os.pipe())  # browser reads commands from its fd 3
    from_read, from_write = (_high_fd(fd) for fd in os.pipe())  # and writes answers to its fd 4

    def child_fds() -> None:
        os.dup2(to_read, 3)
        os.dup2(from_write, 4)

    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        cmd = [binary, *chromium_args(profile), "--remote-debugging-pipe", f"--window-size={size}", "about:blank"]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=child_fds,  # our own fds are not inheritable (PEP 446): only 3 and 4 pass
        )  # fmt: skip
        os.close(to_read)
        os.close(from_write)
        tab = Tab(proc, to_write, from_read)
        try:
            target = tab.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            tab.session = tab.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            tab.send("Runtime.enable")  # before the page loads: all its exceptions and console errors reach tab.errors
            tab.send("Page.navigate", {"url": url(page, fragment)})
            yield tab
        finally:
            with contextlib.suppress(BrowserError, OSError):
                tab.send("Browser.close", timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(to_write)
            os.close(from_read)
