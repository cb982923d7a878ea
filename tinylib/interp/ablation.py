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
- `ablate_each_head(model, tokens, kind)` -> `HeadAblation` (base loss, delta [L, H]);
  `plot_ablation` shows it. A neuron is ablated through `ablated_loss(..., neurons=[(layer, i)])`.
Logit lens and direct logit attribution live in `tinylib.interp.logit_lens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tinylib.interp.bridge import as_bridge

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

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k heads whose ablation raises the loss most, as (layer, head, delta)."""
        vals, idx = self.delta.flatten().topk(min(k, self.delta.numel()))
        n = self.delta.shape[1]
        return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(vals, idx)]


@torch.no_grad()  # an analysis: no graph to keep
def ablate_each_head(model: Any, tokens: torch.Tensor, kind: Kind = "zero", *, means: Means | None = None,
                     positions: slice = slice(None), batch_size: int = 16) -> HeadAblation:
    """Loss change when each head alone is ablated.

    One forward pass per layer and batch chunk: the chunk is repeated n_head times and copy h has head h
    ablated, which gives the same numbers as n_layer x n_head separate runs (a test checks one against weight
    zeroing)."""
    bridge = as_bridge(model)
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind={kind!r}: expected 'zero' or 'mean'")
    if kind == "mean" and means is None:
        means = component_means(bridge, tokens)
    base = float(token_losses(bridge, tokens)[:, positions].mean())
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    sums = torch.zeros(L, H)
    count = 0
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
            sums[layer] += loss[:, positions].reshape(H, -1).sum(-1)
        count += loss[:, positions].numel() // H
    return HeadAblation(kind, base, sums / count - base)


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
