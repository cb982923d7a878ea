"""tinylib.download against a fake Hub on 127.0.0.1: resume across calls, changed files, size checks, offline.

tests/test_stories.py and tests/test_llama2c.py go through the same code via download_tinystories /
download_llama2c; these tests drive hub_download directly to show what survives between calls (the `.part`
file and its sidecar).
"""

from __future__ import annotations

import random

import pytest
from fakehub import FakeHub, serve
from huggingface_hub.errors import HfHubHTTPError

from tinylib.download import SizeMismatchError, hub_download, hub_download_prefix

REPO = "karpathy/tinyllamas"
BIG = "stories/big.bin"
# Larger than huggingface_hub's 10 MiB write chunk, so a dropped connection leaves bytes in the .part file.
BIG_SIZE, DROP_AT = 12_000_000, 11_000_000


@pytest.fixture
def hub(monkeypatch):
    yield from serve(monkeypatch)


def _gets(hub: FakeHub, since: int) -> list[str | None]:
    """The Range headers of the GETs since log entry `since` (None: a request for the whole file)."""
    return [r for c, _, r in hub.log[since:] if c == "GET"]


def _interrupted_download(hub: FakeHub, tmp_path) -> tuple[bytes, int]:
    """A first call whose connection drops at DROP_AT and stays down: it fails and leaves a .part behind."""
    data = random.Random(0).randbytes(BIG_SIZE)
    hub.files[BIG] = data
    hub.drop_after[BIG] = DROP_AT
    hub.status_after_drop = 503  # after the drop, GETs answer 503 until reset: the network "stays down"
    with pytest.raises(HfHubHTTPError, match="503"):
        hub_download(REPO, BIG, tmp_path, progress=False)
    part = tmp_path / "stories" / "big.bin.part"
    kept = part.stat().st_size
    assert 0 < kept <= DROP_AT and data.startswith(part.read_bytes())
    assert (tmp_path / "stories" / "big.bin.part.json").is_file()
    assert not (tmp_path / BIG).exists()
    hub.status = None
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
    announced = r"tok.model .* 1,000 bytes but the Hub announced 1,200 bytes"
    with pytest.raises(SizeMismatchError, match=announced):
        hub_download(REPO, "tok.model", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # no final file, no .part, no sidecar


def test_dataset_repo_and_offline(hub, tmp_path, monkeypatch):
    hub.files["TinyStories-valid.txt"] = b"Once upon a time.\n<|endoftext|>\n"
    path = hub_download("roneneldan/TinyStories", "TinyStories-valid.txt", tmp_path, repo_type="dataset")
    assert path.read_bytes() == hub.files["TinyStories-valid.txt"]
    assert ("GET", "/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt", None) in hub.log
    # Offline: a complete file is returned, a missing one is a FileNotFoundError, nothing touches the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    again = hub_download("roneneldan/TinyStories", "TinyStories-valid.txt", tmp_path, repo_type="dataset")
    assert again == path
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        hub_download("roneneldan/TinyStories", "TinyStories-train.txt", tmp_path, repo_type="dataset")
    assert len(hub.log) == n
    # Online but not on the Hub: the Hub's error, and no partial file.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(HfHubHTTPError):
        hub_download("roneneldan/TinyStories", "TinyStories-train.txt", tmp_path, repo_type="dataset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TinyStories-valid.txt"]


def test_a_prefix_of_no_bytes_is_refused(hub, tmp_path):
    with pytest.raises(ValueError, match="n_bytes=0: ask for a positive number of bytes"):
        hub_download_prefix(REPO, BIG, tmp_path / "x.bin", 0)
    assert not any(tmp_path.iterdir()) and not [c for c, _, _ in hub.log if c == "GET"]
