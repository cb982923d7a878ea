"""Exercises of notebook 03 (training): attention, RoPE, the schedule, bits per byte, gradient accumulation.

The references are tinylib's own where the library has the function (`tinylib.model.apply_rope`,
`tinylib.optim.lr_scale`, `tinylib.evaluate.bits_per_byte`); causal attention and the accumulated gradient are
written out here, readably (the notebook checks the attention against `scaled_dot_product_attention` and the
gradient against one big batch). Each wrong answer is a mistake people make: no causal mask, or one that
lets a query see the next token; scaling by d instead of sqrt(d); pairing neighbouring dimensions instead of
halves; rotating the wrong way; warming up from 0; decaying to 0 instead of the floor; mixing up ln and log2;
forgetting the tokens-per-byte ratio; summing the micro-batch losses instead of averaging them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinylib.evaluate import bits_per_byte
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.model import apply_rope, rope_tables
from tinylib.optim import lr_scale

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "03_training"


# --- causal self-attention ---------------------------------------------------------------------------------

def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal mask) v for q, k, v [B, H, T, D]: query t sees keys 0..t only."""
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # [B, H, T, T]
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # row t: True for keys 0..t
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _attention_without_mask(q, k, v):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


def _attention_scaled_by_d(q, k, v):
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1) @ v


def _attention_sees_next_token(q, k, v):
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(T, T, dtype=torch.bool).tril(diagonal=1)  # off by one: the diagonal above leaks
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _attention_cases(gen: torch.Generator):
    for B, H, T, D in ((1, 1, 5, 4), (2, 4, 16, 8), (3, 2, 1, 16), (1, 3, 33, 32), (2, 1, 7, 64)):
        q, k, v = (torch.randn(B, H, T, D, generator=gen) * 2 for _ in range(3))
        yield (q, k, v), {}


register(Exercise(
    "causal_self_attention", "Causal self-attention by hand", NB, difficulty=3, importance=5, minutes=15,
    reference=causal_attention, cases=_attention_cases,
    wrong=(_attention_without_mask, _attention_scaled_by_d, _attention_sees_next_token)))


# --- RoPE, rotate-half -------------------------------------------------------------------------------------

def _rope_rotate_half_by_tinylib(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by its positions' angles: dims i and i + D/2 form a pair (cos/sin [T, D])."""
    return apply_rope(x, cos, sin)


def _rope_interleaved(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]  # pairs of neighbours (GPT-J / the RoPE paper), not halves
    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def _rope_wrong_sign(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, -x1], dim=-1) * sin  # rotates by -angle


def _rope_cases(gen: torch.Generator):
    for B, H, T, D, theta in ((1, 1, 4, 2, 10000.0), (2, 4, 16, 8, 10000.0), (1, 2, 32, 16, 500.0),
                              (3, 1, 9, 32, 10000.0), (1, 6, 64, 48, 1e6)):
        cos, sin = rope_tables(D, T, theta)
        yield (torch.randn(B, H, T, D, generator=gen), cos, sin), {}


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by its positions' angles: dims i and i + D/2 form a pair (cos/sin [T, D])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # each pair (a, b) -> (-b, a): a quarter turn
    return x * cos + rotated * sin  # (a cos - b sin, b cos + a sin): the pair turned by its angle


register(Exercise(
    "rope_rotate_half", "Rotary position embedding (rotate half)", NB, difficulty=3, importance=4,
    minutes=15,
    reference=_rope_rotate_half_by_tinylib, shown=rope_rotate_half,
    cases=_rope_cases, wrong=(_rope_interleaved, _rope_wrong_sign)))


# --- warmup + cosine ---------------------------------------------------------------------------------------

def _lr_warmup_from_zero(step: int, *, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return step / warmup  # step 0 trains with lr 0: a wasted step
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))


def _lr_cosine_to_zero(step: int, *, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))  # forgot the floor


def _lr_cases(gen: torch.Generator):
    for warmup, total, floor in ((10, 110, 0.1), (100, 1000, 0.05), (1, 50, 0.0), (4, 20, 0.5)):
        mid = int(torch.randint(warmup, total, (1,), generator=gen))
        for step in sorted({0, warmup - 1, warmup, mid, (warmup + total) // 2, total - 1, total, total + 7}):
            yield (step,), dict(warmup=warmup, total=total, floor=floor)


register(Exercise(
    "lr_warmup_cosine", "Warmup + cosine learning-rate schedule", NB, difficulty=2, importance=4, minutes=10,
    reference=lr_scale, cases=_lr_cases, wrong=(_lr_warmup_from_zero, _lr_cosine_to_zero)))


# --- bits per byte -----------------------------------------------------------------------------------------

def _bpb_log2_for_ln(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    return loss_nats * n_tokens / n_bytes * math.log(2)  # multiplied where it should divide


def _bpb_per_token(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    return loss_nats / math.log(2)  # bits per token, not per byte


def _bpb_cases(gen: torch.Generator):
    for i in range(6):
        loss = float(torch.empty(()).uniform_(0.3, 9.0, generator=gen))
        n_bytes = int(torch.randint(1_000, 10_000_000, (1,), generator=gen))
        bytes_per_token = (1.0, 2.5, 3.7, 4.2, 1.3, 6.0)[i]
        yield (loss, max(1, round(n_bytes / bytes_per_token)), n_bytes), {}


register(Exercise(
    "nats_to_bits_per_byte", "Bits per byte from nats per token", NB, difficulty=1, importance=3, minutes=5,
    reference=bits_per_byte, cases=_bpb_cases, wrong=(_bpb_log2_for_ln, _bpb_per_token),
    atol=1e-9, rtol=1e-9))


# --- gradient accumulation ---------------------------------------------------------------------------------

def accumulated_grad(weight: torch.Tensor, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]
                     ) -> torch.Tensor:
    """The gradient of the mean cross-entropy of logits = x @ weight.T over all the (equal-sized)
    micro-batches, accumulated one backward pass per micro-batch, as `tinylib.train.train_step` does."""
    w = weight.detach().clone().requires_grad_(True)
    for x, y in micro_batches:
        loss = F.cross_entropy(x @ w.T, y)  # the mean over this micro-batch
        (loss / len(micro_batches)).backward()  # gradients add up in w.grad: scale each to make a mean
    return w.grad


def _accumulated_sum(weight, micro_batches):
    w = weight.detach().clone().requires_grad_(True)
    for x, y in micro_batches:
        F.cross_entropy(x @ w.T, y).backward()  # n micro-batches: an n times larger step
    return w.grad


def _accumulated_divided_twice(weight, micro_batches):
    w = weight.detach().clone().requires_grad_(True)
    for x, y in micro_batches:
        (F.cross_entropy(x @ w.T, y) / (len(micro_batches) * len(x))).backward()  # the loss is already a mean
    return w.grad


def _accum_cases(gen: torch.Generator):
    sizes = ((2, 4, 8, 11), (4, 3, 16, 50), (3, 8, 4, 7), (1, 5, 6, 9), (8, 2, 12, 30))
    for n_micro, rows, d, vocab in sizes:
        weight = torch.randn(vocab, d, generator=gen)
        micro = [(torch.randn(rows, d, generator=gen), torch.randint(0, vocab, (rows,), generator=gen))
                 for _ in range(n_micro)]
        yield (weight, micro), {}


register(Exercise(
    "accumulated_grad", "Gradient accumulation: scaling the loss", NB, difficulty=2, importance=4, minutes=10,
    reference=accumulated_grad, cases=_accum_cases, wrong=(_accumulated_sum, _accumulated_divided_twice)))
