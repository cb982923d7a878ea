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

How much it does, and what it costs: `steering_curve(model, tokenizer, vector, strengths)` samples the same
stories (same prompt, same seeds) at each strength and measures a sentiment (per story, the count of words
from `HAPPY_WORDS` minus those from `SAD_WORDS`) and a fluency (the unsteered model's mean loss on the steered
story's tokens: text the model itself would not write costs more), each with a bootstrap interval over
stories; `plot_steering_curve` draws both against the strength.

This works on a tinylib `Transformer` directly (generation needs the KV cache, which the TransformerLens
bridge does not drive). What it leaves to others: sampling (`tinylib.engine`), text (`tinylib.generate`), the
widget's controls (`tinylib.widgets.story`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinylib.generate import generate
from tinylib.interp.induction import bootstrap_interval
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


# --- measuring it: a curve over strengths ------------------------------------------------------------------

HAPPY_WORDS = frozenset(
    "happy glad joy joyful smile smiled smiles smiling laugh laughed laughing fun love loved loves "
    "cheer cheered excited proud kind nice best beautiful great hug hugged friends yay wonderful".split())
SAD_WORDS = frozenset(
    "sad cry cried cries crying tears upset angry mad scared afraid lonely hurt sorry lost broke broken "
    "alone sick dark mean grumpy worried frown frowned bad worst".split())


def sentiment_counts(text: str) -> tuple[int, int]:
    """(happy words, sad words) in `text`: lower-cased whole words looked up in HAPPY_WORDS and SAD_WORDS."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in HAPPY_WORDS for w in words), sum(w in SAD_WORDS for w in words)


@dataclass
class SteeringCurve:
    """Per strength, per story: happy and sad word counts and the unsteered model's loss on the story."""

    strengths: list[float]
    happy: torch.Tensor  # [strengths, stories]
    sad: torch.Tensor  # [strengths, stories]
    fluency: torch.Tensor  # [strengths, stories]: mean loss (nats/token) of the unsteered model
    texts: list[list[str]] = field(default_factory=list)

    @property
    def sentiment(self) -> torch.Tensor:
        """[strengths, stories]: happy minus sad words per story."""
        return (self.happy - self.sad).float()

    def summary(self) -> list[dict]:
        """One row per strength: means over stories and their 95% bootstrap intervals."""
        rows = []
        for i, strength in enumerate(self.strengths):
            rows.append({"strength": strength, "happy": float(self.happy[i].float().sum()),
                         "sad": float(self.sad[i].float().sum()),
                         "sentiment": float(self.sentiment[i].mean()),
                         "sentiment_ci": bootstrap_interval(self.sentiment[i]),
                         "fluency": float(self.fluency[i].mean()),
                         "fluency_ci": bootstrap_interval(self.fluency[i])})
        return rows


@torch.no_grad()
def story_loss(model: Transformer, prompt_tokens: list[int], tokens: list[int]) -> float:
    """The mean next-token loss of `model` on `tokens` after `prompt_tokens` (the prompt is not scored)."""
    ids = torch.tensor([prompt_tokens + tokens], device=next(model.parameters()).device)
    logits, _ = model(ids[:, :-1])
    losses = F.cross_entropy(logits[0].float(), ids[0, 1:], reduction="none")
    return float(losses[len(prompt_tokens) - 1:].mean())


def steering_curve(model: Transformer, tokenizer: Any, vector: SteeringVector, strengths: Sequence[float], *,
                   n_stories: int = 32, prompt: str = "Once upon a time", max_new_tokens: int = 48,
                   seed: int = 0, progress: bool = True) -> SteeringCurve:
    """Sample `n_stories` continuations of `prompt` (seeds seed..seed+n-1, the same at every strength) with
    the vector added at each strength, and measure each story's sentiment and fluency."""
    if n_stories < 2:
        raise ValueError(f"n_stories={n_stories}: need at least 2 stories per strength for an interval")
    happy, sad, fluency, texts = [], [], [], []
    for strength in tqdm(list(strengths), desc="steering strengths", disable=not progress):
        with steer(model, vector, strength):
            results = generate(model, tokenizer, [prompt] * n_stories, seed=seed,
                               max_new_tokens=max_new_tokens)
        counts = [sentiment_counts(r.text) for r in results]
        happy.append([h for h, _ in counts])
        sad.append([s for _, s in counts])
        fluency.append([story_loss(model, r.prompt_tokens, r.tokens) if r.tokens else float("nan")
                        for r in results])
        texts.append([r.text for r in results])
    return SteeringCurve(list(strengths), torch.tensor(happy), torch.tensor(sad), torch.tensor(fluency),
                         texts)


def plot_steering_curve(curve: SteeringCurve, title: str | None = None):
    """Sentiment (happy - sad words per story) and fluency (unsteered loss) against the strength, with
    95% bootstrap intervals over stories."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    rows = curve.summary()
    x = [r["strength"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label in ((axes[0], "sentiment", "happy - sad words per story"),
                           (axes[1], "fluency", "unsteered model's loss on the story (nats/token)")):
        mean = [r[key] for r in rows]
        lo = [r[key] - r[f"{key}_ci"][0] for r in rows]
        hi = [r[f"{key}_ci"][1] - r[key] for r in rows]
        ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=3)
        ax.set(xlabel="steering strength", ylabel=label)
        ax.axvline(0, color="grey", linewidth=0.5)
    axes[0].axhline(0, color="grey", linewidth=0.5)
    fig.suptitle(title or f"steering with {curve.happy.shape[1]} stories per strength", fontsize=10)
    fig.tight_layout()
    return fig
