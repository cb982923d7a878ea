"""The KV cache: keys and values of the positions already seen, so that generating a token costs O(1) forward
work per layer instead of re-running the whole prefix.

Preallocated per layer; with a sliding window W shorter than the cache, only the last W positions are kept, in
a ring of W slots. The model writes into it during `forward(..., cache=...)` (`Transformer.make_cache` builds
one on the model's device and dtype); the generation engine (`tinylib.engine`) creates, resets and advances
it. What it leaves to others: text and sampling (`tinylib.engine`, `tinylib.generate`), attention
(`tinylib.model`).
"""

from __future__ import annotations

import torch

from tinylib.config import ModelConfig


class KVCache:
    """Preallocated keys and values for every layer: [B, n_kv_head, slots, d_head] each.

    `pos` is how many positions are filled. The model writes new keys/values at `pos` and advances it once per
    forward; writing past `max_len` raises (the generation engine decides whether to stop or slide). Normally
    slots = max_len and position p lives in slot p. With a sliding window W < max_len only the last W
    positions are kept, in a ring (position p in slot p % W): attention does not care in which order the keys
    come, only which ones a query may see, and `key_positions` says which position each key holds.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.max_seq_len
        if self.max_len > cfg.max_seq_len:
            raise ValueError(f"KV cache length {self.max_len} exceeds the model's context {cfg.max_seq_len}")
        self.ring = cfg.sliding_window is not None and cfg.sliding_window < self.max_len
        self.slots = cfg.sliding_window if self.ring else self.max_len
        shape = (batch_size, cfg.n_kv_head, self.slots, cfg.d_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.device = torch.device(device)
        self.pos = 0

    def key_positions(self, T: int) -> torch.Tensor:
        """The position of each key `update` returns for T new tokens (-1: a ring slot not yet written)."""
        new = torch.arange(self.pos, self.pos + T, device=self.device)
        if not self.ring:
            return torch.arange(self.pos + T, device=self.device)
        if self.pos == 0:
            return new
        last = self.pos - 1  # slot s holds the latest position p <= last with p % slots == s
        held = last - (last - torch.arange(self.slots, device=self.device)) % self.slots
        return torch.cat([held, new])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, n_kv_head, T, d_head] at the current position; return the keys/values attention
        reads (all positions so far, or with a ring: its slots followed by the T new ones)."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions requested, room for {self.max_len}")
        if not self.ring:
            self.k[layer][:, :, self.pos:end] = k
            self.v[layer][:, :, self.pos:end] = v
            return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        keys = k if self.pos == 0 else torch.cat([self.k[layer], k], dim=2)
        values = v if self.pos == 0 else torch.cat([self.v[layer], v], dim=2)
        m = min(T, self.slots)  # only the last `slots` new positions can still be seen later
        where = torch.arange(end - m, end, device=k.device) % self.slots
        self.k[layer][:, :, where] = k[:, :, T - m:]
        self.v[layer][:, :, where] = v[:, :, T - m:]
        return keys, values

    def reset(self) -> None:
        self.pos = 0
