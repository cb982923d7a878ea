"""Exercises of notebook 07 (ablations): hook functions that knock out a head, a paired bootstrap interval
on the difference of two ablation costs, and one head's direct logit attribution.

The hook references are the hook functions `tinylib.interp.ablation.ablation_hooks` builds (the ones
`ablated_loss` runs); a hook takes the TransformerLens form fn(activation, hook) and edits `hook_z`
[B, T, n_head, d_head]. The attribution reference is the per-head line of
`tinylib.interp.logit_lens.direct_logit_attribution` (RMSNorm branch) written out for one head. Each wrong
answer is a mistake people make: zeroing the position or d_head axis instead of the head axis, replacing the
head by one scalar or replacing every head, slicing o_proj's columns with a stride, and normalising the head's
own output instead of freezing the final residual's scale. The interval's reference is
`tinylib.interp.features.bootstrap_mean` on the per-row differences; its wrong answers resample the two costs
independently (the pairs broken), use mean +- 1.96 standard errors, or take a 90% interval.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylib.exercises.checks import Exercise, check, in_place_hook, register, solution
from tinylib.interp.ablation import Means, ablation_hooks
from tinylib.interp.features import bootstrap_mean

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "07_ablations"


# --- zero ablation as a TransformerLens hook ----------------------------------------------------------------

def _zero_ablate_head_by_tinylib(z: torch.Tensor, hook: Any, head: int) -> torch.Tensor:
    """Hook on blocks.L.attn.hook_z: z [B, T, n_head, d_head] with head `head`'s output set to 0 (edit z in
    place and return it). Bind the head with functools.partial(zero_ablate_head, head=h)."""
    (_, fn), = ablation_hooks(heads=[(0, head)], kind="zero")
    return fn(z, hook)


def _zero_position_axis(z: torch.Tensor, hook: Any, head: int) -> torch.Tensor:
    z[:, head] = 0  # that is position `head`, every head
    return z


def _zero_d_head_axis(z: torch.Tensor, hook: Any, head: int) -> torch.Tensor:
    z[..., head] = 0  # one coordinate of every head
    return z


def _z_cases(gen: torch.Generator):
    for B, T, H, d, head in ((1, 5, 4, 8, 0), (2, 9, 8, 8, 3), (3, 6, 4, 16, 3), (2, 12, 6, 8, 5)):
        yield (torch.randn(B, T, H, d, generator=gen), None, head), {}


def zero_ablate_head(z: torch.Tensor, hook: Any, head: int) -> torch.Tensor:
    """Hook on blocks.L.attn.hook_z: z [B, T, n_head, d_head] with head `head`'s output set to 0."""
    z[:, :, head, :] = 0.0  # every batch row and position, this head's whole d_head vector
    return z


register(Exercise(
    "zero_ablate_head", "A zero-ablation hook (TransformerLens style)", NB, difficulty=1, importance=5,
    minutes=10,
    reference=_zero_ablate_head_by_tinylib, shown=zero_ablate_head,
    cases=_z_cases, wrong=(_zero_position_axis, _zero_d_head_axis), harness=in_place_hook))


# --- mean ablation ------------------------------------------------------------------------------------------

