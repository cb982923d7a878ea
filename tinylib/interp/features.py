"""What a unit responds to and what it writes: feature views for sparse-autoencoder features and MLP neurons,
and a measure of how mixed a unit's top contexts are, so that "features are cleaner than neurons" is measured.

A *unit* is either an MLP neuron (one coordinate of the site's activation) or an autoencoder feature
(`tinylib.interp.sae`); every function here takes activations [N, T, units] of one kind or the other, so the
two are treated identically.
- `unit_activations(model, windows, site, layer, sae=None)` -> [N, T, units]: neurons, or features with `sae`;
- `top_contexts(acts, unit, k)` -> the k (row, position, value) where the unit fires most;
  `contexts_html(tokenizer, windows, acts, unit)` shows them with tokens shaded by activation;
- `logit_effect(model, sae, feature)` -> the tokens whose logits the feature's decoder direction raises and
  lowers most (through the MLP's output matrix, the final norm's weights and the unembedding);
- `plot_histogram(acts, unit)`: how often and how strongly it fires;
- `token_category(piece)` -> one of `CATEGORIES` (punctuation, a word's continuation, a name-like capitalised
  word, a function word, ...); `context_entropy(...)` -> per unit, the entropy (bits) of the categories (or of
  the token ids) at its top-k contexts: 0 when all its strongest examples are one kind of token;
  `compare_purity(...)` -> neurons against features with bootstrap intervals over units;
- `feature_steering_vector(model, sae, feature)` -> a `SteeringVector` for `tinylib.interp.steering.steer`:
  strength s adds s units of the feature (its decoder direction, carried into the residual stream), and
  strength 0 is plain generation.
What it leaves to others: training autoencoders (`sae`), neuron selectivity for given words (`neurons`),
generation and the widget (`steering`, `tinylib.widgets`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tinylib.interp.neurons import story_html  # the same shading as the neuron views
from tinylib.interp.sae import SparseAutoencoder, site_activations
from tinylib.interp.steering import SteeringVector
from tinylib.model import Transformer

CATEGORIES = ("newline or space", "punctuation", "number", "word continuation", "capitalised word",
              "function word", "content word")
FUNCTION_WORDS = frozenset("""a an the and or but so if then than that this these those there here he she
it they we you i me him her them us my his its our your their to of in on at by for with from up down out into
over under about after before as is was are were be been am do did does have has had not no yes will would can
could should very too also just all some any one two what who when where why how said""".split())


# --- activations and views ------------------------------------------------------------------------------
@torch.no_grad()
def unit_activations(model: Transformer, windows: torch.Tensor, site: str, layer: int,
                     sae: SparseAutoencoder | None = None, batch_size: int = 16) -> torch.Tensor:
    """[N, T, units]: the site's neurons (sae=None) or the autoencoder's features, for windows [N, T]."""
    if sae is not None and (sae.cfg.site, sae.cfg.layer) != (site, layer):
        raise ValueError(f"the autoencoder reads {sae.cfg.site!r} of layer {sae.cfg.layer}, not {site!r} of "
                         f"layer {layer}")
    out = []
    for chunk in windows.split(batch_size):
        a = site_activations(model, chunk, site, layer)
        out.append(sae.encode(a) if sae is not None else a)
    return torch.cat(out)


@dataclass
class Context:
    row: int
    pos: int
    value: float


def top_contexts(acts: torch.Tensor, unit: int, k: int = 20, *, skip_first: bool = True) -> list[Context]:
    """The k positions where `unit` fires most (position 0, the attention sink the autoencoder never saw,
    left out)."""
    a = acts[..., unit].clone()
    if skip_first:
        a[:, 0] = float("-inf")
    vals, idx = a.flatten().topk(min(k, a.numel()))
    T = a.shape[1]
    return [Context(*divmod(int(i), T), float(v)) for v, i in zip(vals, idx) if v > float("-inf")]


def contexts_html(tokenizer: Any, windows: torch.Tensor, acts: torch.Tensor, unit: int, k: int = 8,
                  context: int = 12, title: str = "") -> str:
    """The unit's top-k contexts, one line each, every token shaded by the unit's activation there."""

    tops = top_contexts(acts, unit, k)
    vmax = max((c.value for c in tops), default=1.0) or 1.0
    lines = []
    for c in tops:
        lo = max(1, c.pos - context)
        ids = windows[c.row, lo:c.pos + 3].tolist()
        labels = [tokenizer.id_to_piece(i) for i in ids]
        lines.append(story_html(labels, acts[c.row, lo:c.pos + 3, unit], vmax=vmax,
                                title=f"{c.value:.2f}"))
    head = f"<h4>{html.escape(title)}</h4>" if title else ""
    return head + "".join(lines)


@torch.no_grad()
def logit_effect(model: Transformer, sae: SparseAutoencoder, feature: int, k: int = 10
                 ) -> dict[str, list[tuple[int, float]]]:
    """Token ids (and logit changes) the feature's decoder direction raises and lowers most: the direction,
    through down_proj for an MLP feature, scaled by the final norm's weights, through the unembedding
    (the direct path, ignoring later layers and the norm's division)."""
    v = residual_direction(model, sae, feature)
    norm_w = getattr(model.norm_f, "weight", None)
    h = v * norm_w if norm_w is not None else v
    logits = model.lm_head.weight.detach() @ (h if model.emb_proj is None else h @ model.emb_proj.weight)
    up, down = logits.topk(k), (-logits).topk(k)
    return {"up": [(int(i), float(x)) for x, i in zip(*up)],
            "down": [(int(i), -float(x)) for x, i in zip(*down)]}


def residual_direction(model: Transformer, sae: SparseAutoencoder, feature: int) -> torch.Tensor:
    """What one unit of the feature adds to the residual stream after its block [d_model]."""
    d = sae.direction(feature)
    if sae.cfg.site == "mlp":
        return model.blocks[sae.cfg.layer].mlp.down_proj.weight.detach() @ d
    return d


def feature_steering_vector(model: Transformer, sae: SparseAutoencoder, feature: int) -> SteeringVector:
    """A steering vector for `steering.steer`: strength s adds s units of the feature after its block (for an
    MLP feature, the MLP's output changes exactly as if the feature's activation rose by s)."""
    return SteeringVector(residual_direction(model, sae, feature).float(), sae.cfg.layer,
                          name=f"feature {feature} (L{sae.cfg.layer} {sae.cfg.site})")


def plot_histogram(acts: torch.Tensor, unit: int, *, title: str | None = None, bins: int = 50):
    """Histogram of the unit's nonzero activations (log counts), with how often it is nonzero."""
    import matplotlib.pyplot as plt  # heavy, and only needed to plot

    a = acts[..., unit].flatten().float()
    nz = a[a != 0]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(nz.numpy(), bins=bins, log=True, color="tab:red")
    ax.set_xlabel("activation (nonzero only)")
    ax.set_ylabel("count")
    ax.set_title(title or f"unit {unit}: nonzero on {len(nz) / max(1, len(a)):.2%} of tokens", fontsize=10)
    fig.tight_layout()
    return fig


# --- how mixed are a unit's top contexts? ------------------------------------------------------------------
def token_category(piece: str) -> str:
    """A coarse, rule-based kind of token: the unit of 'one thing' for the purity measure."""
    s = piece.strip()
    if not s:
        return "newline or space"
    if not any(ch.isalnum() for ch in s):
        return "punctuation"
    if any(ch.isdigit() for ch in s):
        return "number"
    if not piece.startswith(" ") and not s[0].isupper():
        return "word continuation"
    if s[0].isupper() and s.lower() not in FUNCTION_WORDS:
        return "capitalised word"
    return "function word" if s.lower() in FUNCTION_WORDS else "content word"


def entropy_bits(labels: Sequence[Any]) -> float:
    counts: dict[Any, int] = {}
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
    n = len(labels)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def context_entropy(tokenizer: Any, windows: torch.Tensor, acts: torch.Tensor, k: int = 20, *,
                    by: str = "category", units: Sequence[int] | None = None) -> torch.Tensor:
    """Per unit, the entropy (bits) of what sits at its k strongest positions: token categories
    (by="category") or token ids (by="token"). Units that fire fewer than k times (dead or rare) get NaN."""
    if by not in ("category", "token"):
        raise ValueError(f"by={by!r}: expected 'category' or 'token'")
    cats = {}
    units = range(acts.shape[-1]) if units is None else units
    a = acts.clone()
    a[:, 0] = float("-inf")
    flat = a.reshape(-1, a.shape[-1])
    T = acts.shape[1]
    vals, idx = flat[:, list(units)].topk(k, dim=0)  # [k, units]
    out = []
    for j in range(len(units)):
        if not (vals[:, j] > 0).all():
            out.append(float("nan"))
            continue
        ids = [int(windows[int(i) // T, int(i) % T]) for i in idx[:, j]]
        if by == "token":
            out.append(entropy_bits(ids))
            continue
        labels = []
        for i in ids:
            if i not in cats:
                cats[i] = token_category(tokenizer.id_to_piece(i))
            labels.append(cats[i])
        out.append(entropy_bits(labels))
    return torch.tensor(out, dtype=torch.float64)


@dataclass
class Purity:
    """Mean top-context entropy (bits) of neurons and of features, the difference, and 95% bootstrap
    intervals over units; `n_*` units measured (dead or rare ones left out)."""

    by: str
    k: int
    neurons: float
    neurons_ci: tuple[float, float]
    features: float
    features_ci: tuple[float, float]
    difference: float  # neurons - features: > 0 means features are cleaner
    difference_ci: tuple[float, float]
    n_neurons: int
    n_features: int

    def row(self) -> str:
        return (f"top-{self.k} {self.by} entropy: neurons {self.neurons:.2f} bits "
                f"[{self.neurons_ci[0]:.2f}, {self.neurons_ci[1]:.2f}] (n={self.n_neurons}), features "
                f"{self.features:.2f} [{self.features_ci[0]:.2f}, {self.features_ci[1]:.2f}] "
                f"(n={self.n_features}); "
                f"neurons - features {self.difference:+.2f} [{self.difference_ci[0]:+.2f}, "
                f"{self.difference_ci[1]:+.2f}]")


def bootstrap_mean(x: torch.Tensor, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of x, resampling its entries."""
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randint(0, len(x), (n, len(x)), generator=g)].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def compare_purity(neuron_entropy: torch.Tensor, feature_entropy: torch.Tensor, *, by: str = "category",
                   k: int = 20, n_boot: int = 2000, seed: int = 0) -> Purity:
    """Neurons against features: the means, and intervals from resampling units (each group on its own, the
    difference from independent resamples of both)."""
    a, b = neuron_entropy[~neuron_entropy.isnan()], feature_entropy[~feature_entropy.isnan()]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"{len(a)} neurons and {len(b)} features fire at least k={k} times: use more "
                         "windows or a smaller k")
    g = torch.Generator().manual_seed(seed)
    da = a[torch.randint(0, len(a), (n_boot, len(a)), generator=g)].mean(1)
    db = b[torch.randint(0, len(b), (n_boot, len(b)), generator=g)].mean(1)
    diff = da - db
    return Purity(by, k, float(a.mean()), bootstrap_mean(a, n_boot, seed), float(b.mean()),
                  bootstrap_mean(b, n_boot, seed + 1), float(a.mean() - b.mean()),
                  (float(diff.quantile(0.025)), float(diff.quantile(0.975))), len(a), len(b))
