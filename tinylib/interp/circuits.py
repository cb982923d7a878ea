"""Circuit evidence from the weights: QK and OV matrices, composition scores, the copying OV circuit.

A head reads the residual stream twice and writes it once. In row-vector form (x is a residual vector):
- QK circuit `W_QK = W_Q W_K^T` [d_model, d_model]: the attention score of query x_q on key x_k is
  x_q W_QK x_k^T / sqrt(d_head);
- OV circuit `W_OV = W_V W_O` [d_model, d_model]: what the head writes when it attends to x is x W_OV.
A later head composes with an earlier one when its Q, K or V input reads what the earlier head wrote
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"): K-composition, the induction head's
mechanism, is `||W_QK^B (W_OV^A)^T||_F / (||W_QK^B||_F ||W_OV^A||_F)`, and likewise Q (`W_OV^A W_QK^B`) and
V (`W_OV^A W_OV^B`). The full OV circuit `W_E W_OV W_U` [vocab, vocab] of a copying head has its largest entry
of row i at column i: attending to token i raises the logit of token i.

Approximations, as in the paper: each norm's gain is folded into the weights that read it, and the
normalisation itself, biases, rotary positions and MLPs are left out. The scores rank heads; they are not
exact contributions, and they need a baseline: two unrelated random matrices of the same rank already score
well above 0 (`random_composition_baseline`, about 0.09 for rank 32 in d_model 128). The causal test is an
ablation: `ablated_induction_scores` zeroes each earlier head in turn (`zero_head`) and re-measures every
later head's induction score; a later head whose keys need an earlier head's output loses its score.
Ablations of the loss are `tinylib.interp.ablation`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from tinylib.interp.attention import scores_from_patterns
from tinylib.model import Transformer

Kind = Literal["q", "k", "v"]


def _gain(norm: torch.nn.Module) -> torch.Tensor:
    return norm.weight.detach().float()


def _unembedding(model: Transformer) -> torch.Tensor:
    """[vocab, d_model]: the rows whose dot product with the final stream gives the logits (with factorized
    embeddings, the factors multiplied out; a logit soft-cap is monotone and does not change rankings)."""
    w = model.lm_head.weight.detach().float()
    return w if model.emb_proj is None else w @ model.emb_proj.weight.detach().float().T


@torch.no_grad()
def head_matrices(model: Transformer, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_QK [n_head, d, d], W_OV [n_head, d, d]) of one layer, the attention norm's gain folded in.

    With grouped-query attention, query head h uses key/value head h // (n_head / n_kv_head)."""
    block = model.blocks[layer]
    attn, g = block.attn, _gain(block.attn_norm)
    H, dh = attn.n_head, attn.d_head
    group = H // attn.n_kv_head
    wq = (attn.q_proj.weight.float() * g).view(H, dh, -1)  # [H, d_head, d]: q = x_norm @ wq[h].T
    wk = (attn.k_proj.weight.float() * g).view(attn.n_kv_head, dh, -1).repeat_interleave(group, 0)
    wv = (attn.v_proj.weight.float() * g).view(attn.n_kv_head, dh, -1).repeat_interleave(group, 0)
    wo = attn.o_proj.weight.float().view(-1, H, dh).transpose(0, 1)  # [H, d, d_head]: out = z_h @ wo[h].T
    w_qk = wq.transpose(1, 2) @ wk  # [H, d, d]
    w_ov = wv.transpose(1, 2) @ wo.transpose(1, 2)  # [H, d, d]
    return w_qk, w_ov


def composition_score(first_ov: torch.Tensor, second: torch.Tensor, kind: Kind) -> torch.Tensor:
    """How much `second` (W_QK for q/k, W_OV for v) reads what `first_ov` writes: a number in [0, 1]."""
    if kind == "k":
        product = second @ first_ov.T
    elif kind in ("q", "v"):
        product = first_ov @ second
    else:
        raise ValueError(f"kind={kind!r}: expected 'q', 'k' or 'v'")
    return product.norm() / (first_ov.norm() * second.norm())


@torch.no_grad()
def composition_scores(model: Transformer, kind: Kind = "k", *, src_layer: int = 0,
                       dst_layer: int = 1) -> torch.Tensor:
    """[n_head of src_layer, n_head of dst_layer]: each earlier head's composition into each later head."""
    if not 0 <= src_layer < dst_layer < model.cfg.n_layer:
        raise ValueError(f"need 0 <= src_layer < dst_layer < n_layer={model.cfg.n_layer}, got "
                         f"src_layer={src_layer}, dst_layer={dst_layer}")
    _, src_ov = head_matrices(model, src_layer)
    dst_qk, dst_ov = head_matrices(model, dst_layer)
    dst = dst_ov if kind == "v" else dst_qk
    return torch.stack([torch.stack([composition_score(a, b, kind) for b in dst]) for a in src_ov])


