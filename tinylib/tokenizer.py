"""Tokenizers: text <-> token ids, behind one small interface.

What this module does:
- `Tokenizer` is the interface the rest of tinylib relies on: `encode`, `encode_batch`, `decode`,
  `decode_bytes`, `id_to_piece`, `vocab_size`, `bos_id`, `eos_id`, `name` and a content `hash`.
  `TiktokenTokenizer` implements it over a `tiktoken.Encoding` (GPT-2's BPE, or our own byte-level BPE);
  `tinylib.interop.sentencepiece` implements it for llama2.c's SentencePiece models.
- `save_tokenizer` writes our BPE's ranks in tiktoken's `.tiktoken` format plus a JSON sidecar;
  `get_tokenizer` loads "gpt2", the shipped "tinystories-{512,4096,8192}" or any saved file back as a
  tiktoken Encoding.

What it leaves to others: training a BPE and measuring compression (`tinylib.bpe`), token files
(`tinylib.data`), batches (`tinylib.batches`), models, generation.

Conventions: `encode` never parses special tokens out of the text (a story that contains the characters
"<|endoftext|>" is encoded as ordinary text), so decode(encode(s)) == s for every string. Our BPE's vocab_size
counts the special token `<|endoftext|>`, which sits at the last id (vocab_size - 1) and serves as both BOS
and EOS, as in GPT-2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import tiktoken

from tinylib.paths import TOKENIZER_DIR, write_atomic

EOT = "<|endoftext|>"

SHIPPED = ("tinystories-512", "tinystories-4096", "tinystories-8192")


def as_id_list(ids) -> list[int]:
    """Accept a list, tuple, numpy array or torch tensor of ids; tiktoken wants a list of Python ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def ranks_hash(mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str) -> str:
    """sha256 over the ranks (in rank order), the special tokens and the split pattern:
    equal hash, equal encoding."""
    h = hashlib.sha256()
    h.update(b"tinylib-bpe-v1\n")
    h.update(pattern.encode("utf-8") + b"\n")
    for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(base64.b64encode(token) + b" %d\n" % rank)
    h.update(json.dumps(sorted(special_tokens.items())).encode("utf-8"))
    return h.hexdigest()


class Tokenizer:
    """The interface the rest of tinylib relies on, and the parts every backend shares.

    A backend (tiktoken here, SentencePiece in `tinylib.interop.sentencepiece`) calls this `__init__` with its
    ids and implements four things: `_encode_ordinary` (text -> ids, never parsing special tokens),
    `token_bytes` (one id -> its bytes), `hash` (a content hash) and, when it can do better than one token at
    a time, `_encode_ordinary_batch` and `decode_bytes`. `encode`, `encode_batch`, `decode` and `id_to_piece`
    then work unchanged, with the same bos/eos framing for every backend.
    """

    def __init__(
        self, *, name: str, vocab_size: int, bos_id: int, eos_id: int, special_tokens: dict[str, int]
    ):
        self.name, self.vocab_size = name, int(vocab_size)
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.special_tokens = dict(special_tokens)

    # --- what a backend implements --------------------------------------------------------------------------
    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return [self._encode_ordinary(t) for t in texts]

    def token_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def decode_bytes(self, ids) -> bytes:
        """Raw bytes of `ids`; a streaming decoder needs them because
        one character can span several tokens."""
        return b"".join(self.token_bytes(i) for i in as_id_list(ids))

    @property
    def hash(self) -> str:
        """A content hash, recorded in meta.json and checkpoints to tie token files to their tokenizer."""
        raise NotImplementedError

    # --- the interface -------------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of `text`; special tokens are never parsed from the text. `bos`/`eos` add the boundary ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use encode_batch for a list")
        ids = self._encode_ordinary(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(
        self, texts: Sequence[str], *, bos: bool = False, eos: bool = False, num_threads: int = 8
    ) -> list[list[int]]:
        """`encode` over many texts; tiktoken releases the GIL, so `num_threads` threads run in parallel."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str; use encode for one string")
        out = self._encode_ordinary_batch(list(texts), num_threads)
        if bos or eos:
            pre, post = ([self.bos_id] if bos else []), ([self.eos_id] if eos else [])
            out = [pre + ids + post for ids in out]
        return out

    def decode(self, ids) -> str:
        """Text of `ids`; a token sequence that cuts a UTF-8 character in half decodes to U+FFFD there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(
                f"token id {i} is outside the vocabulary of {self.name!r} (0..{self.vocab_size - 1})"
            )
        return i

    def id_to_piece(self, i: int) -> str:
        """Readable label of one id: its text when it is whole UTF-8 (leading spaces kept),
        else `<0xAB>` bytes."""
        b = self.token_bytes(self.check_id(i))
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"<0x{x:02X}>" for x in b)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")


