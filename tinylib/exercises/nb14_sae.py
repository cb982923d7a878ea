"""Exercises of notebook 14 (sparse autoencoders): the autoencoder's loss, a TopK activation, the share of the
loss gap an autoencoder recovers, and the entropy that says how mixed a unit's top contexts are.

References are the library's own: `tinylib.interp.sae` (`SparseAutoencoder`'s loss, `topk_relu`) and
`tinylib.interp.features.entropy_bits`. Each wrong answer is a mistake people make: encoding x without first
removing the decoder bias, an L1 summed over the batch instead of averaged; keeping the k largest by absolute
value, or forgetting the ReLU on the kept values; the share of the gap *lost* instead of recovered, a plain
ratio of losses; an entropy in nats, or the number of distinct labels instead of an entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.interp.features import entropy_bits
from tinylib.interp.sae import SAEConfig, SparseAutoencoder, topk_relu

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "14_sparse_autoencoders"


# --- the ReLU autoencoder's loss --------------------------------------------------------------------------

def sae_loss(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
             b_dec: torch.Tensor, l1: float) -> torch.Tensor:
    """x [N, d], W_enc [d, n], b_enc [n], W_dec [n, d] (unit rows), b_dec [d] -> the scalar loss
    mean_rows ||x - x_hat||^2 / d + l1 * mean_rows(sum_i f_i) / d, with f = relu((x - b_dec) W_enc + b_enc)
    and x_hat = f W_dec + b_dec."""
    sae = SparseAutoencoder(SAEConfig(d_in=x.shape[1], n_features=W_enc.shape[1], kind="relu", l1=l1))
    with torch.no_grad():
        for p, v in ((sae.W_enc, W_enc), (sae.b_enc, b_enc), (sae.W_dec, W_dec), (sae.b_dec, b_dec)):
            p.copy_(v)
    return sae(x).loss.detach()


def _shown_sae_loss(x, W_enc, b_enc, W_dec, b_dec, l1):
    f = F.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    d = x.shape[1]
    return (x - x_hat).pow(2).sum(-1).mean() / d + l1 * f.sum(-1).mean() / d


def _loss_no_bias_removed(x, W_enc, b_enc, W_dec, b_dec, l1):
    f = F.relu(x @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    d = x.shape[1]
    return (x - x_hat).pow(2).sum(-1).mean() / d + l1 * f.sum(-1).mean() / d


def _loss_l1_summed(x, W_enc, b_enc, W_dec, b_dec, l1):
    f = F.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    d = x.shape[1]
    return (x - x_hat).pow(2).sum(-1).mean() / d + l1 * f.sum() / d


def _sae_cases(gen: torch.Generator):
    for N, d, n, l1 in ((16, 8, 32, 1.0), (5, 12, 24, 0.3), (32, 4, 16, 3.0)):
        W_dec = torch.randn(n, d, generator=gen)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        yield (torch.randn(N, d, generator=gen) + 2.0, W_dec.T.clone(), 0.1 * torch.randn(n, generator=gen),
               W_dec, torch.randn(d, generator=gen), l1), {}


register(Exercise(
    "sae_loss", "The ReLU autoencoder's loss", NB, difficulty=2, importance=5, minutes=15,
    reference=sae_loss, cases=_sae_cases, wrong=(_loss_no_bias_removed, _loss_l1_summed),
    shown=_shown_sae_loss, setup="activations x [N, d] and the autoencoder's four parameters"))


# --- TopK ---------------------------------------------------------------------------------------------------

def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """pre [N, n] -> the same shape: in each row the k largest entries, ReLU'd, and zeros elsewhere."""
    return topk_relu(pre, k)


def _shown_topk(pre, k):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.clamp(min=0))


def _topk_by_magnitude(pre, k):
    idx = pre.abs().topk(k, dim=-1).indices
    return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).clamp(min=0))


def _topk_no_relu(pre, k):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals)


def _topk_cases(gen: torch.Generator):
    for N, n, k in ((8, 32, 4), (3, 10, 9), (16, 64, 16)):
        yield (torch.randn(N, n, generator=gen) - 0.5, k), {}


register(Exercise(
    "topk_activation", "A TopK activation", NB, difficulty=1, importance=4, minutes=10,
    reference=topk_activation, cases=_topk_cases, wrong=(_topk_by_magnitude, _topk_no_relu),
    shown=_shown_topk))


# --- the loss recovered -------------------------------------------------------------------------------------

def loss_recovered(clean: float, zero: float, spliced: float) -> float:
    """The share of the gap between the zero-ablated loss and the clean loss that the spliced-in autoencoder
    recovers: 1 is as good as the model's own activation, 0 no better than zeros."""
    return (zero - spliced) / (zero - clean)


def _loss_lost(clean, zero, spliced):
    return (spliced - clean) / (zero - clean)


def _loss_ratio(clean, zero, spliced):
    return clean / spliced


def _recovered_cases(gen: torch.Generator):
    for _ in range(4):
        clean = 2.0 + float(torch.rand((), generator=gen))
        zero = clean + 0.1 + 2 * float(torch.rand((), generator=gen))
        frac = float(torch.rand((), generator=gen))
        yield (clean, zero, zero - frac * (zero - clean)), {}


register(Exercise(
    "loss_recovered", "The loss recovered", NB, difficulty=1, importance=5, minutes=5,
    reference=loss_recovered, cases=_recovered_cases, wrong=(_loss_lost, _loss_ratio)))


# --- how mixed are a unit's top contexts -------------------------------------------------------------------

def _label_entropy_by_tinylib(labels: Sequence[str]) -> float:
    """Entropy in bits of the labels' frequencies: 0 when all are the same, log2(m) for m equally common."""
    return entropy_bits(labels)


def _entropy_nats(labels):
    import math  # the shown solution stands alone: the learner sees this function only
    counts = {x: labels.count(x) for x in set(labels)}
    return -sum(c / len(labels) * math.log(c / len(labels)) for c in counts.values())


def _entropy_distinct(labels):
    import math  # the shown solution stands alone: the learner sees this function only
    return math.log2(len(set(labels)))


def _label_cases(gen: torch.Generator):
    names = ["punctuation", "function word", "content word", "capitalised word", "number"]
    for n, m in ((20, 2), (20, 5), (7, 3), (10, 1)):
        idx = torch.randint(0, m, (n,), generator=gen).tolist()
        idx[0] = 0
        yield ([names[i] for i in idx],), {}


def label_entropy(labels: Sequence[str]) -> float:
    """Entropy in bits of the labels' frequencies: 0 when all are the same, log2(m) for m equally common."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    n = len(labels)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0  # sum of -p log2 p


register(Exercise(
    "label_entropy", "How mixed are a unit's top contexts?", NB, difficulty=1, importance=3, minutes=10,
    reference=_label_entropy_by_tinylib, shown=label_entropy, cases=_label_cases,
    wrong=(_entropy_nats, _entropy_distinct)))
