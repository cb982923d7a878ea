"""Exercises of notebook 06 (neurons): Cohen's d selectivity, the strongest activations, where words occur,
how mixed a neuron's top activations are.

References are tinylib's own: `tinylib.interp.neurons.neuron_selectivity` (Cohen's d of every neuron),
the ranking inside `top_activations`, `word_positions` and `top_k_entropy`. Each wrong answer is a mistake
people make: dividing by the standard deviation of all positions instead of the pooled within-group one,
forgetting to divide at all, splitting a flat index by the batch size instead of the sequence length,
ranking by |activation| (SwiGLU neurons go negative), marking the first token of a word instead of its last,
searching only for the word exactly as given or missing its line-start form; for the entropy: nats instead
of bits, the text's mix of labels instead of the neuron's top positions, ranking by |activation|, and log2
of the number of distinct labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.interp.neurons import neuron_selectivity, word_positions
from tinylib.interp.neurons import top_k_entropy as _top_k_entropy_by_tinylib
from tinylib.tokenizer import get_tokenizer

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "06_neurons"


# --- Cohen's d ----------------------------------------------------------------------------------------------

def _cohens_d_by_tinylib(acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Selectivity [L, N] of every neuron for the positions `mask` [B, T] marks, from acts [B, T, L, N]:
    (mean on - mean off) / pooled std, pooled = sqrt((n_on var_on + n_off var_off) / (n_on + n_off)),
    population variances (unbiased=False), the std clamped at 1e-6 so a dead neuron scores 0."""
    L, N = acts.shape[2:]
    ranked = neuron_selectivity(None, mask, mask, top=L * N, acts=acts, min_positions=1)  # every neuron
    d = torch.zeros(L, N)
    for r in ranked:
        d[r.layer, r.neuron] = r.score
    return d


