"""Exercises of notebook 02 (FLOP and token budgets): parameters, training FLOPs per token, Chinchilla's token
target, tokens per step and steps, and wall-clock hours.

The references are tinylib's own: `tinylib.config.param_counts`, `tinylib.flops.flops_per_token`,
`tinylib.budget.token_target`, `tinylib.budget.tokens_per_step` and `steps_for_tokens`; hours are what
`tinylib.budget.plan` computes, written out here. Each wrong answer is a mistake people make: the tied
matrix counted twice, norms forgotten, grouped-query attention ignored, 2N (a forward pass) for 6N, the
attention term forgotten, Kaplan's non-embedding N or the FLOP N in Chinchilla's rule, the world size
forgotten (the bug shared/PRODUCT.md names), steps rounded down, the GPUs forgotten, MFU
multiplied instead of divided.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from tinylib import budget
from tinylib.config import ModelConfig, get_config, param_counts
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.flops import flop_params, flops_per_token

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "02_flop_token_budget"


def _config_cases(gen: torch.Generator):
    """Both families, tied and untied, grouped-query attention, several vocabularies."""
    configs = (("llama_tiny", {}), ("gpt_tiny", {}), ("llama_6L_6H_288D", {"n_kv_head": 2}),
               ("gpt2_124M", {}), ("llama_8L_8H_768D", {"tie_embeddings": False}),
               ("gpt_6L_6H_288D", {"n_kv_head": 3}))
    for preset, overrides in configs:
        vocab = 50257 if preset == "gpt2_124M" else int(torch.randint(256, 16385, (1,), generator=gen))
        yield get_config(preset, vocab_size=vocab, **overrides)


# --- parameters --------------------------------------------------------------------------------------------

def _param_count_by_tinylib(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes; a tied embedding/LM-head matrix is one matrix, counted once.
    (tinylib.config.param_counts counts them by component.)"""
    return param_counts(cfg).total


def _params_tied_twice(cfg: ModelConfig) -> int:
    return param_counts(cfg).total + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)


def _params_forgetting_norms(cfg: ModelConfig) -> int:
    d, kv = cfg.d_model, cfg.n_kv_head * cfg.d_head
    attention = 2 * d * d + 2 * d * kv  # q, o and k, v; no biases
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_mlp
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    position = cfg.max_seq_len * d if cfg.pos == "learned" else 0
    return embedding + position + cfg.n_layer * (attention + mlp)


def _params_ignoring_gqa(cfg: ModelConfig) -> int:
    return param_counts(dataclasses.replace(cfg, n_kv_head=cfg.n_head)).total  # 4 d^2 attention regardless


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes; a tied embedding/LM-head matrix is counted once."""
    d, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    kv = cfg.n_kv_head * cfg.d_head  # k and v are narrower with grouped-query attention
    b = 1 if cfg.bias else 0
    attention = 2 * d * d + 2 * d * kv + b * (2 * d + 2 * kv)  # q, o: d x d; k, v: d x kv (+ biases)
    n_in = 2 if cfg.mlp == "swiglu" else 1  # SwiGLU has a gate and an up projection
    mlp = (n_in + 1) * d * cfg.d_mlp + b * (n_in * cfg.d_mlp + d)
    norm = 2 * d if cfg.norm == "layernorm" and cfg.bias else d  # a weight (and a bias)
    embedding = V * d + (cfg.max_seq_len * d if cfg.pos == "learned" else 0)
    lm_head = 0 if cfg.tie_embeddings else V * d
    return embedding + L * (attention + mlp + 2 * norm) + norm + lm_head  # two norms a block, one final


register(Exercise(
    "param_count", "Parameter count from a config", NB, difficulty=2, importance=4, minutes=15,
    reference=_param_count_by_tinylib, shown=param_count,
    cases=lambda g: (((cfg,), {}) for cfg in _config_cases(g)),
    wrong=(_params_tied_twice, _params_forgetting_norms, _params_ignoring_gqa)))


# --- training FLOPs per token ------------------------------------------------------------------------------

def _train_flops_per_token_by_tinylib(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token at context `seq_len`: 6 N + 12 L T d_model, N = flop_params(cfg)."""
    return flops_per_token(cfg, seq_len)


