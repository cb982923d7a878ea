"""Our byte-level BPE: learn merges from TinyStories text, and measure how well a tokenizer compresses it.

`train_bpe` learns the merges with rustbpe and returns them as a tiktoken-backed `Tokenizer` (save it with
`tinylib.tokenizer.save_tokenizer`); `tokenizer_report` measures compression (bytes per token), tokens per
story and how much of the vocabulary a text actually uses. What it leaves to others: running tokenizers,
saving and loading them (`tinylib.tokenizer`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from tinylib.tokenizer import Tokenizer, from_ranks

# GPT-4's split pattern with numbers grouped by 1-2 digits instead of 1-3 (nanochat's choice): small
# vocabularies should spend their ids on words, not on three-digit numbers. Pre-tokenization keeps merges
# inside words, punctuation runs and whitespace runs.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}"""
    r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def train_bpe(
    texts: Iterable[str] | str, vocab_size: int, name: str | None = None, *, pattern: str = SPLIT_PATTERN
) -> Tokenizer:
    """Learn a byte-level BPE of `vocab_size` ids (the last one is `<|endoftext|>`) from `texts`.

    Why rustbpe: it is nanochat's trainer, written in Rust (a few hundred ms for 2 MB of text and 8k merges
    where a Python BPE takes minutes), deterministic, and its output is exactly tiktoken's mergeable ranks, so
    the trained tokenizer runs in tiktoken's fast encoder with nothing converted. (HF `tokenizers` would also
    train fast but stores merges in its own format and is not needed at run time.)
    """
    import rustbpe  # only to train merges; running a tokenizer needs tiktoken alone

    if isinstance(texts, str):
        texts = [texts]
    vocab_size = int(vocab_size)
    if vocab_size < 257:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs 256 byte ids + 1 special"
        )
    n_ranks = vocab_size - 1  # the last id is <|endoftext|>
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size=n_ranks, pattern=pattern)
    ranks = {bytes(tok): rank for tok, rank in trainer.get_mergeable_ranks()}
    if len(ranks) != n_ranks:
        raise ValueError(
            f"the training text only supports {len(ranks) - 256} merges, but vocab_size={vocab_size} needs "
            f"{n_ranks - 256}: give more text or ask for a vocab_size of at most {len(ranks) + 1}"
        )
    return from_ranks(ranks, name or f"bpe-{vocab_size}", pattern)



def tokenizer_report(tok: Tokenizer, texts: Sequence[str] | str) -> dict:
    """Compression and coverage of `tok` on `texts` (e.g. a list of stories).

    Returns: name, vocab_size, n_texts, n_bytes (UTF-8), n_chars, n_tokens, bytes_per_token, chars_per_token,
    tokens_per_story (list, for a histogram), tokens_per_story_mean, vocab_used (distinct ids seen),
    vocab_used_fraction, top_ids (the 20 most frequent ids with their counts).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("tokenizer_report needs at least one text")
    encoded = tok.encode_batch(texts)
    counts: Counter[int] = Counter()
    for ids in encoded:
        counts.update(ids)
    lengths = [len(ids) for ids in encoded]
    n_tokens = sum(lengths)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "name": tok.name,
        "vocab_size": tok.vocab_size,
        "n_texts": len(texts),
        "n_bytes": n_bytes,
        "n_chars": sum(len(t) for t in texts),
        "n_tokens": n_tokens,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "chars_per_token": sum(len(t) for t in texts) / max(n_tokens, 1),
        "tokens_per_story": lengths,
        "tokens_per_story_mean": n_tokens / len(texts),
        "vocab_used": len(counts),
        "vocab_used_fraction": len(counts) / tok.vocab_size,
        "top_ids": counts.most_common(20),
    }
