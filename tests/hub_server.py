"""A minimal Hugging Face Hub on 127.0.0.1 for the tests: local folders served as model and dataset repos.

Only the routes huggingface_hub's snapshot download, `hf_hub_download` and our pre-launch check use (HF_ENDPOINT points
here): repo info at /api/{models,datasets}/<repo>[/revision/<rev>], the file tree at .../tree/<rev>, and files at
[/datasets]/<repo>/resolve/<rev>/<file>. Every request is counted, so a test can assert that an offline job asked for
nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class Hub:
    def __init__(self, repos: dict[tuple[str, str], Path]):
        # (kind, repo_id) -> folder; kind is "model" or "dataset".
        self.repos = {key: Path(folder) for key, folder in repos.items()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, key) -> list[str]:
        root = self.repos[key]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def _find(self, kind: str, rest: str):
        """The repo a path names (repo ids hold one slash) and what follows it."""
        parts = rest.split("/")
        key = (kind, "/".join(parts[:2]))
        return (key, "/".join(parts[2:])) if key in self.repos else (None, "")

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        api = re.match(r"^/api/(models|datasets)/(.+)$", path)
        if api:
            key, tail = self._find(api.group(1)[:-1], api.group(2))
            if key is None:
                return self._send(
                    handler, 404, b'{"error": "Repository not found"}', body, {"X-Error-Code": "RepoNotFound"}
                )
            sha = _sha(key[1])
            if tail == "" or tail.startswith("revision/"):
                info = {
                    "id": key[1],
                    "sha": sha,
                    "private": False,
                    "siblings": [{"rfilename": f} for f in self._files(key)],
                }
                return self._send(handler, 200, json.dumps(info).encode(), body, {"Content-Type": "application/json"})
            if tail.startswith("tree/"):
                root = self.repos[key]
                entries = [
                    {"type": "file", "path": f, "size": (root / f).stat().st_size, "oid": _sha(f + sha)}
                    for f in self._files(key)
                ]
                return self._send(
                    handler, 200, json.dumps(entries).encode(), body, {"Content-Type": "application/json"}
                )
            return self._send(handler, 404, b"{}", body)
        kind, rest = ("dataset", path[len("/datasets/") :]) if path.startswith("/datasets/") else ("model", path[1:])
        key, tail = self._find(kind, rest)
        resolved = re.match(r"^resolve/[^/]+/(.+)$", tail) if key else None
        if not resolved or not (self.repos[key] / resolved.group(1)).is_file():
            return self._send(
                handler, 404, b"not found", body, {"X-Error-Code": "EntryNotFound" if key else "RepoNotFound"}
            )
        data = (self.repos[key] / resolved.group(1)).read_bytes()
        sha = _sha(key[1])
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_sha(resolved.group(1) + sha)}"'}
        return self._send(handler, 200, data, body, headers)

    @staticmethod
    def _send(handler, code: int, data: bytes, body: bool, headers: dict | None = None) -> None:
        handler.send_response(code)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)
