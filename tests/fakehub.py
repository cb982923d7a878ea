"""A fake Hugging Face Hub on 127.0.0.1 for the download tests (data, llama2.c, tinylib.download).

What it does: serves HEAD and GET of /{repo}/resolve/{revision}/{file} (datasets: /datasets/{repo}/...) from
an in-memory dict, with the headers huggingface_hub needs (ETag = sha256 of the bytes, so replacing a file
changes it; X-Repo-Commit; Content-Length) and Range requests. Tests can drop a connection after N bytes, make
GETs answer an error status, make HEAD announce a wrong size, and read the request log.
What it leaves to the tests: which files exist, and their own fixtures (`yield from serve(monkeypatch, ...)`).
Import it as `from fakehub import ...`: pytest puts tests/ on sys.path
(no __init__.py, "prepend" import mode).
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator

import pytest


class FakeHub(http.server.ThreadingHTTPServer):
    """The Hub's file endpoint; with `repo` set (e.g. "datasets/roneneldan/TinyStories"),
    only that repo exists."""

    def __init__(self, files: dict[str, bytes] | None = None, repo: str | None = None):
        self.files = dict(files or {})  # path inside the repo -> bytes
        self.repo = repo
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.drop_after: dict[str, int] = {}  # file -> bytes sent before the connection drops (once)
        self.status: int | None = None  # when set, GETs of existing files answer it with no body
        # `status` becomes this after a drop: the network "stays down"
        self.status_after_drop: int | None = None
        self.size_lie: dict[str, int] = {}  # file -> size announced by HEAD instead of the real one
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):
        pass

    def _reply(self, status: int, headers: dict[str, str]):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _serve(self, body: bool):
        hub = self.server
        hub.log.append((self.command, self.path, self.headers.get("Range")))
        m = re.fullmatch(r"/(.+?)/resolve/[^/]+/(.+)", self.path.split("?")[0])
        data = hub.files.get(m.group(2)) if m and hub.repo in (None, m.group(1)) else None
        if data is None:
            return self._reply(404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})
        if body and hub.status is not None:
            return self._reply(hub.status, {"Content-Length": "0"})
        name = m.group(2)
        asked = self.headers.get("Range") or "bytes=0-"  # "bytes=a-b" or "bytes=a-"
        first, _, last = asked[6:].partition("-")
        start, end = int(first), min(int(last) + 1, len(data)) if last else len(data)
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": "a" * 40,
                   "Accept-Ranges": "bytes", "Content-Length": str(end - start)}
        if not body:
            headers["Content-Length"] = str(hub.size_lie.get(name, len(data)))
        partial = start > 0 or end < len(data)
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self._reply(206 if partial else 200, headers)
        if body:
            cut = hub.drop_after.pop(name, None) if start == 0 else None
            if cut is not None and hub.status_after_drop is not None:
                hub.status = hub.status_after_drop
            self.wfile.write(data[start:end][:cut])

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes] | None = None,
          repo: str | None = None) -> Iterator[FakeHub]:
    """Run a FakeHub for one test and point huggingface_hub at it, online; for a fixture to `yield from`."""
    import huggingface_hub.constants

    hub = FakeHub(files, repo)
    threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once at import (conftest set it to 1); these tests go online.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