class TiktokenTokenizer(Tokenizer):
    """A `Tokenizer` over a `tiktoken.Encoding`: GPT-2's BPE, or our own byte-level BPEs."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        *,
        name: str | None = None,
        bos_token: str = EOT,
        eos_token: str = EOT,
        content_hash: str | None = None,
    ):
        specials = {s: encoding.encode_single_token(s) for s in encoding.special_tokens_set}
        for role, tok in (("bos_token", bos_token), ("eos_token", eos_token)):
            if tok not in specials:
                raise ValueError(
                    f"{role}={tok!r} is not a special token of encoding {encoding.name!r} "
                    f"(its special tokens: {sorted(specials)}); pass one of those"
                )
        super().__init__(name=name or encoding.name, vocab_size=encoding.n_vocab, bos_id=specials[bos_token],
                         eos_id=specials[eos_token], special_tokens=specials)
        self.encoding = encoding
        if content_hash is not None:
            self.__dict__["hash"] = content_hash

    def _encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode_bytes(self, ids) -> bytes:
        return self.encoding.decode_bytes(as_id_list(ids))

    def token_bytes(self, i: int) -> bytes:
        return self.encoding.decode_single_token_bytes(int(i))

    @cached_property
    def hash(self) -> str:
        """sha256 of ranks + specials + pattern (`ranks_hash`), walking the real rank ids."""
        enc, special_ids = self.encoding, set(self.special_tokens.values())
        ranks = {}
        for i in range(enc.n_vocab):
            if i not in special_ids:
                try:
                    ranks[enc.decode_single_token_bytes(i)] = i
                except KeyError:  # an unused id between the ranks and a special token
                    pass
        return ranks_hash(ranks, self.special_tokens, enc._pat_str)


# ------------------------------------------------------------------------------------------------------------
# GPT-2


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE: tiktoken's `r50k_base` has exactly GPT-2's ranks, pattern and `<|endoftext|>` = 50256.

    r50k_base is one cached file, while tiktoken's "gpt2" needs two others; so this works offline with
    TIKTOKEN_CACHE_DIR pointing at a cache that holds r50k_base.
    """
    try:
        enc = tiktoken.get_encoding("r50k_base")
    except Exception as e:  # tiktoken raises requests/urllib/blobfile errors depending on what failed
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
        raise RuntimeError(
            f"cannot load GPT-2's BPE ranks (tiktoken 'r50k_base'): {type(e).__name__}: {e}. Offline, point "
            f"TIKTOKEN_CACHE_DIR at a folder holding the cached r50k_base file "
            f"(e.g. ../shared/tiktoken_cache); TIKTOKEN_CACHE_DIR is now {cache}"
        ) from e
    return TiktokenTokenizer(enc, name="gpt2")


# ------------------------------------------------------------------------------------------------------------
# Our BPE, saved in tiktoken's format


