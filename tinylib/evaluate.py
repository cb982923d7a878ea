"""Loss evaluation: mean cross-entropy over a token file, and bits per byte.

Nats per token depend on the tokenizer; bits per byte (nats/token x tokens/byte / ln 2) compare across
tokenizers, as nanochat reports. This module knows models and token arrays, not files or text.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from tinylib.data import sequential_batches


def autocast_context(device: torch.device | str, dtype: torch.dtype | None):
    """bf16 autocast on the device type when dtype is bf16/fp16; a no-op for fp32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, tokens: np.ndarray, *, seq_len: int, batch_size: int = 8,
                  max_batches: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> float:
    """Mean nats per predicted token over non-overlapping windows of `tokens`.

    Deterministic (the same windows every call), so it can compare checkpoints and implementations. With
    `max_batches`, the batches are spread evenly over the whole file (a file's start is rarely representative).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in sequential_batches(tokens, batch_size, seq_len, max_batches=max_batches, spread=True):
            x, y = x.to(device), y.to(device)
            with autocast_context(device, dtype):
                _, loss = model(x, y, return_logits=False)
            total += loss.item() * y.numel()
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"no evaluation windows: {len(tokens)} tokens is fewer than seq_len + 1 = {seq_len + 1}")
    return total / count


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Convert nats per token to bits per UTF-8 byte of text, given how many tokens the text became."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return loss_nats * n_tokens / n_bytes / math.log(2)
