"""MLP neurons: what makes one fire, shown on text, and a search for neurons that track given words.

A "neuron" is one unit of `blocks.L.mlp.hook_post` (the MLP hidden activation after the nonlinearity;
for SwiGLU, silu(gate x) * up x, so it can be negative). Functions here read it through the
TransformerLens bridge:
- `neuron_activations(model, tokens, layer)` -> [B, T, d_mlp];
- `top_activations(model, tokens, layer, neuron, k)` -> the k strongest (token, context) examples
  over a batch;
- `story_html(labels, acts)` -> one story with each token shaded by the activation (for a notebook cell);
- `word_positions(tokenizer, tokens, words)` -> a mask of where the words occur as whole words
  (last token of each occurrence: "sad" is not marked inside "Sadie", nor "Tom" inside "tomato");
- `neuron_selectivity(model, tokens, mask)` -> every neuron ranked by how much more it fires on the masked
  positions than elsewhere (difference of means divided by the pooled standard deviation: Cohen's d).
Caveat the notebooks teach: neurons are polysemantic; a high-selectivity neuron also fires on other things,
and a direction that means "sad" may be spread over many neurons. Ablations live in `tinylib.interp.ablation`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tinylib.interp.bridge import as_bridge, str_tokens


@torch.no_grad()
def neuron_activations(model: Any, tokens: torch.Tensor, layer: int | None = None,
                       batch_size: int = 32) -> torch.Tensor:
    """MLP activations [B, T, d_mlp] of one layer, or [B, T, n_layer, d_mlp] for all layers (layer=None)."""
    bridge = as_bridge(model)
    layers = range(bridge.cfg.n_layers) if layer is None else [layer]
    names = [f"blocks.{i}.mlp.hook_post" for i in layers]
    outs = []
    for chunk in tokens.reshape(-1, tokens.shape[-1]).split(batch_size):
        _, cache = bridge.run_with_cache(chunk, names_filter=names)
        outs.append(torch.stack([cache[n].float() for n in names], dim=2))
    acts = torch.cat(outs)
    return acts[:, :, 0] if layer is not None else acts


@dataclass
class Example:
    """One activating token: where it is, how strongly the neuron fired, and the text around it."""

    activation: float
    row: int
    pos: int
    token: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.activation:7.3f}  ...{self.before}[[{self.token}]]{self.after}..."


def top_activations(model: Any, tokens: torch.Tensor, layer: int, neuron: int, k: int = 10, *,
                    context: int = 10, acts: torch.Tensor | None = None) -> list[Example]:
    """The k (row, position) pairs where the neuron fires most, with `context` tokens either side."""
    bridge = as_bridge(model)
    if acts is None:
        acts = neuron_activations(bridge, tokens, layer)
    a = acts[..., neuron] if acts.dim() == 3 else acts
    vals, idx = a.flatten().topk(min(k, a.numel()))
    T = a.shape[1]
    out = []
    for v, i in zip(vals.tolist(), idx.tolist()):
        row, pos = divmod(i, T)
        labels = str_tokens(bridge, tokens[row, max(0, pos - context): pos + context + 1])
        left = min(context, pos)
        out.append(Example(v, row, pos, labels[left], "".join(labels[:left]), "".join(labels[left + 1:])))
    return out


def story_html(labels: Sequence[str], acts: torch.Tensor, *, title: str = "",
               vmax: float | None = None) -> str:
    """Tokens as inline spans shaded red (positive) or blue (negative) by activation;
    hover shows the value."""
    a = acts.detach().float().cpu()
    scale = vmax or float(a.abs().max()) or 1.0
    spans = []
    for label, v in zip(labels, a.tolist()):
        x = max(-1.0, min(1.0, v / scale))
        colour = f"rgba(220,40,40,{x:.2f})" if x >= 0 else f"rgba(40,80,220,{-x:.2f})"
        text = html.escape(label).replace("\n", "&#8629;<br>")
        spans.append(f'<span title="{v:.3f}" style="background:{colour};padding:1px 0">{text}</span>')
    head = f"<b>{html.escape(title)}</b><br>" if title else ""
    return ('<div style="font-family:monospace;line-height:1.7;white-space:pre-wrap">'
            f'{head}{"".join(spans)}</div>')


def _piece(tokenizer: Any, i: int) -> str:
    """One token's own text, its leading space kept (SentencePiece's `decode([i])` drops it)."""
    if hasattr(tokenizer, "token_bytes"):
        return tokenizer.token_bytes(i).decode("utf-8", errors="replace")
    return tokenizer.decode([i])


def word_positions(tokenizer: Any, tokens: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
    """Bool mask [B, T]: True at the last token of every whole-word occurrence of any word (as " word",
    "word", capitalised). Whole words: the tokens before and after the match do not continue it with a
    letter or digit, so "sad" is not found in " Sadie", "Tom" in " tomato", "and" in " band"."""
    patterns = set()
    for w in words:
        for form in {w, w.capitalize(), w.lower()}:
            for text in (form, " " + form):
                ids = tuple(tokenizer.encode(text))
                if ids:
                    patterns.add(ids)
    B, T = tokens.shape
    # for every id present: does its text start, or end, with a letter or digit?
    uniq, inv = tokens.unique(return_inverse=True)
    texts = [_piece(tokenizer, int(i)) for i in uniq]
    starts_word = torch.tensor([t[:1].isalnum() for t in texts], dtype=torch.bool)[inv]  # [B, T]
    ends_word = torch.tensor([t[-1:].isalnum() for t in texts], dtype=torch.bool)[inv]
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for ids in patterns:
        n = len(ids)
        if n > T:
            continue
        hit = torch.ones(B, T - n + 1, dtype=torch.bool)  # hit[:, s]: the pattern starts at s
        for j, t in enumerate(ids):
            hit &= tokens[:, j: T - n + 1 + j] == t
        # not glued to the word before ("band" holds "and") ...
        glued_before = torch.zeros_like(hit)
        glued_before[:, 1:] = ends_word[:, : T - n] & starts_word[:, 1: T - n + 1]
        # ... nor to the word after ("Sadie" holds "Sad"); a match at the end of a row counts
        glued_after = torch.zeros_like(hit)
        glued_after[:, : T - n] = starts_word[:, n:]
        mask[:, n - 1:] |= hit & ~glued_before & ~glued_after
    return mask


@dataclass
class Selectivity:
    layer: int
    neuron: int
    score: float  # Cohen's d: (mean on - mean off) / pooled std
    mean_on: float
    mean_off: float


def neuron_selectivity(model: Any, tokens: torch.Tensor, mask: torch.Tensor, *, top: int = 10,
                       acts: torch.Tensor | None = None) -> list[Selectivity]:
    """Neurons of all layers ranked by how selectively they fire where `mask` [B, T] is True."""
    if mask.shape != tokens.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal tokens shape {tuple(tokens.shape)}")
    n_on = int(mask.sum())
    if n_on == 0 or n_on == mask.numel():
        raise ValueError(f"mask marks {n_on} of {mask.numel()} positions; it must mark some but not all "
                         "(are the words in these stories, and encoded by this tokenizer?)")
    if acts is None:
        acts = neuron_activations(model, tokens)  # [B, T, L, N]
    on, off = acts[mask], acts[~mask]  # [n, L, N]
    mu_on, mu_off = on.mean(0), off.mean(0)
    pooled = ((on.var(0, unbiased=False) * len(on) + off.var(0, unbiased=False) * len(off))
              / (len(on) + len(off))).sqrt().clamp_min(1e-6)
    d = (mu_on - mu_off) / pooled
    n_neuron = d.shape[1]
    vals, idx = d.flatten().topk(min(top, d.numel()))
    return [Selectivity(int(i) // n_neuron, int(i) % n_neuron, float(v), float(mu_on.flatten()[i]),
                        float(mu_off.flatten()[i])) for v, i in zip(vals, idx)]
