"""Exercises of notebook 13 (evaluation beyond loss): score an item by loss, centre it, put an interval on it,
count a tie as wrong, and find where a lower loss and a right answer part ways.

The references are written out (what a stuck learner is shown); the notebook checks each one against
tinylib.evals' own (`option_scores`, `centred`, `bootstrap_centred`, `is_correct`) on real items. Each
wrong answer is a mistake people make: reading the loss of token t at position t
instead of t - 1, summing instead of averaging, scoring the context too; forgetting to divide by 1 - chance;
an interval of the accuracy instead of the centred score, or a 90% one; a tie counted as right.
"""

from __future__ import annotations

import numpy as np
import torch

from tinylib.exercises.checks import Exercise, check, register, solution

__all__ = ["check", "solution"]

NB = "13_evaluation"


# --- mean continuation loss --------------------------------------------------------------------------------

def mean_continuation_loss(logits: torch.Tensor, tokens: torch.Tensor, start: int) -> float:
    """The mean loss (nats) of tokens[start:], where logits[t] is the model's prediction of tokens[t + 1]."""
    logprobs = logits.double().log_softmax(-1)
    # token t is predicted at position t - 1
    picked = [logprobs[t - 1, tokens[t]] for t in range(start, len(tokens))]
    return -float(sum(picked)) / len(picked)


def _loss_at_same_position(logits, tokens, start):
    logprobs = logits.double().log_softmax(-1)
    return -float(sum(logprobs[t, tokens[t]] for t in range(start, len(tokens)))) / (len(tokens) - start)


def _sum_not_mean(logits, tokens, start):
    logprobs = logits.double().log_softmax(-1)
    return -float(sum(logprobs[t - 1, tokens[t]] for t in range(start, len(tokens))))


def _context_too(logits, tokens, start):
    logprobs = logits.double().log_softmax(-1)
    picked = [logprobs[t - 1, tokens[t]] for t in range(1, len(tokens))]
    return -float(sum(picked)) / len(picked)


def _mcl_cases(gen: torch.Generator):
    for i in range(8):
        T, V = 4 + 3 * i, (5, 17, 64)[i % 3]
        logits = torch.randn(T, V, generator=gen) * 2
        tokens = torch.randint(0, V, (T,), generator=gen)
        yield (logits, tokens, 1 + i % (T - 2)), {}


register(Exercise(
    "mean_continuation_loss", "Score an option by its mean continuation loss", NB, difficulty=2,
    importance=5, minutes=10, reference=mean_continuation_loss, cases=_mcl_cases,
    wrong=(_loss_at_same_position, _sum_not_mean, _context_too),
    setup="logits [T, V] of one option's tokens [T]; the option's own tokens start at `start`"))


# --- a tie is wrong ----------------------------------------------------------------------------------------

def is_right(scores: list[float], gold: int) -> bool:
    """True when scores[gold] is below every other score by more than 1e-6 (a tie counts as wrong)."""
    return all(scores[gold] < s - 1e-6 for i, s in enumerate(scores) if i != gold)


def _argmin(scores, gold):
    return int(np.argmin(scores)) == gold  # a tie goes to the first option


def _ties_right(scores, gold):
    return all(scores[gold] <= s for s in scores)


def _is_right_cases(gen: torch.Generator):
    for i in range(12):
        n = 2 + i % 3
        scores = (torch.rand(n, generator=gen) * 3).tolist()
        gold = int(torch.randint(0, n, (1,), generator=gen))
        if i % 3 == 0:  # a tie for the lowest
            other = (gold + 1) % n
            scores[other] = scores[gold] = min(scores)
        if i % 3 == 1:  # the gold option ties the lowest other by less than the tolerance
            others = [s for j, s in enumerate(scores) if j != gold]
            scores[gold] = min(others) - 1e-9
        yield (scores, gold), {}
    yield ([1.0, 1.0], 0), {}
    yield ([1.0, 1.0], 1), {}
    yield ([0.5, 2.0, 3.0], 0), {}  # a clear win: `return False` must not pass


register(Exercise(
    "is_right", "Right, wrong, and ties", NB, difficulty=1, importance=5, minutes=5, reference=is_right,
    cases=_is_right_cases, wrong=(_argmin, _ties_right),
    setup="one score per option (lower is better) and the index of the gold option"))


# --- centred accuracy --------------------------------------------------------------------------------------

def centred_accuracy(correct: np.ndarray, chance: np.ndarray) -> float:
    """(accuracy - chance) / (1 - chance), accuracy and chance averaged over the items."""
    acc, ch = np.mean(correct), np.mean(chance)
    return float((acc - ch) / (1 - ch))


