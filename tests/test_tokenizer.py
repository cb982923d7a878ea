"""Tokenizers: GPT-2 through tiktoken, our shipped BPEs, training, saving, round trips and the report."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylib.bpe import tokenizer_report, train_bpe
from tinylib.stories import parse_stories, read_text
from tinylib.tokenizer import (
    EOT,
    SHIPPED,
    TOKENIZER_DIR,
    Tokenizer,
    get_tokenizer,
    save_tokenizer,
)

TOKENIZER_NAMES = ["gpt2", *SHIPPED]
SMALL_TEXT = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play in the sun.",
    "One day, Tom saw a big dog. The dog said, \"Hello, Tom!\" Tom was happy.\nThey played all day.",
    "Lily had a red ball. She liked to throw the ball to her friend Tom. Café, naïve, 東京, 🙂.",
] * 3


@pytest.fixture(scope="module")
def tokenizers(request) -> dict[str, Tokenizer]:
    out = {name: get_tokenizer(name) for name in SHIPPED}
    try:
        out["gpt2"] = get_tokenizer("gpt2")
    except RuntimeError:
        pass  # tests that need it ask for gpt2_available and skip with the reason
    return out


@pytest.fixture(scope="module")
def valid_stories(tinystories_dir) -> list[str]:
    return parse_stories(read_text(tinystories_dir / "TinyStories-valid.first1000.hf.txt"))


def _tok(tokenizers, name, request):
    if name == "gpt2":
        request.getfixturevalue("gpt2_available")
    return tokenizers[name]


# --- GPT-2 --------------------------------------------------------------------------------------------------


def test_gpt2_ids(tokenizers, gpt2_available):
    tok = tokenizers["gpt2"]
    assert (tok.name, tok.vocab_size, tok.bos_id, tok.eos_id) == ("gpt2", 50257, 50256, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("Hello world", bos=True, eos=True) == [50256, 15496, 995, 50256]
    # Special tokens are never parsed out of text: a story quoting "<|endoftext|>" stays ordinary text.
    assert 50256 not in tok.encode("a <|endoftext|> b")
    assert [tok.id_to_piece(i) for i in (50256, 15496, 995)] == [EOT, "Hello", " world"]
    assert tok.encoding.name == "r50k_base"


# --- every tokenizer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_round_trip_arbitrary_unicode(tokenizers, request, name, text):
    tok = _tok(tokenizers, name, request)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert b"".join(tok.decode_bytes([i]) for i in ids) == text.encode("utf-8")  # streaming decode, id by id
    assert all(0 <= i < tok.vocab_size for i in ids)


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_interface(tokenizers, request, name):
    tok = _tok(tokenizers, name, request)
    texts = SMALL_TEXT + ["", EOT]
    batch = tok.encode_batch(texts, bos=True, eos=True)
    assert batch == [tok.encode(t, bos=True, eos=True) for t in texts]
    assert batch[-2] == [tok.bos_id, tok.eos_id]
    assert tok.decode(batch[0][1:-1]) == texts[0]
    assert tok.id_to_piece(tok.eos_id) == EOT
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.id_to_piece(tok.vocab_size)
    with pytest.raises(TypeError):
        tok.encode(["not", "a", "str"])
    clone = pickle.loads(pickle.dumps(tok))  # worker processes receive tokenizers by pickle
    assert clone.hash == tok.hash and clone.encode(texts[2]) == tok.encode(texts[2])


# --- shipped tokenizers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tokenizers(tokenizers, name):
    tok = tokenizers[name]
    size = int(name.split("-")[1])
    assert (tok.name, tok.vocab_size, tok.bos_id, tok.eos_id) == (name, size, size - 1, size - 1)
    meta = json.loads((TOKENIZER_DIR / f"{name}.json").read_text())
    assert meta["hash"] == tok.hash and meta["special_tokens"] == {EOT: size - 1}
    assert tok.encoding.encode(EOT, allowed_special="all") == [size - 1]
    assert tok.encode(" the")  # a real tiktoken Encoding that runs
    assert tok.id_to_piece(255) == "<0xFF>"  # a lone byte is shown as a byte, not as U+FFFD


def test_shipped_tokenizers_are_reproducible(tokenizers, tinystories_dir):
    """scripts/train_tokenizers.py retrains exactly the shipped files (train_bpe is deterministic)."""
    stories = parse_stories(read_text(tinystories_dir / "TinyStories-train.first2316.txt"))
    for name in SHIPPED:
        size = int(name.split("-")[1])
        assert train_bpe(stories, size, name=name).hash == tokenizers[name].hash


def test_shipped_hash_is_stable(tokenizers):
    # Pinned: token files record this hash; a change here means every prepared dataset must be rebuilt.
    pinned = "146f1a0a387f6088c1e972016d90b95e58dff1324dd0c27609351bd28f950e71"
    assert tokenizers["tinystories-512"].hash == pinned


# --- training, saving, loading ------------------------------------------------------------------------------


def test_train_bpe_small_text():
    tok = train_bpe(SMALL_TEXT, 300, name="tiny")
    assert (tok.name, tok.vocab_size, tok.eos_id, tok.bos_id) == ("tiny", 300, 299, 299)
    ids = tok.encode(SMALL_TEXT[0])
    assert len(ids) < len(SMALL_TEXT[0].encode())  # merges compress
    assert tok.decode(ids) == SMALL_TEXT[0]
    assert " Tom" in {tok.id_to_piece(i) for i in range(256, 299)}  # a frequent word became one token
    assert train_bpe(SMALL_TEXT, 300).hash == tok.hash  # deterministic
    assert train_bpe(SMALL_TEXT, 300).name == "bpe-300"
    with pytest.raises(ValueError, match="too small"):
        train_bpe(SMALL_TEXT, 256)
    with pytest.raises(ValueError, match="only supports"):
        train_bpe(["ab ab"], 1000)


def test_save_load_round_trip(tmp_path):
    tok = train_bpe(SMALL_TEXT, 320, name="tiny-320")
    path = save_tokenizer(tok, tmp_path / "tiny-320")
    assert path.name == "tiny-320.tiktoken" and (tmp_path / "tiny-320.json").is_file()
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-320.json", "tiny-320.tiktoken"]
    first_line = path.read_text().splitlines()[0]
    assert first_line == "AA== 0"  # tiktoken's format: base64 token, space, rank
    for target in (path, tmp_path / "tiny-320.json", str(tmp_path / "tiny-320")):
        loaded = get_tokenizer(target)
        assert loaded.name == "tiny-320" and loaded.vocab_size == 320 and loaded.hash == tok.hash
        assert loaded.encode(SMALL_TEXT[1], bos=True) == tok.encode(SMALL_TEXT[1], bos=True)
    again = save_tokenizer(get_tokenizer(path), tmp_path / "copy.tiktoken")
    assert again.read_bytes() == path.read_bytes()  # byte-stable

    lines = path.read_text().splitlines()
    lines[300], lines[301] = lines[301].split()[0] + " 300", lines[300].split()[0] + " 301"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="does not match the hash"):
        get_tokenizer(path)


def test_get_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt3'"):
        get_tokenizer("gpt3")
    with pytest.raises(FileNotFoundError, match="missing.tiktoken not found"):
        get_tokenizer(tmp_path / "missing.tiktoken")


# --- report -------------------------------------------------------------------------------------------------


def test_report_numbers(tokenizers):
    tok = tokenizers["tinystories-512"]
    texts = ["Tom ran.", "Tom sat. 🙂"]
    rep = tokenizer_report(tok, texts)
    ids = [tok.encode(t) for t in texts]
    assert rep["n_texts"] == 2 and rep["n_bytes"] == 8 + 13 and rep["n_chars"] == 8 + 10
    assert rep["tokens_per_story"] == [len(x) for x in ids] and rep["n_tokens"] == sum(map(len, ids))
    assert rep["bytes_per_token"] == pytest.approx(21 / rep["n_tokens"])
    assert rep["tokens_per_story_mean"] == pytest.approx(rep["n_tokens"] / 2)
    assert rep["vocab_used"] == len({i for x in ids for i in x})
    assert rep["vocab_used_fraction"] == pytest.approx(rep["vocab_used"] / 512)


def test_report_on_tinystories(tokenizers, valid_stories, gpt2_available):
    reps = {name: tokenizer_report(tokenizers[name], valid_stories) for name in TOKENIZER_NAMES}
    bpt = {name: r["bytes_per_token"] for name, r in reps.items()}
    assert bpt["tinystories-512"] < bpt["tinystories-4096"] < bpt["tinystories-8192"]
    assert 3.8 < bpt["gpt2"] < 4.5 and 2.0 < bpt["tinystories-512"] < 2.7
    # TinyStories' small vocabulary touches only a small part of GPT-2's 50,257 ids.
    assert reps["gpt2"]["vocab_used_fraction"] < 0.2
    assert reps["tinystories-512"]["vocab_used_fraction"] > 0.5
    assert len(reps["gpt2"]["tokens_per_story"]) == 1000
