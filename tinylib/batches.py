"""Batches of next-token windows from a token array, as torch tensors.

What this module does:
- `RandomBatches`: random windows for training, deterministic per (seed, rank, world size, step) and resumable
  through `state_dict` / `load_state_dict`.
- `sequential_batches`: non-overlapping windows in order (or spread evenly over the array), for evaluation.

Both cut windows of seq_len + 1 tokens and return x = window[:-1], y = window[1:] as int64 tensors: y is x
shifted by one. Windows cross story boundaries; the framing token tells the model where a story starts.

What it leaves to others: reading and writing token files (tinylib.data gives an `np.memmap` that works here
as any array does), models and losses. It knows token arrays and torch, not files or text.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def _to_torch(buf: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(buf.astype(np.int64))
    x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class RandomBatches:
    """Random windows of seq_len + 1 tokens: x = window[:-1], y = window[1:], int64 [batch_size, seq_len].

    Batch number `step` depends only on (seed, rank, world_size, step): draw `step` picks the window starts of
    one global batch of world_size x batch_size rows from (seed, step), and rank r takes rows [r*B, (r+1)*B).
    So ranks see different data, and the global batch is the same however it is split: 2 processes of batch 8
    train on exactly what 1 process of batch 16 would. A resumed run continues the exact stream after
    `load_state_dict` (save rank 0's state; every rank loads it).
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int = 0, rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"only {len(tokens)} tokens: need at least seq_len + 1 = {seq_len + 1}; lower seq_len"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.step = 0
        self._offsets = np.arange(seq_len + 1)

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.world_size * self.batch_size)
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        buf = self.tokens[self.starts(self.step)[:, None] + self._offsets]
        self.step += 1
        return _to_torch(buf, device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "world_size": self.world_size, "n_tokens": int(len(self.tokens))}

    def load_state_dict(self, d: dict) -> None:
        for key in ("seed", "batch_size", "seq_len", "n_tokens"):
            mine = int(len(self.tokens)) if key == "n_tokens" else getattr(self, key)
            if key in d and d[key] != mine:
                raise ValueError(
                    f"cannot resume: the saved batch stream has {key}={d[key]} but this one has {mine}; "
                    f"construct RandomBatches with the same data, seed, batch_size and seq_len"
                )
        self.step = int(d["step"])


def sequential_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, *, max_batches: int | None = None, rank: int = 0,
    world_size: int = 1, device: str | torch.device = "cpu", spread: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows in order, for evaluation: window w is tokens[w*T : w*T + T + 1].

    Full batches only; batch j goes to rank j % world_size and every rank gets the same number of batches (so
    DDP all-reduces line up), at most `max_batches` each. With `spread=True` those batches are spaced evenly
    over the whole file instead of taken from its start, so a small evaluation budget still samples every part
    of it.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    n_batches = ((len(tokens) - 1) // seq_len) // batch_size
    per_rank = n_batches // world_size
    if per_rank == 0:
        raise ValueError(
            f"{len(tokens):,} tokens make fewer than {world_size} batch(es) of {batch_size} x {seq_len}: "
            f"lower batch_size or seq_len"
        )
    chosen = np.arange(per_rank)
    if max_batches is not None and max_batches < per_rank:
        chosen = (np.linspace(0, per_rank - 1, max_batches).round().astype(int) if spread
                  else np.arange(max_batches))
    offsets = np.arange(seq_len + 1)
    for i in chosen:
        j = int(i) * world_size + rank
        starts = (j * batch_size + np.arange(batch_size)) * seq_len
        yield _to_torch(np.asarray(tokens[starts[:, None] + offsets]), device)
