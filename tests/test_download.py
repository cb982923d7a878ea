"""tinylib.download against a fake Hub on 127.0.0.1: resume across calls, changed files, size checks, offline.

The data and llama2.c tests go through the same code via download_tinystories / download_llama2c; these tests
drive hub_download directly to show what survives between calls (the `.part` file and its sidecar).
"""

from __future__ import annotations

import hashlib
import http.server
import random
import threading

import pytest
from huggingface_hub.errors import HfHubHTTPError

from tinylib.download import SizeMismatchError, hub_download

REPO = "karpathy/tinyllamas"
BIG = "stories/big.bin"
# Larger than huggingface_hub's 10 MiB write chunk, so a dropped connection leaves bytes in the .part file.
BIG_SIZE, DROP_AT = 12_000_000, 11_000_000


class _Hub(http.server.ThreadingHTTPServer):
    """Serves /{repo}/resolve/{rev}/{file} and /datasets/{repo}/resolve/{rev}/{file} with Range support."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.drop_after: dict[str, int] = {}  # file -> bytes sent before the connection drops (once)
        self.down = False  # after a drop, GETs answer 503 until a test sets this back: the network "stays down"
        self.size_lie: dict[str, int] = {}  # file -> size announced by HEAD instead of the real one
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status: int, headers: dict[str, str]):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _serve(self, body: bool):
        hub: _Hub = self.server
        hub.log.append((self.command, self.path, self.headers.get("Range")))
        name = self.path.split("/resolve/", 1)[-1].split("/", 1)[-1]
        data = hub.files.get(name)
        if data is None:
            return self._reply(404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})
        if body and hub.down:
            return self._reply(503, {"Content-Length": "0"})
        start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") else 0
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": "a" * 40,
                   "Accept-Ranges": "bytes", "Content-Length": str(len(data) - start)}
        if not body:
            headers["Content-Length"] = str(hub.size_lie.get(name, len(data)))
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._reply(206 if start else 200, headers)
        if body:
            cut = hub.drop_after.pop(name, None) if start == 0 else None
            hub.down = hub.down or cut is not None
            self.wfile.write(data[start:cut])

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    server = _Hub()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_HUB_OFFLINE once at import (conftest set it to 1); these tests go online.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()


def _gets(hub: _Hub, since: int) -> list[str | None]:
    """The Range headers of the GETs since log entry `since` (None: a request for the whole file)."""
    return [r for c, _, r in hub.log[since:] if c == "GET"]


def _interrupted_download(hub: _Hub, tmp_path) -> tuple[bytes, int]:
    """A first call whose connection drops at DROP_AT and stays down: it fails and leaves a .part behind."""
    data = random.Random(0).randbytes(BIG_SIZE)
    hub.files[BIG] = data
    hub.drop_after[BIG] = DROP_AT
    with pytest.raises(HfHubHTTPError, match="503"):
        hub_download(REPO, BIG, tmp_path, progress=False)
    part = tmp_path / "stories" / "big.bin.part"
    kept = part.stat().st_size
    assert 0 < kept <= DROP_AT and data.startswith(part.read_bytes())
    assert (tmp_path / "stories" / "big.bin.part.json").is_file()
    assert not (tmp_path / BIG).exists()
    hub.down = False
    return data, kept


def test_resume_across_calls(hub, tmp_path):
    data, kept = _interrupted_download(hub, tmp_path)
    n = len(hub.log)
    path = hub_download(REPO, BIG, tmp_path, progress=False)
    assert path == tmp_path / BIG and path.read_bytes() == data
    assert _gets(hub, n) == [f"bytes={kept}-"]  # only the rest was fetched
    assert sorted(p.name for p in path.parent.iterdir()) == ["big.bin"]  # .part and sidecar are gone
    # Complete: returned again without any request.
    n = len(hub.log)
    assert hub_download(REPO, BIG, tmp_path) == path
    assert len(hub.log) == n


def test_changed_etag_restarts_from_zero(hub, tmp_path):
    _interrupted_download(hub, tmp_path)
    new = random.Random(1).randbytes(BIG_SIZE)  # same size, other bytes: only the ETag tells them apart
    hub.files[BIG] = new
    n = len(hub.log)
    path = hub_download(REPO, BIG, tmp_path, progress=False)
    assert path.read_bytes() == new
    assert _gets(hub, n) == [None]


def test_size_mismatch_is_a_clear_error_and_leaves_no_file(hub, tmp_path):
    hub.files["tok.model"] = b"x" * 1000
    hub.size_lie["tok.model"] = 1200
    with pytest.raises(SizeMismatchError, match=r"tok.model .* 1,000 bytes but the Hub announced 1,200 bytes"):
        hub_download(REPO, "tok.model", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # no final file, no .part, no sidecar


def test_dataset_repo_and_offline(hub, tmp_path, monkeypatch):
    hub.files["TinyStories-valid.txt"] = b"Once upon a time.\n<|endoftext|>\n"
    path = hub_download("roneneldan/TinyStories", "TinyStories-valid.txt", tmp_path, repo_type="dataset")
    assert path.read_bytes() == hub.files["TinyStories-valid.txt"]
    assert ("GET", "/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt", None) in hub.log
    # Offline: a complete file is returned, a missing one is a FileNotFoundError, and nothing touches the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    assert hub_download("roneneldan/TinyStories", "TinyStories-valid.txt", tmp_path, repo_type="dataset") == path
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        hub_download("roneneldan/TinyStories", "TinyStories-train.txt", tmp_path, repo_type="dataset")
    assert len(hub.log) == n
    # Online but not on the Hub: the Hub's error, and no partial file.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(HfHubHTTPError):
        hub_download("roneneldan/TinyStories", "TinyStories-train.txt", tmp_path, repo_type="dataset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TinyStories-valid.txt"]
