"""Exercises of notebook 11 (architecture lab): the banded mask of sliding-window attention, logit
soft-capping, and the warmup-stable-decay schedule.

References are the library's own: `tinylib.model.attention_mask`, `tinylib.loss.softcap` and
`tinylib.optim.lr_scale(..., schedule="wsd")`. Each wrong answer is a mistake people make: a window one key
too wide, a band that looks both ways (not causal); a hard clamp instead of tanh, the tanh without the cap
factor in front; cosine decay, or the cooldown taken as 20% of the steps after warmup instead of all steps.
"""

from __future__ import annotations

import torch

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.loss import softcap
from tinylib.model import attention_mask
from tinylib.optim import lr_scale

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "11_architecture_lab"


# --- the banded causal mask --------------------------------------------------------------------------------

def _sliding_window_mask_by_tinylib(T: int, window: int) -> torch.Tensor:
    """[T, T] bool, True where query i may attend to key j: causal, and within the window (itself and the
    window - 1 positions before it)."""
    pos = torch.arange(T)
    return attention_mask(pos, pos, window)


def _mask_one_too_wide(T: int, window: int) -> torch.Tensor:
    rel = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (rel >= 0) & (rel <= window)


def _mask_not_causal(T: int, window: int) -> torch.Tensor:
    rel = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return rel.abs() < window


def _mask_as_float(T: int, window: int) -> torch.Tensor:
    return sliding_window_mask(T, window).float()  # SDPA adds a float mask to the scores: 1s, not a band


def _mask_as_int(T: int, window: int) -> torch.Tensor:
    return sliding_window_mask(T, window).long()


def _mask_cases(gen: torch.Generator):
    yield (6, 3), {}  # the band the notebook prints
    for T, window in ((16, 1), (10, 10), (12, 20)):  # one key only; a window that covers the sequence
        yield (T, window), {}
    for _ in range(3):
        T = int(torch.randint(8, 65, (1,), generator=gen))
        yield (T, int(torch.randint(2, T, (1,), generator=gen))), {}


def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """[T, T] bool, True where query i may attend to key j: causal, and within the window."""
    i = torch.arange(T)[:, None]  # queries down the rows
    j = torch.arange(T)[None, :]  # keys along the columns
    return (j <= i) & (i - j < window)  # not ahead, and at most window - 1 behind


register(Exercise(
    "sliding_window_mask", "The banded mask of sliding-window attention", NB, difficulty=1, importance=4,
    minutes=5, reference=_sliding_window_mask_by_tinylib, shown=sliding_window_mask, cases=_mask_cases,
    wrong=(_mask_one_too_wide, _mask_not_causal, _mask_as_float, _mask_as_int)))


# --- logit soft-capping ------------------------------------------------------------------------------------

def _soft_cap_by_tinylib(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): close to the identity for |logits| << cap, smoothly bounded by +-cap."""
    return softcap(logits, cap)


def _cap_clamp(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return logits.clamp(-cap, cap)  # bounded, but flat beyond the cap: no gradient there


def _cap_without_factor(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(logits / cap)  # bounded by 1, not by the cap


def _cap_cases(gen: torch.Generator):
    for shape, scale, cap in (((4, 50), 3.0, 5.0), ((2, 8, 100), 40.0, 15.0), ((64,), 100.0, 30.0),
                              ((3, 7), 0.5, 1.0)):
        yield (scale * torch.randn(*shape, generator=gen), cap), {}


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): close to the identity for |logits| << cap, smoothly bounded by +-cap."""
    return cap * torch.tanh(logits / cap)


register(Exercise(
    "soft_cap", "Logit soft-capping", NB, difficulty=1, importance=3, minutes=5,
    reference=_soft_cap_by_tinylib, shown=soft_cap,
    cases=_cap_cases, wrong=(_cap_clamp, _cap_without_factor)))


# --- warmup-stable-decay -----------------------------------------------------------------------------------

def _wsd_lr_by_tinylib(step: int, *, warmup: int, total: int, floor: float) -> float:
    """The factor on the peak lr: (step + 1) / warmup during warmup, then 1 until the decay starts at
    total - round(0.2 * total) (not before warmup ends), then linear to `floor` at `total`; `floor` after."""
    return lr_scale(step, warmup=warmup, total=total, floor=floor, schedule="wsd")


def _wsd_as_cosine(step: int, *, warmup: int, total: int, floor: float) -> float:
    return lr_scale(step, warmup=warmup, total=total, floor=floor)


def _wsd_decay_after_warmup(step: int, *, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    start = warmup + round(0.8 * (total - warmup))  # 20% of the steps after warmup, not of all the steps
    return 1 - (1 - floor) * min(1.0, max(0, step - start) / max(1, total - start))


def _wsd_decay_inside_warmup(step: int, *, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    start = total - round(0.2 * total)  # forgot max(warmup, ...): a long warmup runs into the decay
    return 1 - (1 - floor) * min(1.0, max(0, step - start) / max(1, total - start))


def _wsd_cases(gen: torch.Generator):
    for warmup, total, floor in ((20, 200, 0.1), (10, 110, 0.0), (100, 1000, 0.05), (4, 13, 0.5),
                                 (90, 100, 0.1)):  # warmup ends after 80% of the steps
        start = max(warmup, total - round(0.2 * total))
        mid = int(torch.randint(warmup, total, (1,), generator=gen))
        for step in sorted({0, warmup - 1, warmup, mid, start - 1, start, start + 1, (start + total) // 2,
                            total - 1, total, total + 5}):
            yield (step,), dict(warmup=warmup, total=total, floor=floor)


def wsd_lr(step: int, *, warmup: int, total: int, floor: float) -> float:
    """The factor on the peak lr: warmup, then 1 (stable), then linear to `floor` over the last 20%."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = max(warmup, total - round(0.2 * total))  # the decay never starts inside warmup
    progress = min(1.0, max(0, step - decay_start) / max(1, total - decay_start))
    return 1 - (1 - floor) * progress


register(Exercise(
    "wsd_lr", "Warmup-stable-decay learning-rate schedule", NB, difficulty=2, importance=4, minutes=10,
    reference=_wsd_lr_by_tinylib, shown=wsd_lr,
    cases=_wsd_cases, wrong=(_wsd_as_cosine, _wsd_decay_after_warmup, _wsd_decay_inside_warmup)))
