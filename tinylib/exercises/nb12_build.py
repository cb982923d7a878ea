"""Exercises of notebook 12 (build it yourself): the tokenizer trainer, every piece of the model, the training
step and the sampler, each written by the learner and checked against tinylib's own.

The pieces are functions of tensors and of weight dicts named as tinylib's `Transformer.named_parameters()`
(`tok_emb.weight`, `blocks.0.attn.q_proj.weight`, ...), so the learner's model loads tinylib's weights with no
renaming and `tinylib.exercises.assembly` can compare it module by module. The references the checks compare
with are tinylib's (`tinylib.bpe.train_bpe`, the tiktoken encoder, `tinylib.model`'s modules,
`tinylib.train.train_step`, `tinylib.engine`); the solutions a learner is shown are written out here, in
plain PyTorch with einops where shapes are the lesson. Composite solutions (`attention`, `block`, `forward`,
`train_step`, `generate`) call the other pieces through this module's names, so a test can swap one piece for
a wrong one and watch the assembly checks name it.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import regex
import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat

from tinylib.bpe import SPLIT_PATTERN, train_bpe
from tinylib.config import ModelConfig
from tinylib.engine import SamplingConfig, choose_next, sample_tokens
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.model import MLP, Attention, RMSNorm, Transformer, apply_rope, rope_tables
from tinylib.tokenizer import from_ranks
from tinylib.train import train_step as tinylib_train_step

# what the notebook imports from here; the exercises register themselves
__all__ = ["check", "solution", "sub", "linear", "merge_ids", "merges_of", "small_config"]

NB = "12_build_it_yourself"


# --- glue the notebook shares with the solutions (not exercises) --------------------------------------------

def sub(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix`, with it stripped: sub(params, "blocks.0.attn.")["q_proj.weight"]."""
    return {name[len(prefix):]: w for name, w in params.items() if name.startswith(prefix)}


