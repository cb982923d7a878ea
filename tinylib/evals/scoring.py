"""Scoring items by loss, as nanochat's CORE and BLiMP do, and summarising a family with its noise.

The steps, each a function a notebook can call on its own:
1. `encode_item`: every option's text as token ids (BOS first, as every training story starts) and the span of
   tokens whose loss counts: for "mc" the tokens after the part all options share (the continuation), for
   "schema" the shared tail (the continuation, read under each context), for "pair" every token. An option
   the tokenizer cannot encode faithfully, or whose scored tokens do not fit the model's context, makes the
   item `Unscorable` with the reason: it is reported, never dropped silently.
2. `LossModel.token_losses`: the loss of every next token (nats), for a batch of sequences.
3. `option_scores` reduces each span: the mean for "mc" and "schema" (so longer options are not penalised),
   the sum for "pair" (a minimal pair is one sentence against another, BLiMP's total log-probability).
4. `is_correct`: the gold option must score strictly lower than every other, by more than `TIE_TOL`:
   ties count as wrong.
5. `summarize`: accuracy, chance, the centred score (acc - chance) / (1 - chance) (0 = chance, 1 = perfect,
   CORE's normalisation) and a bootstrap 95% interval over items.

What it leaves to others: making items (`families`), which model is which (`models`), reports (`report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinylib.evals.items import Item

TIE_TOL = 1e-6  # nats: scores closer than this are a tie, which counts as wrong
N_BOOT = 2000


class LossModel(Protocol):
    """Anything that gives next-token losses: a network (`NetworkLossModel`) or an n-gram floor."""

    name: str
    tokenizer: object
    max_len: int | None  # the most tokens it reads at once (None: any)

    def token_losses(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence, float64 losses of length len(seq) - 1: entry j is -log p(seq[j+1] | seq[:j+1]);
        NaN where the model could not see enough of the sequence (it was cropped from the left)."""
        ...


# --- 1. encoding --------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    item: Item
    seqs: list[list[int]]
    spans: list[tuple[int, int]]  # tokens [start, end) of each sequence whose losses count
    reduce: str  # "mean" or "sum"


@dataclass
class Unscorable:
    item: Item
    reason: str


