"""Token files on real TinyStories text: writing, meta.json, validation on reading, bad input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from tinylib.data import (
    data_report,
    ensure_dataset,
    frame_stories,
    open_split,
    pack_tokens,
    prepare_dataset,
    read_meta,
    token_dtype,
)
from tinylib.stories import find_tinystories, parse_stories, read_text
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


# --- writing token files ------------------------------------------------------------------------------------


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


# --- reading token files ------------------------------------------------------------------------------------


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


# --- bad input ----------------------------------------------------------------------------------------------


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


# --- command line -------------------------------------------------------------------------------------------


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


def test_token_files_are_reused_only_for_the_same_text_and_tokenizer(tinystories_dir, tmp_path, capsys):
    """The bug this prevents: a smoke run's 40-story files silently reused by a full run that wants more."""
    out = tmp_path / "ts512"
    first = ensure_dataset(tinystories_dir, "tinystories-512", out, max_stories=40, num_proc=1,
                           progress=False)
    assert "preparing" in capsys.readouterr().out
    mtime = (out / "train.bin").stat().st_mtime_ns
    # the same request again: the same files, nothing rewritten
    assert ensure_dataset(tinystories_dir, "tinystories-512", out, max_stories=40) == first
    assert capsys.readouterr().out == "" and (out / "train.bin").stat().st_mtime_ns == mtime
    more = ensure_dataset(tinystories_dir, "tinystories-512", out, max_stories=60, num_proc=1, progress=False)
    assert "max_stories was 40, now 60" in capsys.readouterr().out
    assert more["splits"]["train"]["stories"] == 60
    ensure_dataset(tinystories_dir, "tinystories-4096", out, max_stories=60, num_proc=1, progress=False)
    assert "tokenizer was" in capsys.readouterr().out and read_meta(out)["vocab_size"] == 4096
    one_file = tinystories_dir / "TinyStories-valid.first1000.hf.txt"
    ensure_dataset(one_file, "tinystories-4096", out, max_stories=60, num_proc=1, progress=False)
    assert "sources was" in capsys.readouterr().out