def _not_divided(correct, chance):
    return float(np.mean(correct) - np.mean(chance))


def _divided_by_chance(correct, chance):
    return float((np.mean(correct) - np.mean(chance)) / np.mean(chance))


def _centred_cases(gen: torch.Generator):
    for i in range(8):
        n = 10 + 7 * i
        correct = (torch.rand(n, generator=gen) < 0.3 + 0.08 * i).numpy()
        chance = np.array([(0.5, 1 / 3, 0.25)[j % (1 + i % 3)] for j in range(n)])
        yield (correct, chance), {}


register(Exercise(
    "centred_accuracy", "Centred accuracy", NB, difficulty=1, importance=4, minutes=5,
    reference=centred_accuracy, cases=_centred_cases, wrong=(_not_divided, _divided_by_chance),
    setup="right/wrong per item, and each item's chance (1 / its options)"))


# --- a bootstrap interval ----------------------------------------------------------------------------------

def bootstrap_interval(correct: np.ndarray, chance: np.ndarray, n_boot: int,
                       seed: int) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the centred score: draw the resamples as
    `np.random.default_rng(seed).integers(0, n, size=(n_boot, n))`, one row per resample."""
    correct, chance = np.asarray(correct, float), np.asarray(chance, float)
    n = len(correct)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    acc, ch = correct[idx].mean(axis=1), chance[idx].mean(axis=1)
    lo, hi = np.quantile((acc - ch) / (1 - ch), [0.025, 0.975])
    return float(lo), float(hi)


def _interval_of_accuracy(correct, chance, n_boot, seed):
    correct = np.asarray(correct, float)
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(n_boot, len(correct)))
    lo, hi = np.quantile(correct[idx].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)


def _ninety_percent(correct, chance, n_boot, seed):
    correct, chance = np.asarray(correct, float), np.asarray(chance, float)
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(n_boot, len(correct)))
    acc, ch = correct[idx].mean(axis=1), chance[idx].mean(axis=1)
    lo, hi = np.quantile((acc - ch) / (1 - ch), [0.05, 0.95])
    return float(lo), float(hi)


def _boot_cases(gen: torch.Generator):
    for i in range(6):
        n = 20 + 15 * i
        correct = (torch.rand(n, generator=gen) < 0.4 + 0.1 * i).numpy()
        chance = np.array([(0.5, 0.25)[j % 2] for j in range(n)])
        yield (correct, chance, 300 + 100 * i, i), {}


register(Exercise(
    "bootstrap_interval", "A bootstrap interval", NB, difficulty=2, importance=5, minutes=10,
    reference=bootstrap_interval, cases=_boot_cases, wrong=(_interval_of_accuracy, _ninety_percent),
    setup="right/wrong and chance per item, the number of resamples, a seed"))


# --- where loss and the benchmark part ways ----------------------------------------------------------------

def loss_disagreements(gold_loss_a: np.ndarray, right_a: np.ndarray, gold_loss_b: np.ndarray,
                       right_b: np.ndarray) -> np.ndarray:
    """Indices of the items where model A gives the gold option a lower loss than model B does, yet A gets the
    item wrong and B gets it right."""
    return np.array([i for i in range(len(right_a))
                     if gold_loss_a[i] < gold_loss_b[i] and not right_a[i] and right_b[i]], dtype=np.int64)


def _forgot_b_right(gold_loss_a, right_a, gold_loss_b, right_b):
    return np.flatnonzero((gold_loss_a < gold_loss_b) & ~right_a)


def _lower_is_worse(gold_loss_a, right_a, gold_loss_b, right_b):
    return np.flatnonzero((gold_loss_a > gold_loss_b) & ~right_a & right_b)


def _dis_cases(gen: torch.Generator):
    for i in range(6):
        n = 30 + 10 * i
        yield ((torch.rand(n, generator=gen) * 4).numpy(), (torch.rand(n, generator=gen) < 0.5).numpy(),
               (torch.rand(n, generator=gen) * 4).numpy(), (torch.rand(n, generator=gen) < 0.5).numpy()), {}


register(Exercise(
    "loss_disagreements", "Lower loss, wrong answer", NB, difficulty=2, importance=4, minutes=10,
    reference=loss_disagreements, cases=_dis_cases, wrong=(_forgot_b_right, _lower_is_worse),
    setup="per item: each model's loss on the gold option, and whether it got the item right"))
