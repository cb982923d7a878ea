"""Batches from real framed TinyStories tokens: deterministic per rank, resumable, in order, spread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinylib.batches import RandomBatches, sequential_batches
from tinylib.data import frame_stories
from tinylib.stories import parse_stories, read_text
from tinylib.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def train_tokens(tinystories_dir) -> np.ndarray:
    """300 real stories framed as train.bin holds them ([bos] + tokens each), with tinystories-512."""
    stories = parse_stories(read_text(tinystories_dir / "TinyStories-train.first2316.txt"))[:300]
    return frame_stories(get_tokenizer("tinystories-512"), stories)


@pytest.fixture(scope="module")
def val_tokens(tinystories_dir) -> np.ndarray:
    stories = parse_stories(read_text(tinystories_dir / "TinyStories-valid.first1000.hf.txt"))[:300]
    return frame_stories(get_tokenizer("tinystories-512"), stories)


def test_random_batches_deterministic_per_rank_and_resumable(train_tokens):
    tokens = train_tokens
    a = RandomBatches(tokens, 4, 32, seed=1)
    x, y = a.next_batch()
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = a.starts(0)
    assert torch.equal(x, torch.from_numpy(np.stack([tokens[s:s + 32] for s in starts]).astype(np.int64)))

    same = RandomBatches(tokens, 4, 32, seed=1).next_batch()
    assert torch.equal(same[0], x)
    assert not torch.equal(RandomBatches(tokens, 4, 32, seed=2).next_batch()[0], x)
    r0 = RandomBatches(tokens, 4, 32, seed=1, rank=0, world_size=2).next_batch()[0]
    r1 = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2).next_batch()[0]
    assert not torch.equal(r0, r1)
    # The global batch does not depend on how it is split across ranks.
    whole = RandomBatches(tokens, 8, 32, seed=1).next_batch()[0]
    assert torch.equal(torch.cat([r0, r1]), whole)

    # Resume: a fresh object loaded with the state after 3 steps continues the exact stream.
    run = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2)
    for _ in range(3):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))
    expected = [run.next_batch() for _ in range(2)]
    resumed = RandomBatches(tokens, 4, 32, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for (ex, ey), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(2)]):
        assert torch.equal(ex, rx) and torch.equal(ey, ry)
    with pytest.raises(ValueError, match="seq_len=32"):
        RandomBatches(tokens, 4, 16, seed=1).load_state_dict(state)


def test_sequential_batches_cover_in_order(val_tokens):
    tokens = val_tokens
    batches = list(sequential_batches(tokens, 3, 16, max_batches=5))
    assert len(batches) == 5
    xs = torch.cat([x.reshape(-1) for x, _ in batches])
    assert torch.equal(xs, torch.from_numpy(tokens[: 5 * 3 * 16].astype(np.int64)))
    assert torch.equal(batches[0][1][0], torch.from_numpy(tokens[1:17].astype(np.int64)))
    r0 = list(sequential_batches(tokens, 3, 16, rank=0, world_size=2))
    r1 = list(sequential_batches(tokens, 3, 16, rank=1, world_size=2))
    assert len(r0) == len(r1) > 0
    # batch 1 goes to rank 1
    assert torch.equal(r1[0][0][0], torch.from_numpy(tokens[48:64].astype(np.int64)))
    with pytest.raises(ValueError, match="lower batch_size or seq_len"):
        next(sequential_batches(tokens[:100], 8, 64))


def test_sequential_batches_spread_covers_the_whole_file():
    tokens = np.arange(10_001, dtype=np.uint16)
    first = [x[0, 0].item() for x, _ in sequential_batches(tokens, 2, 100, max_batches=3)]
    spread = [x[0, 0].item() for x, _ in sequential_batches(tokens, 2, 100, max_batches=3, spread=True)]
    assert first == [0, 200, 400]
    assert spread == [0, 4800, 9800]  # batches 0, 24 and 49 of 50
    every = list(sequential_batches(tokens, 2, 100, spread=True))
    assert len(every) == 50
