"""Steering: push generation along a direction in the residual stream (activation addition, Turner et al.
2023).

A direction is a difference of mean activations: the residual stream after block `layer`, averaged over the
tokens of a dozen happy story openings, minus the same average over a dozen sad ones (`HAPPY`, `SAD`, written
as pairs that differ mostly in mood). Adding `strength x direction` to the residual stream after that block,
at every position, while the model generates moves its stories towards the first set (strength > 0) or the
second (strength < 0). Strength 1 adds exactly the average difference between the two sets.

- `mean_activation(model, tokenizer, prompts, layer)` -> [d_model], the residual after block `layer`, averaged
  over each prompt's tokens (BOS left out: it is the same in every prompt) and then over prompts;
- `steering_vector(model, tokenizer, positive, negative, layer)` -> `SteeringVector`;
  `happy_sad_vector(model, tokenizer, layer)` is the built-in one;
- `steer(model, vector, strength)` is a context manager: a forward hook on `model.blocks[layer]` adds the
  vector to the block's output in every forward pass, so with the KV cache (`tinylib.engine`) the prompt's
  prefill and every new token are steered, and the cached keys/values are the steered ones. Strength 0 leaves
  the model's output unchanged bit for bit (x + 0 = x), so generation equals plain generation token for token.

This works on a tinylib `Transformer` directly (generation needs the KV cache, which the TransformerLens
bridge does not drive). What it leaves to others: sampling (`tinylib.engine`), text (`tinylib.generate`), the
widget's controls (`tinylib.widgets.story`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tinylib.model import Transformer

HAPPY = (
    "Once upon a time, there was a happy little girl who loved to laugh and play.",
    "The sun was shining and everyone at the park was smiling.",
    "Tom was so happy. He got a new puppy for his birthday!",
    "Lily laughed and danced with joy. It was the best day ever.",
    "The little bird sang a happy song in the warm, bright sun.",
    'Mom gave Ben a big hug and said, "I love you so much!"',
    "The friends had a fun party with cake, balloons and lots of games.",
    "Sara smiled. Her garden was full of pretty flowers.",
    "Max and his dad played in the sunny park. They had so much fun.",
    "Everyone cheered and clapped. Anna felt proud and glad.",
    "The kind old man shared his cookies, and all the children were happy.",
    "It was a beautiful day. The cat purred and the dog wagged its tail.",
)
SAD = (
    "Once upon a time, there was a sad little girl who cried all day.",
    "The sky was dark and grey, and everyone at the park was crying.",
    "Tom was so sad. He lost his puppy and could not find it.",
    "Lily cried and cried. It was the worst day ever.",
    "The little bird was hurt and alone in the cold, dark rain.",
    'Mom was angry and Ben felt scared. He said, "I am so sad."',
    "The party was over. There was no cake and no games, and the friends were upset.",
    "Sara frowned. All the flowers in her garden were dead.",
    "Max broke his toy and started to cry. Nobody helped him.",
    "Everyone was mean to Anna. She felt lonely and sad.",
    "The old man was grumpy and shouted at the children, and they ran away crying.",
    "It was a terrible day. The cat was sick and the dog was lost.",
)


@dataclass
class SteeringVector:
    """A direction [d_model] in the residual stream after block `layer`, and what it was made from."""

    direction: torch.Tensor
    layer: int
    name: str = "steering"

    @property
    def norm(self) -> float:
        return float(self.direction.float().norm())


def _check_layer(model: Transformer, layer: int) -> int:
    n = len(model.blocks)
    if not isinstance(layer, int) or not -n <= layer < n:
        raise ValueError(f"layer={layer!r}, but the model has {n} blocks: pick a layer from 0 to {n - 1}")
    return layer % n


def _residual(out: Any) -> torch.Tensor:
    """The residual stream in a block's output (a tinylib Block returns it first, with the pattern)."""
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()  # an analysis: no graph to keep
def mean_activation(model: Transformer, tokenizer: Any, prompts: Sequence[str], layer: int) -> torch.Tensor:
    """The residual stream after block `layer` [d_model], averaged over each prompt's tokens, then prompts."""
    layer = _check_layer(model, layer)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of texts (e.g. a dozen story openings)")
    device = next(model.parameters()).device
    seen: list[torch.Tensor] = []
    handle = model.blocks[layer].register_forward_hook(lambda _m, _i, out: seen.append(_residual(out)))
    was_training = model.training
    model.eval()
    try:
        means = []
        for text in prompts:
            ids = torch.tensor([tokenizer.encode(text, bos=True)], device=device)
            model(ids)
            x = seen.pop()[0].float()
            means.append(x[1:].mean(0) if x.shape[0] > 1 else x[0])  # BOS is the same in every prompt
    finally:
        handle.remove()
        model.train(was_training)
    return torch.stack(means).mean(0)


def steering_vector(model: Transformer, tokenizer: Any, positive: Sequence[str], negative: Sequence[str],
                    layer: int, name: str = "steering") -> SteeringVector:
    """mean activation of `positive` minus that of `negative`, after block `layer`."""
    layer = _check_layer(model, layer)
    direction = (mean_activation(model, tokenizer, positive, layer)
                 - mean_activation(model, tokenizer, negative, layer))
    return SteeringVector(direction, layer, name)


def happy_sad_vector(model: Transformer, tokenizer: Any, layer: int) -> SteeringVector:
    """The built-in direction: happy story openings minus sad ones (`HAPPY` - `SAD`)."""
    return steering_vector(model, tokenizer, HAPPY, SAD, layer, name="happy - sad")


@contextmanager
def steer(model: Transformer, vector: SteeringVector | torch.Tensor, strength: float = 1.0, *,
          layer: int | None = None) -> Iterator[None]:
    """Inside the block, every forward pass of `model` adds `strength x direction` to the residual stream
    after block `layer` (default: the vector's own layer), at every position. The hook is removed on exit."""
    if isinstance(vector, SteeringVector):
        direction, layer = vector.direction, vector.layer if layer is None else layer
    elif layer is None:
        raise ValueError("a bare direction tensor needs layer=: the block after which it is added")
    else:
        direction = vector
    layer = _check_layer(model, layer)
    d_model = model.cfg.d_model
    if direction.shape != (d_model,):
        raise ValueError(f"direction has shape {tuple(direction.shape)}; expected ({d_model},), one value "
                         "per residual-stream dimension of this model (was it made from another model?)")
    p = next(model.parameters())
    shift = (float(strength) * direction.detach().float()).to(device=p.device, dtype=p.dtype)

    def add(_module, _inputs, out):
        if isinstance(out, tuple):  # a tinylib Block returns (residual, attention pattern or None)
            return (out[0] + shift.to(out[0].dtype), *out[1:])  # autocast may run it in another dtype
        return out + shift.to(out.dtype)

    handle = model.blocks[layer].register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