def random_composition_baseline(d_model: int, d_head: int, kind: Kind = "k", *, n: int = 200,
                                seed: int = 0) -> torch.Tensor:
    """[n] composition scores of pairs of independent random matrices shaped like a head's: each
    [d_model, d_model] of rank d_head (a Gaussian [d_model, d_head] times a Gaussian [d_head, d_model]).

    What a score of an unrelated pair looks like: a real pair means something only above this."""
    if not 1 <= d_head <= d_model or n < 2:
        raise ValueError(f"need 1 <= d_head <= d_model and n >= 2, got d_model={d_model}, d_head={d_head}, "
                         f"n={n}")
    gen = torch.Generator().manual_seed(seed)

    def low_rank() -> torch.Tensor:
        return torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_head, d_model, generator=gen)

    return torch.stack([composition_score(low_rank(), low_rank(), kind) for _ in range(n)])


@contextmanager
def zero_head(model: Transformer, layer: int, head: int) -> Iterator[None]:
    """Inside the block, head `head` of block `layer` writes nothing: its slice of the output projection's
    input (the head's z, the attention-weighted values) is zeroed in every forward pass."""
    attn = model.blocks[layer].attn
    if not 0 <= head < attn.n_head:
        raise ValueError(f"head={head}, but block {layer} has {attn.n_head} heads")
    dh = attn.d_head

    def zero(_module, inputs):
        z = inputs[0].clone()
        z[..., head * dh:(head + 1) * dh] = 0
        return (z,)

    handle = attn.o_proj.register_forward_pre_hook(zero)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def ablated_induction_scores(model: Transformer, tokens: torch.Tensor, *, src_layer: int = 0,
                             dst_layer: int = 1) -> torch.Tensor:
    """[n_head of src_layer, n_head of dst_layer]: each later head's induction score on `tokens` (repeated
    tokens, see `tinylib.interp.attention.repeated_tokens`) with one earlier head zero-ablated per row.

    The causal test of K-composition: compare row i with the unablated scores (`scores_from_patterns`)."""
    if not 0 <= src_layer < dst_layer < model.cfg.n_layer:
        raise ValueError(f"need 0 <= src_layer < dst_layer < n_layer={model.cfg.n_layer}, got "
                         f"src_layer={src_layer}, dst_layer={dst_layer}")
    rows = []
    for head in range(model.blocks[src_layer].attn.n_head):
        with zero_head(model, src_layer, head):
            _, patterns = model.forward_with_patterns(tokens)
        rows.append(scores_from_patterns(patterns[dst_layer][:, None], tokens)["induction"][0])
    return torch.stack(rows)


@torch.no_grad()
def full_ov_circuit(model: Transformer, layer: int, head: int,
                    ids: torch.Tensor | None = None) -> torch.Tensor:
    """W_E[ids] W_OV W_U[:, ids] [len(ids), len(ids)]: token attended to (row) -> logit raised (column).

    The unembedding folds the final norm's gain in; `ids` (default: every token) picks rows and columns."""
    _, w_ov = head_matrices(model, layer)
    ids = torch.arange(model.cfg.vocab_size) if ids is None else torch.as_tensor(ids)
    w_e = model.dense_embedding().detach().float()[ids]
    w_u = (_unembedding(model)[ids] * _gain(model.norm_f)).T  # [d, n]
    return w_e @ w_ov[head] @ w_u


def copying_accuracy(circuit: torch.Tensor) -> float:
    """Fraction of rows whose largest entry is on the diagonal: the head raises the token it attends to
    above every other token."""
    return float((circuit.argmax(-1) == torch.arange(circuit.shape[0])).float().mean())


@torch.no_grad()
def head_direct_logits(model: Transformer, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """[B, T, vocab]: the logits one head's output alone writes at each position, on real activations.

    The head's output (its slice of o_proj applied to its z) goes through the final norm's linear part (the
    centring of a LayerNorm and the gain; the division by the scale is left out, it does not change which
    token ranks first) and the unembedding. Unlike `full_ov_circuit`, the input is the real residual stream,
    earlier heads' outputs included (V-composition)."""
    attn = model.blocks[layer].attn
    captured: dict[str, torch.Tensor] = {}
    hook = attn.o_proj.register_forward_hook(lambda _m, inputs, _out: captured.setdefault("z", inputs[0]))
    try:
        model(tokens)
    finally:
        hook.remove()
    dh = attn.d_head
    z = captured["z"].float()[..., head * dh:(head + 1) * dh]
    out = z @ attn.o_proj.weight.float()[:, head * dh:(head + 1) * dh].T  # [B, T, d_model]
    if model.cfg.norm == "layernorm":
        out = out - out.mean(-1, keepdim=True)
    return (out * _gain(model.norm_f)) @ _unembedding(model).T


def copying_rate(model: Transformer, tokens: torch.Tensor, layer: int, head: int,
                 positions: slice = slice(None)) -> float:
    """Fraction of `positions` where the head's own logits rank the true next token first (on repeated
    tokens: does the head write the token it attends to?)."""
    logits = head_direct_logits(model, tokens, layer, head)[:, :-1][:, positions]
    return float((logits.argmax(-1) == tokens[:, 1:][:, positions]).float().mean())
