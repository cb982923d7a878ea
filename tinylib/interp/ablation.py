"""Ablations: knock out attention heads or MLP neurons and measure what the loss does.

Zero ablation sets a head's output `blocks.L.attn.hook_z[:, :, h]` (or a neuron's `blocks.L.mlp.hook_post`) to
0; mean ablation sets it to its mean over the reference tokens' batch and positions, which keeps the average
signal downstream layers expect and so measures the head's *information* rather than its presence. Both run as
forward hooks on the TransformerLens bridge. The cost of an ablation is the change in mean next-token loss
(nats) on the tokens given (validation windows, or repeated random tokens for induction).

- `token_losses(model, tokens, hooks)` -> per-token loss [B, T-1];
- `component_means(model, tokens)` -> mean z per head [L, H, d_head] and
  mean activation per neuron [L, d_mlp];
- `ablation_hooks(heads, neurons, kind, means)` -> the hooks; `ablated_loss(...)` -> one number;
- `each_head_losses(model, tokens, kind)` -> per-token losses [L, H, B, T-1] with each head alone ablated;
- `ablate_each_head(model, tokens, kind)` -> `HeadAblation`: base loss, delta [L, H], the cost on each row
  [L, H, B] and its bootstrap interval over rows (`ci`, `cis`, through `tinylib.interp.features`'
  `bootstrap_mean`); `plot_ablation` shows it.
A neuron is ablated through `ablated_loss(..., neurons=[(layer, i)])`.
Logit lens and direct logit attribution live in `tinylib.interp.logit_lens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tinylib.interp.bridge import as_bridge
from tinylib.interp.features import bootstrap_mean

Kind = Literal["zero", "mean"]
Hook = tuple[str, Callable]


@torch.no_grad()
def token_losses(model: Any, tokens: torch.Tensor, hooks: Sequence[Hook] = (), *,
                 batch_size: int = 16) -> torch.Tensor:
    """Next-token cross-entropy [B, T-1] (position t predicts tokens[t+1]) with `hooks` applied."""
    bridge = as_bridge(model)
    out = []
    for chunk in tokens.split(batch_size):
        logits = bridge.run_with_hooks(chunk, fwd_hooks=list(hooks)) if hooks else bridge(chunk)
        out.append(F.cross_entropy(logits[:, :-1].float().transpose(1, 2), chunk[:, 1:], reduction="none"))
    return torch.cat(out)


@dataclass
class Means:
    z: torch.Tensor  # [n_layer, n_head, d_head]: mean head output before o_proj
    post: torch.Tensor  # [n_layer, d_mlp]: mean MLP activation


@torch.no_grad()
def component_means(model: Any, tokens: torch.Tensor, *, batch_size: int = 16) -> Means:
    """Mean of every head's z and every neuron's activation over all batch rows and positions of `tokens`."""
    bridge = as_bridge(model)
    L = bridge.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_z" for i in range(L)] + [f"blocks.{i}.mlp.hook_post" for i in range(L)]
    z_sum, post_sum, n = 0.0, 0.0, 0
    for chunk in tokens.split(batch_size):
        _, cache = bridge.run_with_cache(chunk, names_filter=names)
        z_sum = z_sum + torch.stack([cache[names[i]].float().sum((0, 1)) for i in range(L)])
        post_sum = post_sum + torch.stack([cache[names[L + i]].float().sum((0, 1)) for i in range(L)])
        n += chunk.shape[0] * chunk.shape[1]
    return Means(z=z_sum / n, post=post_sum / n)


def ablation_hooks(heads: Iterable[tuple[int, int]] = (), neurons: Iterable[tuple[int, int]] = (),
                   kind: Kind = "zero", means: Means | None = None) -> list[Hook]:
    """Forward hooks that replace the given heads' z and neurons' activations by 0 or their mean."""
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind={kind!r}: expected 'zero' or 'mean'")
    if kind == "mean" and means is None:
        raise ValueError("mean ablation needs means: pass means=component_means(model, tokens)")
    by_layer: dict[tuple[str, int], list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(("z", layer), []).append(h)
    for layer, n in neurons:
        by_layer.setdefault(("post", layer), []).append(n)
    hooks: list[Hook] = []
    for (what, layer), units in sorted(by_layer.items()):
        idx = torch.tensor(units)

        def fn(act, hook, _what=what, _layer=layer, _idx=idx):
            # z is [B, T, H, d_head] (index the head axis); post is [B, T, d_mlp] (index the last axis)
            view = act.transpose(-1, -2) if _what == "z" else act
            if kind == "zero":
                view[..., _idx] = 0
            else:
                table = means.z[_layer, _idx].T if _what == "z" else means.post[_layer, _idx]
                view[..., _idx] = table.to(act.dtype)
            return act

        name = f"blocks.{layer}.attn.hook_z" if what == "z" else f"blocks.{layer}.mlp.hook_post"
        hooks.append((name, fn))
    return hooks


def ablated_loss(model: Any, tokens: torch.Tensor, *, heads: Iterable[tuple[int, int]] = (),
                 neurons: Iterable[tuple[int, int]] = (), kind: Kind = "zero", means: Means | None = None,
                 positions: slice = slice(None)) -> float:
    """Mean loss with the given heads/neurons ablated; `positions` selects which predictions count."""
    hooks = ablation_hooks(heads, neurons, kind, means)
    return float(token_losses(model, tokens, hooks)[:, positions].mean())


@dataclass
class HeadAblation:
    kind: str
    base_loss: float
    delta: torch.Tensor  # [n_layer, n_head]: ablated loss - base loss (nats/token)
    per_row: torch.Tensor  # [n_layer, n_head, B]: the same cost on each row (window or story) alone

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k heads whose ablation raises the loss most, as (layer, head, delta)."""
        vals, idx = self.delta.flatten().topk(min(k, self.delta.numel()))
        n = self.delta.shape[1]
        return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(vals, idx)]

    def ci(self, layer: int, head: int, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of one head's cost, resampling rows (every head gets the same resamples)."""
        return bootstrap_mean(self.per_row[layer, head], n_boot, seed)

    def cis(self, *, n_boot: int = 2000, seed: int = 0) -> torch.Tensor:
        """[n_layer, n_head, 2]: every head's interval (low, high)."""
        L, H, _ = self.per_row.shape
        return torch.tensor([[self.ci(i, h, n_boot=n_boot, seed=seed) for h in range(H)] for i in range(L)])


@torch.no_grad()  # an analysis: no graph to keep
def each_head_losses(model: Any, tokens: torch.Tensor, kind: Kind = "zero", *, means: Means | None = None,
                     batch_size: int = 16) -> torch.Tensor:
    """Per-token loss [n_layer, n_head, B, T-1] with each head alone ablated (entry [l, h] has head h of
    layer l ablated), so that any positions can be read from one pass.

    One forward pass per layer and batch chunk: the chunk is repeated n_head times and copy h has head h
    ablated, which gives the same numbers as n_layer x n_head separate runs (a test checks one against weight
    zeroing)."""
    bridge = as_bridge(model)
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind={kind!r}: expected 'zero' or 'mean'")
    if kind == "mean" and means is None:
        raise ValueError("mean ablation needs means: pass means=component_means(model, tokens)")
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    out = torch.zeros(L, H, tokens.shape[0], tokens.shape[1] - 1)
    start = 0
    for chunk in tokens.split(max(1, batch_size // H)):
        B = chunk.shape[0]
        rep = chunk.repeat(H, 1)  # rows [h * B:(h + 1) * B] ablate head h
        for layer in range(L):
            def fn(z, hook, _layer=layer, _b=B):
                zz = z.view(H, _b, *z.shape[1:])  # [copy, B, T, head, d_head]
                for h in range(H):
                    zz[h, :, :, h] = 0 if kind == "zero" else means.z[_layer, h].to(z.dtype)
                return z

            logits = bridge.run_with_hooks(rep, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", fn)])
            loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), rep[:, 1:], reduction="none")
            out[layer, :, start:start + B] = loss.view(H, B, -1)
        start += B
    return out


def ablate_each_head(model: Any, tokens: torch.Tensor, kind: Kind = "zero", *, means: Means | None = None,
                     positions: slice = slice(None), batch_size: int = 16,
                     losses: torch.Tensor | None = None) -> HeadAblation:
    """Loss change when each head alone is ablated, in total and on each row of `tokens` (the rows are the
    units a bootstrap resamples: windows of text, or stories); `positions` selects which predictions count.
    Pass `losses` (from `each_head_losses`) to read other positions without running the model again."""
    bridge = as_bridge(model)
    if kind == "mean" and means is None:
        means = component_means(bridge, tokens)
    if losses is None:
        losses = each_head_losses(bridge, tokens, kind, means=means, batch_size=batch_size)
    base_rows = token_losses(bridge, tokens)[:, positions].mean(-1)  # [B]
    # every row has as many predictions, so the mean of the row means is the mean over all tokens
    per_row = losses[..., positions].mean(-1) - base_rows
    return HeadAblation(kind, float(base_rows.mean()), per_row.mean(-1), per_row)


def plot_ablation(result: HeadAblation | torch.Tensor, title: str | None = None):
    """Layers x heads heatmap of loss change (red: ablation hurts), values written in each cell."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    delta = result.delta if isinstance(result, HeadAblation) else result
    d = delta.detach().cpu().float()
    lim = max(1e-6, float(d.abs().max()))
    fig, ax = plt.subplots(figsize=(0.55 * d.shape[1] + 2, 0.45 * d.shape[0] + 1.5))
    im = ax.imshow(d.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(d.shape[1]))
    ax.set_yticks(range(d.shape[0]))
    if d.numel() <= 200:
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                ax.text(j, i, f"{float(d[i, j]):.2f}", ha="center", va="center", fontsize=6)
    if title is None and isinstance(result, HeadAblation):
        title = f"{result.kind} ablation: loss change (base {result.base_loss:.3f})"
    ax.set_title(title or "loss change", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="nats/token")
    fig.tight_layout()
    return fig
