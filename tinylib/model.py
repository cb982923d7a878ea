"""The Transformer: one code path for GPT-style and LLaMA-style models.

Reads top to bottom like the architecture diagram: norm, rotary embedding, attention, MLP, block, model.
The config switches the family (see `tinylib.config`); parameter names follow transformers' Llama naming
(`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) and RoPE uses the same
"rotate half" pairing as `LlamaForCausalLM`, so exporting to transformers is a rename (and, for GPT-2's
Conv1D, a transpose).

`forward` always returns (logits, loss). Attention is computed one of two ways, chosen at run time and never
saved: `attn_impl="sdpa"` calls `scaled_dot_product_attention` (Flash Attention on CUDA), `"eager"` writes out
softmax(q k^T / sqrt(d)) (what torch.compile fuses best on CPUs, and what `forward_with_patterns` uses to hand
the patterns to teaching and interpretability code). Both give the same outputs. A `KVCache`
(`tinylib.kvcache`) makes generation cost O(new tokens); the model writes into it, the engine owns it.
The loss (chunked, optionally soft-capped) is in `tinylib.loss`.

The architecture-lab switches live in this same code path (see `tinylib.config.ModelConfig`): a sliding window
is a banded mask (and a cache of W slots), factorized embeddings are `tok_emb` [vocab, r] then `emb_proj`
[r -> d] with the LM head reading back through both, `qk_norm` adds `q_norm`/`k_norm`, `mlp="relu2"` squares a
ReLU, `logit_softcap` squashes the logits, `zero_init` starts the residual projections at zero.

`build_model` builds the model a training run trains. What it leaves to others: the config and presets
(`tinylib.config`), the loss (`tinylib.loss`), the cache's slots (`tinylib.kvcache`), sampling
(`tinylib.engine`), checkpoint files (`tinylib.checkpoint`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylib.config import ModelConfig, TrainConfig
from tinylib.kvcache import KVCache
from tinylib.loss import linear_cross_entropy, softcap


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 for stability under bf16 autocast."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf).to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(d_head: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_len, d_head] for the rotate-half convention (dims i and i + d_head/2 form a pair)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by the angles of its positions (cos/sin [T, D])."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)  # in x's precision, as transformers' Llama does


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[T, S] bool, True where the query at q_pos[i] may see the key at k_pos[j]: causal, inside the window
    (itself and the window - 1 positions before it), and not an empty cache slot (-1)."""
    rel = q_pos[:, None] - k_pos[None, :]
    allowed = (rel >= 0) & (k_pos >= 0)[None, :]
    return allowed & (rel < window) if window is not None else allowed


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head = cfg.n_head, cfg.n_kv_head, cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.d_head, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.d_head, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.d_head, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.d_head, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attn_dropout
        self.use_rope, self.qk_norm = cfg.pos == "rope", cfg.qk_norm
        if cfg.qk_norm:  # per head, before RoPE (as OLMo 2 / Qwen 3): q.k can no longer grow without bound
            self.q_norm, self.k_norm = RMSNorm(cfg.d_head, cfg.norm_eps), RMSNorm(cfg.d_head, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None,
                layer: int, mask: torch.Tensor | None, eager: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`mask` [T, S] says which keys each query sees; None is plain causal attention (or, for one new
        token, every cached key)."""
        B, T, _ = x.shape
        # One matmul for q, k and v (the same math as three, but a bigger, faster matmul); weights stay
        # separate so that they map one to one onto transformers' q_proj/k_proj/v_proj. Swapped-in layers
        # (tinylib.fp8's Float8Linear) run their own forward instead.
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if type(self.q_proj) is nn.Linear:
            weight = torch.cat([p.weight for p in projs])
            bias = torch.cat([p.bias for p in projs]) if self.q_proj.bias is not None else None
            q, k, v = F.linear(x, weight, bias).split([p.out_features for p in projs], dim=-1)
        else:
            q, k, v = (p(x) for p in projs)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        S = k.shape[2]
        if eager:
            if self.n_kv_head != self.n_head:
                rep = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            if mask is not None or T > 1:
                allowed = (mask if mask is not None
                           else torch.ones(T, S, dtype=torch.bool, device=x.device).tril())
                scores = scores.masked_fill(~allowed, float("-inf"))
            pattern = scores.float().softmax(dim=-1).type_as(q)
            y = F.dropout(pattern, self.dropout, self.training) @ v
        else:
            pattern = None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=(mask is None and T > 1),
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.d_head)
        return self.o_proj(y), pattern


class MLP(nn.Module):
    """GELU: down(gelu(up x)). SwiGLU: down(silu(gate x) * up x). ReLU squared: down(relu(up x)^2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu and type(self.up_proj) is not nn.Linear:  # swapped-in layers: see Attention
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.swiglu:  # gate and up as one matmul, as with q/k/v above
            bias = (torch.cat([self.gate_proj.bias, self.up_proj.bias])
                    if self.up_proj.bias is not None else None)
            gate, up = F.linear(
                x, torch.cat([self.gate_proj.weight, self.up_proj.weight]), bias
            ).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        if self.kind == "relu2":
            return self.down_proj(F.relu(self.up_proj(x)).square())
        return self.down_proj(gelu_tanh(self.up_proj(x)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(z)).

    Eagerly that is one aten kernel; under torch.compile it is written as the identical x sigmoid(2z), which
    inductor fuses into a loop ~2.5x faster than its tanh one on CPUs.
    """
    if not torch.compiler.is_compiling():
        return F.gelu(x, approximate="tanh")
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.sigmoid(1.5957691216057308 * (xf + 0.044715 * xf * xf * xf))).to(x.dtype)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer, mask, eager):
        a, pattern = self.attn(self.attn_norm(x), rope, cache, layer, mask, eager)
        x = x + self.dropout(a)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, pattern


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_impl: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        # "sdpa" or "eager": a run-time choice (same outputs), not part of the config
        self.attn_impl = attn_impl
        # factorized (embed_rank r): ids -> r numbers -> d_model; the LM head reads back through both factors
        r = cfg.embed_rank or cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, r)
        self.emb_proj = nn.Linear(r, cfg.d_model, bias=False) if cfg.embed_rank else None
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(r, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.d_head, cfg.max_seq_len, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer) (or zero with
        `zero_init`), zero biases; `emb_proj` N(0, 1/r), so that the product of the factors is N(0, 0.02)."""
        if self.cfg.pos == "rope":  # buffers too, so a model built on the meta device can be materialised
            self.rope_cos, self.rope_sin = (t.to(self.rope_cos.device) for t in rope_tables(
                self.cfg.d_head, self.cfg.max_seq_len, self.cfg.rope_theta))
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")) and self.cfg.zero_init:
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, residual_std)
            elif name == "emb_proj.weight":
                nn.init.normal_(p, 0.0, 1 / math.sqrt(self.cfg.embed_rank))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        if value not in ("sdpa", "eager"):
            raise ValueError(f"attn_impl={value!r}; expected 'sdpa' (fused kernel) or 'eager' (written out)")
        self._attn_impl = value

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits [B, T, vocab], mean cross-entropy or None); targets of -1 are ignored.

        Training passes `return_logits=False`: the loss is then computed in chunks without ever holding the
        full logits (see `linear_cross_entropy`), and the logits returned are None.
        With `cache`, idx holds the next tokens after `cache.pos` positions and the cache advances by T.
        """
        x, _ = self._trunk(idx, cache, eager=self.attn_impl == "eager")
        if targets is not None and not return_logits:
            h = x if self.emb_proj is None else x @ self.emb_proj.weight
            return None, linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.lm_head.weight,
                                              targets.reshape(-1), cap=self.cfg.logit_softcap)
        logits = self.unembed(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def forward_with_patterns(self, idx: torch.Tensor, *, cache: KVCache | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, per-layer attention patterns [B, n_head, T, S]):
        the eager path, whatever `attn_impl` says."""
        x, patterns = self._trunk(idx, cache, eager=True)
        return self.unembed(x), patterns

    def dense_embedding(self) -> torch.Tensor:
        """The [vocab, d_model] embedding the factors multiply out to (what exports write); the plain one
        without embed_rank."""
        w = self.tok_emb.weight
        return w if self.emb_proj is None else w @ self.emb_proj.weight.T

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the final residual stream (after norm_f): through the factors, then the soft-cap."""
        h = x if self.emb_proj is None else x @ self.emb_proj.weight
        return softcap(self.lm_head(h), self.cfg.logit_softcap)

    def _trunk(self, idx: torch.Tensor, cache: KVCache | None, eager: bool) -> tuple[torch.Tensor, list]:
        """Embeddings, the blocks and the final norm:
        the residual stream the LM head reads, and the patterns."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} positions exceeds the model's context of "
                             f"{self.cfg.max_seq_len}; crop the input or generate with a sliding window")
        x = self.tok_emb(idx) if self.emb_proj is None else self.emb_proj(self.tok_emb(idx))
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        x = self.drop(x)
        mask = self._mask(start, T, cache, idx.device)
        patterns = []
        for i, block in enumerate(self.blocks):
            x, pattern = block(x, rope, cache, i, mask, eager)
            patterns.append(pattern)
        if cache is not None:
            cache.pos += T
        return self.norm_f(x), patterns

    def _mask(self, start: int, T: int, cache: KVCache | None, device: torch.device) -> torch.Tensor | None:
        """The [T, S] mask all layers share, or None when plain causal attention (or, for one new token
        without a window, every cached key) is exactly right, so that SDPA can take its fastest path."""
        k_pos = cache.key_positions(T) if cache is not None else torch.arange(T, device=device)
        W, S = self.cfg.sliding_window, len(k_pos)
        if (S == T and (W is None or T <= W)) or (T == 1 and W is None):
            return None
        return attention_mask(torch.arange(start, start + T, device=device), k_pos, W)

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_len, device=p.device, dtype=p.dtype)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters as stored (a tied matrix counted once);
        non_embedding drops embeddings and the LM head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.emb_proj.weight.numel() if self.emb_proj else 0)
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n


def build_model(cfg: TrainConfig, vocab_size: int, attn_impl: str = "sdpa") -> Transformer:
    """The model a training run `cfg` trains (`TrainConfig.model_config`), freshly initialised."""
    return Transformer(cfg.model_config(vocab_size), attn_impl)
