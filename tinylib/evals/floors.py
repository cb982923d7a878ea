"""The floors: a unigram and a bigram model fitted on the training text, scored exactly as a network is.

A benchmark score means something only above what word counts alone achieve. The unigram model knows how
frequent each token is; the bigram model also knows which token follows which. Both are fitted on the same
training stories as the reference model (framed with BOS as training frames them) and tokenized with the same
tokenizer, so they are the reference's baselines token for token.

Smoothing, so that no token has probability 0:
- unigram: add-one, p(b) = (c(b) + 1) / (N + V);
- bigram: interpolated with the unigram (Jelinek-Mercer), p(b | a) = lam * c(a, b) / c(a) + (1 - lam) * p(b),
  and p(b) alone when a was never seen.
Counts are kept sparse (sorted keys a * V + b), so a 32k vocabulary costs what its bigrams cost, not V^2.
What this module leaves to others: tokenizers, the training text (`tinylib.evals.data`), scoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NGramLossModel:
    """A unigram (order 1) or bigram (order 2) LossModel; see the module docstring."""

    max_len = None

    def __init__(self, order: int, tokenizer, stories: Sequence[str], *, lam: float = 0.9,
                 name: str | None = None):
        if order not in (1, 2):
            raise ValueError(f"order={order}: only unigram (1) and bigram (2) floors are defined")
        if not stories:
            raise ValueError("no training stories to fit the floor on (see tinylib.evals.data)")
        self.order, self.tokenizer, self.lam = order, tokenizer, lam
        self.name = name or ("unigram" if order == 1 else "bigram")
        V = self.vocab = tokenizer.vocab_size
        seqs = tokenizer.encode_batch(list(stories), bos=True)
        tokens = np.concatenate([np.asarray(s, np.int64) for s in seqs])
        self.n_tokens = len(tokens)
        counts = np.bincount(tokens, minlength=V).astype(np.float64)
        self.logp_uni = np.log((counts + 1) / (counts.sum() + V))
        if order == 2:
            prev = np.concatenate([np.asarray(s[:-1], np.int64) for s in seqs])
            nxt = np.concatenate([np.asarray(s[1:], np.int64) for s in seqs])
            self.keys, pair_counts = np.unique(prev * V + nxt, return_counts=True)
            self.pair_counts = pair_counts.astype(np.float64)
            self.context_counts = np.bincount(prev, minlength=V).astype(np.float64)

    def logprob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """log p(nxt | prev) for arrays of token ids (prev is ignored by the unigram)."""
        if self.order == 1:
            return self.logp_uni[nxt]
        key = prev * self.vocab + nxt
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        pair = np.where(self.keys[pos] == key, self.pair_counts[pos], 0.0)
        ctx = self.context_counts[prev]
        p_uni = np.exp(self.logp_uni[nxt])
        p = np.where(ctx > 0, self.lam * pair / np.maximum(ctx, 1) + (1 - self.lam) * p_uni, p_uni)
        return np.log(p)

    def token_losses(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for s in seqs:
            s = np.asarray(s, np.int64)
            out.append(-self.logprob(s[:-1], s[1:]))
        return out