def _d_with_overall_std(acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    on, off = acts[mask], acts[~mask]
    everything = acts.reshape(-1, *acts.shape[2:])  # includes the difference between the groups
    return (on.mean(0) - off.mean(0)) / everything.std(0, unbiased=False).clamp_min(1e-6)


def _d_unscaled(acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return acts[mask].mean(0) - acts[~mask].mean(0)


def _selectivity_cases(gen: torch.Generator):
    for B, T, L, N, p_on in ((2, 8, 1, 5, 0.3), (3, 16, 2, 12, 0.1), (1, 30, 3, 7, 0.5), (4, 10, 2, 20, 0.2)):
        mask = torch.rand(B, T, generator=gen) < p_on
        mask[0, 0], mask[-1, -1] = True, False  # some positions on, some off
        acts = torch.randn(B, T, L, N, generator=gen) * 0.5
        acts[..., 0] += 2.0 * mask[..., None]  # neuron 0 of every layer fires on the marked positions
        acts[:, :, 0, -1] = 0.0  # a dead neuron: pooled std 0, score 0
        yield (acts, mask), {}


def cohens_d(acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Selectivity [L, N] of every neuron for the positions `mask` [B, T] marks, from acts [B, T, L, N]:
    (mean on - mean off) / pooled std, population variances, the std clamped at 1e-6."""
    on, off = acts[mask], acts[~mask]  # [n_on, L, N] and [n_off, L, N]
    pooled_var = (len(on) * on.var(0, unbiased=False) + len(off) * off.var(0, unbiased=False)) / (
        len(on) + len(off))
    return (on.mean(0) - off.mean(0)) / pooled_var.sqrt().clamp_min(1e-6)  # a dead neuron scores 0


register(Exercise(
    "cohens_d", "Cohen's d: how selectively a neuron fires", NB, difficulty=2, importance=4, minutes=15,
    reference=_cohens_d_by_tinylib, shown=cohens_d,
    cases=_selectivity_cases, wrong=(_d_with_overall_std, _d_unscaled)))


# --- top-k activation positions -----------------------------------------------------------------------------

def top_positions(acts: torch.Tensor, k: int) -> torch.Tensor:
    """The k (row, position) pairs [k, 2] where one neuron's activations acts [B, T] are largest, largest
    first (the ranking `tinylib.interp.neurons.top_activations` shows with context)."""
    vals, idx = acts.flatten().topk(min(k, acts.numel()))
    T = acts.shape[1]
    return torch.stack([idx // T, idx % T], dim=1)


def _top_positions_divides_by_batch(acts: torch.Tensor, k: int) -> torch.Tensor:
    _, idx = acts.flatten().topk(k)
    B = acts.shape[0]
    return torch.stack([idx // B, idx % B], dim=1)  # the flat index counts positions, not rows


def _top_positions_by_magnitude(acts: torch.Tensor, k: int) -> torch.Tensor:
    _, idx = acts.flatten().abs().topk(k)  # a strongly negative SwiGLU activation is not "firing"
    T = acts.shape[1]
    return torch.stack([idx // T, idx % T], dim=1)


def _top_positions_int32(acts: torch.Tensor, k: int) -> torch.Tensor:
    return top_positions(acts, k).int()  # indices are int64 in PyTorch: int32 ones do not index the same


def _topk_cases(gen: torch.Generator):
    for B, T, k in ((2, 7, 3), (4, 16, 5), (3, 5, 1), (8, 32, 10)):
        acts = torch.randn(B, T, generator=gen) * torch.linspace(0.5, 3.0, T)
        acts = torch.where(acts < 0, acts * 2, acts)  # SwiGLU-like: large negative values too
        yield (acts, k), {}


register(Exercise(
    "top_positions", "Where a neuron fires most: top-k positions", NB, difficulty=1, importance=3, minutes=10,
    reference=top_positions, cases=_topk_cases,
    wrong=(_top_positions_divides_by_batch, _top_positions_by_magnitude, _top_positions_int32)))


# --- word-position mask -------------------------------------------------------------------------------------

def _word_mask_by_tinylib(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    """Bool mask [B, T]: True at the LAST token of every whole-word occurrence of any of `words` in tokens
    [B, T], in the forms word, Word (capitalised), word in lower case, each with and without a leading space;
    "sad" inside "Sadie", "Tom" inside "tomato" and "and" inside "band" do not count."""
    return word_positions(tokenizer, tokens, words)


def _word_mask_inside_words(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    B, T = tokens.shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    for word in words:
        for form in {word, word.capitalize(), word.lower()}:
            for text in (form, " " + form):
                ids = torch.tensor(tokenizer.encode(text))
                n = len(ids)
                for start in range(T - n + 1 if n else 0):
                    mask[:, start + n - 1] |= (tokens[:, start:start + n] == ids).all(dim=-1)  # " Sad" + "ie"
    return mask


def _word_mask_first_token(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for w in words:
        for form in {w, w.capitalize(), w.lower()}:
            for text in (form, " " + form):
                ids = tokenizer.encode(text)
                n = len(ids)
                for b in range(tokens.shape[0]):
                    for t in range(tokens.shape[1] - n + 1):
                        if tokens[b, t: t + n].tolist() == ids:
                            mask[b, t] = True  # the first piece, not the last
    return mask


def _word_mask_exact_form_only(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for w in words:
        ids = tokenizer.encode(" " + w)  # misses "Lily" at the start and " Lily" when asked for "lily"
        n = len(ids)
        for b in range(tokens.shape[0]):
            for t in range(tokens.shape[1] - n + 1):
                if tokens[b, t: t + n].tolist() == ids:
                    mask[b, t + n - 1] = True
    return mask


_WORDS = ("Lily", "lily", "happy", "Happy", "sad", "the", "dog", "Tom", "tomato", "ran", "and", "Sadie",
          "friends", "princess", "butterfly", "tomb", "band", "sadly")


class _SpaceFirst:
    """A tokenizer that, like SentencePiece (stories260K's), puts a space before every text it encodes:
    encode("Lily") is encode(" Lily"), so "Lily" at a line start ("\n" "L" "ily") is a third form."""

    def __init__(self, inner: Any):
        self.inner = inner

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text if text.startswith(" ") else " " + text)

    def token_bytes(self, i: int) -> bytes:
        return self.inner.token_bytes(i)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    def __repr__(self) -> str:
        return "a space-first tokenizer (like SentencePiece)"


class _NoLineStart(_SpaceFirst):
    """The same tokenizer, except that the line-start form cannot be read off "\n" + word."""

    def encode(self, text: str) -> list[int]:
        return [-1] if text.startswith("\n") else self.inner.encode(text)


def _word_mask_no_line_start(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    return word_positions(_NoLineStart(tokenizer), tokens, words)  # " Lily" and "Lily", never "\nLily"


def _word_cases(gen: torch.Generator):
    tok = get_tokenizer("tinystories-512")  # many words are several pieces here
    for B, T, words, sp in ((2, 24, ["lily"], False), (3, 32, ["happy", "sad"], False),
                            (2, 40, ["Tom", "princess"], False),
                            (1, 64, ["butterfly", "Lily", "friends"], False),
                            (3, 48, ["and", "sad", "tom"], False), (3, 48, ["Lily", "Tom", "sad"], True)):
        rows = []
        for _ in range(B):
            picks = torch.randint(0, len(_WORDS), (T,), generator=gen).tolist()
            text = "".join(("\n" if i % 5 == 0 else " ") + _WORDS[p] for i, p in enumerate(picks)).lstrip()
            rows.append(tok.encode(text)[:T])
        yield (_SpaceFirst(tok) if sp else tok, torch.tensor(rows), words), {}


def word_mask(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    """Bool mask [B, T]: True at the LAST token of every whole-word occurrence of any of `words` in tokens
    [B, T], in the forms word, Word (capitalised), word in lower case, with and without a leading space,
    and as at a line start (no space at all, even for a tokenizer that adds one to every text)."""
    B, T = tokens.shape
    # each token's own text, its leading space kept (SentencePiece's decode([i]) would drop it)
    text = [[tokenizer.token_bytes(int(i)).decode("utf-8", "replace") for i in row] for row in tokens]
    newline = tokenizer.encode("\n")
    mask = torch.zeros(B, T, dtype=torch.bool)
    for word in words:
        for form in {word, word.capitalize(), word.lower()}:
            # " dog" mid-sentence and "dog" after a quote are other ids; SentencePiece encodes "Lily" as
            # " Lily", so the no-space form is read off "\nLily" with the newline's ids cut off
            at_line_start = tokenizer.encode("\n" + form)[len(newline):]
            for ids in (tokenizer.encode(form), tokenizer.encode(" " + form), at_line_start):
                n = len(ids)
                for b in range(B):
                    for s in range(T - n + 1 if n else 0):
                        if tokens[b, s:s + n].tolist() != ids:
                            continue
                        # a whole word: no letter glued on before ("band") or after ("Sadie")
                        glued_before = s > 0 and text[b][s - 1][-1:].isalnum() and text[b][s][:1].isalnum()
                        glued_after = s + n < T and text[b][s + n][:1].isalnum()
                        if not (glued_before or glued_after):
                            mask[b, s + n - 1] = True  # mark the word's last token
    return mask


register(Exercise(
    "word_mask", "Where words occur: a word-position mask", NB, difficulty=3, importance=3, minutes=15,
    reference=_word_mask_by_tinylib, shown=word_mask,
    cases=_word_cases, wrong=(_word_mask_first_token, _word_mask_exact_form_only, _word_mask_inside_words,
                              _word_mask_no_line_start)))


# --- how mixed a neuron's top activations are ---------------------------------------------------------------

def _entropy_in_nats(acts: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    return _top_k_entropy_by_tinylib(acts, labels, k) * math.log(2)  # the same entropy, in nats


def _entropy_of_all_positions(acts: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(labels.flatten()).double()  # the text's mix of labels, not the neuron's
    p = counts[counts > 0] / counts.sum()
    return torch.full((acts.shape[-1],), float(-(p * p.log2()).sum()))


def _entropy_by_magnitude(acts: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    return _top_k_entropy_by_tinylib(acts.abs(), labels, k)  # a strongly negative value is not "firing"


def _log2_distinct(acts: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    flat = acts.reshape(-1, acts.shape[-1])
    idx = flat.topk(k, dim=0).indices
    kinds = [len(set(labels.flatten()[idx[:, n]].tolist())) for n in range(flat.shape[1])]
    return torch.tensor([math.log2(m) for m in kinds])  # the most it could be, not what it is


def _entropy_cases(gen: torch.Generator):
    for B, T, N, m, k in ((2, 16, 5, 3, 6), (4, 32, 12, 6, 20), (3, 20, 8, 2, 10), (1, 64, 16, 6, 8)):
        labels = torch.randint(0, m, (B, T), generator=gen)
        acts = torch.randn(B, T, N, generator=gen)
        acts = torch.where(acts < 0, acts * 3, acts)  # SwiGLU-like: large negative values too
        acts[..., 0] += 4.0 * (labels == 0)  # neuron 0 fires on one kind: entropy near 0
        acts[..., 1] = torch.where(labels == 1, -6.0, acts[..., 1])  # neuron 1 is strongly negative on kind 1
        yield (acts, labels, k), {}


def top_k_entropy(acts: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """[N]: for every neuron of acts [B, T, N], the entropy in bits of the labels [B, T] found at its k
    largest activations (0 when they all have one label, log2(m) when spread evenly over m)."""
    flat, lab = acts.reshape(-1, acts.shape[-1]), labels.reshape(-1)  # [positions, N], [positions]
    top = lab[flat.topk(k, dim=0).indices]  # [k, N]: the label at each neuron's top positions
    out = torch.zeros(flat.shape[1])
    for n in range(flat.shape[1]):
        p = torch.bincount(top[:, n]).float() / k  # how often each label occurs among the k
        p = p[p > 0]
        out[n] = -(p * p.log2()).sum()
    return out


register(Exercise(
    "top_k_entropy", "How mixed are a neuron's top activations?", NB, difficulty=2, importance=4,
    minutes=15, reference=_top_k_entropy_by_tinylib, shown=top_k_entropy, cases=_entropy_cases,
    wrong=(_entropy_in_nats, _entropy_of_all_positions, _entropy_by_magnitude, _log2_distinct)))