def _mean_ablate_head_by_tinylib(z: torch.Tensor, hook: Any, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    """Hook on hook_z: every position of head `head` replaced by that head's mean output mean_z[head]
    (mean_z [n_head, d_head]: this layer's means over a reference batch and its positions)."""
    means = Means(z=mean_z[None], post=torch.zeros(1, 1))  # layer 0 of a one-layer table
    (_, fn), = ablation_hooks(heads=[(0, head)], kind="mean", means=means)
    return fn(z, hook)


def _mean_one_scalar(z: torch.Tensor, hook: Any, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    z[:, :, head] = mean_z[head].mean()  # one number instead of the mean vector
    return z


def _mean_every_head(z: torch.Tensor, hook: Any, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    z[:, :] = mean_z  # forgot to pick the head: ablates the whole layer
    return z


def _mean_cases(gen: torch.Generator):
    for args, _ in _z_cases(gen):
        z, hook, head = args
        mean_z = torch.randn(z.shape[2], z.shape[3], generator=gen)
        yield (z, hook, head, mean_z), {}


def mean_ablate_head(z: torch.Tensor, hook: Any, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    """Hook on hook_z: every position of head `head` replaced by that head's mean output mean_z[head]."""
    z[:, :, head, :] = mean_z[head].to(z.dtype)  # [d_head] broadcast over batch and positions
    return z


register(Exercise(
    "mean_ablate_head", "A mean-ablation hook", NB, difficulty=2, importance=4, minutes=10,
    reference=_mean_ablate_head_by_tinylib, shown=mean_ablate_head,
    cases=_mean_cases, wrong=(_mean_one_scalar, _mean_every_head), harness=in_place_hook))


# --- direct logit attribution of one head -------------------------------------------------------------------

def head_logit_attribution(z: torch.Tensor, w_o: torch.Tensor, head: int, final_resid: torch.Tensor,
                           norm_weight: torch.Tensor, eps: float, w_u_target: torch.Tensor) -> torch.Tensor:
    """Head `head`'s direct contribution (a 0-d tensor) to one logit at one position.

    z [n_head, d_head]: hook_z at that position; w_o [d_model, n_head * d_head]: o_proj.weight;
    final_resid [d_model]: the residual the final RMSNorm reads; norm_weight [d_model]: its weight;
    w_u_target [d_model]: the unembedding row of the target token."""
    d_model, n_head = w_o.shape[0], z.shape[0]
    write = w_o.view(d_model, n_head, -1)[:, head] @ z[head]  # what this head adds to the residual stream
    scale = torch.rsqrt(final_resid.pow(2).mean() + eps)  # the final norm's 1/rms, frozen at the real value
    return (norm_weight * write * scale) @ w_u_target


def _dla_strided_columns(z, w_o, head, final_resid, norm_weight, eps, w_u_target):
    n_head = z.shape[0]
    write = w_o[:, head::n_head] @ z[head]  # o_proj's columns are head-major: [h0 d0..dk, h1 d0..dk, ...]
    scale = torch.rsqrt(final_resid.pow(2).mean() + eps)
    return (norm_weight * write * scale) @ w_u_target


def _dla_normalises_the_head(z, w_o, head, final_resid, norm_weight, eps, w_u_target):
    d_model, n_head = w_o.shape[0], z.shape[0]
    write = w_o.view(d_model, n_head, -1)[:, head] @ z[head]
    scale = torch.rsqrt(write.pow(2).mean() + eps)  # the norm sees the whole residual, not this piece
    return (norm_weight * write * scale) @ w_u_target


def _dla_cases(gen: torch.Generator):
    for n_head, d_head, d_model, head in ((4, 8, 32, 1), (8, 8, 64, 7), (2, 16, 32, 0), (6, 4, 24, 2)):
        z = torch.randn(n_head, d_head, generator=gen)
        w_o = torch.randn(d_model, n_head * d_head, generator=gen) / (n_head * d_head) ** 0.5
        final_resid = torch.randn(d_model, generator=gen) * 3
        norm_weight = 1 + 0.3 * torch.randn(d_model, generator=gen)
        w_u_target = torch.randn(d_model, generator=gen)
        yield (z, w_o, head, final_resid, norm_weight, 1e-5, w_u_target), {}


register(Exercise(
    "head_logit_attribution", "Direct logit attribution of one head", NB, difficulty=3, importance=4,
    minutes=20, reference=head_logit_attribution, cases=_dla_cases,
    wrong=(_dla_strided_columns, _dla_normalises_the_head)))


# --- a paired bootstrap interval ----------------------------------------------------------------------------

def _paired_interval_by_tinylib(cost_a: torch.Tensor, cost_b: torch.Tensor, n_boot: int,
                                seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(cost_a - cost_b), rows resampled as pairs."""
    return bootstrap_mean(cost_a - cost_b, n_boot, seed)


def _independent_resamples(cost_a, cost_b, n_boot, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(cost_a)
    a = cost_a[torch.randint(0, n, (n_boot, n), generator=g)].mean(1)
    b = cost_b[torch.randint(0, n, (n_boot, n), generator=g)].mean(1)  # breaks the pairs: too wide
    d = a - b
    return float(d.quantile(0.025)), float(d.quantile(0.975))


def _normal_approximation(cost_a, cost_b, n_boot, seed):
    d = cost_a - cost_b
    se = d.std() / len(d) ** 0.5  # mean +- 1.96 standard errors: no resampling at all
    return float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)


def _ninety_percent_pairs(cost_a, cost_b, n_boot, seed):
    d = cost_a - cost_b
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (n_boot, len(d)), generator=g)].mean(1)
    return float(means.quantile(0.05)), float(means.quantile(0.95))


def _paired_cases(gen: torch.Generator):
    for n, n_boot, seed in ((8, 500, 0), (16, 1000, 1), (32, 2000, 2), (5, 300, 3)):
        shared = torch.rand(n, generator=gen) * 0.2  # what both ablations cost on each row (text difficulty)
        a = shared + 0.01 + 0.005 * torch.randn(n, generator=gen)
        b = shared + 0.005 * torch.randn(n, generator=gen)
        yield (a, b, n_boot, seed), {}


def paired_interval(cost_a: torch.Tensor, cost_b: torch.Tensor, n_boot: int,
                    seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(cost_a - cost_b) over rows measured on the same text."""
    diff = cost_a - cost_b  # one number per row: resampling rows keeps each pair together
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diff), (n_boot, len(diff)), generator=g)  # one row of indices per resample
    means = diff[idx].mean(dim=1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


register(Exercise(
    "paired_interval", "A paired bootstrap interval over windows", NB, difficulty=2, importance=5, minutes=15,
    reference=_paired_interval_by_tinylib, shown=paired_interval, cases=_paired_cases,
    wrong=(_independent_resamples, _normal_approximation, _ninety_percent_pairs),
    setup="two costs per row (window or story) measured on the same rows, the number of resamples, a seed"))
