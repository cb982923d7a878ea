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
  positions than elsewhere (difference of means divided by the pooled standard deviation: Cohen's d), for a
  mask of at least `MIN_POSITIONS` positions;
- `words_at(tokenizer, tokens)` -> the whole word at every position; `word_class(word)` -> one of
  `WORD_CLASSES` (pronoun, capitalised word, ...); `class_ids(words)` -> them as ids [B, T];
- `top_k_entropy(acts, labels, k)` -> per neuron, the entropy (bits) of the labels (word classes or token
  ids) at its k strongest positions: how mixed its top activations are;
- `token_share(acts, tokens)` -> how much of one neuron's variance the current token id alone explains.
What it leaves to others: the same top-context entropy for autoencoder features over single-token categories
(`tinylib.interp.features`); ablations (`tinylib.interp.ablation`).
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
    "word" at a line start, capitalised, in lower case). Whole words: the tokens before and after the match
    do not continue it with a letter or digit, so "sad" is not found in " Sadie", "Tom" in " tomato", "and"
    in " band"."""
    patterns = set()
    newline = tokenizer.encode("\n")
    for w in words:
        for form in {w, w.capitalize(), w.lower()}:
            for text in (form, " " + form):
                ids = tuple(tokenizer.encode(text))
                if ids:
                    patterns.add(ids)
            # the form with no space before it, as at a line start or after a quote: SentencePiece's encode
            # adds a space to "Lily" (" Lily"), but "\nLily" is "\n" + "L" + "ily"
            ids = tokenizer.encode("\n" + form)
            if ids[:len(newline)] == newline and len(ids) > len(newline):
                patterns.add(tuple(ids[len(newline):]))
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


MIN_POSITIONS = 20  # fewest marked positions neuron_selectivity ranks neurons on


@dataclass
class Selectivity:
    layer: int
    neuron: int
    score: float  # Cohen's d: (mean on - mean off) / pooled std
    mean_on: float
    mean_off: float


def neuron_selectivity(model: Any, tokens: torch.Tensor, mask: torch.Tensor, *, top: int = 10,
                       acts: torch.Tensor | None = None, min_positions: int = MIN_POSITIONS
                       ) -> list[Selectivity]:
    """Neurons of all layers ranked by how selectively they fire where `mask` [B, T] is True.

    Refuses a mask of fewer than `min_positions` positions: the best of hundreds of neurons on a handful
    of positions scores a large d by chance (notebook 06 measures how large on random masks)."""
    if mask.shape != tokens.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal tokens shape {tuple(tokens.shape)}")
    n_on = int(mask.sum())
    if n_on == 0 or n_on == mask.numel():
        raise ValueError(f"mask marks {n_on} of {mask.numel()} positions; it must mark some but not all "
                         "(are the words in these stories, and encoded by this tokenizer?)")
    if n_on < min_positions:
        raise ValueError(f"mask marks {n_on} positions, fewer than min_positions={min_positions}: a d from "
                         "so few is mostly chance; use more text, or pass a smaller min_positions knowingly")
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


# --- what a neuron's strongest positions are: words, word classes, how mixed --------------------------------
WORD_CLASSES = ("punctuation or space", "number", "pronoun", "function word", "capitalised word",
                "content word")
PRONOUNS = frozenset("he she it they him her them his hers its their i me my you your we us our".split())
FUNCTION_WORDS = frozenset("""a an the and or but so if then than that this these those there here to of in
on at by for with from up down out into over under about after before as is was are were be been am do did
does have has had not no yes will would can could should very too also just all some any what who when where
why how""".split())


def words_at(tokenizer: Any, tokens: torch.Tensor) -> list[list[str]]:
    """[B][T]: the whole word each token belongs to (" Tim" and "om" of " T" "om" give "Tim" and "Tom"),
    or the token's own stripped text where it holds no letter or digit ("." "," and "" for spaces)."""
    uniq, inv = tokens.unique(return_inverse=True)
    text_of = dict(zip(uniq.tolist(), (_piece(tokenizer, int(i)) for i in uniq)))
    out = []
    for row in tokens.tolist():
        pieces = [text_of[i] for i in row]
        words = [p.strip() for p in pieces]
        t = 0
        while t < len(pieces):
            if not any(c.isalnum() for c in pieces[t]):
                t += 1
                continue
            # a word runs on while the next piece starts with a letter or digit and this one ends with one
            end = t
            while end + 1 < len(pieces) and pieces[end][-1:].isalnum() and pieces[end + 1][:1].isalnum():
                end += 1
            word = "".join(pieces[t:end + 1]).strip()
            word = "".join(c for c in word if c.isalnum() or c in "'-") or word
            for j in range(t, end + 1):
                words[j] = word
            t = end + 1
        out.append(words)
    return out


