"""The data pipeline on real TinyStories text: parsing, token files, validation, batches, downloads, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from fakehub import serve

from tinylib.data import (
    HF_REPO,
    TINYSTORIES_FILES,
    RandomBatches,
    data_report,
    download_tinystories,
    find_tinystories,
    frame_stories,
    iter_stories,
    open_split,
    pack_tokens,
    parse_stories,
    prepare_dataset,
    read_meta,
    read_text,
    sequential_batches,
    token_dtype,
)
from tinylib.tokenizer import TiktokenTokenizer, Tokenizer, get_tokenizer

TRAIN = "TinyStories-train.first2316.txt"
VALID = "TinyStories-valid.first1000.hf.txt"


@pytest.fixture(scope="module")
def tok512() -> Tokenizer:
    return get_tokenizer("tinystories-512")


@pytest.fixture(scope="module")
def prepared(tinystories_dir, tmp_path_factory, tok512):
    """A small real dataset: 300 train + 300 valid stories from the shared files, two worker processes."""
    out = tmp_path_factory.mktemp("ds")
    meta = prepare_dataset(tinystories_dir, tok512, out, max_stories=300, num_proc=2, progress=False)
    return out, meta


# --- parsing -------------------------------------------------------------------------------------------------


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
    assert set(TINYSTORIES_FILES["V2"].values()) == {"TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"}


# --- writing token files -------------------------------------------------------------------------------------


def test_prepare_writes_meta_and_tokens(prepared, tok512, tinystories_dir):
    out, meta = prepared
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert read_meta(out) == meta
    assert meta["tokenizer"]["name"] == "tinystories-512" and meta["tokenizer"]["hash"] == tok512.hash
    assert meta["vocab_size"] == 512 and meta["dtype"] == "uint16"
    sha = {s["file"]: s["sha256"] for s in meta["sources"]}
    assert sha[TRAIN] == "ba02237f5747a07d420cb7329f721fdc51b6f5c35a81788b9c4bb871e15ff30a"
    assert sha[VALID] == "c86f734a3a07fffb8a52f4a7970ac7dbeaf4eaf6a031dc8742a8de92fbbb9446"

    # Token files hold exactly the framed stories: [bos] + tokens, in order.
    stories = parse_stories(read_text(tinystories_dir / TRAIN))[:300]
    train = open_split(out, "train", tok512)
    assert np.array_equal(train, frame_stories(tok512, stories))
    assert meta["splits"]["train"]["stories"] == 300 == int((train == tok512.bos_id).sum())
    assert meta["splits"]["train"]["tokens"] == train.size
    assert meta["splits"]["train"]["text_bytes"] == sum(len(s.encode()) for s in stories)
    val = open_split(out, "val")
    assert meta["splits"]["val"]["stories"] == 300 and val[0] == tok512.bos_id
    assert tok512.decode(val[1:40]).startswith("Spot. Spot saw the shiny car")

    report = data_report(out)
    for needle in ("tinystories-512", "train", "val", "bytes/token", f"{train.size:,}"):
        assert needle in report


def test_holdout_when_no_valid_file(tinystories_dir, tmp_path, tok512):
    meta = prepare_dataset(tinystories_dir / TRAIN, tok512, tmp_path, max_stories=200, val_fraction=0.05,
                           num_proc=1, progress=False)
    assert meta["splits"]["val"]["stories"] == 10 and meta["splits"]["train"]["stories"] == 190
    assert meta["val_fraction"] == 0.05
    prepare_dataset(tinystories_dir / TRAIN, tok512, tmp_path / "again", max_stories=200,
                    val_fraction=0.05, num_proc=1, progress=False)
    assert np.array_equal(open_split(tmp_path, "val"), open_split(tmp_path / "again", "val"))  # deterministic


def test_uint32_when_vocabulary_exceeds_uint16(tinystories_dir, tmp_path, gpt2_available):
    # A real tiktoken Encoding whose <|endoftext|> id is 99,999: every story starts with an id above 65,535.
    r50k = tiktoken.get_encoding("r50k_base")
    enc = tiktoken.Encoding("big", pat_str=r50k._pat_str, mergeable_ranks=r50k._mergeable_ranks,
                            special_tokens={"<|endoftext|>": 99_999})
    big = TiktokenTokenizer(enc, name="big")
    assert big.vocab_size == 100_000 and big.bos_id == 99_999
    meta = prepare_dataset(tinystories_dir, big, tmp_path, max_stories=20, num_proc=1, progress=False)
    assert meta["dtype"] == "uint32"
    tokens = open_split(tmp_path, "train", big)
    assert tokens.dtype == np.uint32 and int((tokens == 99_999).sum()) == 20
    assert int(tokens.max()) == 99_999

    # The writer itself: ids above 65,535 survive, ids outside the vocabulary are refused.
    ids = [[0, 65_535, 65_536, 70_000], [199_999]]
    packed = pack_tokens(ids, vocab_size=200_000)
    assert packed.dtype == np.uint32 and packed.tolist() == [0, 65_535, 65_536, 70_000, 199_999]
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    with pytest.raises(ValueError, match="vocabulary has 65536 ids"):
        pack_tokens(ids, vocab_size=65_536)


# --- reading token files -------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_open_split_validates(prepared, tmp_path, gpt2_available):
    out, _ = prepared
    with pytest.raises(ValueError, match=r"tokenized with 'tinystories-512'.*you passed 'gpt2'"):
        open_split(out, "train", get_tokenizer("gpt2"))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        open_split(out, "test")

    bad = _copy(out, tmp_path / "truncated")
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="train.bin has 100 bytes but meta.json says"):
        open_split(bad, "train")

    wide = _copy(out, tmp_path / "wide")
    np.fromfile(wide / "train.bin", dtype=np.uint16).astype(np.uint32).tofile(wide / "train.bin")
    with pytest.raises(ValueError, match="looks like uint32 data"):
        open_split(wide, "train")

    lying = _copy(out, tmp_path / "lying")
    meta = json.loads((lying / "meta.json").read_text())
    meta["vocab_size"] = 100_000
    (lying / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="needs uint32"):
        open_split(lying, "train")

    with pytest.raises(FileNotFoundError, match="no meta.json"):
        open_split(tmp_path / "nowhere", "train")


def test_random_batches_deterministic_per_rank_and_resumable(prepared):
    tokens = open_split(prepared[0], "train")
    a = RandomBatches(tokens, 4, 32, seed=1)
    x, y = a.next_batch()
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = a.starts(0)
    assert torch.equal(x, torch.from_numpy(np.stack([tokens[s:s + 32] for s in starts]).astype(np.int64)))

    same = RandomBatches(tokens, 4, 32, seed=1).next_batch()
    assert torch.equal(same[0], x)
    assert not torch.equal(RandomBatches(tokens, 4, 32, seed=2).next_batch()[0], x)
    r0 = RandomBatches(tokens, 4, 32, seed=1, rank=0, world_size=2).next_batch()[0]
    r1 = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2).next_batch()[0]
    assert not torch.equal(r0, r1)
    # The global batch does not depend on how it is split across ranks.
    whole = RandomBatches(tokens, 8, 32, seed=1).next_batch()[0]
    assert torch.equal(torch.cat([r0, r1]), whole)

    # Resume: a fresh object loaded with the state after 3 steps continues the exact stream.
    run = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2)
    for _ in range(3):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))
    expected = [run.next_batch() for _ in range(2)]
    resumed = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for (ex, ey), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(2)]):
        assert torch.equal(ex, rx) and torch.equal(ey, ry)
    with pytest.raises(ValueError, match="seq_len=32"):
        RandomBatches(tokens, 4, 16, seed=1).load_state_dict(state)


def test_sequential_batches_cover_in_order(prepared):
    tokens = open_split(prepared[0], "val")
    batches = list(sequential_batches(tokens, 3, 16, max_batches=5))
    assert len(batches) == 5
    xs = torch.cat([x.reshape(-1) for x, _ in batches])
    assert torch.equal(xs, torch.from_numpy(tokens[: 5 * 3 * 16].astype(np.int64)))
    assert torch.equal(batches[0][1][0], torch.from_numpy(tokens[1:17].astype(np.int64)))
    r0 = list(sequential_batches(tokens, 3, 16, rank=0, world_size=2))
    r1 = list(sequential_batches(tokens, 3, 16, rank=1, world_size=2))
    assert len(r0) == len(r1) > 0
    assert torch.equal(r1[0][0][0], torch.from_numpy(tokens[48:64].astype(np.int64)))  # batch 1 goes to rank 1
    with pytest.raises(ValueError, match="lower batch_size or seq_len"):
        next(sequential_batches(tokens[:100], 8, 64))


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, tok512):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset(tmp_path / "missing.txt", tok512, out, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        prepare_dataset(empty, tok512, out, progress=False)
    only_separators = tmp_path / "seps.txt"
    only_separators.write_text("<|endoftext|>\n\n<|endoftext|>\n")
    with pytest.raises(ValueError, match="no stories found"):
        prepare_dataset(only_separators, tok512, out, progress=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"Once upon a time.\n<|endoftext|>\n" * 50 + "Caf\xe9 story.".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8 \(bad byte near offset 1,603\)"):
        prepare_dataset(latin1, tok512, out, num_proc=1, progress=False)
    with pytest.raises(ValueError, match="train split would be empty"):
        one = tmp_path / "one.txt"
        one.write_text("Only one story.")
        prepare_dataset(one, tok512, out, num_proc=1, progress=False)
    with pytest.raises(FileNotFoundError, match="no TinyStories V1 train file"):
        find_tinystories(tmp_path)
    assert list(out.iterdir()) == []  # every failure cleaned up its temporary files


def test_failed_prepare_keeps_previous_files(prepared, tmp_path, tok512):
    good = _copy(prepared[0], tmp_path / "good")
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"A story.\n<|endoftext|>\n" * 3 + b"\xff\xfe")
    with pytest.raises(ValueError, match="UTF-8"):
        prepare_dataset(bad, tok512, good, num_proc=1, progress=False)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before


# --- download through a fake Hub on 127.0.0.1 ------------------------------------------------------------------


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
    assert not list(dest.glob("*.incomplete")) and not list(dest.glob("*.tmp")) and not list(dest.glob("*.part*"))

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


def test_command_line(tinystories_dir, tmp_path, capsys):
    from tinylib.data import main

    out = tmp_path / "cli"
    assert main(["--tokenizer", "tinystories-512", "--out", str(out), "--source", str(tinystories_dir),
                 "--version", "V2", "--max-stories", "5", "--num-proc", "1"]) == 0
    printed = capsys.readouterr().out
    assert "TinyStories V2 token files" in printed and "tinystories-512" in printed
    meta = read_meta(out)
    # The V2 sample has no validation file: 1 of its 5 stories is held out (story 0, then every 100th).
    assert (meta["splits"]["train"]["stories"], meta["splits"]["val"]["stories"]) == (4, 1)
    assert meta["sources"][0]["file"] == "TinyStoriesV2-GPT4-train.cs336_fixture_sample.txt"


def test_sequential_batches_spread_covers_the_whole_file():
    tokens = np.arange(10_001, dtype=np.uint16)
    first = [x[0, 0].item() for x, _ in sequential_batches(tokens, 2, 100, max_batches=3)]
    spread = [x[0, 0].item() for x, _ in sequential_batches(tokens, 2, 100, max_batches=3, spread=True)]
    assert first == [0, 200, 400]
    assert spread == [0, 4800, 9800]  # batches 0, 24 and 49 of 50
    every = list(sequential_batches(tokens, 2, 100, spread=True))
    assert len(every) == 50