def from_ranks(
    ranks: dict[bytes, int], name: str, pattern: str, content_hash: str | None = None
) -> Tokenizer:
    specials = {EOT: len(ranks)}
    enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    tok = TiktokenTokenizer(enc, name=name)
    tok.__dict__["hash"] = content_hash or ranks_hash(ranks, specials, pattern)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write `path` (.tiktoken: one "base64(token) rank" line per merge rank) and its JSON sidecar (.json).

    Returns the .tiktoken path; `get_tokenizer(path)` loads it back. Only tiktoken-backed BPE tokenizers with
    `<|endoftext|>` as their single special token can be saved this way.
    """
    path = Path(path)
    if path.suffix in (".json", ".tiktoken"):
        path = path.with_suffix("")
    rank_path, json_path = path.with_suffix(".tiktoken"), path.with_suffix(".json")
    enc = tok.encoding
    if set(tok.special_tokens) != {EOT} or tok.special_tokens[EOT] != tok.vocab_size - 1:
        raise ValueError(
            f"save_tokenizer writes our BPE format (ranks + <|endoftext|> at the last id); {tok.name!r} has "
            f"special tokens {tok.special_tokens}"
        )
    n_ranks = tok.vocab_size - 1
    lines = [base64.b64encode(enc.decode_single_token_bytes(i)) + b" %d\n" % i for i in range(n_ranks)]
    meta = {
        "name": tok.name,
        "format": "tiktoken",
        "pattern": enc._pat_str,
        "special_tokens": tok.special_tokens,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "hash": tok.hash,
        "ranks_file": rank_path.name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(rank_path, b"".join(lines))
    write_atomic(json_path, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    return rank_path


def _load_saved(path: Path) -> Tokenizer:
    base = path.with_suffix("") if path.suffix in (".json", ".tiktoken") else path
    rank_path, json_path = base.with_suffix(".tiktoken"), base.with_suffix(".json")
    for p in (rank_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"tokenizer file {p} not found: a saved tokenizer is a .tiktoken file plus a .json beside it "
                f"(write both with tinylib.tokenizer.save_tokenizer)"
            )
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(rank_path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{rank_path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}") from e
    specials = {k: int(v) for k, v in meta["special_tokens"].items()}
    if specials != {EOT: len(ranks)}:
        raise ValueError(
            f"{json_path}: special tokens {specials} do not match {len(ranks)} ranks in {rank_path}"
        )
    content_hash = ranks_hash(ranks, specials, meta["pattern"])
    if meta.get("hash") not in (None, content_hash):
        raise ValueError(
            f"{rank_path} does not match the hash recorded in {json_path} ({meta['hash'][:12]}... vs "
            f"{content_hash[:12]}...): one of the two files was edited or replaced; re-save the tokenizer"
        )
    return from_ranks(ranks, meta.get("name", base.name), meta["pattern"], content_hash)


def get_tokenizer(name: str | os.PathLike) -> Tokenizer:
    """"gpt2", a shipped tokenizer ("tinystories-512", "tinystories-4096", "tinystories-8192"),
    or a saved file."""
    if isinstance(name, Tokenizer):
        return name
    if isinstance(name, str) and name in ("gpt2", "r50k_base"):
        return gpt2_tokenizer()
    if isinstance(name, str) and name in SHIPPED:
        return _load_saved(TOKENIZER_DIR / f"{name}.tiktoken")
    path = Path(name)
    if path.suffix == ".model":
        raise ValueError(
            f"{path} is a SentencePiece model (llama2.c's tokenizers): load it with "
            "tinylib.interop.sentencepiece.SentencePieceTokenizer(path) and pass that object instead"
        )
    if path.suffix in (".tiktoken", ".json") or path.exists() or path.with_suffix(".tiktoken").exists():
        return _load_saved(path)
    raise ValueError(
        f"unknown tokenizer {str(name)!r}: use 'gpt2', one of {list(SHIPPED)}, "
        f"or the path of a saved .tiktoken/.json"
    )
