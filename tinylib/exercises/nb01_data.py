"""Exercises of notebook 01 (data and tokenizers): one BPE merge, the token file's dtype, framing stories into
one token array, and compression in bytes per token.

The references are tinylib's own where it has them: `tinylib.data.token_dtype`, `tinylib.data.frame_stories`,
`tinylib.bpe.tokenizer_report`; the merge step (rustbpe does it in Rust) is written here. Each wrong answer is
a mistake people make: merging only the first pair or overlapping pairs, `<` for `<=` at 65,536 ids, always
uint16, the boundary token at the end or not at all, int64 files, characters for bytes, a mean of ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tinylib.bpe import tokenizer_report
from tinylib.data import frame_stories as _frame_stories_by_tinylib
from tinylib.data import token_dtype
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.tokenizer import Tokenizer, get_tokenizer

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "01_data_and_tokenizers"

# Words for random stories; some are not ASCII, so characters and UTF-8 bytes differ.
_WORDS = ("Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "she", "loved",
          "to", "play", "in", "the", "park", "with", "her", "dog", "Max.", "They", "were", "happy", "and",
          "went", "home,", "\"Hello!\"", "said", "Tom.", "café", "naïve", "“Look!”", "—", "🙂", "big", "red",
          "ball\n")


def _story(gen: torch.Generator, n_words: int) -> str:
    picks = torch.randint(0, len(_WORDS), (n_words,), generator=gen).tolist()
    words = [_WORDS[i] for i in picks]
    # one non-ASCII word in every text
    words.insert(int(torch.randint(0, n_words + 1, (1,), generator=gen)), "café")
    return " ".join(words)


# --- one BPE merge -----------------------------------------------------------------------------------------

def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right; pairs do not overlap,
    so (5, 5) in [5, 5, 5] merges once: [new_id, 5]."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_first_only(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _merge_overlapping(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)  # a run 5 5 5 becomes two new ids: the middle 5 is used twice
        elif i > 0 and (ids[i - 1], ids[i]) == tuple(pair):
            continue
        else:
            out.append(ids[i])
    return out


def _merge_as_text(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    joined = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))  # "11 2" holds "1 2"
    return [int(x) for x in joined.split()]


def _merge_cases(gen: torch.Generator):
    yield ([5, 5, 5, 1, 5, 5], (5, 5), 9), {}
    yield ([11, 2], (1, 2), 7), {}  # multi-digit ids: (1, 2) is not inside (11, 2)
    yield ([3, 12, 1, 21, 2, 1, 2], (1, 2), 300), {}
    text = list(b"the cat and the hat")
    yield (text, (ord("t"), ord("h")), 256), {}
    yield ([1, 2, 3], (3, 1), 7), {}  # the pair never occurs: nothing changes
    yield ([], (1, 2), 7), {}
    for n in (12, 30, 60):
        ids = torch.randint(0, 3, (n,), generator=gen).tolist()  # 3 ids: pairs and runs occur often
        i = int(torch.randint(0, n - 1, (1,), generator=gen))
        yield (ids, (ids[i], ids[i + 1]), 100 + n), {}


register(Exercise(
    "merge_pair", "One byte-pair merge", NB, difficulty=2, importance=4, minutes=10, reference=merge_pair,
    cases=_merge_cases, wrong=(_merge_first_only, _merge_overlapping, _merge_as_text)))


# --- the token file's dtype --------------------------------------------------------------------------------

def _dtype_strict_less(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def _dtype_always_uint16(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16)


def _dtype_cases(gen: torch.Generator):
    for v in (512, 4096, 50257, 65535, 65536, 65537, 100277):
        yield (v,), {}
    yield (int(torch.randint(1 << 17, 1 << 20, (1,), generator=gen)),), {}


register(Exercise(
    "token_dtype", "The token file's dtype", NB, difficulty=1, importance=3, minutes=5, reference=token_dtype,
    cases=_dtype_cases, wrong=(_dtype_strict_less, _dtype_always_uint16)))


# --- framing stories ---------------------------------------------------------------------------------------

def _frame_eos_after(tok: Tokenizer, stories: Sequence[str]) -> np.ndarray:
    ids = [i for s in stories for i in tok.encode(s) + [tok.eos_id]]
    return np.array(ids, dtype=token_dtype(tok.vocab_size))


def _frame_int64(tok: Tokenizer, stories: Sequence[str]) -> np.ndarray:
    return np.array([i for s in stories for i in [tok.bos_id] + tok.encode(s)])


def _frame_no_bos(tok: Tokenizer, stories: Sequence[str]) -> np.ndarray:
    return np.array([i for s in stories for i in tok.encode(s)], dtype=token_dtype(tok.vocab_size))


def _frame_always_uint16(tok: Tokenizer, stories: Sequence[str]) -> np.ndarray:
    return np.array([i for s in stories for i in [tok.bos_id] + tok.encode(s)]).astype(np.uint16)  # wraps


class _WideVocab(Tokenizer):
    """A shipped tokenizer with every id moved up by 66,000: a vocabulary over 65,536 ids (like cl100k's
    100,277), whose ids wrap around silently in a uint16 file."""

    SHIFT = 66_000

    def __init__(self, base: Tokenizer):
        s = self.SHIFT
        super().__init__(name=f"{base.name}+{s}", vocab_size=base.vocab_size + s, bos_id=base.bos_id + s,
                         eos_id=base.eos_id + s, special_tokens={})
        self.base = base

    def _encode_ordinary(self, text: str) -> list[int]:
        return [i + self.SHIFT for i in self.base._encode_ordinary(text)]

    def token_bytes(self, i: int) -> bytes:
        return self.base.token_bytes(i - self.SHIFT)

    def __repr__(self) -> str:
        return f"<tokenizer {self.name}: {self.vocab_size:,} ids>"


def _frame_cases(gen: torch.Generator):
    for name, n_stories in (("tinystories-512", 3), ("tinystories-4096", 1), ("tinystories-8192", 5),
                            ("tinystories-4096", 4)):
        stories = [_story(gen, int(torch.randint(3, 40, (1,), generator=gen))) for _ in range(n_stories)]
        if n_stories == 4:
            stories[2] = ""  # an empty story is still a story start
        yield (get_tokenizer(name), stories), {}
    yield (_WideVocab(get_tokenizer("tinystories-512")), [_story(gen, 12), _story(gen, 5)]), {}


def frame_stories(tok: Tokenizer, stories: Sequence[str]) -> np.ndarray:
    """One token array for all stories: each is [bos_id] + its ids, in order; the smallest dtype that holds
    every id."""
    ids: list[int] = []
    for story in stories:
        ids += [tok.bos_id] + tok.encode(story)  # BOS first: the model learns where a story starts
    dtype = np.uint16 if tok.vocab_size <= 65_536 else np.uint32  # ids 0..65,535 fit in 16 bits
    return np.array(ids, dtype=dtype)


register(Exercise(
    "frame_stories", "Framing stories into one token array", NB, difficulty=2, importance=4, minutes=10,
    reference=_frame_stories_by_tinylib, shown=frame_stories,
    cases=_frame_cases, wrong=(_frame_eos_after, _frame_int64, _frame_no_bos, _frame_always_uint16)))


# --- compression -------------------------------------------------------------------------------------------

def _bytes_per_token_by_tinylib(tok: Tokenizer, texts: Sequence[str]) -> float:
    """UTF-8 bytes of all `texts` over the tokens `tok` cuts them into (no boundary tokens): compression."""
    return tokenizer_report(tok, texts)["bytes_per_token"]


def _chars_per_token(tok: Tokenizer, texts: Sequence[str]) -> float:
    return sum(len(t) for t in texts) / sum(len(tok.encode(t)) for t in texts)


def _mean_of_ratios(tok: Tokenizer, texts: Sequence[str]) -> float:
    return sum(len(t.encode("utf-8")) / len(tok.encode(t)) for t in texts) / len(texts)


def _bpt_cases(gen: torch.Generator):
    for name, n_texts in (("tinystories-512", 1), ("tinystories-4096", 3), ("tinystories-8192", 4),
                          ("tinystories-4096", 6)):
        texts = [_story(gen, int(torch.randint(2, 80, (1,), generator=gen))) for _ in range(n_texts)]
        yield (get_tokenizer(name), texts), {}


def bytes_per_token(tok: Tokenizer, texts: Sequence[str]) -> float:
    """UTF-8 bytes of all `texts` over the tokens `tok` cuts them into (no boundary tokens): compression."""
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)  # bytes, not characters: "é" is 2 bytes
    n_tokens = sum(len(tok.encode(text)) for text in texts)
    return n_bytes / n_tokens  # a ratio of totals, not a mean of per-text ratios


register(Exercise(
    "bytes_per_token", "Compression: bytes per token", NB, difficulty=1, importance=3, minutes=5,
    reference=_bytes_per_token_by_tinylib, shown=bytes_per_token,
    cases=_bpt_cases, wrong=(_chars_per_token, _mean_of_ratios)))
