"""Exercises of notebook 05 (attention patterns): a steering direction, a pattern from q and k, and head
scores read off patterns.

The pattern's reference is the eager path of `tinylib.model.Attention` written out on its own (grouped-query
attention: each key head serves n_head / n_kv_head consecutive query heads). The score references are
`tinylib.interp.attention.scores_from_patterns`, the function `head_scores` uses. Each wrong answer is a
mistake people make: tiling the kv heads instead of repeating each one, forgetting the causal mask, reading
the diagonal itself instead of the one below it, counting query 0 (which has no previous token), looking at
the earlier copy instead of the token after it, and a wrap-around shift that counts the BOS column. The
steering direction is `tinylib.interp.steering.mean_activation`'s average written out on cached residual
streams (the notebook checks it against `happy_sad_vector` on the model); its wrong answers keep BOS, weight
prompts by their length, flip the sign, or read only the last token.
"""

from __future__ import annotations

import math

import torch

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.interp.attention import scores_from_patterns

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "05_attention_patterns"


# --- a pattern from q and k, with grouped-query attention ---------------------------------------------------

def attention_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal attention pattern [B, n_head, T, T] from q [B, n_head, T, d_head] and
    k [B, n_kv_head, T, d_head] (RoPE already applied).
    Query head h reads key head h // (n_head // n_kv_head)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [k0, k0, k1, k1, ...]: consecutive query heads share a key head
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _pattern_tiles_kv_heads(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = k.repeat(1, q.shape[1] // k.shape[1], 1, 1)  # [k0, k1, k0, k1, ...]: the wrong heads share
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def _pattern_without_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)  # every token sees the future


def _qk_cases(gen: torch.Generator):
    for B, n_head, n_kv, T, d in ((1, 4, 2, 5, 8), (2, 8, 4, 7, 16), (1, 6, 3, 4, 4), (3, 8, 2, 9, 8),
                                  (1, 4, 4, 6, 8)):
        q = torch.randn(B, n_head, T, d, generator=gen) * 2
        k = torch.randn(B, n_kv, T, d, generator=gen) * 2
        yield (q, k), {}


register(Exercise(
    "attention_pattern", "An attention pattern from q and k (grouped-query attention)", NB,
    difficulty=2, importance=5, minutes=15, reference=attention_pattern, cases=_qk_cases,
    wrong=(_pattern_tiles_kv_heads, _pattern_without_mask)))


# --- previous-token score -----------------------------------------------------------------------------------

def _previous_token_score_by_tinylib(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query t >= 1 to key t - 1, over the batch: [L, H] from patterns
    [B, L, H, T, T]."""
    tokens = torch.zeros(patterns.shape[0], patterns.shape[-1], dtype=torch.long)  # unused by this score
    return scores_from_patterns(patterns, tokens)["previous_token"]


def _prev_reads_the_diagonal(patterns: torch.Tensor) -> torch.Tensor:
    return patterns.diagonal(offset=0, dim1=-2, dim2=-1).mean(dim=(0, -1))  # attention to itself


def _prev_counts_query_zero(patterns: torch.Tensor) -> torch.Tensor:
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).sum(dim=-1).mean(0) / patterns.shape[-1]


def _random_patterns(gen: torch.Generator, B: int, L: int, H: int, T: int, sharp: float,
                     half: int = 0) -> torch.Tensor:
    scores = torch.randn(B, L, H, T, T, generator=gen) * sharp
    scores[:, 0, 0].diagonal(offset=-1, dim1=-2, dim2=-1).add_(5.0)  # L0H0 is a previous-token head
    if half > 1:  # the last head attends to the token after the earlier copy: an induction head
        scores[:, -1, -1].diagonal(offset=1 - half, dim1=-2, dim2=-1).add_(5.0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _pattern_cases(gen: torch.Generator):
    for B, L, H, T, sharp in ((1, 2, 3, 6, 1.0), (2, 3, 4, 10, 3.0), (4, 1, 2, 5, 0.5), (2, 2, 2, 16, 2.0)):
        yield (_random_patterns(gen, B, L, H, T, sharp),), {}


def previous_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query t >= 1 to key t - 1, over the batch: [L, H] from patterns
    [B, L, H, T, T]."""
    t = torch.arange(1, patterns.shape[-1])
    to_previous = patterns[..., t, t - 1]  # [B, L, H, T - 1]: query t's weight on key t - 1
    return to_previous.float().mean(dim=(0, -1))


register(Exercise(
    "previous_token_score", "Previous-token score from patterns", NB, difficulty=2, importance=4, minutes=10,
    reference=_previous_token_score_by_tinylib, shown=previous_token_score, cases=_pattern_cases,
    wrong=(_prev_reads_the_diagonal, _prev_counts_query_zero)))


# --- induction score ----------------------------------------------------------------------------------------

def _induction_score_by_tinylib(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[L, H]: for every query t whose token appeared before (tokens[j] == tokens[t], j < t), the attention
    mass on the keys right after those copies (s = j + 1); averaged over such queries of the batch.
    patterns [B, L, H, T, T], tokens [B, T]."""
    return scores_from_patterns(patterns, tokens)["induction"]


def _induction_on_the_copy_itself(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return scores_from_patterns(patterns, tokens)["duplicate_token"]  # off by one: the copy itself


def _induction_with_wraparound_shift(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    T = tokens.shape[1]
    before = tokens.roll(1, dims=1)  # token at s - 1, but key 0 (BOS) "follows" the last token
    mask = (before[:, None, :] == tokens[:, :, None]) & torch.ones(T, T, dtype=torch.bool).tril()
    mask[:, :, 1:] &= torch.ones(T, T, dtype=torch.bool).tril(-1)[:, :-1]
    rows = mask.any(-1)
    mass = (patterns.float() * mask[:, None, None]).sum(-1)
    return (mass * rows[:, None, None]).sum(dim=(0, -1)) / rows.sum().clamp_min(1)


def _induction_cases(gen: torch.Generator):
    for B, L, H, half, vocab in ((2, 2, 3, 5, 50), (3, 1, 4, 8, 100), (1, 3, 2, 12, 1000)):
        rand = torch.randint(1, vocab, (B, half), generator=gen)
        tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), rand, rand], dim=1)  # BOS + repeated tokens
        yield (_random_patterns(gen, B, L, H, tokens.shape[1], 2.0, half), tokens), {}
    for B, L, H, T, vocab in ((2, 2, 2, 12, 4), (1, 2, 3, 9, 3)):  # small vocabularies repeat by chance
        tokens = torch.randint(0, vocab, (B, T), generator=gen)
        yield (_random_patterns(gen, B, L, H, T, 1.0), tokens), {}


def induction_score(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[L, H]: for every query t whose token appeared before (tokens[j] == tokens[t], j < t), the attention
    mass on the keys right after those copies (s = j + 1); averaged over such queries of the batch."""
    B, T = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, t, j]: key j holds query t's token
    copy_before = same & torch.ones(T, T, dtype=torch.bool).tril(-1)  # ... and j < t
    after_copy = torch.zeros(B, T, T, dtype=torch.bool)
    after_copy[:, :, 1:] = copy_before[:, :, :-1]  # key s = j + 1 follows a copy at j
    has_copy = after_copy.any(-1)  # [B, T]: the queries that are scored
    if not has_copy.any():
        return torch.zeros(patterns.shape[1], patterns.shape[2])
    mass = (patterns.float() * after_copy[:, None, None]).sum(-1)  # [B, L, H, T]
    return (mass * has_copy[:, None, None]).sum(dim=(0, -1)) / has_copy.sum()


register(Exercise(
    "induction_score", "Induction score from patterns", NB, difficulty=4, importance=4, minutes=20,
    reference=_induction_score_by_tinylib, shown=induction_score, cases=_induction_cases,
    wrong=(_induction_on_the_copy_itself, _induction_with_wraparound_shift)))


# --- a steering direction -----------------------------------------------------------------------------------

def steering_direction(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    """[d_model]: the mean residual stream of the `positive` prompts minus that of the `negative` ones. Each
    prompt is [T_i, d_model] with BOS first; a prompt's mean leaves BOS out (its residual is the same in every
    prompt), then every prompt counts once, however long it is."""
    def mean(prompts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([x[1:].float().mean(0) for x in prompts]).mean(0)

    return mean(positive) - mean(negative)


def _direction_keeps_bos(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    return (torch.stack([x.float().mean(0) for x in positive]).mean(0)
            - torch.stack([x.float().mean(0) for x in negative]).mean(0))


def _direction_pools_tokens(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    # every token counts once: long prompts outweigh short ones
    return (torch.cat([x[1:] for x in positive]).float().mean(0)
            - torch.cat([x[1:] for x in negative]).float().mean(0))


def _direction_flipped(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    return steering_direction(negative, positive)


def _direction_last_token(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    return (torch.stack([x[-1] for x in positive]).float().mean(0)
            - torch.stack([x[-1] for x in negative]).float().mean(0))


def _prompts(gen: torch.Generator, bos: torch.Tensor, n: int, shift: float) -> list[torch.Tensor]:
    """n residual streams of 2-12 positions, BOS's first."""
    lengths = torch.randint(2, 13, (n,), generator=gen).tolist()
    return [torch.cat([bos[None], torch.randn(T - 1, bos.shape[0], generator=gen) + shift]) for T in lengths]


def _residual_cases(gen: torch.Generator):
    for n_pos, n_neg, d in ((3, 3, 8), (4, 2, 16), (5, 5, 4), (2, 3, 32)):
        bos = torch.randn(d, generator=gen) * 5  # BOS's residual: the same in every prompt, and large
        yield (_prompts(gen, bos, n_pos, 0.5), _prompts(gen, bos, n_neg, -0.5)), {}


register(Exercise(
    "steering_direction", "A steering direction from the residual stream", NB, difficulty=2, importance=4,
    minutes=10, reference=steering_direction, cases=_residual_cases,
    setup="two lists of residual streams [T_i, d_model], one per prompt, BOS first",
    wrong=(_direction_keeps_bos, _direction_pools_tokens, _direction_flipped, _direction_last_token)))