def common_length(seqs: Sequence[Sequence[int]], from_end: bool = False) -> int:
    """How many leading (or trailing) tokens every sequence shares."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        k = -1 - i if from_end else i
        if any(s[k] != seqs[0][k] for s in seqs):
            return i
    return n


def encoding_problem(tokenizer, text: str, ids: Sequence[int]) -> str | None:
    """Why `ids` do not faithfully encode `text` (None when they do): an unknown-token id, or a decode that
    gives back other text."""
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        return f"{text[:40]!r} encodes to the unknown token {unk}"
    back = tokenizer.decode(ids)
    if back.strip() != text.strip():
        return f"{text[:40]!r} decodes back as {back[:40]!r}"
    return None


def encode_item(item: Item, tokenizer, max_len: int | None = None) -> Encoded | Unscorable:
    texts = item.texts()
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text)
        problem = encoding_problem(tokenizer, text, ids)
        if problem:
            return Unscorable(item, f"the tokenizer cannot encode it: {problem}")
        seqs.append([tokenizer.bos_id, *ids])
    if item.kind == "mc":  # the options' own tokens, after what they share
        start = common_length(seqs)
        spans = [(start, len(s)) for s in seqs]
    elif item.kind == "schema":  # the shared continuation, after each context
        n = common_length(seqs, from_end=True)
        spans = [(len(s) - n, len(s)) for s in seqs]
    else:  # pair: the whole sentence after BOS
        spans = [(1, len(s)) for s in seqs]
    if any(end - start < 1 for start, end in spans):
        return Unscorable(item, "an option has no tokens of its own once the shared tokens are removed")
    if max_len is not None and any(end - start > max_len for start, end in spans):
        return Unscorable(item, f"its scored tokens are longer than the model's context ({max_len})")
    if item.kind == "pair" and max_len is not None and max(len(s) for s in seqs) - 1 > max_len:
        return Unscorable(item, f"a sentence is longer than the model's context ({max_len})")
    return Encoded(item, seqs, spans, "sum" if item.kind == "pair" else "mean")


# --- 2. losses from a network -------------------------------------------------------------------------------

class NetworkLossModel:
    """A tinylib Transformer as a LossModel: batches sequences of similar length, pads on the right (a causal
    model never sees the padding), crops from the left what is longer than its context (as nanochat does)."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, *, batch_tokens: int | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_len = int(model.cfg.max_seq_len)
        # big batches are faster (fewer, larger matmuls); the logits (tokens x vocab floats) cap them: 128 MB
        self.batch_tokens = batch_tokens or max(2048, (1 << 25) // model.cfg.vocab_size)

    @torch.inference_mode()
    def token_losses(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        device = next(self.model.parameters()).device
        out: list[np.ndarray | None] = [None] * len(seqs)
        order, budget = sorted(range(len(seqs)), key=lambda i: len(seqs[i])), self.batch_tokens
        i = 0
        while i < len(order):
            j = i + 1
            # sorted by length, so the batch's width is its last sequence's (cropped) length
            while j < len(order) and (j + 1 - i) * min(len(seqs[order[j]]), self.max_len + 1) <= budget:
                j += 1
            batch = [list(seqs[k])[-(self.max_len + 1):] for k in order[i:j]]
            width = max(len(s) for s in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, :len(s)] = torch.tensor(s)
            ids = ids.to(device)
            logits, _ = self.model(ids[:, :-1])
            losses = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
            losses = losses.double().cpu().numpy()
            for r, k in enumerate(order[i:j]):
                n, cropped = len(batch[r]) - 1, len(seqs[k]) - len(batch[r])
                out[k] = np.concatenate([np.full(cropped, np.nan), losses[r, :n]])
            i = j
        return out  # type: ignore[return-value]


# --- 3-4. options, right or wrong ---------------------------------------------------------------------------

def option_scores(losses: Sequence[np.ndarray], spans: Sequence[tuple[int, int]], reduce: str) -> list[float]:
    """Each option's score: the mean (or sum) loss of tokens [start, end), whose losses sit at
    [start - 1, end - 1) (token t is predicted at position t - 1)."""
    scores = []
    for loss, (start, end) in zip(losses, spans):
        part = loss[start - 1:end - 1]
        scores.append(float(part.mean() if reduce == "mean" else part.sum()))
    return scores


def is_correct(scores: Sequence[float], gold: int, tol: float = TIE_TOL) -> bool:
    """Right only when the gold score is below every other score by more than `tol`: a tie is wrong."""
    return all(scores[gold] < s - tol for i, s in enumerate(scores) if i != gold)


@dataclass
class ItemResult:
    item: Item
    scores: list[float]
    correct: bool


@dataclass
class Scored:
    """A model's results on a benchmark: one ItemResult per scored item, and the items it could not score."""

    model: str
    results: list[ItemResult]
    unscorable: list[Unscorable] = field(default_factory=list)


def score_items(lm: LossModel, items: Sequence[Item], *, progress: bool = True,
                chunk: int = 256) -> Scored:
    """Score every item with `lm` (see the module docstring); a tqdm bar counts items."""
    encoded, unscorable = [], []
    for item in items:
        e = encode_item(item, lm.tokenizer, lm.max_len)
        (encoded if isinstance(e, Encoded) else unscorable).append(e)
    results = []
    bar = tqdm(total=len(encoded), desc=f"scoring {lm.name}", unit="item", disable=not progress)
    for c in range(0, len(encoded), chunk):  # a chunk of items at a time, so the bar moves
        part = encoded[c:c + chunk]
        flat = [s for e in part for s in e.seqs]
        losses = lm.token_losses(flat)
        k = 0
        for e in part:
            n = len(e.seqs)
            scores = option_scores(losses[k:k + n], e.spans, e.reduce)
            k += n
            results.append(ItemResult(e.item, scores, is_correct(scores, e.item.gold)))
        bar.update(len(part))
    bar.close()
    return Scored(lm.name, results, unscorable)


# --- 5. summaries -------------------------------------------------------------------------------------------

def centred(acc: float, chance: float) -> float:
    """(acc - chance) / (1 - chance): 0 at chance, 1 when every item is right, negative below chance."""
    return (acc - chance) / (1 - chance)


def bootstrap_centred(correct: np.ndarray, chance: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = 0.95, weights: np.ndarray | None = None) -> tuple[float, float]:
    """A percentile bootstrap interval of the centred score: resample the items with replacement `n_boot`
    times and take the middle `level` of the centred scores. With `weights` (an item's number of trials,
    e.g. a request's words) accuracy and chance are weighted means: the pooled rate, resampled by item."""
    correct, chance = np.asarray(correct, float), np.asarray(chance, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    if weights is None:
        acc, ch = correct[idx].mean(1), chance[idx].mean(1)
    else:
        w = np.asarray(weights, float)
        acc, ch = (correct * w)[idx].sum(1) / w[idx].sum(1), (chance * w)[idx].sum(1) / w[idx].sum(1)
    boots = (acc - ch) / (1 - ch)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate k / n (95% at z = 1.96): unlike k/n +- z sqrt(p(1-p)/n)
    it stays inside [0, 1] and is not empty at k = 0 or k = n. It assumes independent trials: words of one
    request are not quite (`bootstrap_centred` resamples whole requests)."""
    if n <= 0:
        raise ValueError(f"n={n}: a rate needs at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is not between 0 and n={n}")
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return float(centre - half), float(centre + half)


@dataclass
class Summary:
    n: int
    acc: float
    chance: float
    centred: float
    ci: tuple[float, float]  # bootstrap 95% interval of the centred score

    def to_dict(self) -> dict:
        return {"n": self.n, "acc": self.acc, "chance": self.chance, "centred": self.centred,
                "ci": list(self.ci)}


def summarize(results: Sequence[ItemResult], *, seed: int = 0) -> Summary:
    if not results:
        raise ValueError("no scored items to summarize")
    correct = np.array([r.correct for r in results], float)
    chance = np.array([r.item.chance for r in results], float)
    acc, ch = float(correct.mean()), float(chance.mean())
    return Summary(len(results), acc, ch, centred(acc, ch), bootstrap_centred(correct, chance, seed=seed))


def by_group(results: Sequence[ItemResult], key: str = "family") -> dict[str, list[ItemResult]]:
    """Results grouped by family (or by "task": family/task), in the order they first appear."""
    groups: dict[str, list[ItemResult]] = {}
    for r in results:
        k = r.item.family if key == "family" else f"{r.item.family}/{r.item.task}"
        groups.setdefault(k, []).append(r)
    return groups


def overall(results: Sequence[ItemResult], *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, tuple]:
    """The mean of the families' centred scores (CORE averages its tasks), with a bootstrap interval that
    resamples items within each family."""
    groups = by_group(results)
    rng = np.random.default_rng(seed)
    point, boots = [], np.zeros(n_boot)
    for rs in groups.values():
        correct = np.array([r.correct for r in rs], float)
        chance = np.array([r.item.chance for r in rs], float)
        point.append(centred(correct.mean(), chance.mean()))
        idx = rng.integers(0, len(rs), size=(n_boot, len(rs)))
        acc, ch = correct[idx].mean(1), chance[idx].mean(1)
        boots += (acc - ch) / (1 - ch)
    boots /= len(groups)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(np.mean(point)), (float(lo), float(hi))


def paired_difference(a: Sequence[ItemResult], b: Sequence[ItemResult], *, n_boot: int = N_BOOT,
                      seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Centred score of `a` minus that of `b` on the items both scored, with a paired bootstrap interval
    (the same resampled items for both): the test of "a beats b", tighter than comparing two intervals."""
    right_b = {r.item.id: r.correct for r in b}
    common = [r for r in a if r.item.id in right_b]
    if not common:
        raise ValueError("the two results share no scored item")
    ca = np.array([r.correct for r in common], float)
    cb = np.array([right_b[r.item.id] for r in common], float)
    ch = np.array([r.item.chance for r in common], float)
    point = centred(ca.mean(), ch.mean()) - centred(cb.mean(), ch.mean())
    idx = np.random.default_rng(seed).integers(0, len(common), size=(n_boot, len(common)))
    chb = ch[idx].mean(1)
    boots = (ca[idx].mean(1) - cb[idx].mean(1)) / (1 - chb)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(point), (float(lo), float(hi))