def _flops_forward_only(cfg: ModelConfig, seq_len: int) -> float:
    return float(2 * flop_params(cfg) + 4 * cfg.n_layer * seq_len * cfg.d_model)


def _flops_no_attention(cfg: ModelConfig, seq_len: int) -> float:
    return float(6 * flop_params(cfg))


def _flops_cases(gen: torch.Generator):
    for cfg in _config_cases(gen):
        yield (cfg, int(torch.randint(16, cfg.max_seq_len + 1, (1,), generator=gen))), {}


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token at context `seq_len`: 6 N + 12 L T d_model."""
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    embeddings += cfg.max_seq_len * cfg.d_model if cfg.pos == "learned" else 0
    n = param_count(cfg) - embeddings  # lookups cost nothing...
    n += cfg.vocab_size * cfg.d_model  # ...but the LM head is a matmul, tied or not
    attention = 12 * cfg.n_layer * seq_len * cfg.d_model  # q.k and pattern.v: 2 x 2 L T d, times 3
    return float(6 * n + attention)  # forward 2N, backward 4N per token


register(Exercise(
    "train_flops_per_token", "Training FLOPs per token", NB, difficulty=2, importance=5, minutes=10,
    reference=_train_flops_per_token_by_tinylib, shown=train_flops_per_token,
    cases=_flops_cases, wrong=(_flops_forward_only, _flops_no_attention)))


# --- Chinchilla's token target -----------------------------------------------------------------------------

def _chinchilla_tokens_by_tinylib(cfg: ModelConfig, tokens_per_param: float = 20.0) -> int:
    """Compute-optimal training tokens (Hoffmann et al., 2022): tokens_per_param x all the parameters (a tied
    matrix once)."""
    return budget.token_target(cfg, tokens_per_param=tokens_per_param)


def _chinchilla_non_embedding(cfg: ModelConfig, tokens_per_param: float = 20.0) -> int:
    return round(param_counts(cfg).non_embedding * tokens_per_param)


def _chinchilla_flop_n(cfg: ModelConfig, tokens_per_param: float = 20.0) -> int:
    return round(flop_params(cfg) * tokens_per_param)


def _chinchilla_truncated(cfg: ModelConfig, tokens_per_param: float = 20.0) -> int:
    return int(param_count(cfg) * tokens_per_param)  # 1,234.9 tokens is 1,235, not 1,234


def _chinchilla_cases(gen: torch.Generator):
    for i, cfg in enumerate(_config_cases(gen)):
        yield (cfg,), ({} if i % 2 else {"tokens_per_param": (10.0, 20.0, 40.0)[i % 3]})
    cfg = get_config("tiny", vocab_size=512)
    for tokens_per_param in (0.9, 12.7, 20.3):  # a fraction of a token: rounded, not truncated
        yield (cfg,), {"tokens_per_param": tokens_per_param}


def chinchilla_tokens(cfg: ModelConfig, tokens_per_param: float = 20.0) -> int:
    """Compute-optimal training tokens (Hoffmann et al., 2022): tokens_per_param x all the parameters (a tied
    matrix once)."""
    return round(param_count(cfg) * tokens_per_param)  # every parameter, embeddings included


register(Exercise(
    "chinchilla_tokens", "Chinchilla's token target", NB, difficulty=1, importance=4, minutes=5,
    reference=_chinchilla_tokens_by_tinylib, shown=chinchilla_tokens, cases=_chinchilla_cases,
    wrong=(_chinchilla_non_embedding, _chinchilla_flop_n, _chinchilla_truncated)))


# --- tokens per step and steps -----------------------------------------------------------------------------

def _step_plan_by_tinylib(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
              world_size: int) -> tuple[int, int]:
    """(tokens per optimizer step, optimizer steps to see at least `tokens`) when each of `world_size`
    processes runs `grad_accum` micro-batches of `micro_batch` sequences of `seq_len` tokens per step."""
    step = budget.tokens_per_step(micro_batch, seq_len, grad_accum, world_size)
    return step, budget.steps_for_tokens(tokens, step)


def _steps_without_world(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
                         world_size: int) -> tuple[int, int]:
    step = micro_batch * seq_len * grad_accum
    return step, -(-tokens // step)


def _steps_rounded_down(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
                        world_size: int) -> tuple[int, int]:
    step = micro_batch * seq_len * grad_accum * world_size
    return step, tokens // step


def _steps_float(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
                 world_size: int) -> tuple[int, float]:
    step = micro_batch * seq_len * grad_accum * world_size
    return step, tokens / step  # a fraction of a step cannot be run


def _steps_plus_one(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
                    world_size: int) -> tuple[int, int]:
    step = micro_batch * seq_len * grad_accum * world_size
    return step, tokens // step + 1  # one step too many when step divides tokens


def _step_cases(gen: torch.Generator):
    yield (10_000_000_000, 22, 2048, 4, 1), {}  # the notebook's worked example
    yield (8 * 1024 * 4 * 2 * 1000, 8, 1024, 4, 2), {}  # exactly 1,000 steps
    for world in (8, 2, 4, 1):
        tokens = int(torch.randint(10**6, 10**10, (1,), generator=gen))
        micro = int(torch.randint(1, 65, (1,), generator=gen))
        accum = int(torch.randint(1, 9, (1,), generator=gen))
        yield (tokens, micro, (256, 512, 1024, 2048)[world % 4], accum, world), {}


def step_plan(tokens: int, micro_batch: int, seq_len: int, grad_accum: int,
              world_size: int) -> tuple[int, int]:
    """(tokens per optimizer step, optimizer steps to see at least `tokens`)."""
    step = micro_batch * seq_len * grad_accum * world_size  # every process, every micro-batch
    return step, math.ceil(tokens / step)  # round up: at least `tokens`


register(Exercise(
    "step_plan", "Tokens per step and steps, with the world size", NB, difficulty=1, importance=5, minutes=10,
    reference=_step_plan_by_tinylib, shown=step_plan,
    cases=_step_cases, wrong=(_steps_without_world, _steps_rounded_down, _steps_float, _steps_plus_one)))


# --- wall-clock hours --------------------------------------------------------------------------------------

def training_hours(total_flops: float, n_gpus: int, peak_flops: float, mfu: float) -> float:
    """Wall-clock hours of `total_flops` on `n_gpus` devices of `peak_flops` FLOP/s each, running at `mfu`
    (a fraction) of their peak: what `tinylib.budget.plan` reports as `hours`."""
    return total_flops / (n_gpus * peak_flops * mfu) / 3600


def _hours_one_gpu(total_flops: float, n_gpus: int, peak_flops: float, mfu: float) -> float:
    return total_flops / (peak_flops * mfu) / 3600


def _hours_mfu_multiplies(total_flops: float, n_gpus: int, peak_flops: float, mfu: float) -> float:
    return total_flops * mfu / (n_gpus * peak_flops) / 3600


def _hours_cases(gen: torch.Generator):
    for n_gpus, peak, mfu in ((1, 989e12, 0.35), (8, 989e12, 0.4), (4, 121e12, 0.3), (2, 2e12, 0.1)):
        total = float(torch.randint(1, 1000, (1,), generator=gen)) * 1e18
        yield (total, n_gpus, peak, mfu), {}


register(Exercise(
    "training_hours", "Wall-clock hours from FLOPs, GPUs, peak and MFU", NB, difficulty=1, importance=4,
    minutes=5, reference=training_hours, cases=_hours_cases, wrong=(_hours_one_gpu, _hours_mfu_multiplies)))
