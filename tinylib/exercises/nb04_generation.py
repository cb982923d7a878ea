"""Exercises of notebook 04 (generation): the sampling filters and what the KV cache costs.

The references are tinylib's own: `tinylib.engine.apply_sampling_rules` for the filters, and the cache's real
tensors for its memory. Each wrong answer is a mistake people make: keeping k - 1 ids, dropping the token that
crosses top_p, scaling by the temperature the wrong way, forgetting keys or values or a layer in the cache.
"""

from __future__ import annotations

import torch

from tinylib.config import ModelConfig, get_config
from tinylib.engine import SamplingConfig, apply_sampling_rules
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.kvcache import KVCache

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "04_generation"


def _logits_cases(gen: torch.Generator, values: list):
    for i, value in enumerate(values):
        rows, vocab = 1 + i % 3, (7, 50, 300)[i % 3]
        logits = torch.randn(rows, vocab, generator=gen) * (1 + i)
        yield (logits, value), {}


# --- top-k -------------------------------------------------------------------------------------------------

def _top_k_filter_by_tinylib(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest logits; every other logit becomes -inf."""
    return apply_sampling_rules(logits, SamplingConfig(top_k=k))


def _top_k_keeps_k_minus_one(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.float().masked_fill(logits <= kth, float("-inf"))


def _top_k_whole_batch(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits.flatten(), k).values[-1]
    return logits.float().masked_fill(logits < kth, float("-inf"))


def _top_k_filters_nothing(logits: torch.Tensor, k: int) -> torch.Tensor:
    return logits.float()  # every -inf the check expects is a finite logit here


def _top_k_keeps_k_plus_one(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(k + 1, logits.shape[-1]), dim=-1).values[:, -1:]
    return logits.float().masked_fill(logits < kth, float("-inf"))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest logits; every other logit becomes -inf."""
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # each row's k-th largest, as a column
    return logits.float().masked_fill(logits < kth, float("-inf"))  # ties with the k-th stay


register(Exercise(
    "top_k_filter", "Top-k filtering", NB, difficulty=2, importance=4, minutes=10,
    reference=_top_k_filter_by_tinylib, shown=top_k_filter,
    cases=lambda g: _logits_cases(g, [1, 3, 5, 2, 40, 1, 7]),
    wrong=(_top_k_keeps_k_minus_one, _top_k_whole_batch, _top_k_filters_nothing, _top_k_keeps_k_plus_one)))


# --- top-p (nucleus) ---------------------------------------------------------------------------------------

def _top_p_filter_by_tinylib(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely ids whose probabilities sum to at least p; others become -inf."""
    return apply_sampling_rules(logits, SamplingConfig(top_p=p))


def _top_p_drops_the_crossing_token(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits.float(), dim=-1, descending=True)
    drop = sorted_logits.softmax(-1).cumsum(-1) > p  # also drops the token that takes the mass past p
    drop[:, 0] = False
    kept = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits.float(), float("-inf")).scatter(-1, order, kept)


def _top_p_unsorted(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = logits.float().softmax(-1)
    drop = (probs.cumsum(-1) - probs) >= p  # forgot to sort by probability first
    return logits.float().masked_fill(drop, float("-inf"))


def _top_p_filters_nothing(logits: torch.Tensor, p: float) -> torch.Tensor:
    return logits.float()


def _top_p_keeps_one_too_many(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits.float(), dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p
    drop = torch.cat([torch.zeros_like(drop[:, :1]), drop[:, :-1]], dim=-1)  # the next id stays too
    kept = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(kept, float("-inf")).scatter(-1, order, kept)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely ids whose probabilities sum to at least p; others become -inf."""
    sorted_logits, order = torch.sort(logits.float(), dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p  # the ids ranked above already hold p: the first always stays
    kept = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(kept, float("-inf")).scatter(-1, order, kept)  # back to vocabulary order


register(Exercise(
    "top_p_filter", "Top-p (nucleus) filtering", NB, difficulty=3, importance=4, minutes=15,
    reference=_top_p_filter_by_tinylib, shown=top_p_filter,
    cases=lambda g: _logits_cases(g, [0.5, 0.9, 0.1, 0.95, 0.3, 0.75, 0.99]),
    wrong=(_top_p_drops_the_crossing_token, _top_p_unsorted, _top_p_filters_nothing,
           _top_p_keeps_one_too_many)))


# --- temperature -------------------------------------------------------------------------------------------

def _temperature_probs_by_tinylib(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The next-token probabilities at `temperature` (> 0): softmax(logits / temperature)."""
    return apply_sampling_rules(logits, SamplingConfig(temperature=temperature)).softmax(-1)


def _temperature_multiplies(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.float() * temperature).softmax(-1)


def _temperature_after_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    p = logits.float().softmax(-1) ** (1 / temperature)
    return p  # forgot to renormalise


def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The next-token probabilities at `temperature` (> 0): softmax(logits / temperature)."""
    return (logits.float() / temperature).softmax(dim=-1)  # T < 1 widens the gaps between logits


register(Exercise(
    "temperature_probs", "Sampling temperature", NB, difficulty=1, importance=4, minutes=5,
    reference=_temperature_probs_by_tinylib, shown=temperature_probs,
    cases=lambda g: _logits_cases(g, [0.5, 1.0, 2.0, 0.1, 1.5]),
    wrong=(_temperature_multiplies, _temperature_after_softmax)))


# --- KV-cache memory ---------------------------------------------------------------------------------------

def _kv_cache_bytes_by_tinylib(cfg: ModelConfig, batch_size: int, context: int, bytes_per_value: int) -> int:
    """Bytes the KV cache holds for `batch_size` sequences of `context` tokens: keys and values, every layer,
    n_kv_head heads (grouped-query attention shares them) of d_head numbers each."""
    cache = KVCache(cfg, batch_size, context, device="meta")
    return sum(t.numel() for t in cache.k + cache.v) * bytes_per_value


def _kv_bytes_query_heads(cfg: ModelConfig, batch_size: int, context: int, bytes_per_value: int) -> int:
    return 2 * cfg.n_layer * batch_size * context * cfg.n_head * cfg.d_head * bytes_per_value


def _kv_bytes_keys_only(cfg: ModelConfig, batch_size: int, context: int, bytes_per_value: int) -> int:
    return cfg.n_layer * batch_size * context * cfg.n_kv_head * cfg.d_head * bytes_per_value


def _kv_cases(gen: torch.Generator):
    presets = (("llama_tiny", 2), ("llama_6L_6H_288D", 3), ("gpt2_124M", None), ("llama_8L_8H_768D", 2))
    for preset, kv in presets:
        cfg = get_config(preset, vocab_size=512, n_kv_head=kv) if kv else get_config(preset, vocab_size=512)
        batch = int(torch.randint(1, 9, (1,), generator=gen))
        context = int(torch.randint(16, 257, (1,), generator=gen))
        yield (cfg, batch, min(context, cfg.max_seq_len), (2, 4)[batch % 2]), {}


def _kv_bytes_float(cfg: ModelConfig, batch_size: int, context: int, bytes_per_value: int) -> float:
    return 2.0 * cfg.n_layer * batch_size * context * cfg.n_kv_head * cfg.d_head * bytes_per_value + 100


def kv_cache_bytes(cfg: ModelConfig, batch_size: int, context: int, bytes_per_value: int) -> int:
    """Bytes the KV cache holds for `batch_size` sequences of `context` tokens."""
    per_layer = 2 * batch_size * cfg.n_kv_head * context * cfg.d_head  # keys and values: KV heads only
    return cfg.n_layer * per_layer * bytes_per_value


register(Exercise(
    "kv_cache_bytes", "KV-cache memory", NB, difficulty=2, importance=3, minutes=10,
    reference=_kv_cache_bytes_by_tinylib, shown=kv_cache_bytes,
    cases=_kv_cases, wrong=(_kv_bytes_query_heads, _kv_bytes_keys_only, _kv_bytes_float)))
