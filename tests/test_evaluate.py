"""Evaluation: window losses against a token-by-token reference, and bits per byte."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinylib.config import get_config
from tinylib.evaluate import bits_per_byte, evaluate_loss
from tinylib.model import Transformer


@pytest.fixture(scope="module")
def model_and_tokens():
    torch.manual_seed(0)
    model = Transformer(get_config("llama_tiny", vocab_size=97, max_seq_len=16, n_layer=2)).eval()
    tokens = np.random.default_rng(0).integers(0, 97, size=16 * 12 + 5).astype(np.uint16)
    return model, tokens


def reference_loss(model, tokens, seq_len, stride):
    """Each scored target's loss computed on its own, with exactly the context the window gives it."""
    nll, n = 0.0, 0
    t = torch.from_numpy(tokens.astype(np.int64))
    for start in range(0, len(tokens) - seq_len, stride):
        logits, _ = model(t[start:start + seq_len][None])
        losses = F.cross_entropy(logits[0], t[start + 1:start + seq_len + 1], reduction="none")
        first = 0 if start == 0 else seq_len - stride
        nll += losses[first:].sum().item()
        n += seq_len - first
    return nll / n


def test_non_overlapping_windows_match_the_reference(model_and_tokens):
    model, tokens = model_and_tokens
    got = evaluate_loss(model, tokens, seq_len=16, batch_size=4)  # 12 windows, 3 full batches
    want = reference_loss(model, tokens[: 12 * 16 + 1], 16, 16)
    assert got == pytest.approx(want, rel=1e-5)


def test_sliding_windows_score_every_token_once_with_context(model_and_tokens):
    model, tokens = model_and_tokens
    got = evaluate_loss(model, tokens, seq_len=16, batch_size=5, stride=4)
    assert got == pytest.approx(reference_loss(model, tokens, 16, 4), rel=1e-5)
    with pytest.raises(ValueError, match="stride=20"):
        evaluate_loss(model, tokens, seq_len=16, stride=20)


def test_bits_per_byte_converts_nats_per_token():
    assert bits_per_byte(math.log(2), n_tokens=100, n_bytes=400) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 1, 0)
