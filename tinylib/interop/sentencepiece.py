"""llama2.c's SentencePiece tokenizers (tok512, the Llama 2 32k `tokenizer.model`)
behind tinylib's `Tokenizer`.

A second backend for the interface in `tinylib.tokenizer` (the first is tiktoken): it implements what a
backend must (`_encode_ordinary`, `token_bytes`, `decode_bytes`, `hash`) and inherits the bos/eos framing.
What it leaves to others: the llama2.c model files (`tinylib.interop.llama2c`), the transformers tokenizer
(`tinylib.interop.hf`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import sentencepiece as spm

from tinylib.tokenizer import Tokenizer, as_id_list

LLAMA2_TOKENIZER_NOTE = (
    "stories15M/42M/110M use the Llama 2 SentencePiece tokenizer (tokenizer.model, 32000 ids), which is "
    "not in karpathy/tinyllamas: take it from github.com/karpathy/llama2.c "
    "(or ../shared/models/llama2c/tokenizer.model)"
)


class SentencePieceTokenizer(Tokenizer):
    """llama2.c's SentencePiece tokenizers (tok512, the Llama 2 32k `tokenizer.model`)
    as a tinylib `Tokenizer`.

    Ids: unk 0, bos 1 ("<s>"), eos 2 ("</s>"). llama2.c frames every story as BOS + tokens, so pass `bos=True`
    to `encode` to match its training data. Its models end a story by emitting BOS (1) rather than EOS, so
    generation must treat both `bos_id` and `eos_id` as stop ids (see `stop_ids`).

    Text conventions are SentencePiece's: `encode` adds the dummy-prefix space ("Once" is "▁Once") and
    collapses runs of spaces (the models' normalizer removes extra whitespace), so decode(encode(s)) == s
    holds for text without leading, trailing or repeated spaces. `decode`/`decode_bytes` give what
    SentencePiece's decoder gives: pieces concatenated with "▁" as a space, byte-fallback pieces ("<0x0A>") as
    their byte, control ids (BOS/EOS) as nothing, and the dummy-prefix space dropped at the start of the text
    (so after a leading BOS too, as run.c does). A streaming decoder that takes decode_bytes([prev, tok])
    minus decode_bytes([prev]) gets it right.
    """

    def __init__(self, path: str | os.PathLike, *, name: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} not found (llama2.c's tok512.model or the "
                                    f"Llama 2 tokenizer.model; {LLAMA2_TOKENIZER_NOTE})")
        self._init_from_proto(path.read_bytes(), name or path.stem, str(path))

    def _init_from_proto(self, proto: bytes, name: str, source: str) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
            raise ValueError(f"{source} is not a SentencePiece model ({type(e).__name__}: {e})") from e
        if sp.bos_id() != 1 or sp.eos_id() != 2:
            raise ValueError(
                f"{source}: bos/eos ids are {sp.bos_id()}/{sp.eos_id()}; llama2.c tokenizers use 1/2"
            )
        specials = {sp.id_to_piece(i): i for i in range(sp.vocab_size())
                    if sp.is_control(i) or sp.is_unknown(i)}
        super().__init__(name=name, vocab_size=sp.vocab_size(), bos_id=sp.bos_id(), eos_id=sp.eos_id(),
                         special_tokens=specials)
        self._sp, self._proto = sp, proto
        self._hash = hashlib.sha256(proto).hexdigest()
        # Bytes of every id, computed once: decode_bytes is then a list lookup (fast enough to stream).
        table = []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if sp.is_control(i):
                table.append(b"")
            elif sp.is_unknown(i):
                table.append(" \u2047 ".encode())  # SentencePiece's surface for <unk>
            elif sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))
            else:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        self._bytes = table
        self._strippable = [not (sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i)) and b.startswith(b" ")
                            for i, b in enumerate(table)]

    @property
    def hash(self) -> str:
        """sha256 of the serialized model: equal hash, equal tokenizer."""
        return self._hash

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (what transformers' LlamaTokenizer reads as tokenizer.model)."""
        return self._proto

    @property
    def encoding(self):
        raise AttributeError(f"{self.name!r} is a SentencePiece tokenizer and has no tiktoken encoding")

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Ids that end a generated story: llama2.c's models emit BOS (1) there; EOS (2) for safety."""
        return (self.bos_id, self.eos_id)

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=num_threads)

    def token_bytes(self, i: int) -> bytes:
        i = self.check_id(i)
        return self._bytes[i] if not self._sp.is_control(i) else self._sp.id_to_piece(i).encode()

    def decode_bytes(self, ids) -> bytes:
        """UTF-8 bytes of `ids`, exactly `sp.decode(ids).encode()` for whole characters (a test checks it)."""
        out, at_start = [], True
        for i in map(self.check_id, as_id_list(ids)):
            b = self._bytes[i]
            if at_start and self._strippable[i]:  # SentencePiece drops the dummy-prefix space at the start
                b = b[1:]
            if b:
                at_start = False
                out.append(b)
        return b"".join(out)

    def id_to_piece(self, i: int) -> str:
        """The SentencePiece piece with "▁" shown as a space,
        "<0x0A>" for byte pieces, "<s>" for control ids."""
        return self._sp.id_to_piece(self.check_id(i)).replace("\u2581", " ")

    def __getstate__(self):
        return {"proto": self._proto, "name": self.name}

    def __setstate__(self, state):
        self._init_from_proto(state["proto"], state["name"], state["name"])
