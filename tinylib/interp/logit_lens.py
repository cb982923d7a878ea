"""Logit lens and direct logit attribution for one prompt: which layer, and which head, pushes the next token.

Logit lens: read the residual stream after the embedding and after each block (`blocks.L.hook_resid_post`)
through the final norm and the unembedding, as if the model stopped there; watch the target token's
probability rise.

Direct logit attribution (DLA): the final residual is a sum of pieces: embeddings, every head's output
(`hook_z` for that head times its slice of o_proj), o_proj biases, and every MLP's output. The final norm is
linear once its scale (1/rms, or 1/std for LayerNorm, which also subtracts the mean) is frozen at the value
the real residual had, so each piece's contribution to the target logit is exact and they sum to the logit. A
head with a large positive contribution writes the answer directly. Positions with composed effects (a head
that moves information which a later MLP turns into the answer) show up on the later component: DLA measures
direct effects.

Reads activations from the bridge's cache and weights from the tinylib model behind it (see
`tinylib.interp.bridge`), so the bridge must be unprocessed (no compatibility-mode folding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tinylib.interp.bridge import as_bridge, str_tokens, tinylib_model


def _check_unprocessed(bridge) -> None:
    if getattr(bridge, "compatibility_mode", False):
        raise ValueError("logit lens / DLA use tinylib's weights and need an unprocessed bridge: "
                         "build it with to_lens(model) (compatibility_mode=False)")



def _position_and_target(tokens: torch.Tensor, pos: int, target: int | None) -> tuple[torch.Tensor, int, int]:
    """tokens as [1, T], pos made non-negative, and the target id (default: the token after pos)."""
    tokens = tokens.reshape(1, -1)
    pos = pos % tokens.shape[1]
    if target is None:
        if pos + 1 >= tokens.shape[1]:
            raise ValueError(
                "no token after `pos` to use as target: pass target=<token id> or an earlier pos"
            )
        target = int(tokens[0, pos + 1])
    return tokens, pos, target

@dataclass
class LogitLens:
    labels: list[str]  # "embed", "L0", ..., one per residual read
    target: int
    target_logprob: torch.Tensor  # [n_layer + 1]
    target_rank: torch.Tensor  # [n_layer + 1]; 0 = the top prediction
    top_tokens: list[list[str]]  # top-5 predictions at each read


@torch.no_grad()
def logit_lens(model: Any, tokens: torch.Tensor, *, pos: int = -1, target: int | None = None,
               k: int = 5) -> LogitLens:
    """Target log-prob and top-k predictions from the residual after the embedding and after each block.

    `tokens` [T] or [1, T]; `target` defaults to the token after `pos` (which must then exist)."""
    bridge = as_bridge(model)
    _check_unprocessed(bridge)
    m = tinylib_model(bridge)
    tokens, pos, target = _position_and_target(tokens, pos, target)
    L = bridge.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(L)]
    _, cache = bridge.run_with_cache(tokens, names_filter=names)
    resid = torch.stack([cache[n][0, pos] for n in names])  # [L + 1, d_model]
    logprobs = m.lm_head(m.norm_f(resid)).float().log_softmax(-1)
    rank = (logprobs > logprobs[:, target: target + 1]).sum(-1)
    top = logprobs.topk(k, dim=-1).indices
    return LogitLens(["embed"] + [f"L{i}" for i in range(L)], target, logprobs[:, target], rank,
                     [str_tokens(bridge, row) for row in top])


@dataclass
class Attribution:
    names: list[str]  # "embed", "L0H3", "L0 attn bias", "L0 mlp", ..., "final norm bias"
    values: torch.Tensor  # contribution of each to the target logit (minus the distractor's, when given)
    total: float  # sum of values
    logit: float  # the model's actual logit (difference)

    def top(self, k: int = 8) -> list[tuple[str, float]]:
        order = self.values.abs().argsort(descending=True)[:k]
        return [(self.names[i], float(self.values[i])) for i in order]

    def heads(self, n_layer: int, n_head: int) -> torch.Tensor:
        """The per-head contributions as a [layer, head] grid
        (for `tinylib.interp.ablation.plot_ablation`)."""
        grid = torch.zeros(n_layer, n_head)
        for name, v in zip(self.names, self.values):
            if name.startswith("L") and "H" in name and " " not in name:
                layer, head = name[1:].split("H")
                grid[int(layer), int(head)] = v
        return grid


@torch.no_grad()
def direct_logit_attribution(model: Any, tokens: torch.Tensor, *, pos: int = -1, target: int | None = None,
                             distractor: int | None = None) -> Attribution:
    """Each component's direct contribution to the target logit at `pos` (or to target - distractor)."""
    bridge = as_bridge(model)
    _check_unprocessed(bridge)
    m = tinylib_model(bridge)
    cfg = m.cfg
    tokens, pos, target = _position_and_target(tokens, pos, target)
    L = cfg.n_layer
    names = (["blocks.0.hook_resid_pre", f"blocks.{L - 1}.hook_resid_post"]
             + [f"blocks.{i}.attn.hook_z" for i in range(L)] + [f"blocks.{i}.hook_mlp_out" for i in range(L)])
    _, cache = bridge.run_with_cache(tokens, names_filter=names)
    parts: list[tuple[str, torch.Tensor]] = [("embed", cache["blocks.0.hook_resid_pre"][0, pos])]
    for i in range(L):
        attn = m.blocks[i].attn
        z = cache[f"blocks.{i}.attn.hook_z"][0, pos]  # [H, d_head]
        w_o = attn.o_proj.weight.view(cfg.d_model, cfg.n_head, cfg.d_head)
        for h in range(cfg.n_head):
            parts.append((f"L{i}H{h}", w_o[:, h] @ z[h]))
        if attn.o_proj.bias is not None:
            parts.append((f"L{i} attn bias", attn.o_proj.bias))
        parts.append((f"L{i} mlp", cache[f"blocks.{i}.hook_mlp_out"][0, pos]))
    final = cache[f"blocks.{L - 1}.hook_resid_post"][0, pos].float()
    direction = m.lm_head.weight[target].float()
    if distractor is not None:
        direction = direction - m.lm_head.weight[distractor].float()
    norm = m.norm_f
    if cfg.norm == "rmsnorm":
        scale = torch.rsqrt(final.pow(2).mean() + norm.eps)
        values = [float((norm.weight.float() * v.float() * scale) @ direction) for _, v in parts]
        extra = []
    else:
        scale = torch.rsqrt(final.var(unbiased=False) + norm.eps)
        values = [float((norm.weight.float() * (v.float() - v.float().mean()) * scale) @ direction)
                  for _, v in parts]
        extra = [("final norm bias", float(norm.bias.float() @ direction))] if norm.bias is not None else []
    names_out = [n for n, _ in parts] + [n for n, _ in extra]
    values_t = torch.tensor(values + [v for _, v in extra])
    logits = m.lm_head(norm(final.to(m.lm_head.weight.dtype)))
    logit = logits[target] - (logits[distractor] if distractor is not None else 0.0)
    return Attribution(names_out, values_t, float(values_t.sum()), float(logit))


def plot_logit_lens(lens: LogitLens, title: str | None = None):
    """Target log-prob after each layer (the logit lens curve)."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(lens.labels)), lens.target_logprob.cpu().numpy(), marker="o")
    ax.set_xticks(range(len(lens.labels)), lens.labels)
    ax.set_ylabel("log p(target)")
    ax.set_title(title or "logit lens", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
