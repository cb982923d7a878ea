"""Exercises of notebook 08 (induction heads form): the in-context score, K-composition, a copying OV
circuit.

References are the library's own: `tinylib.interp.induction.icl_score` and `tinylib.interp.circuits`
(`composition_score`, `copying_accuracy`). Each wrong answer is a mistake people make: the score's sign
reversed, single positions instead of averaged neighbourhoods; the product of K-composition in the order of
Q-composition, a normalisation by one matrix only; the argmax over the wrong axis of the OV circuit (which
token *raises* a given logit most, instead of which logit a token raises most).
"""

from __future__ import annotations

import torch

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.interp.circuits import composition_score, copying_accuracy
from tinylib.interp.induction import icl_score

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "08_induction_heads_form"


# --- the in-context-learning score -------------------------------------------------------------------------

def _in_context_score_by_tinylib(losses: torch.Tensor) -> float:
    """Loss at late positions minus loss at early ones: losses [N, T] per token; early = T // 5,
    late = 4 * T // 5, each averaged over 10 positions starting there."""
    return icl_score(losses)


def _icl_reversed(losses: torch.Tensor) -> float:
    return -icl_score(losses)


def _icl_single_positions(losses: torch.Tensor) -> float:
    n = losses.shape[1]
    return float(losses[:, 4 * n // 5].mean() - losses[:, n // 5].mean())


def _loss_cases(gen: torch.Generator):
    for N, T in ((4, 255), (2, 100), (8, 63)):
        decay = 3.0 + 2.0 / (1 + torch.arange(T, dtype=torch.float32) / 10)  # later tokens are easier
        yield (decay + torch.rand(N, T, generator=gen),), {}


def in_context_score(losses: torch.Tensor) -> float:
    """Loss at late positions minus loss at early ones: losses [N, T] per token; early = T // 5,
    late = 4 * T // 5, each averaged over 10 positions starting there."""
    T = losses.shape[1]
    early, late = T // 5, 4 * T // 5
    return float(losses[:, late:late + 10].mean() - losses[:, early:early + 10].mean())  # < 0: context helps


register(Exercise(
    "in_context_score", "The in-context-learning score", NB, difficulty=1, importance=4, minutes=5,
    reference=_in_context_score_by_tinylib, shown=in_context_score,
    cases=_loss_cases, wrong=(_icl_reversed, _icl_single_positions)))


# --- K-composition -----------------------------------------------------------------------------------------

def _k_composition_by_tinylib(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    """How much a later head's keys read what an earlier head writes: ||W_QK W_OV^T||_F / (||W_QK||_F
    ||W_OV||_F), for the earlier head's W_OV and the later head's W_QK, both [d_model, d_model]."""
    return composition_score(w_ov, w_qk, "k")


def _k_in_q_order(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    return composition_score(w_ov, w_qk, "q")  # W_OV W_QK: the earlier head feeding the queries


def _k_one_norm(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    return (w_qk @ w_ov.T).norm() / w_qk.norm().square()


def _matrix_cases(gen: torch.Generator):
    for d, rank in ((8, 2), (16, 4), (32, 3), (12, 12)):
        w_ov = torch.randn(d, rank, generator=gen) @ torch.randn(rank, d, generator=gen)
        w_qk = torch.randn(d, rank, generator=gen) @ torch.randn(rank, d, generator=gen)
        yield (w_ov, w_qk), {}


def k_composition(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    """How much a later head's keys read what an earlier head writes: ||W_QK W_OV^T||_F / (||W_QK||_F
    ||W_OV||_F)."""
    read = w_qk @ w_ov.T  # the keys' side of W_QK applied to what W_OV writes
    return read.norm() / (w_qk.norm() * w_ov.norm())  # Frobenius norms: 0 (unrelated) .. 1


register(Exercise(
    "k_composition", "K-composition of two heads", NB, difficulty=2, importance=4, minutes=10,
    reference=_k_composition_by_tinylib, shown=k_composition,
    cases=_matrix_cases, wrong=(_k_in_q_order, _k_one_norm)))


# --- does the OV circuit copy? -----------------------------------------------------------------------------

def _ov_copying_by_tinylib(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    """Fraction of tokens i for which the full OV circuit w_e @ w_ov @ w_u ([vocab, vocab]: attended token
    -> logits) raises logit i above every other logit. w_e [vocab, d], w_ov [d, d], w_u [d, vocab]."""
    return copying_accuracy(w_e @ w_ov @ w_u)


def _ov_argmax_over_rows(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    circuit = w_e @ w_ov @ w_u
    return float((circuit.argmax(0) == torch.arange(circuit.shape[0])).float().mean())


def _ov_without_embedding(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    return copying_accuracy(w_e @ w_u)  # the direct path: no head at all


def _circuit_cases(gen: torch.Generator):
    for vocab, d, copy in ((40, 16, 1.0), (100, 32, 0.5), (64, 8, 0.2), (30, 30, 2.0)):
        w_e = torch.randn(vocab, d, generator=gen)
        # a head that partly copies (w_ov ~ identity) and partly mixes; w_u a noisy transpose of w_e
        w_ov = copy * torch.eye(d) + torch.randn(d, d, generator=gen) / d ** 0.5
        w_u = w_e.T + torch.randn(d, vocab, generator=gen)
        yield (w_e, w_ov, w_u), {}


def ov_copying(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    """Fraction of tokens i for which the full OV circuit w_e @ w_ov @ w_u raises logit i above every other
    logit."""
    circuit = w_e @ w_ov @ w_u  # [vocab, vocab]: row i, the logits when the head attends to token i
    copies = circuit.argmax(dim=-1) == torch.arange(circuit.shape[0])  # the row's top logit is its own token
    return float(copies.float().mean())


register(Exercise(
    "ov_copying", "Does a head's OV circuit copy?", NB, difficulty=2, importance=3, minutes=10,
    reference=_ov_copying_by_tinylib, shown=ov_copying,
    cases=_circuit_cases, wrong=(_ov_argmax_over_rows, _ov_without_embedding)))
