"""TinyStories text: parsing both file formats, finding local files, downloading through a fake Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakehub import serve

from tinylib import stories
from tinylib.stories import (
    HF_REPO,
    TINYSTORIES_FILES,
    download_tinystories,
    find_tinystories,
    iter_stories,
    parse_stories,
    quick_source,
    read_text,
)

TRAIN = "TinyStories-train.first2316.txt"
VALID = "TinyStories-valid.first1000.hf.txt"


# --- parsing ------------------------------------------------------------------------------------------------


def test_official_and_hf_formats_agree(tinystories_dir):
    official = parse_stories(read_text(tinystories_dir / TRAIN))
    assert len(official) == 2316
    assert official[0].startswith("One day, a little girl named Lily found a needle")
    # The same stories written the way the HF export writes them: paragraphs separated by blank lines.
    hf_text = "".join(s.replace("\n", "\n\n") + "\n<|endoftext|>\n" for s in official[:50])
    assert parse_stories(hf_text) == official[:50]
    assert any("\n" in s for s in official[:50])  # the check above compared real paragraph breaks

    valid = parse_stories(read_text(tinystories_dir / VALID))
    assert len(valid) == 1000 and valid[0].startswith("Spot. Spot saw the shiny car")
    assert not any("\n\n" in s for s in valid)
    assert sum("\n" in s for s in valid) > 500  # paragraph breaks kept, one newline each
    assert all(s == s.strip() and s for s in valid)


def test_parse_drops_empty_and_normalizes():
    text = "\n<|endoftext|>\n  A.\r\n\r\nB.  \n<|endoftext|>\n\n<|endoftext|>C.\n \nD."
    assert parse_stories(text) == ["A.\nB.", "C.\nD."]
    assert parse_stories("") == []


def test_streaming_reader_matches_parse(tinystories_dir):
    path = tinystories_dir / VALID
    assert list(iter_stories(path, block_size=4099)) == parse_stories(read_text(path))


def test_find_local_files(tinystories_dir, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_DIR", str(tinystories_dir))
    files = find_tinystories()
    assert files == {"train": tinystories_dir / TRAIN, "valid": tinystories_dir / VALID}
    v2 = find_tinystories(tinystories_dir, version="V2")
    assert set(v2) == {"train"} and v2["train"].name.startswith("TinyStoriesV2-GPT4-train")
    assert set(TINYSTORIES_FILES["V2"].values()) == {
        "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"}


# --- download through a fake Hub on 127.0.0.1 ---------------------------------------------------------------


@pytest.fixture
def fake_hub(tinystories_dir, monkeypatch):
    files = {
        "TinyStories-train.txt": (tinystories_dir / TRAIN).read_bytes()[:200_000],
        "TinyStories-valid.txt": (tinystories_dir / VALID).read_bytes()[:100_000],
    }
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    yield from serve(monkeypatch, files, repo=f"datasets/{HF_REPO}")


def test_download_through_fake_hub(fake_hub, tmp_path):
    dest = tmp_path / "tinystories"
    paths = download_tinystories("V1", dest=dest)
    assert paths == {"train": dest / "TinyStories-train.txt", "valid": dest / "TinyStories-valid.txt"}
    for split, name in TINYSTORIES_FILES["V1"].items():
        assert paths[split].read_bytes() == fake_hub.files[name]
    assert ("GET", f"/datasets/{HF_REPO}/resolve/main/TinyStories-train.txt", None) in fake_hub.log
    assert not any(list(dest.glob(pattern)) for pattern in ("*.incomplete", "*.tmp", "*.part*"))

    # A second call finds the complete files and downloads nothing.
    gets = sum(c == "GET" for c, _, _ in fake_hub.log)
    assert download_tinystories("V1", dest=dest) == paths
    assert sum(c == "GET" for c, _, _ in fake_hub.log) == gets

    # Resume: a connection that drops mid-file is continued with a Range request from the bytes already saved
    # (huggingface_hub's http_get saves in 10 MiB chunks, so the file must be larger than that to show it).
    # Resume across calls (a killed process, a network that stays down) is tested in test_download.py.
    big = fake_hub.files["TinyStories-train.txt"] * 60
    fake_hub.files["TinyStories-valid.txt"] = big
    fake_hub.drop_after["TinyStories-valid.txt"] = 11_000_000
    got = download_tinystories("V1", dest=tmp_path / "resume", splits=("valid",))["valid"]
    assert got.read_bytes() == big
    ranges = [r for c, p, r in fake_hub.log if c == "GET" and p.endswith("TinyStories-valid.txt") and r]
    assert len(ranges) == 1 and 0 < int(ranges[0][6:-1]) <= 11_000_000
    assert [p.name for p in got.parent.iterdir() if not p.name.startswith(".")] == ["TinyStories-valid.txt"]

    # The downloaded files are what prepare_dataset reads when there is no local folder.
    assert len(parse_stories(read_text(paths["train"]))) > 100

    # A file the Hub does not have: one clear error naming TINYSTORIES_DIR.
    with pytest.raises(FileNotFoundError, match="TINYSTORIES_DIR"):
        download_tinystories("V2", dest=dest)


def test_offline_without_local_copy_names_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="TINYSTORIES_DIR") as e:
        download_tinystories("V1", dest=tmp_path)
    assert "HF_HUB_OFFLINE" in str(e.value)
    with pytest.raises(FileNotFoundError, match="TINYSTORIES_DIR"):
        find_tinystories(None, "V2")
    assert not any(tmp_path.iterdir())


def test_local_folder_is_used_instead_of_download(tinystories_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TINYSTORIES_DIR", os.fspath(tinystories_dir))
    assert download_tinystories("V1", dest=tmp_path)["train"] == tinystories_dir / TRAIN
    assert not any(tmp_path.iterdir())


def test_a_quick_run_fetches_a_prefix_of_the_train_file(fake_hub, tmp_path, capsys):
    """train_bytes: one Range request for the file's first bytes, cut after the last story boundary in them,
    the size said up front; the validation file comes whole. Nothing else is fetched."""
    dest = tmp_path / "sample"
    paths = download_tinystories("V1", dest=dest, train_bytes=50_000)
    assert paths["train"] == dest / "TinyStories-train.first0.05MB.txt"
    whole = fake_hub.files["TinyStories-train.txt"]
    got = paths["train"].read_bytes()
    assert got == whole[: whole[:50_000].rfind(b"<|endoftext|>") + len(b"<|endoftext|>")]
    assert paths["valid"].read_bytes() == fake_hub.files["TinyStories-valid.txt"]
    train_gets = [r for c, p, r in fake_hub.log if c == "GET" and p.endswith("TinyStories-train.txt")]
    assert train_gets == ["bytes=0-49999"]
    assert "TinyStories-train.txt: fetching its first 0.1 MB of 0.2 MB" in capsys.readouterr().out
    stories = parse_stories(read_text(paths["train"]))
    assert stories == parse_stories(whole.decode())[: len(stories)]  # whole stories, in order
    assert find_tinystories(dest)["train"] == paths["train"]  # found like the official file
    assert download_tinystories("V1", dest=dest, train_bytes=50_000) == paths  # no second download
    assert len([c for c, _, _ in fake_hub.log if c == "GET"]) == 2
    with pytest.raises(ValueError, match="train_bytes=0: ask for a positive number of bytes"):
        download_tinystories("V1", dest=tmp_path / "none", train_bytes=0)
    assert not (tmp_path / "none").exists()


def test_quick_source_is_the_local_folder_or_a_downloaded_slice(fake_hub, tmp_path, monkeypatch):
    """What make demo and notebook 01 read: $TINYSTORIES_DIR when set, else the validation file and a slice of
    the train file downloaded once into data/tinystories-first<N>MB."""
    monkeypatch.setattr(stories, "DATA_DIR", tmp_path)
    folder = Path(quick_source(50_000))
    assert folder == tmp_path / "tinystories-first0.05MB"
    assert sorted(p.name for p in folder.iterdir()) == ["TinyStories-train.first0.05MB.txt",
                                                         "TinyStories-valid.txt"]
    assert set(find_tinystories(folder)) == {"train", "valid"}
    monkeypatch.setenv("TINYSTORIES_DIR", str(tmp_path / "mine"))
    assert quick_source(50_000) == str(tmp_path / "mine")
