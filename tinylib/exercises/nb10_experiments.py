"""Exercises of notebook 10 (experiments, GPT vs LLaMA at equal FLOPs): the tokens a FLOP budget buys, a
loss curve read between its evaluations, and the loss gap of two runs at equal compute.

References are the library's own: `tinylib.budget.token_target` (what `tinylib.experiments.train_config` gives
a run with a FLOP budget) and `tinylib.results.value_at` (the interpolation the notebook's comparison uses).
Each wrong answer is a mistake people make: 6 N for the training FLOPs per token (the attention term
forgotten), a budget rounded to the nearest token (a run that overspends it); the last evaluation instead of
an interpolation, training losses mixed into the validation curve; two runs compared at equal tokens or equal
steps, or each at the same fraction of its own budget, instead of at the same FLOPs; for seed noise, the
population std (divide by n) or the mean's standard error for a run's spread; a gap judged unpaired (two
means with their own spreads), paired by position instead of by seed, with the normal's 1.96 instead of
Student's t for a handful of seeds, or called a win whatever the noise. Seed-noise references:
`tinylib.experiments.results.paired_seeds` (what `make results` reports for `seeds:` lists).
"""

from __future__ import annotations

import math
import statistics

import torch

from tinylib.budget import token_target
from tinylib.config import ModelConfig, get_config
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.experiments import results
from tinylib.experiments.results import T95, paired_seeds, t95, value_at
from tinylib.flops import flop_params, flops_per_token

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "10_experiments"


# --- the tokens a FLOP budget buys -------------------------------------------------------------------------

def _budget_tokens_by_tinylib(cfg: ModelConfig, flop_budget: float, seq_len: int) -> int:
    """Tokens a run of `cfg` trains on for `flop_budget` training FLOPs at context `seq_len`: the budget over
    the training FLOPs per token (6 N + 12 L T d, `tinylib.flops.flops_per_token`), rounded down."""
    return token_target(cfg, flop_budget=flop_budget, seq_len=seq_len)


