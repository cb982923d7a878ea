"""Attention patterns and head scores, read from the TransformerLens bridge.

`attention_patterns(model, tokens)` returns every layer's `blocks.L.attn.hook_pattern` stacked as
[layer, head, query, key]. `head_scores(model, tokens)` scores every head for four behaviours, as
[layer, head] tensors in [0, 1]:
- previous-token: mean attention from position t to t-1;
- attend-to-first: mean attention to position 0 (the BOS "attention sink" / no-op head);
- duplicate-token: attention mass on earlier positions holding the same token as the query;
- induction: attention mass on positions right after an earlier copy of the query token ("A B ... A -> B").
Duplicate and induction scores are cleanest on repeated random tokens (`repeated_tokens`), where only an
in-context copy can predict the second half. Plots take the returned data: `plot_pattern`, `plot_head_scores`.

Every function accepts a bridge (`tinylib.interp.bridge.to_lens`), a tinylib model or a checkpoint path. The
eager tinylib path (`model.forward_with_patterns(idx)`) gives the same patterns; the tests use it as the
cross-check.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylib.interp.bridge import as_bridge


@torch.no_grad()
def batch_patterns(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Patterns [batch, layer, head, query, key] for tokens [batch, T], from `blocks.L.attn.hook_pattern`."""
    bridge = as_bridge(model)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    _, cache = bridge.run_with_cache(tokens.reshape(-1, tokens.shape[-1]), names_filter=names)
    return torch.stack([cache[n] for n in names], dim=1).float()


