"""`python -m dpo_sweeps.dashboard <sweep folder> [--host H] [--port P]`: optuna-dashboard on the sweep's study.

The study is the Optuna journal the search driver writes into the sweep folder (optuna_journal.log), or the one its
optimization_results.yaml names (hydra.sweeper.storage=<path>). optuna-dashboard reads journal files directly (its
Docker image does not). Prints the URL, serves until Ctrl-C or SIGTERM, then closes the port and exits 0. A folder
without a journal, a missing optuna-dashboard, or a port in use are said in one line (exit 2).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dpo_sweeps.search.files import JOURNAL_FILE, RESULTS_FILE

EXIT_OK, EXIT_USAGE = 0, 2


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: the dashboard's page fetches several API routes at once."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # one line per request would bury the URL


def find_journal(sweep_dir: Path) -> Path | None:
    """The sweep's journal: <sweep>/optuna_journal.log, else the `journal:` its optimization_results.yaml records."""
    default = sweep_dir / JOURNAL_FILE
    if default.is_file():
        return default
    try:
        text = (sweep_dir / RESULTS_FILE).read_text()
    except OSError:
        return None
    match = re.search(r"^journal:\s*['\"]?(.+?)['\"]?\s*$", text, re.MULTILINE)
    path = Path(match.group(1)) if match else None
    return path if path and path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_sweeps.dashboard",
        description="Serve optuna-dashboard on a search sweep's study (its Optuna journal); Ctrl-C stops it.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder of a hparams_search run (outputs/sweeps/<name>)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    args = parser.parse_args(argv)

    if not args.sweep_dir.is_dir():
        return _error(f"{args.sweep_dir} is not a folder: give a sweep folder, e.g. outputs/sweeps/<name>")
    journal = find_journal(args.sweep_dir)
    if journal is None:
        return _error(
            f"{args.sweep_dir} has no Optuna journal ({JOURNAL_FILE}): only a search (hparams_search=...) writes one; "
            "for a grid sweep open its summary.html"
        )
    try:
        import optuna_dashboard
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError as e:
        return _error(f"optuna-dashboard is not installed ({e.name} missing): pip install 'optuna-dashboard>=0.21,<0.22' "
                      "(the search extra: pip install -e '.[search]')")  # fmt: skip
    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        server = make_server(args.host, args.port, optuna_dashboard.wsgi(storage), _Server, _QuietHandler)
    except OSError as e:
        return _error(f"cannot listen on {args.host}:{args.port} ({e.strerror}): pick another with --port")
    # SIGTERM (kill, a closed session's job control) stops it like Ctrl-C: the port is closed either way.
    signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C stops it even where SIGINT came in ignored (started with `&` from a script: Python then keeps it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"optuna-dashboard on {journal}: http://{args.host}:{server.server_port}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("dashboard stopped", flush=True)
    return EXIT_OK


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE
