"""Statistics of sampled stories: what the loss-scored items cannot see (loops, rambling, never ending).

Counted on words (`words`: lower-case words and punctuation marks), so that models with different tokenizers
compare: distinct-n over all stories together (share of distinct n-grams, 1.0 = no n-gram repeats anywhere),
the repeated n-gram rate within a story (share of its n-grams that already occurred earlier in the same story:
loops), the mean length in words, and the share of stories the model ended itself with its end-of-story token.
What it leaves to others: sampling (`tinylib.generate`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from tinylib.generate import generate

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def distinct_n(stories: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams / all n-grams, over every story together (Li et al. 2016)."""
    grams = [g for ws in stories for g in ngrams(ws, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_rate(ws: Sequence[str], n: int = 4) -> float:
    """Share of a story's n-grams that already occurred earlier in it (0 = none repeats)."""
    grams = ngrams(ws, n)
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def text_stats(texts: Sequence[str], ended: Sequence[bool]) -> dict:
    """The statistics of the module docstring for finished stories (`ended[i]`: story i ended with EOS)."""
    ws = [words(t) for t in texts]
    return {"n": len(texts), "distinct_1": distinct_n(ws, 1), "distinct_2": distinct_n(ws, 2),
            "distinct_3": distinct_n(ws, 3),
            "repeated_4gram_rate": float(np.mean([repeated_ngram_rate(w, 4) for w in ws])),
            "mean_words": float(np.mean([len(w) for w in ws])), "ended_share": float(np.mean(ended))}


def generation_stats(model, tokenizer, *, n: int = 16, max_new_tokens: int = 256, temperature: float = 1.0,
                     seed: int = 0) -> dict:
    """Sample `n` stories from BOS (temperature `temperature`, no top-k/top-p) and return `text_stats`."""
    results = generate(model, tokenizer, [""] * n, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed)
    stats = text_stats([r.text for r in results], [r.stop_reason == "eos" for r in results])
    return {**stats, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
