"""`python -m dpo_sweeps.dashboard <sweep>`: optuna-dashboard on a real Optuna journal, opened in headless chromium
(the study and its trial count appear), stopped by Ctrl-C (exit 0, port free); one-line errors otherwise."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from dpo_sweeps.report import browser
from tests.test_report import REPO
from tests.test_summary_page import chromium  # noqa: F401  (the fixture: skip without chromium, fail under CI)

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_dashboard")

STUDY = "beta_search"
TRIALS = 5


def write_study(sweep):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    sweep.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(sweep / "optuna_journal.log")))
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("beta", 0.01, 1.0, log=True), n_trials=TRIALS)


def start(sweep) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_sweeps.dashboard", str(sweep), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # the URL line; the server is listening once it is printed
    match = re.search(r"http://[\d.]+:\d+/", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(0)


def text_of(dom: str) -> str:
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", dom[dom.find("<body") :], flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


@pytest.mark.slow
def test_dashboard_lists_the_study_and_stops_on_ctrl_c(tmp_path, chromium):  # noqa: F811
    sweep = tmp_path / "search"
    write_study(sweep)
    proc, url = start(sweep)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        home, log = browser.dump_dom_and_log(url, budget_ms=8000)
        assert STUDY in text_of(home), text_of(home)[:2000]
        assert browser.script_errors(log) == [], log[-3000:]
        trials = text_of(browser.dump_dom(url + "dashboard/studies/0/trials", budget_ms=8000))
        assert f"{TRIALS} Trials" in trials and f"Trial {TRIALS - 1} Complete" in trials, trials[:2000]
        png = browser.screenshot(url + "dashboard/studies/0", tmp_path / "dashboard.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()
    assert "dashboard stopped" in proc.stdout.read()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpo_sweeps.dashboard", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_folder_without_a_journal_is_one_line(tmp_path):
    proc = run(str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "has no Optuna journal (optuna_journal.log)" in proc.stderr
    proc = run(str(tmp_path / "missing"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_port_in_use_is_one_line(tmp_path):
    write_study(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        start_s = time.time()
        proc = run(str(tmp_path), "--port", str(s.getsockname()[1]))
    assert proc.returncode == 2 and "cannot listen on 127.0.0.1:" in proc.stderr and "--port" in proc.stderr
    assert proc.stderr.count("\n") == 1 and time.time() - start_s < 60


def test_missing_optuna_dashboard_is_named(tmp_path):
    write_study(tmp_path)
    # The real package hidden from this one process (a None entry in sys.modules makes its import fail).
    code = (
        "import sys; sys.modules['optuna_dashboard'] = None; from dpo_sweeps.dashboard.server import main; "
        f"sys.exit(main([{str(tmp_path)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "optuna-dashboard is not installed" in proc.stderr
    assert "pip install" in proc.stderr and proc.stderr.count("\n") == 1