def word_class(word: str) -> str:
    """One of `WORD_CLASSES`, by simple rules on the whole word: the unit of 'one kind of token' for the
    mixedness measure (names are capitalised words, and so is a word that starts a sentence)."""
    if not any(c.isalnum() for c in word):
        return "punctuation or space"
    if any(c.isdigit() for c in word):
        return "number"
    low = word.lower()
    if low in PRONOUNS:
        return "pronoun"
    if low in FUNCTION_WORDS:
        return "function word"
    return "capitalised word" if word[:1].isupper() else "content word"


def class_ids(words: Sequence[Sequence[str]]) -> torch.Tensor:
    """[B, T] int64: the index in `WORD_CLASSES` of each word's class (from `words_at`)."""
    return torch.tensor([[WORD_CLASSES.index(word_class(w)) for w in row] for row in words], dtype=torch.long)


def top_k_entropy(acts: torch.Tensor, labels: torch.Tensor, k: int = 20) -> torch.Tensor:
    """How mixed each neuron's strongest positions are: acts [B, T, N] and integer labels [B, T] (a word
    class or a token id per position) -> [N], the entropy in bits of the labels at the neuron's k largest
    activations. 0: all its top positions are one kind; log2(m): spread evenly over m kinds. (Leave out
    position 0 of a window, the attention sink with outsized activations, by passing acts[:, 1:].)"""
    if labels.shape != acts.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal acts' first two dims "
                         f"{tuple(acts.shape[:2])}")
    a = acts.reshape(-1, acts.shape[-1])  # [positions, N]
    lab = labels.reshape(-1)
    top = lab[a.topk(min(k, a.shape[0]), dim=0).indices]  # [k, N]: the label at each top position
    counts = torch.zeros(int(lab.max()) + 1, acts.shape[-1]).scatter_add_(0, top, torch.ones(top.shape))
    p = counts / top.shape[0]
    return -(p * p.clamp_min(1e-12).log2()).sum(0)


@dataclass
class TokenShare:
    """How much of a neuron's activation the current token alone explains."""

    share: float  # between-token variance / total variance (eta squared) on positions of common tokens
    n_tokens: int  # distinct token ids that occur at least min_count times
    n_positions: int  # positions counted


def token_share(acts: torch.Tensor, tokens: torch.Tensor, *, min_count: int = 20) -> TokenShare:
    """The share of one neuron's activation variance (acts [B, T]) that the token id at the position explains:
    1 for a neuron that reads only the current token, lower the more the context moves it. Only tokens seen
    at least `min_count` times count (a token seen once would explain its own value perfectly). Leave out the
    attention sink as for `top_k_entropy`: pass acts[:, 1:] and tokens[:, 1:]."""
    if acts.shape != tokens.shape:
        raise ValueError(f"acts shape {tuple(acts.shape)} must equal tokens shape {tuple(tokens.shape)} "
                         "(one neuron: acts[..., layer, neuron])")
    a, t = acts.flatten().double(), tokens.flatten()
    ids, inv, counts = t.unique(return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_count
    if keep.sum() < 2:
        raise ValueError(f"no token occurs {min_count} times in {t.numel()} positions: use more text")
    a, inv = a[keep], inv[keep]
    sums = torch.zeros(len(ids), dtype=torch.double).index_add_(0, inv, a)
    n = torch.zeros(len(ids), dtype=torch.double).index_add_(0, inv, torch.ones_like(a))
    means = (sums / n.clamp_min(1))[inv]
    total = ((a - a.mean()) ** 2).sum()
    between = ((means - a.mean()) ** 2).sum()
    return TokenShare(float(between / total.clamp_min(1e-12)), int((n >= min_count).sum()), int(len(a)))