def _tokens_6n(cfg: ModelConfig, flop_budget: float, seq_len: int) -> int:
    return int(flop_budget // (6 * flop_params(cfg)))  # the attention term forgotten


def _tokens_rounded(cfg: ModelConfig, flop_budget: float, seq_len: int) -> int:
    return round(flop_budget / flops_per_token(cfg, seq_len))  # may spend more than the budget


def _budget_cases(gen: torch.Generator):
    configs = (("gpt_tiny", {}), ("llama_tiny", {}), ("llama_tiny", {"n_kv_head": 2}),
               ("gpt_6L_6H_288D", {}), ("llama_6L_6H_288D", {"sliding_window": 64}),
               ("llama_8L_8H_768D", {"tie_embeddings": False}), ("llama_tiny", {"mlp": "relu2"}),
               ("gpt_tiny", {"embed_rank": 32}))
    for preset, overrides in configs:
        cfg = get_config(preset, vocab_size=int(torch.randint(256, 8193, (1,), generator=gen)), **overrides)
        flops = float(10 ** (11 + 4 * torch.rand(1, generator=gen).item()))
        yield (cfg, flops, int(torch.randint(32, cfg.max_seq_len + 1, (1,), generator=gen))), {}


def budget_tokens(cfg: ModelConfig, flop_budget: float, seq_len: int) -> int:
    """Tokens a run of `cfg` trains on for `flop_budget` training FLOPs at context `seq_len`: the budget over
    the training FLOPs per token, 6 N + 12 L T d, rounded down."""
    d, L = cfg.d_model, cfg.n_layer
    kv, b = cfg.n_kv_head * cfg.d_head, int(cfg.bias)
    attention = 2 * d * d + 2 * d * kv + b * (2 * d + 2 * kv)
    n_in = 2 if cfg.mlp == "swiglu" else 1
    mlp = (n_in + 1) * d * cfg.d_mlp + b * (n_in * cfg.d_mlp + d)
    norm = 2 * d if cfg.norm == "layernorm" and cfg.bias else d
    r = cfg.embed_rank  # factorized: the head multiplies by both factors
    head = cfg.vocab_size * d if r is None else cfg.vocab_size * r + 2 * r * d
    n = L * (attention + mlp + 2 * norm) + norm + (2 * L * cfg.d_head if cfg.qk_norm else 0) + head
    keys = seq_len if cfg.sliding_window is None else min(seq_len, cfg.sliding_window)  # keys a query sees
    return int(flop_budget // (6 * n + 12 * L * keys * d))


register(Exercise(
    "budget_tokens", "The tokens a FLOP budget buys", NB, difficulty=1, importance=5, minutes=5,
    reference=_budget_tokens_by_tinylib, shown=budget_tokens,
    cases=_budget_cases, wrong=(_tokens_6n, _tokens_rounded), atol=0, rtol=0))


# --- a loss curve between its evaluations ------------------------------------------------------------------

def _loss_at_by_tinylib(curve: list[dict], flops: float) -> float:
    """The validation loss of a run at `flops` training FLOPs: linear between the two evaluations (records
    with a `val_loss`) around it. `flops` lies between the first and the last evaluation."""
    return value_at(curve, flops)


def _loss_at_last_eval(curve: list[dict], flops: float) -> float:
    return [r["val_loss"] for r in curve if "val_loss" in r and r["flops"] <= flops][-1]  # no interpolation


def _loss_with_train_records(curve: list[dict], flops: float) -> float:
    mixed = [{**r, "val_loss": r.get("val_loss", r.get("train_loss"))} for r in curve]  # train loss mixed in
    return value_at(mixed, flops)


def _curve(gen: torch.Generator, fpt: float, steps: int, floor: float) -> list[dict]:
    """A run's metrics records as `tinylib.results.run_curve` gives them: training records every 5 steps,
    evaluations every 20 and at the end, each with tokens and FLOPs."""
    step_tokens, records = 2048, []
    for step in range(0, steps + 1):
        tokens = step * step_tokens
        at = {"step": step, "tokens": tokens, "flops": float(tokens * fpt)}
        loss = floor + 4.5 / (1 + tokens / 40_000) ** 0.6
        if step % 5 == 0 and step:
            records.append({**at, "train_loss": loss + 0.1 * torch.randn(1, generator=gen).item()})
        if step % 20 == 0 or step == steps:
            records.append({**at, "val_loss": loss + 0.02 * torch.randn(1, generator=gen).item()})
    return records


def _point_cases(gen: torch.Generator):
    for fpt, steps in ((9.5e6, 206), (11.0e6, 177), (4.2e7, 50), (1.3e6, 1000)):
        curve = _curve(gen, fpt, steps, 3.5 + torch.rand(1, generator=gen).item())
        end = curve[-1]["flops"]
        for x in (end, 20 * 2048 * fpt, *(end * torch.rand(2, generator=gen)).tolist()):
            yield (curve, float(x)), {}


def loss_at(curve: list[dict], flops: float) -> float:
    """The validation loss of a run at `flops` training FLOPs: linear between the two evaluations (records
    with a `val_loss`) around it."""
    evals = sorted((r["flops"], r["val_loss"]) for r in curve if r.get("val_loss") is not None)
    for (x0, y0), (x1, y1) in zip(evals, evals[1:]):
        if x0 <= flops <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (flops - x0) / (x1 - x0)
    return math.nan  # outside the evaluations


register(Exercise(
    "loss_at", "A loss curve between its evaluations", NB, difficulty=2, importance=3, minutes=10,
    reference=_loss_at_by_tinylib, shown=loss_at,
    cases=_point_cases, wrong=(_loss_at_last_eval, _loss_with_train_records)))


# --- two runs at equal compute -----------------------------------------------------------------------------

def _gap_at_equal_flops_by_tinylib(gpt: list[dict], llama: list[dict], frac: float) -> float:
    """LLaMA's minus GPT's validation loss at `frac` of the FLOPs both runs spent (the smaller of their last
    records' `flops`), each curve linearly interpolated between its evaluations (records with `val_loss`)."""
    x = frac * min(gpt[-1]["flops"], llama[-1]["flops"])
    return value_at(llama, x) - value_at(gpt, x)


def _gap_at_equal_tokens(gpt: list[dict], llama: list[dict], frac: float) -> float:
    x = frac * min(gpt[-1]["tokens"], llama[-1]["tokens"])
    return value_at(llama, x, key="tokens") - value_at(gpt, x, key="tokens")


def _gap_at_equal_steps(gpt: list[dict], llama: list[dict], frac: float) -> float:
    x = frac * min(gpt[-1]["step"], llama[-1]["step"])
    return value_at(llama, x, key="step") - value_at(gpt, x, key="step")


def _gap_at_own_budget(gpt: list[dict], llama: list[dict], frac: float) -> float:
    return value_at(llama, frac * llama[-1]["flops"]) - value_at(gpt, frac * gpt[-1]["flops"])


def _curve_cases(gen: torch.Generator):
    for budget, frac in ((4e12, 1.0), (4e12, 0.5), (2e12, 0.25), (1e12, 0.8), (3e12, 0.37)):
        gpt_fpt, llama_fpt = 9.5e6 * (1 + 0.1 * torch.rand(1, generator=gen).item()), 11.0e6
        gpt = _curve(gen, gpt_fpt, int(budget // gpt_fpt) // 2048, 3.9)
        llama = _curve(gen, llama_fpt, int(budget // llama_fpt) // 2048, 3.8)
        yield (gpt, llama, frac), {}


def gap_at_equal_flops(gpt: list[dict], llama: list[dict], frac: float) -> float:
    """LLaMA's minus GPT's validation loss at `frac` of the FLOPs both runs spent."""
    x = frac * min(gpt[-1]["flops"], llama[-1]["flops"])  # a point both curves reach
    return loss_at(llama, x) - loss_at(gpt, x)


register(Exercise(
    "gap_at_equal_flops", "Two runs compared at equal compute", NB, difficulty=2, importance=5, minutes=10,
    reference=_gap_at_equal_flops_by_tinylib, shown=gap_at_equal_flops, cases=_curve_cases,
    wrong=(_gap_at_equal_tokens, _gap_at_equal_steps, _gap_at_own_budget)))


# --- seed noise: mean +- std over seeds ---------------------------------------------------------------------

def _mean_std_by_tinylib(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (divide by n - 1) of one configuration's results over its seeds."""
    return results.mean_std(values)


def _mean_population_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)  # divides by n: too small for a few seeds


def _mean_std_error(values: list[float]) -> tuple[float, float]:
    # the standard error of the mean, not the spread of one run
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def _seed_values(gen: torch.Generator):
    for n in (2, 3, 3, 4, 5, 2):
        base = 1.4 + 0.3 * torch.rand(1, generator=gen).item()
        yield ([base + 0.03 * torch.randn(1, generator=gen).item() for _ in range(n)],), {}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of one configuration's results over its seeds."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))  # n - 1: a sample of the seeds
    return mean, std


register(Exercise(
    "mean_std", "Mean and spread over seeds", NB, difficulty=1, importance=5, minutes=5,
    reference=_mean_std_by_tinylib, shown=mean_std, cases=_seed_values,
    wrong=(_mean_population_std, _mean_std_error), setup="one configuration's val bpb, one per seed"))


# --- seed noise: a paired difference, inside the noise or beyond it ---------------------------------------

def _paired_gap_by_tinylib(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    """(b minus a, paired by seed and averaged; the half width of its 95% t interval, t95(n - 1) x sample std
    of the differences / sqrt(n); whether the gap is beyond the noise: |gap| > half width)."""
    p = paired_seeds(a, b)
    return p["diff"], p["half_width"], p["beyond_noise"]


def _gap_unpaired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    (ma, sa), (mb, sb) = results.mean_std(list(a.values())), results.mean_std(list(b.values()))
    half = t95(len(a) - 1) * math.sqrt((sa ** 2 + sb ** 2) / len(a))  # ignores that a seed moves both runs
    return mb - ma, half, abs(mb - ma) > half


def _gap_by_position(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    diffs = [vb - va for va, vb in zip(a.values(), b.values())]  # pairs by order, not by seed
    mean, std = results.mean_std(diffs)
    half = t95(len(diffs) - 1) * std / math.sqrt(len(diffs))
    return mean, half, abs(mean) > half


def _gap_normal_quantile(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    diff, std = results.mean_std([b[s] - a[s] for s in a])
    half = 1.96 * std / math.sqrt(len(a))  # the normal's 1.96 with a handful of seeds: calls noise a win
    return diff, half, abs(diff) > half


def _gap_any_difference_wins(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    diff, half, _ = _paired_gap_by_tinylib(a, b)
    return diff, half, diff != 0  # a gap is a win whatever the noise


def _gap_cases(gen: torch.Generator):
    """Two variants run with the same seeds: a seed's effect shared by both runs (the same initial weights
    and batches), the variant's own effect, a little noise of each run; seeds listed in another order in b."""
    for n, effect in ((2, -0.076), (3, -0.03), (3, 0.0), (4, -0.01), (5, 0.02), (2, -0.2), (3, 0.15)):
        seeds = [int(s) for s in torch.randperm(50, generator=gen)[:n]]
        shared = {s: 0.05 * torch.randn(1, generator=gen).item() for s in seeds}
        a = {s: 1.6 + shared[s] + 0.01 * torch.randn(1, generator=gen).item() for s in seeds}
        b = {s: 1.6 + effect + shared[s] + 0.01 * torch.randn(1, generator=gen).item()
             for s in reversed(seeds)}
        yield (a, b), {}


def paired_gap(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, bool]:
    """(b minus a paired by seed, averaged; the half width of its 95% t interval; beyond the noise?)"""
    seeds = sorted(a)
    diffs = [b[s] - a[s] for s in seeds]  # pair by seed: dicts may list seeds in other orders
    n = len(diffs)
    mean = sum(diffs) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T95[n - 2] * std / math.sqrt(n)  # t quantile with n - 1 degrees of freedom (T95[0] is df = 1)
    return mean, half, abs(mean) > half


register(Exercise(
    "paired_gap", "Is the gap beyond the seed noise?", NB, difficulty=2, importance=5, minutes=15,
    reference=_paired_gap_by_tinylib, shown=paired_gap, cases=_gap_cases,
    wrong=(_gap_unpaired, _gap_by_position, _gap_normal_quantile, _gap_any_difference_wins),
    setup="two variants' val bpb by seed, {seed: value}, run with the same seeds"))
