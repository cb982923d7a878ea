"""Token windows for instruction fine-tuning: prompt tokens are context, response tokens are targets.

What this module does:
- `encode_examples`: an example becomes [bos] + prompt + story + [eos] (the same framing as pretraining, and
  the prompt encoded alone, exactly as a request is at generation time). A prompt that leaves no room for the
  story in the context is refused with its file:line; a story that overflows the window is cut.
- `make_windows`: one example per window, padded ("padded"); several whole examples per window placed by
  best fit ("packed"); or all of them end to end, cut every seq_len tokens ("stream"). `Windows.xy` gives x
  and the targets: the next token where it is a response token, else -1, which the model's loss ignores. So
  no window ever scores an example's prompt, the next example's included, nor padding. Attention still
  crosses example boundaries inside a window, as it does in pretraining.
- `WindowBatches`: the windows in a new random order every epoch, resumable (a `TrainState`'s data stream).

What it leaves to others: the text and the prompt format (`instruct.py` here), the stage (`stage.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tinylib.finetune.instruct import Example
from tinylib.tokenizer import Tokenizer


@dataclass
class Encoded:
    ids: list[int]  # [bos] + prompt + story + [eos], cut to the window
    n_prompt: int  # the first n_prompt ids are the prompt (bos included)
    where: str  # file:line, for messages


def encode_examples(examples: Sequence[Example], tok: Tokenizer, seq_len: int,
                    problems: list[str] | None = None, *, cut: bool = True) -> list[Encoded]:
    """Token ids of each example; a prompt that leaves no room for the story is refused (a message in
    `problems`, or a ValueError when None). With `cut`, stories longer than a window are cut to it."""
    out = []
    for ex in examples:
        prompt = tok.encode(ex.prompt, bos=True)
        if len(prompt) >= seq_len:
            msg = (f"{ex.where()}: prompt is {len(prompt)} tokens but the context is {seq_len}: no room for "
                   f"the story; refused (shorten the prompt or raise seq_len)")
            if problems is None:
                raise ValueError(msg)
            problems.append(msg)
            continue
        ids = prompt + tok.encode(ex.story) + [tok.eos_id]
        out.append(Encoded(ids[: seq_len + 1] if cut else ids, len(prompt), ex.where()))
    return out


@dataclass
class Windows:
    """Windows of seq_len + 1 tokens; `scored` marks response tokens, `segment` the example of each token."""

    tokens: np.ndarray  # int64 [n, seq_len + 1]
    scored: np.ndarray  # bool [n, seq_len + 1]: a response (or end) token, whose prediction is trained
    segment: np.ndarray  # int64 [n, seq_len + 1]: index of the example the token belongs to; -1 is padding

    def __len__(self) -> int:
        return len(self.tokens)

    def xy(self, rows: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """x = tokens[:-1]; y = the next token where it is a response token, else -1 (ignored by the loss)."""
        tokens, scored = self.tokens[rows], self.scored[rows]
        y = np.where(scored[:, 1:], tokens[:, 1:], -1)
        return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(y)

    def fill(self) -> float:
        """Fraction of window tokens that belong to an example (the rest is padding)."""
        return float((self.segment >= 0).mean()) if len(self) else 0.0


LAYOUTS = ("padded", "packed", "stream")


def _place(encoded: Sequence[Encoded], seq_len: int, layout: str) -> list[list[int]]:
    """Example indices of each window: one each ("padded"), or whole examples by best fit ("packed")."""
    if layout == "padded":
        return [[i] for i in range(len(encoded))]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, window), sorted: best fit is the first that holds it
    for i, e in enumerate(encoded):
        k = bisect.bisect_left(free, (len(e.ids), -1))
        if k < len(free):
            space, w = free.pop(k)
        else:
            space, w = seq_len + 1, len(rows)
            rows.append([])
        rows[w].append(i)
        if space > len(e.ids):
            bisect.insort(free, (space - len(e.ids), w))
    return rows


def make_windows(encoded: Sequence[Encoded], seq_len: int, *, layout: str = "packed",
                 pad_id: int) -> Windows:
    """Windows of seq_len + 1 tokens: "padded" one example each, "packed" several whole examples by best fit,
    "stream" all examples end to end cut every seq_len tokens (no padding; an example may start in one window
    and go on in the next, without its prompt there)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
    width = seq_len + 1
    if layout == "stream":
        if not encoded:
            return Windows(*(np.zeros((0, width), dtype=t) for t in (np.int64, bool, np.int64)))
        tokens = np.concatenate([np.asarray(e.ids) for e in encoded])
        scored = np.concatenate([np.arange(len(e.ids)) >= e.n_prompt for e in encoded])
        segment = np.concatenate([np.full(len(e.ids), i) for i, e in enumerate(encoded)])
        n = max(1, -(-(len(tokens) - 1) // seq_len))
        pad = n * seq_len + 1 - len(tokens)
        tokens, scored, segment = (np.pad(a, (0, pad), constant_values=v)
                                   for a, v in ((tokens, pad_id), (scored, False), (segment, -1)))
        at = np.arange(n)[:, None] * seq_len + np.arange(width)
        return Windows(tokens[at].astype(np.int64), scored[at], segment[at].astype(np.int64))
    rows = _place(encoded, seq_len, layout)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    scored = np.zeros((len(rows), width), dtype=bool)
    segment = np.full((len(rows), width), -1, dtype=np.int64)
    for w, members in enumerate(rows):
        at = 0
        for i in members:
            e = encoded[i]
            tokens[w, at:at + len(e.ids)] = e.ids
            scored[w, at + e.n_prompt:at + len(e.ids)] = True
            segment[w, at:at + len(e.ids)] = i
            at += len(e.ids)
    return Windows(tokens, scored, segment)


class WindowBatches:
    """Batches of windows in a new random order every epoch, resumable like tinylib.batches.RandomBatches."""

    def __init__(self, windows: Windows, batch_size: int, *, seed: int = 0):
        if len(windows) == 0:
            raise ValueError("no fine-tuning windows: every example was skipped or refused (see the "
                             "problems)")
        self.windows, self.batch_size, self.seed, self.step = windows, batch_size, int(seed), 0

    def rows(self, step: int) -> np.ndarray:
        n = len(self.windows)
        at = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        perms = {e: np.random.default_rng([self.seed, int(e)]).permutation(n) for e in set(at // n)}
        return np.array([perms[i // n][i % n] for i in at])

    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.windows.xy(self.rows(self.step))
        self.step += 1
        return x.to(device), y.to(device)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                "n_windows": len(self.windows)}

    def load_state_dict(self, d: dict) -> None:
        if (d["seed"], d["batch_size"], d["n_windows"]) != (self.seed, self.batch_size, len(self.windows)):
            raise ValueError(f"cannot resume: the saved stream was {d}; build the same windows, batch size "
                             f"and seed")
        self.step = int(d["step"])