def linear(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """x @ W^T (+ b): `p[name + ".weight"]` is [out, in], as nn.Linear stores it."""
    y = x @ p[f"{name}.weight"].T
    bias = p.get(f"{name}.bias")
    return y if bias is None else y + bias


def norm(x: torch.Tensor, p: dict[str, torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """The config's norm, with weights `p` ({"weight"} or {"weight", "bias"})."""
    if cfg.norm == "layernorm":
        return layer_norm(x, p["weight"], p.get("bias"), cfg.norm_eps)
    return rms_norm(x, p["weight"], cfg.norm_eps)


def mlp(x: torch.Tensor, p: dict[str, torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """The config's MLP, with weights `p` (up_proj, down_proj and, for SwiGLU, gate_proj)."""
    return mlp_swiglu(x, p) if cfg.mlp == "swiglu" else mlp_gelu(x, p)


def small_config(style: str = "llama", **overrides) -> ModelConfig:
    """A model small enough to check in milliseconds: 2 layers, 4 heads (2 KV heads for LLaMA), d_model 32."""
    shape = dict(vocab_size=64, n_layer=2, n_head=4, d_model=32, d_mlp=48, max_seq_len=32)
    family = (dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_head=2) if style == "llama"
              else dict(norm="layernorm", mlp="gelu", pos="learned", bias=True))
    return ModelConfig(**{**shape, **family, **overrides})


def _random_params(cfg: ModelConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """tinylib's initial weights for `cfg`, with norm weights and biases moved off 1 and 0 (so a piece that
    forgets them is caught)."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        model = Transformer(cfg)
    params = {}
    for name, w in model.named_parameters():
        w = w.detach().clone()
        if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            w = 1 + 0.2 * torch.randn(w.shape, generator=gen)
        elif name.endswith("bias"):
            w = 0.1 * torch.randn(w.shape, generator=gen)
        params[name] = w
    return params


def tinylib_model(cfg: ModelConfig, params: dict[str, torch.Tensor]) -> Transformer:
    """tinylib's Transformer holding `params` (the tied LM head follows tok_emb), in eval mode."""
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(params, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"weights do not fit {cfg}: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _load(module: torch.nn.Module, p: dict[str, torch.Tensor]) -> torch.nn.Module:
    module.load_state_dict(p)
    return module.eval()


# ============================================================================================================
# 1. The tokenizer trainer
# ============================================================================================================

_WORDS = ("Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily.", "She", "loved",
          "to", "play", "in", "the", "park", "with", "her", "dog", "Max.", "They", "were", "happy", "and",
          "went", "home,", "\"Hello!\"", "said", "Tom.", "café", "42", "ball\n\n", "it's", "they're")


def _text(gen: torch.Generator, n_words: int) -> str:
    return " ".join(_WORDS[i] for i in torch.randint(0, len(_WORDS), (n_words,), generator=gen).tolist())


def _words_of(texts: list[str]) -> dict[tuple[int, ...], int]:
    words: Counter = Counter()
    for text in texts:
        for chunk in regex.findall(SPLIT_PATTERN, text):
            words[tuple(chunk.encode("utf-8"))] += 1
    return dict(words)


# --- pair counts --------------------------------------------------------------------------------------------

def pair_counts(words: dict[tuple[int, ...], int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair of ids occurs, over all pre-split chunks (`words`: ids -> count)."""
    counts: dict[tuple[int, int], int] = {}
    for ids, n in words.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + n  # a chunk seen n times holds each of its pairs n times
    return counts


def _pair_counts_unweighted(words):
    counts: dict = {}
    for ids in words:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def _pair_counts_once_per_chunk(words):
    counts: dict = {}
    for ids, n in words.items():
        for pair in set(zip(ids, ids[1:])):  # "aaa" holds (a, a) twice
            counts[pair] = counts.get(pair, 0) + n
    return counts


def _pair_cases(gen: torch.Generator):
    yield ({(97, 97, 97): 2, (98, 97): 1},), {}
    yield ({},), {}
    for n in (5, 20, 60):
        yield (_words_of([_text(gen, n)]),), {}


register(Exercise(
    "pair_counts", "Counting adjacent pairs", NB, difficulty=1, importance=4, minutes=5,
    reference=pair_counts, cases=_pair_cases, wrong=(_pair_counts_unweighted, _pair_counts_once_per_chunk)))


# --- training the merges ------------------------------------------------------------------------------------

def merge_ids(ids: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Every non-overlapping occurrence of `pair` in `ids`, left to right, becomes `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def bpe_train(texts: list[str], vocab_size: int) -> list[tuple[int, int]]:
    """The merges of a byte-level BPE of `vocab_size` ids (256 bytes, the merges, one special id last):
    merge i makes id 256 + i. Ties in count go to the smallest pair (rustbpe's rule)."""
    words = _words_of(texts)  # pre-split with the regex: merges never cross a chunk boundary
    merges = []
    for new_id in range(256, vocab_size - 1):
        counts = pair_counts(words)
        if not counts:
            break
        # the most frequent pair; among equal counts the smallest
        best = max(counts, key=lambda pair: (counts[pair], -pair[0], -pair[1]))
        merges.append(best)
        words = {merge_ids(ids, best, new_id): n for ids, n in words.items()}
    return merges


def merges_of(tok) -> list[tuple[int, int]]:
    """The merges of a byte-level BPE tokenizer, in rank order: token 256 + i is the pair merges[i].

    A token's pair is what BPE makes of its bytes using only the merges before it (two tokens, always)."""
    merges: list[tuple[int, int]] = []
    for token in range(256, tok.vocab_size - 1):
        parts = bpe_encode_chunk(list(tok.token_bytes(token)), merges)
        if len(parts) != 2:
            raise ValueError(f"token {token} ({tok.token_bytes(token)!r}) is not one merge of earlier tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe_train_rustbpe(texts: list[str], vocab_size: int) -> list[tuple[int, int]]:
    return merges_of(train_bpe(texts, vocab_size))


def _bpe_train_no_presplit(texts, vocab_size):
    words = Counter(tuple(t.encode("utf-8")) for t in texts)
    merges = []
    for new_id in range(256, vocab_size - 1):
        counts = pair_counts(words)
        best = max(counts, key=lambda pair: (counts[pair], -pair[0], -pair[1]))
        merges.append(best)
        words = {merge_ids(ids, best, new_id): n for ids, n in words.items()}
    return merges


def _bpe_train_ties_largest(texts, vocab_size):
    words = _words_of(texts)
    merges = []
    for new_id in range(256, vocab_size - 1):
        counts = pair_counts(words)
        best = max(counts, key=lambda pair: (counts[pair], pair))
        merges.append(best)
        words = {merge_ids(ids, best, new_id): n for ids, n in words.items()}
    return merges


def _bpe_train_cases(gen: torch.Generator):
    for n_texts, vocab in ((3, 270), (8, 300), (20, 330)):
        yield ([_text(gen, 40) for _ in range(n_texts)], vocab), {}


register(Exercise(
    "bpe_train", "Training BPE: merge the most frequent pair, repeat", NB, difficulty=3, importance=5,
    minutes=25, reference=_bpe_train_rustbpe, shown=bpe_train, cases=_bpe_train_cases,
    wrong=(_bpe_train_no_presplit, _bpe_train_ties_largest)))


# --- encoding -----------------------------------------------------------------------------------------------

def bpe_encode_chunk(ids: list[int], merges: list[tuple[int, int]]) -> list[int]:
    """BPE on one chunk: apply the earliest-learned merge present, until none applies."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, math.inf))
        if pair not in rank:
            break
        ids = list(merge_ids(tuple(ids), pair, 256 + rank[pair]))
    return ids


def bpe_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """The ids of `text`: pre-split with the regex, then BPE on each chunk's UTF-8 bytes."""
    out = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        out.extend(bpe_encode_chunk(list(chunk.encode("utf-8")), merges))
    return out


def _tiktoken_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    tokens = {i: bytes([i]) for i in range(256)}
    for i, (a, b) in enumerate(merges):
        tokens[256 + i] = tokens[a] + tokens[b]
    ranks = {token: i for i, token in tokens.items()}
    return from_ranks(ranks, "learner", SPLIT_PATTERN).encode(text)


def _encode_first_pair(text, merges):
    rank = {pair: i for i, pair in enumerate(merges)}
    out = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        ids = list(chunk.encode("utf-8"))
        while True:  # merges the leftmost mergeable pair, whatever its rank
            pair = next((p for p in zip(ids, ids[1:]) if p in rank), None)
            if pair is None:
                break
            ids = list(merge_ids(tuple(ids), pair, 256 + rank[pair]))
        out.extend(ids)
    return out


def _encode_latest_merge_first(text, merges):
    rank = {pair: i for i, pair in enumerate(merges)}
    out = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        ids = list(chunk.encode("utf-8"))
        while True:  # the most recently learned merge first: backwards
            present = [p for p in zip(ids, ids[1:]) if p in rank]
            if not present:
                break
            pair = max(present, key=rank.get)
            ids = list(merge_ids(tuple(ids), pair, 256 + rank[pair]))
        out.extend(ids)
    return out


def _encode_cases(gen: torch.Generator):
    for n_words, vocab in ((30, 290), (60, 320), (120, 350)):
        corpus = [_text(gen, n_words) for _ in range(6)]
        merges = _bpe_train_rustbpe(corpus, vocab)
        for text in (_text(gen, n_words // 3), "Lily's dog, Max, said \"Hello!\" 12345 times.\n\nThe end"):
            yield (text, merges), {}


register(Exercise(
    "bpe_encode", "Encoding with learned merges", NB, difficulty=2, importance=4, minutes=15,
    reference=_tiktoken_encode, shown=bpe_encode, cases=_encode_cases,
    wrong=(_encode_first_pair, _encode_latest_merge_first)))


# ============================================================================================================
# 2. The model
# ============================================================================================================

def _x_cases(gen: torch.Generator, d: int = 32):
    # 0.02: a fresh model's residual stream, where eps matters
    for i, scale in enumerate((1.0, 0.02, 3.0, 0.01)):
        yield torch.randn(1 + i % 2, 3 + i, d, generator=gen) * scale + 0.1 * scale * i


# --- LayerNorm ----------------------------------------------------------------------------------------------

def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise each position over d_model to mean 0, variance 1; then scale by `weight`, shift by `bias`."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # the biased variance (divide by d, not d - 1)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight if bias is None else y * weight + bias


def _layer_norm_ref(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _layer_norm_unbiased(x, weight, bias, eps):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _layer_norm_eps_outside(x, weight, bias, eps):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / (torch.sqrt(var) + eps) * weight + bias


def _ln_cases(gen: torch.Generator):
    for x in _x_cases(gen):
        d = x.shape[-1]
        yield (x, 1 + 0.2 * torch.randn(d, generator=gen), 0.1 * torch.randn(d, generator=gen), 1e-5), {}


register(Exercise(
    "layer_norm", "LayerNorm", NB, difficulty=1, importance=4, minutes=5, reference=_layer_norm_ref,
    shown=layer_norm, cases=_ln_cases, wrong=(_layer_norm_unbiased, _layer_norm_eps_outside)))


# --- RMSNorm ------------------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide each position by its root mean square over d_model (no centring), then scale by `weight`."""
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x / rms * weight


def _rms_norm_ref(x, weight, eps):
    module = RMSNorm(x.shape[-1], eps)
    return _load(module, {"weight": weight})(x)


def _rms_norm_centred(x, weight, eps):
    return layer_norm(x, weight, None, eps)


def _rms_norm_no_eps(x, weight, eps):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * weight


def _rms_cases(gen: torch.Generator):
    for x in _x_cases(gen):
        yield (x, 1 + 0.2 * torch.randn(x.shape[-1], generator=gen), 1e-5), {}


register(Exercise(
    "rms_norm", "RMSNorm", NB, difficulty=1, importance=4, minutes=5, reference=_rms_norm_ref, shown=rms_norm,
    cases=_rms_cases, wrong=(_rms_norm_centred, _rms_norm_no_eps)))


# --- RoPE ---------------------------------------------------------------------------------------------------

def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair of dimensions (i, i + d/2) of x [batch, head, seq, d] by positions[t] theta^(-2i/d).
    """
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]: pair i turns this fast
    angles = einsum(positions.double(), freqs, "t, i -> t i")  # [seq, d/2]
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]  # pair i is (x1[..., i], x2[..., i])
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # a 2-D rotation of every pair


def _rope_ref(x, positions, theta):
    cos, sin = rope_tables(x.shape[-1], int(positions.max()) + 1, theta)
    return apply_rope(x, cos[positions], sin[positions])


def _rope_interleaved(x, positions, theta):
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(positions.double(), freqs)
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x[..., 0::2], x[..., 1::2]  # pairs (2i, 2i + 1): GPT-J's convention, not LLaMA's
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def _rope_half_frequency(x, positions, theta):
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) / d)  # theta^(-i/d): forgot the 2
    angles = torch.outer(positions.double(), freqs)
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _rope_backwards(x, positions, theta):
    return rope(x, -positions, theta)


def _rope_cases(gen: torch.Generator):
    for start, T, d, theta in ((0, 5, 8, 1e4), (3, 4, 16, 1e4), (0, 12, 32, 500.0), (100, 3, 64, 1e4)):
        yield (torch.randn(2, 3, T, d, generator=gen), torch.arange(start, start + T), theta), {}


register(Exercise(
    "rope", "Rotary position embeddings (RoPE)", NB, difficulty=3, importance=4, minutes=20,
    reference=_rope_ref, shown=rope, cases=_rope_cases,
    wrong=(_rope_interleaved, _rope_half_frequency, _rope_backwards)))


# --- embedding ----------------------------------------------------------------------------------------------

def embed(idx: torch.Tensor, params: dict[str, torch.Tensor], cfg: ModelConfig,
          start: int = 0) -> torch.Tensor:
    """The residual stream's start [batch, seq, d_model]: each id's row of the token embedding, plus (learned
    positions) the rows of positions start .. start + seq - 1."""
    x = params["tok_emb.weight"][idx]  # [batch, seq] ids index rows: [batch, seq, d_model]
    if cfg.pos == "learned":
        x = x + params["pos_emb.weight"][start: start + idx.shape[1]]  # broadcast over the batch
    return x


def _embed_ref(idx, params, cfg, start=0):
    model = tinylib_model(cfg, params)
    x = model.tok_emb(idx)
    if cfg.pos == "learned":
        x = x + model.pos_emb(torch.arange(start, start + idx.shape[1]))
    return x


def _embed_positions_from_zero(idx, params, cfg, start=0):
    return embed(idx, params, cfg, 0)


def _embed_no_positions(idx, params, cfg, start=0):
    return params["tok_emb.weight"][idx]


def _embed_cases(gen: torch.Generator):
    for style, start in (("gpt", 0), ("gpt", 5), ("llama", 0), ("gpt", 11)):
        cfg = small_config(style)
        idx = torch.randint(0, cfg.vocab_size, (2, 7), generator=gen)
        yield (idx, _random_params(cfg, gen), cfg, start), {}


register(Exercise(
    "embed", "Token and position embeddings", NB, difficulty=1, importance=4, minutes=5, reference=_embed_ref,
    shown=embed, cases=_embed_cases, wrong=(_embed_positions_from_zero, _embed_no_positions)))


# --- attention ----------------------------------------------------------------------------------------------

def attention(x: torch.Tensor, p: dict[str, torch.Tensor], cfg: ModelConfig, start: int = 0, cache=None,
              layer: int = 0) -> torch.Tensor:
    """Causal self-attention with grouped-query heads: x [batch, seq, d_model] at positions start.. -> same.
    `p` holds q_proj, k_proj, v_proj, o_proj; with a `cache`, keys and values of earlier positions come from
    `cache.update(layer, k, v)`."""
    T = x.shape[1]
    q = rearrange(linear(x, p, "q_proj"), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(linear(x, p, "k_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    v = rearrange(linear(x, p, "v_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    if cfg.pos == "rope":
        positions = torch.arange(start, start + T)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # every key so far: [b, n_kv_head, start + T, d]
    group = cfg.n_head // cfg.n_kv_head  # query heads h*group .. h*group + group - 1 share KV head h
    k = repeat(k, "b kv s d -> b (kv g) s d", g=group)
    v = repeat(v, "b kv s d -> b (kv g) s d", g=group)
    scores = einsum(q, k, "b h t d, b h s d -> b h t s") / math.sqrt(cfg.d_head)
    S = k.shape[2]
    q_pos = torch.arange(start, start + T)
    k_pos = torch.arange(start + T - S, start + T)  # the keys are the last S positions
    scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))  # no peeking ahead
    pattern = scores.softmax(dim=-1)
    z = einsum(pattern, v, "b h t s, b h s d -> b h t d")
    return linear(rearrange(z, "b h t d -> b t (h d)"), p, "o_proj")


def _attention_ref(x, p, cfg, start=0, cache=None, layer=0):
    module = _load(Attention(cfg), p)
    cos, sin = rope_tables(cfg.d_head, cfg.max_seq_len, cfg.rope_theta)
    rope_slice = (cos[start:start + x.shape[1]], sin[start:start + x.shape[1]])
    return module(x, rope_slice, None, layer, None, eager=False)[0]


def _attention_no_mask(x, p, cfg, start=0, cache=None, layer=0):
    T = x.shape[1]
    q = rearrange(linear(x, p, "q_proj"), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(linear(x, p, "k_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    v = rearrange(linear(x, p, "v_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    if cfg.pos == "rope":
        positions = torch.arange(start, start + T)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    group = cfg.n_head // cfg.n_kv_head
    k, v = (repeat(t, "b kv s d -> b (kv g) s d", g=group) for t in (k, v))
    pattern = (einsum(q, k, "b h t d, b h s d -> b h t s") / math.sqrt(cfg.d_head)).softmax(-1)
    return linear(rearrange(pattern @ v, "b h t d -> b t (h d)"), p, "o_proj")


def _attention_groups_interleaved(x, p, cfg, start=0, cache=None, layer=0):
    T = x.shape[1]
    q = rearrange(linear(x, p, "q_proj"), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(linear(x, p, "k_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    v = rearrange(linear(x, p, "v_proj"), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    if cfg.pos == "rope":
        positions = torch.arange(start, start + T)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    group = cfg.n_head // cfg.n_kv_head
    k, v = (repeat(t, "b kv s d -> b (g kv) s d", g=group) for t in (k, v))  # head h gets KV head h % n_kv
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.d_head)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return linear(rearrange(scores.softmax(-1) @ v, "b h t d -> b t (h d)"), p, "o_proj")


def _attention_cases(gen: torch.Generator):
    for style, kv, start, T in (("llama", 2, 0, 6), ("gpt", None, 0, 5), ("llama", 1, 4, 7),
                                ("llama", 4, 0, 3)):
        cfg = small_config(style, n_kv_head=kv) if kv else small_config(style)
        p = sub(_random_params(cfg, gen), "blocks.0.attn.")
        yield (torch.randn(2, T, cfg.d_model, generator=gen), p, cfg, start), {}


register(Exercise(
    "attention", "Causal attention with grouped-query heads", NB, difficulty=4, importance=5, minutes=30,
    reference=_attention_ref, shown=attention, cases=_attention_cases,
    wrong=(_attention_no_mask, _attention_groups_interleaved)))


# --- MLPs ---------------------------------------------------------------------------------------------------

def mlp_gelu(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """GPT-2's MLP: up-project, GELU (the tanh approximation), down-project."""
    h = linear(x, p, "up_proj")
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return linear(h, p, "down_proj")


def mlp_swiglu(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """LLaMA's MLP: a SiLU-gated product of two up-projections, then down."""
    gate = linear(x, p, "gate_proj")
    return linear(gate * torch.sigmoid(gate) * linear(x, p, "up_proj"), p, "down_proj")


def _mlp_ref(x, p):
    cfg = small_config("llama" if "gate_proj.weight" in p else "gpt", d_model=x.shape[-1],
                       d_mlp=p["up_proj.weight"].shape[0], bias="up_proj.bias" in p, n_head=1, n_kv_head=1)
    return _load(MLP(cfg), p)(x)


def _mlp_gelu_exact(x, p):
    return linear(F.gelu(linear(x, p, "up_proj")), p, "down_proj")


def _mlp_relu(x, p):
    return linear(F.relu(linear(x, p, "up_proj")), p, "down_proj")


def _swiglu_gated_up(x, p):
    return linear(linear(x, p, "gate_proj") * F.silu(linear(x, p, "up_proj")), p, "down_proj")


def _swiglu_gelu(x, p):
    return linear(F.gelu(linear(x, p, "gate_proj")) * linear(x, p, "up_proj"), p, "down_proj")


def _mlp_cases(gen: torch.Generator, style: str):
    for i in range(4):
        cfg = small_config(style)
        p = sub(_random_params(cfg, gen), "blocks.0.mlp.")
        p = {k: w * 15 if k.endswith("weight") else w for k, w in p.items()}  # pre-activations of order 1
        yield (torch.randn(1 + i % 2, 4, cfg.d_model, generator=gen), p), {}


register(Exercise(
    "mlp_gelu", "The GELU MLP", NB, difficulty=1, importance=3, minutes=5, reference=_mlp_ref, shown=mlp_gelu,
    cases=lambda g: _mlp_cases(g, "gpt"), wrong=(_mlp_gelu_exact, _mlp_relu)))

register(Exercise(
    "mlp_swiglu", "The SwiGLU MLP", NB, difficulty=2, importance=4, minutes=5, reference=_mlp_ref,
    shown=mlp_swiglu, cases=lambda g: _mlp_cases(g, "llama"), wrong=(_swiglu_gated_up, _swiglu_gelu)))


# --- a block ------------------------------------------------------------------------------------------------

def block(x: torch.Tensor, p: dict[str, torch.Tensor], cfg: ModelConfig, start: int = 0, cache=None,
          layer: int = 0) -> torch.Tensor:
    """A pre-norm residual block: attention reads a normed copy of the stream and adds to it; then the MLP."""
    x = x + attention(norm(x, sub(p, "attn_norm."), cfg), sub(p, "attn."), cfg, start, cache, layer)
    return x + mlp(norm(x, sub(p, "mlp_norm."), cfg), sub(p, "mlp."), cfg)


def _block_ref(x, p, cfg, start=0, cache=None, layer=0):
    model = tinylib_model(cfg, {**{f"blocks.0.{k}": w for k, w in p.items()},
                                **{k: w for k, w in _random_params(cfg, torch.Generator()).items()
                                   if not k.startswith("blocks.0.")}})
    cos, sin = rope_tables(cfg.d_head, cfg.max_seq_len, cfg.rope_theta)
    T = x.shape[1]
    return model.blocks[0](x, (cos[start:start + T], sin[start:start + T]), None, layer, None, False)[0]


def _block_post_norm(x, p, cfg, start=0, cache=None, layer=0):
    x = norm(x + attention(x, sub(p, "attn."), cfg, start), sub(p, "attn_norm."), cfg)
    return norm(x + mlp(x, sub(p, "mlp."), cfg), sub(p, "mlp_norm."), cfg)


def _block_parallel(x, p, cfg, start=0, cache=None, layer=0):
    a = attention(norm(x, sub(p, "attn_norm."), cfg), sub(p, "attn."), cfg, start)
    return x + a + mlp(norm(x, sub(p, "mlp_norm."), cfg), sub(p, "mlp."), cfg)  # MLP reads x, not x + a


def _block_cases(gen: torch.Generator):
    for style in ("llama", "gpt", "llama"):
        cfg = small_config(style)
        p = sub(_random_params(cfg, gen), "blocks.0.")
        yield (torch.randn(2, 5, cfg.d_model, generator=gen), p, cfg), {}


register(Exercise(
    "block", "A transformer block", NB, difficulty=2, importance=5, minutes=10, reference=_block_ref,
    shown=block, cases=_block_cases, wrong=(_block_post_norm, _block_parallel)))


# --- the full forward ---------------------------------------------------------------------------------------

def forward(params: dict[str, torch.Tensor], idx: torch.Tensor, cfg: ModelConfig, cache=None) -> torch.Tensor:
    """Logits [batch, seq, vocab] for ids [batch, seq]; with a cache, idx continues after cache.pos."""
    start = cache.pos if cache is not None else 0
    x = embed(idx, params, cfg, start)
    for layer in range(cfg.n_layer):
        x = block(x, sub(params, f"blocks.{layer}."), cfg, start, cache, layer)
    if cache is not None:
        cache.pos += idx.shape[1]
    x = norm(x, sub(params, "norm_f."), cfg)
    return einsum(x, params["tok_emb.weight"], "b t d, v d -> b t v")  # tied: unembed with the embedding


def _forward_ref(params, idx, cfg, cache=None):
    return tinylib_model(cfg, params)(idx)[0]


def _forward_no_final_norm(params, idx, cfg, cache=None):
    x = embed(idx, params, cfg)
    for layer in range(cfg.n_layer):
        x = block(x, sub(params, f"blocks.{layer}."), cfg)
    return x @ params["tok_emb.weight"].T


def _forward_one_block(params, idx, cfg, cache=None):
    x = block(embed(idx, params, cfg), sub(params, "blocks.0."), cfg)  # the same block every layer
    x = block(x, sub(params, "blocks.0."), cfg)
    return norm(x, sub(params, "norm_f."), cfg) @ params["tok_emb.weight"].T


def _forward_cases(gen: torch.Generator):
    for style in ("llama", "gpt", "llama"):
        cfg = small_config(style)
        yield (_random_params(cfg, gen), torch.randint(0, cfg.vocab_size, (2, 9), generator=gen), cfg), {}


register(Exercise(
    "forward", "The whole forward pass, tied unembedding", NB, difficulty=2, importance=5, minutes=10,
    reference=_forward_ref, shown=forward, cases=_forward_cases,
    wrong=(_forward_no_final_norm, _forward_one_block)))


# ============================================================================================================
# 3. Training
# ============================================================================================================

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over scored positions of -log p(target); a target of -1 is not scored."""
    logits = rearrange(logits, "b t v -> (b t) v").float()
    targets = rearrange(targets, "b t -> (b t)")
    scored = targets != -1
    logprobs = logits[scored] - torch.logsumexp(logits[scored], dim=-1, keepdim=True)  # stable log-softmax
    return -logprobs.gather(-1, targets[scored][:, None]).mean()


def _cross_entropy_ref(logits, targets):
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


def _ce_counts_ignored(logits, targets):
    logits, targets = logits.flatten(0, 1).float(), targets.flatten()
    logprobs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]
    return -(logprobs * (targets != -1)).sum() / len(targets)  # divides by every position


def _ce_naive_softmax(logits, targets):
    logits, targets = logits.flatten(0, 1).float(), targets.flatten()
    keep = targets != -1
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)  # overflows for large logits
    return -probs[keep].gather(-1, targets[keep][:, None]).log().mean()


def _ce_cases(gen: torch.Generator):
    for i, scale in enumerate((1.0, 5.0, 100.0)):
        logits = torch.randn(2, 6, 11, generator=gen) * scale
        targets = torch.randint(0, 11, (2, 6), generator=gen)
        if i != 0:
            targets[0, :2] = -1
        yield (logits, targets), {}


register(Exercise(
    "cross_entropy", "The loss: cross-entropy", NB, difficulty=2, importance=5, minutes=10,
    reference=_cross_entropy_ref, shown=cross_entropy, cases=_ce_cases,
    wrong=(_ce_counts_ignored, _ce_naive_softmax)))


# --- gradient clipping --------------------------------------------------------------------------------------

def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the norm of all gradients together, the gradients scaled down to that norm if it exceeds max_norm)."""
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()  # one vector: every parameter
    scale = min(1.0, max_norm / (float(total) + 1e-6))  # never scaled up
    return total, [g * scale for g in grads]


def _clip_ref(grads, max_norm):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return total, [p.grad for p in params]


def _clip_each(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return total, [g * min(1.0, max_norm / (float(g.norm()) + 1e-6)) for g in grads]


def _clip_always(grads, max_norm):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return total, [g * max_norm / (total + 1e-6) for g in grads]


def _clip_cases(gen: torch.Generator):
    for max_norm, scale in ((1.0, 1.0), (1.0, 0.01), (0.5, 3.0), (10.0, 2.0)):
        grads = [torch.randn(5, 4, generator=gen) * scale, torch.randn(7, generator=gen) * scale]
        yield (grads, max_norm), {}


register(Exercise(
    "clip_grad_norm", "Clipping the gradient norm", NB, difficulty=2, importance=4, minutes=10,
    reference=_clip_ref, shown=clip_grad_norm, cases=_clip_cases, wrong=(_clip_each, _clip_always)))


# --- the training step --------------------------------------------------------------------------------------

def train_step(model, optimizer: torch.optim.Optimizer,
               micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
               grad_clip: float | None = 1.0) -> float:
    """One optimizer step whose gradient is the mean over `micro_batches` ((x, y) pairs): the mean loss."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total = 0.0
    for x, y in micro_batches:
        loss = cross_entropy(model(x), y)
        (loss / len(micro_batches)).backward()  # gradients add up across backward calls: divide to average
        total += loss.item()
    if grad_clip:
        _, clipped = clip_grad_norm([p.grad for p in params], grad_clip)
        for p, g in zip(params, clipped):
            p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # else the next step adds its gradients to these
    return total / len(micro_batches)


ADAMW = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)  # the optimizer both sides of the check use


def _train_case(cfg: ModelConfig, seed: int) -> tuple[dict[str, torch.Tensor], Transformer]:
    """The same initial weights twice: the learner's tensors and tinylib's model."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    params = {name: w.detach().clone().requires_grad_() for name, w in model.named_parameters()}
    return params, model


def _train_step_ref(cfg, seed, steps, grad_clip):

    _, model = _train_case(cfg, seed)
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
    state = SimpleNamespace(model=model, module=model, optimizer=optimizer, step=0, tokens_seen=0)
    losses = [float(tinylib_train_step(state, batches, grad_clip=grad_clip)[0]) for batches in steps]
    return losses, {name: w.detach() for name, w in model.named_parameters()}


def _train_step_harness(fn):
    def run(cfg, seed, steps, grad_clip):
        params, _ = _train_case(cfg, seed)
        optimizer = torch.optim.AdamW(list(params.values()), **ADAMW)
        losses = [float(fn(lambda idx: forward(params, idx, cfg), optimizer, batches, grad_clip))
                  for batches in steps]
        return losses, {name: w.detach() for name, w in params.items()}
    return run


def _step_no_zero_grad(model, optimizer, micro_batches, grad_clip=1.0):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total = 0.0
    for x, y in micro_batches:
        loss = cross_entropy(model(x), y)
        (loss / len(micro_batches)).backward()
        total += loss.item()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return total / len(micro_batches)


def _step_sums_micro_batches(model, optimizer, micro_batches, grad_clip=1.0):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    for x, y in micro_batches:
        loss = cross_entropy(model(x), y)
        loss.backward()  # the gradient of the sum, len(micro_batches) times too large before clipping
        losses.append(loss.item())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    return sum(losses) / len(losses)


def _step_cases(gen: torch.Generator):
    for style, n_micro, clip in (("llama", 2, 1.0), ("gpt", 1, 0.5), ("llama", 3, None)):
        cfg = small_config(style)
        steps = [[(torch.randint(0, cfg.vocab_size, (2, 8), generator=gen),
                   torch.randint(0, cfg.vocab_size, (2, 8), generator=gen)) for _ in range(n_micro)]
                 for _ in range(3)]
        yield (cfg, int(torch.randint(0, 1000, (1,), generator=gen)), steps, clip), {}


register(Exercise(
    "train_step", "The training step: accumulate, clip, step, zero", NB, difficulty=3, importance=5,
    minutes=20, reference=_train_step_ref, shown=train_step, harness=_train_step_harness, cases=_step_cases,
    wrong=(_step_no_zero_grad, _step_sums_micro_batches), atol=2e-5, rtol=1e-4))


# ============================================================================================================
# 4. Sampling
# ============================================================================================================

def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator) -> int:
    """One id from logits [vocab]: greedy at temperature 0, else temperature, top-k, top-p, then one draw."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k and top_k < len(logits):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the ids above already hold top_p of the mass
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(1, generator=generator)  # inverse-CDF sampling: the first id whose cumulative mass > u
    return int(torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(cdf) - 1))


def _sample_ref(logits, temperature, top_k, top_p, seed):
    generator = torch.Generator().manual_seed(seed)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    return [int(choose_next(logits[None], sampling, None, [generator])) for _ in range(6)]


def _sample_harness(fn):
    def run(logits, temperature, top_k, top_p, seed):
        generator = torch.Generator().manual_seed(seed)
        return [int(fn(logits, temperature, top_k, top_p, generator)) for _ in range(6)]
    return run


def _sample_multinomial(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return int(logits.argmax())
    probs = (logits.float() / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))  # the right distribution, other draws


def _sample_temperature_multiplies(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return int(logits.argmax())
    return sample_next(logits * temperature, 1.0, top_k, top_p, generator)


def _sample_cases(gen: torch.Generator):
    for temperature, top_k, top_p in ((1.0, None, None), (0.8, 5, None), (1.2, None, 0.9), (0.0, None, None),
                                      (0.7, 20, 0.8), (1.0, 3, None)):
        yield (torch.randn(50, generator=gen) * 2, temperature, top_k, top_p,
               int(torch.randint(0, 10_000, (1,), generator=gen))), {}


register(Exercise(
    "sample_next", "Sampling one token: temperature, top-k, top-p", NB, difficulty=3, importance=5,
    minutes=20, reference=_sample_ref, shown=sample_next, harness=_sample_harness, cases=_sample_cases,
    wrong=(_sample_multinomial, _sample_temperature_multiplies)))


# --- the KV cache -------------------------------------------------------------------------------------------

class KVCache:
    """Each layer's keys and values so far, [batch, n_kv_head, positions, d_head]; `pos` counts positions."""

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.pos = 0  # advanced by forward, once all layers have seen the new positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' k, v [batch, n_kv_head, new, d_head]; return all of this layer's."""
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)  # dim 2: positions
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]


def _cache_ref(cfg, chunks):
    cache = Transformer(cfg).make_cache(chunks[0][0][0].shape[0])
    out = []
    for per_layer in chunks:
        for layer, (k, v) in enumerate(per_layer):
            out.append(tuple(t.clone() for t in cache.update(layer, k, v)))
        cache.pos += per_layer[0][0].shape[2]
    return out


def _cache_harness(cls):
    def run(cfg, chunks):
        cache = cls(cfg.n_layer)
        out = []
        for per_layer in chunks:
            for layer, (k, v) in enumerate(per_layer):
                out.append(tuple(t.clone() for t in cache.update(layer, k, v)))
            cache.pos += per_layer[0][0].shape[2]
        return out
    return run


class _CacheOnePositionOff(KVCache):
    """Keeps the newest position in place of the one before it: every key after the first chunk is shifted."""

    def update(self, layer, k, v):
        if self.k[layer] is not None:
            self.k[layer], self.v[layer] = self.k[layer][:, :, :-1], self.v[layer][:, :, :-1]
            if self.k[layer].shape[2] == 0:
                self.k[layer] = self.v[layer] = None
        return super().update(layer, k, v)


class _CacheNewOnly(KVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)
        return k, v  # attention would see only the new positions


def _cache_cases(gen: torch.Generator):
    for T0, steps in ((4, 3), (1, 5), (6, 1)):
        cfg = small_config("llama")
        sizes = [T0] + [1] * steps
        chunks = [[(torch.randn(2, cfg.n_kv_head, T, cfg.d_head, generator=gen),
                    torch.randn(2, cfg.n_kv_head, T, cfg.d_head, generator=gen)) for _ in range(cfg.n_layer)]
                  for T in sizes]
        yield (cfg, chunks), {}


register(Exercise(
    "kv_cache", "A KV cache", NB, difficulty=2, importance=4, minutes=10, reference=_cache_ref, shown=KVCache,
    harness=_cache_harness, cases=_cache_cases, wrong=(_CacheOnePositionOff, _CacheNewOnly)))


# --- the generation loop ------------------------------------------------------------------------------------

@torch.no_grad()
def generate(model, prompt: list[int], n_new: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, cache=None, eos_id: int | None = None) -> list[int]:
    """Up to `n_new` ids after `prompt`, stopping before `eos_id`. `model(idx, cache)` gives logits; with a
    cache, each step feeds only the newest id."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    logits = model(torch.tensor([ids]), cache)[0, -1]  # the prompt in one pass (fills the cache)
    new: list[int] = []
    for _ in range(n_new):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if nxt == eos_id:
            break
        new.append(nxt)
        ids.append(nxt)
        if len(new) == n_new:
            break
        if cache is not None:
            logits = model(torch.tensor([[nxt]]), cache)[0, -1]  # one position; the cache holds the rest
        else:
            logits = model(torch.tensor([ids]), None)[0, -1]  # the whole sequence again
    return new


def _generate_ref(cfg, params, prompt, n_new, temperature, top_k, top_p, seed, use_cache):
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=n_new,
                              use_cache=use_cache)
    return list(sample_tokens(tinylib_model(cfg, params), prompt, sampling, seed=seed))


def _generate_harness(fn):
    def run(cfg, params, prompt, n_new, temperature, top_k, top_p, seed, use_cache):
        def model(idx, cache):
            return forward(params, idx, cfg, cache)
        cache = KVCache(cfg.n_layer) if use_cache else None
        return [int(i) for i in fn(model, prompt, n_new, temperature, top_k, top_p, seed, cache)]
    return run


@torch.no_grad()
def _generate_reseeded(model, prompt, n_new, temperature=1.0, top_k=None, top_p=None, seed=0, cache=None,
                       eos_id=None):
    ids, new = list(prompt), []
    for _ in range(n_new):
        generator = torch.Generator().manual_seed(seed)  # the same uniform number at every step
        nxt = sample_next(model(torch.tensor([ids]), None)[0, -1], temperature, top_k, top_p, generator)
        new.append(nxt)
        ids.append(nxt)
    return new


@torch.no_grad()
def _generate_first_position(model, prompt, n_new, temperature=1.0, top_k=None, top_p=None, seed=0,
                             cache=None, eos_id=None):
    generator = torch.Generator().manual_seed(seed)
    ids, new = list(prompt), []
    for _ in range(n_new):
        nxt = sample_next(model(torch.tensor([ids]), None)[0, 0], temperature, top_k, top_p, generator)
        new.append(nxt)
        ids.append(nxt)
    return new


def _generate_cases(gen: torch.Generator):
    for style, temperature, top_k, top_p, use_cache in (("llama", 1.0, None, None, True),
                                                        ("gpt", 0.8, 10, None, True),
                                                        ("llama", 1.0, None, 0.9, False),
                                                        ("llama", 0.0, None, None, True)):
        cfg = small_config(style)
        params = _random_params(cfg, gen)
        params = {k: w * 4 if k == "tok_emb.weight" else w for k, w in params.items()}  # peakier logits
        prompt = torch.randint(0, cfg.vocab_size, (5,), generator=gen).tolist()
        yield (cfg, params, prompt, 12, temperature, top_k, top_p,
               int(torch.randint(0, 1000, (1,), generator=gen)), use_cache), {}


register(Exercise(
    "generate", "The generation loop, with and without your cache", NB, difficulty=3, importance=5,
    minutes=20, reference=_generate_ref, shown=generate, harness=_generate_harness, cases=_generate_cases,
    wrong=(_generate_reseeded, _generate_first_position)))