def attention_patterns(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Patterns [layer, head, query, key] for one sequence (tokens [T] or [1, T])."""
    if tokens.dim() == 2 and tokens.shape[0] != 1:
        raise ValueError(f"attention_patterns takes one sequence, got a batch of {tokens.shape[0]}; "
                         "use batch_patterns for batches")
    return batch_patterns(model, tokens.reshape(1, -1))[0]


def ordinary_ids(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Ids worth drawing at random: not special (BOS/EOS/unk) and not raw-byte pieces like `<0x0A>`.

    SentencePiece vocabularies (tok512) start with 256 byte-fallback pieces the model rarely sees; random
    sequences of them are off-distribution and hide induction heads."""
    if tokenizer is None:
        return torch.arange(vocab_size)
    specials = set(getattr(tokenizer, "special_tokens", {}).values()) | {tokenizer.bos_id, tokenizer.eos_id}
    n = min(vocab_size, getattr(tokenizer, "vocab_size", vocab_size))
    keep = []
    for i in range(n):
        if i in specials:
            continue
        piece = tokenizer.id_to_piece(i)
        if piece.startswith("<0x") and piece.endswith(">"):
            continue
        keep.append(i)
    return torch.tensor(keep)


def repeated_tokens(ids: int | torch.Tensor, batch: int = 8, half: int = 50, *, bos_id: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """[batch, (1 +) 2*half] random tokens repeated once: the induction test input (BOS first when given).

    `ids` is a vocabulary size (draw from 0..ids-1) or a tensor of ids to draw from (see `ordinary_ids`)."""
    choices = torch.arange(ids) if isinstance(ids, int) else torch.as_tensor(ids)
    if half < 1 or choices.numel() < 2:
        raise ValueError(
            f"need half >= 1 and at least 2 ids to draw from, got half={half}, {choices.numel()} ids"
        )
    g = torch.Generator().manual_seed(seed)
    rand = choices[torch.randint(0, choices.numel(), (batch, half), generator=g)]
    seq = torch.cat([rand, rand], dim=1)
    if bos_id is not None:
        seq = torch.cat([torch.full((batch, 1), bos_id, dtype=seq.dtype), seq], dim=1)
    return seq


def _match_masks(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Duplicate mask [B, T, T] (key s < query t holds the query's token) and induction mask (key s follows
    such a copy: tokens[s-1] == tokens[t], s-1 < t, s <= t)."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, t, s]
    T = tokens.shape[1]
    strictly_before = torch.ones(T, T, dtype=torch.bool).tril(-1)
    dup = same & strictly_before
    ind = torch.zeros_like(dup)
    ind[:, :, 1:] = same[:, :, :-1] & strictly_before[:, :-1]  # key s=j+1 after a copy at j < t
    ind &= torch.ones(T, T, dtype=torch.bool).tril()
    return dup, ind


def scores_from_patterns(patterns: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Head scores [L, H] from patterns [B, L, H, T, T] and the tokens [B, T] they were computed on."""
    p = patterns.float()
    prev = p.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))
    first = p[..., 1:, 0].mean(dim=(0, -1))  # query 0 can only attend to itself
    dup, ind = _match_masks(tokens.to(p.device))
    out = {"previous_token": prev, "attend_to_first": first}
    for name, mask in (("duplicate_token", dup), ("induction", ind)):
        rows = mask.any(-1)  # queries that have an earlier copy at all
        if not rows.any():
            out[name] = torch.zeros_like(prev)
            continue
        mass = (p * mask[:, None, None]).sum(-1)  # [B, L, H, T]
        out[name] = (mass * rows[:, None, None]).sum(dim=(0, -1)) / rows.sum()
    return out


def head_scores(model: Any, tokens: torch.Tensor | None = None, *, batch: int = 8, half: int = 50,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """All four head scores [layer, head] on `tokens` [B, T] (default: repeated random tokens after BOS)."""
    bridge = as_bridge(model)
    if tokens is None:
        tok = getattr(bridge, "tinylib_tokenizer", None)
        tokens = repeated_tokens(ordinary_ids(tok, bridge.cfg.d_vocab), batch, half,
                                 bos_id=getattr(tok, "bos_id", None), seed=seed)
    tokens = tokens.reshape(-1, tokens.shape[-1])
    return scores_from_patterns(batch_patterns(bridge, tokens), tokens)


def top_heads(scores: torch.Tensor, k: int = 3) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads as (layer, head, score)."""
    flat = scores.flatten()
    vals, idx = flat.topk(min(k, flat.numel()))
    n_head = scores.shape[1]
    return [(int(i) // n_head, int(i) % n_head, float(v)) for v, i in zip(vals, idx)]


# ------------------------------------------------------------------------------------------------------------
# Plots (take the data above)


def plot_pattern(patterns: torch.Tensor, labels: list[str] | None = None, *, layer: int = 0,
                 heads: list[int] | None = None, max_cols: int = 4, cell: float = 2.8):
    """Labelled heatmaps of one layer's heads (patterns [layer, head, q, k]);
    returns the matplotlib figure."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    p = patterns[layer] if patterns.dim() == 4 else patterns
    heads = list(range(p.shape[0])) if heads is None else heads
    cols = min(max_cols, len(heads))
    rows = (len(heads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.5, cell * rows + 0.3), squeeze=False)
    T = p.shape[-1]
    show_labels = labels is not None and T <= 40
    for ax in axes.flat:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        ax.axis("on")
        ax.imshow(p[h].detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"L{layer}H{h}", fontsize=9)
        if show_labels:
            ax.set_xticks(range(T), [repr(s)[1:-1] for s in labels], rotation=90, fontsize=6)
            ax.set_yticks(range(T), [repr(s)[1:-1] for s in labels], fontsize=6)
        else:
            ax.set_xlabel("key", fontsize=7)
            ax.set_ylabel("query", fontsize=7)
    fig.tight_layout()
    return fig


def plot_head_scores(scores: dict[str, torch.Tensor] | torch.Tensor, title: str | None = None):
    """Layers x heads grid(s) of scores with values written in; one panel per score name."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    items = list(scores.items()) if isinstance(scores, dict) else [(title or "score", scores)]
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items) + 0.5, 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], items):
        s = s.detach().cpu().float()
        im = ax.imshow(s.numpy(), cmap="viridis", vmin=0, vmax=max(1e-6, float(s.max())))
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(s.shape[1]))
        ax.set_yticks(range(s.shape[0]))
        if s.numel() <= 144:
            for (i, j), v in zip([(i, j) for i in range(s.shape[0]) for j in range(s.shape[1])], s.flatten()):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * float(s.max()) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title and isinstance(scores, dict):
        fig.suptitle(title)
    fig.tight_layout()
    return fig
