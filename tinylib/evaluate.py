"""Loss evaluation: mean cross-entropy over a token file (or any batches whose unscored targets are -1), and
bits per byte.

Nats per token depend on the tokenizer; bits per byte (nats/token x tokens/byte / ln 2) compare across
tokenizers, as nanochat reports. This module knows models and token arrays; it leaves files and text to
`tinylib.data`, and when to evaluate to `tinylib.train`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from tinylib.batches import sequential_batches
from tinylib.device import autocast_context


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, tokens: np.ndarray, *, seq_len: int, batch_size: int = 8,
                  max_batches: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, stride: int | None = None) -> float:
    """Mean nats per predicted token over windows of `tokens`.

    Deterministic (the same windows every call), so it can compare checkpoints and implementations.
    Non-overlapping windows by default (as nanoGPT and llama2.c evaluate): the first tokens of each window are
    predicted with little context, which overstates the loss a little. With `stride` < seq_len, windows start
    every `stride` tokens and only their last `stride` targets are scored, so every token but the first
    window's has at least seq_len - stride tokens of context (the "sliding window" perplexity). With
    `max_batches`, the batches are spread evenly over the whole file (a file's start is rarely
    representative).
    """
    loss, count = mean_loss(model, _windows(tokens, seq_len, batch_size, max_batches, stride), device=device,
                            dtype=dtype)
    if count == 0:
        raise ValueError(f"no evaluation windows: {len(tokens)} tokens is fewer than seq_len + 1 = "
                         f"{seq_len + 1}")
    return loss


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
              device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> tuple[float, int]:
    """(mean nats per scored target, how many were scored) over `batches` of (inputs, targets), in eval mode;
    targets of -1 are not scored (a batch with none is passed over). (nan, 0) when nothing is scored."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            n = int((y != -1).sum())
            if n == 0:
                continue
            with autocast_context(device, dtype):
                _, loss = model(x.to(device), y.to(device), return_logits=False)
            total += loss.item() * n
            count += n
    finally:
        model.train(was_training)
    return (total / count if count else math.nan), count


def _windows(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None, stride: int | None):
    if stride is None or stride == seq_len:
        yield from sequential_batches(tokens, batch_size, seq_len, max_batches=max_batches, spread=True)
        return
    if not 0 < stride < seq_len:
        raise ValueError(f"stride={stride} must be in (0, seq_len={seq_len}]")
    starts = np.arange(0, len(tokens) - seq_len, stride)
    batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    if max_batches is not None and max_batches < len(batches):
        batches = [batches[i] for i in np.linspace(0, len(batches) - 1, max_batches).round().astype(int)]
    offsets = np.arange(seq_len + 1)
    for batch in batches:
        window = torch.from_numpy(np.asarray(tokens[batch[:, None] + offsets]).astype(np.int64))
        x, y = window[:, :-1], window[:, 1:].clone()
        y[batch > 0, : seq_len - stride] = -1  # already scored by the previous window, with less context
        yield x, y


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Convert nats per token to bits per UTF-8 byte of text, given how many tokens the text became."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return loss_nats * n_tokens / n_bytes / math.log(2)
