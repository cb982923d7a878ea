"""The machinery of the exercises: `Exercise`, the registry, and the comparison that says what differs.

An `Exercise` holds a title, difficulty and importance (1-5), minutes, the reference function (the library's
own code where the library has it), a generator of random cases, and the plausible wrong answers its check
must catch (tests/test_exercises.py proves that every check passes its reference and fails each wrong answer).
The shown solution (`shown`) is code written out for a stuck learner; the reference stays tinylib's own
function, which the check compares with (a test holds every shown solution to having no call into tinylib).
An answer that is not a plain function of a case (a class, a step that updates a model) is run through the
exercise's `harness`.
`run_check` runs a function on every case and raises `CheckFailed` at the first difference, naming the case,
the shape, the first index that differs, expected vs got. What a notebook calls (`check`, `solution`,
`header`) is here too; a notebook imports them from its own module (`nb01_data`, ...), which registers its
exercises.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinylib.config import PRESETS, ModelConfig, get_config

Case = tuple[tuple, dict]


class CheckFailed(AssertionError):
    """The learner's answer differs from the reference; the message says where and how."""


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    notebook: str  # e.g. "04_generation"
    difficulty: int  # 1 (a few lines) .. 5 (a real puzzle)
    importance: int  # 1 (curiosity) .. 5 (you will use this every day)
    minutes: int
    reference: Callable
    cases: Callable[[torch.Generator], Iterable[Case]]  # random inputs, from a seeded generator
    wrong: tuple[Callable, ...] = ()  # plausible mistakes; the check must fail on each
    atol: float = 1e-5
    rtol: float = 1e-4
    # True when any dtype of a tensor or array is a right answer (the check then compares values only); by
    # default a float mask where a bool one is expected, or int32 where int64 is, is a difference.
    any_dtype: bool = False
    setup: str = field(default="", compare=False)  # one line on what the function receives
    # The solution a stuck learner is shown: readable code that passes the check. None: the reference is
    # itself readable code (and not a call into tinylib), so it is shown.
    shown: Callable | None = None
    # For an answer that is not a plain function of the case (a class, a step that mutates a model):
    # `harness(fn)` is the function of the case that is compared with `reference`.
    harness: Callable[[Callable], Callable] | None = None
    # Generic wrong answers (tests/test_exercises.py: the input unchanged, zeros, a constant, shifted by one
    # position or one unit, another dtype) this check cannot reject, each with the reason: (kind, why).
    generic_exempt: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def header(self) -> str:
        return (f"{self.title}: difficulty {'●' * self.difficulty}{'○' * (5 - self.difficulty)}, "
                f"importance {'●' * self.importance}{'○' * (5 - self.importance)}, ~{self.minutes} min")


REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    if ex.name in REGISTRY:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    REGISTRY[ex.name] = ex
    return ex


def shown_solution(ex: Exercise) -> Callable:
    """What `solution` shows and solutions mode runs: `shown`, else the reference."""
    return ex.shown if ex.shown is not None else ex.reference


def get(name: str) -> Exercise:
    if name not in REGISTRY:
        raise KeyError(f"no exercise named {name!r} among those imported ({sorted(REGISTRY)}); import the "
                       "notebook's module, e.g. `from tinylib.exercises.nb04_generation import check`")
    return REGISTRY[name]


def solutions_mode() -> bool:
    return os.environ.get("TINYLIB_SOLUTIONS") == "1"


# --- comparing answers -------------------------------------------------------------------------------------

def describe_config(cfg: Any) -> str:
    """A config as code that rebuilds it: `get_config('llama_tiny', vocab_size=512, n_kv_head=2)` for a
    ModelConfig (the nearest preset and what differs from it), `TrainConfig(lr=0.001)` for another dataclass
    (the fields that differ from the defaults)."""

    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, ModelConfig):
        def overrides(preset: str) -> dict:
            base = vars(get_config(preset, vocab_size=cfg.vocab_size))
            return {k: v for k, v in values.items() if k != "vocab_size" and base.get(k) != v}
        preset = min(PRESETS, key=lambda name: len(overrides(name)))
        rest = "".join(f", {k}={v!r}" for k, v in overrides(preset).items())
        return f"get_config({preset!r}, vocab_size={cfg.vocab_size}{rest})"
    defaults = type(cfg)() if _has_defaults(type(cfg)) else None
    shown = {k: v for k, v in values.items() if defaults is None or getattr(defaults, k) != v}
    return f"{type(cfg).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def _has_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def describe_case(args: tuple, kwargs: dict) -> str:
    def short(v: Any) -> str:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return describe_config(v)  # whole: a config cut off mid-repr names no case
        if isinstance(v, torch.Tensor):
            return f"tensor{tuple(v.shape)}"
        if isinstance(v, np.ndarray):
            return f"array{v.shape}"
        if isinstance(v, (list, tuple)) and any(isinstance(x, (torch.Tensor, list, tuple)) for x in v):
            inner = ", ".join(short(x) for x in v[:3]) + (", ..." if len(v) > 3 else "")
            return f"[{inner}]" if isinstance(v, list) else f"({inner})"
        text = " ".join(repr(v).split())  # one line, whatever the value's repr
        return text if len(text) <= 60 else text[:57] + "..."
    return ", ".join([short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()])


def _dtype(x: torch.Tensor | np.ndarray) -> torch.dtype:
    return x.dtype if isinstance(x, torch.Tensor) else torch.as_tensor(np.zeros(0, dtype=x.dtype)).dtype


def difference(expected: Any, got: Any, atol: float, rtol: float, path: str = "result",
               any_dtype: bool = False) -> str | None:
    """None when `got` matches `expected`, else one sentence saying what differs.

    Infinities match only the same infinity (an expected -inf is not matched by any finite value); a tensor's
    or array's dtype must be the reference's unless `any_dtype`; where the reference returns a Python int, a
    float is a difference even when it is close (a count of steps or bytes is a whole number)."""
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        exp = torch.as_tensor(np.asarray(expected)) if isinstance(expected, np.ndarray) else expected
        if not isinstance(got, (torch.Tensor, np.ndarray)):
            return f"{path}: expected a tensor of shape {tuple(exp.shape)}, got {type(got).__name__}"
        g = torch.as_tensor(np.asarray(got)) if isinstance(got, np.ndarray) else got
        if tuple(g.shape) != tuple(exp.shape):
            return f"{path}: expected shape {tuple(exp.shape)}, got {tuple(g.shape)}"
        if not any_dtype and _dtype(expected) != _dtype(got):
            return (f"{path}: expected dtype {str(expected.dtype).removeprefix('torch.')}, "
                    f"got {str(got.dtype).removeprefix('torch.')}")
        e, gg = exp.detach().double().cpu(), g.detach().double().cpu()
        same = (e == gg) | (e.isnan() & gg.isnan())  # equal infinities included
        close = e.isfinite() & gg.isfinite() & ((e - gg).abs() <= atol + rtol * e.abs())
        bad = ~(same | close)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            return (f"{path}: {int(bad.sum())} of {bad.numel()} values differ; first at index {idx}: "
                    f"expected {e[idx].item():.6g}, got {gg[idx].item():.6g}")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{path}: expected a sequence of {len(expected)} items, got {got!r:.80}"
        for i, (e, g) in enumerate(zip(expected, got)):
            if (why := difference(e, g, atol, rtol, f"{path}[{i}]", any_dtype)) is not None:
                return why
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{path}: expected a dict with keys {sorted(expected)}, got {got!r:.80}"
        for k in expected:
            if (why := difference(expected[k], got[k], atol, rtol, f"{path}[{k!r}]", any_dtype)) is not None:
                return why
        return None
    expected_int = isinstance(expected, (int, np.integer)) and not isinstance(expected, (bool, np.bool_))
    if expected_int and isinstance(got, (float, np.floating)):
        return f"{path}: expected the int {expected!r}, got the float {got!r} (a count is a whole number)"
    if isinstance(expected, float) or isinstance(got, float):
        if not isinstance(got, (int, float)) or not (
                got == expected or math.isfinite(expected) and math.isfinite(got)
                and math.isclose(expected, got, rel_tol=rtol, abs_tol=atol)):
            return f"{path}: expected {expected!r}, got {got!r}"
        return None
    if expected != got or type(expected) is not type(got) and not isinstance(got, type(expected)):
        return f"{path}: expected {expected!r}, got {got!r}"
    return None


def in_place_hook(fn: Callable) -> Callable:
    """A TransformerLens hook may edit its activation in place and return None (TransformerLens then keeps
    the edited tensor): the answer compared is then the edited first argument."""
    def run(act: Any, *args: Any, **kwargs: Any) -> Any:
        out = fn(act, *args, **kwargs)
        return act if out is None else out
    return run


def run_check(ex: Exercise, fn: Callable, seed: int = 0) -> int:
    """Run `fn` on every case of `ex`; raise CheckFailed at the first difference. Returns the case count."""
    gen = torch.Generator().manual_seed(seed)
    # the reference is already a function of the case; a learner's answer (or the shown one) goes through
    run = ex.harness(fn) if ex.harness is not None and fn is not ex.reference else fn
    n = 0
    for args, kwargs in ex.cases(gen):
        expected = ex.reference(*_copy(args), **_copy(kwargs))
        got = run(*_copy(args), **_copy(kwargs))
        why = difference(expected, got, ex.atol, ex.rtol, any_dtype=ex.any_dtype)
        if why is not None:
            raise CheckFailed(f"{ex.name}({describe_case(args, kwargs)}): {why}")
        n += 1
    return n


def _copy(x: Any) -> Any:
    """Each side gets its own copy of the inputs, so a function that edits them in place cannot hide it."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, tuple):
        return tuple(_copy(v) for v in x)
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


# --- what the notebooks call -------------------------------------------------------------------------------

def check(name: str, fn: Callable) -> Callable:
    """Check the learner's `fn` for exercise `name`; return the function later cells should use."""
    ex = get(name)
    try:
        n = run_check(ex, fn)
    except NotImplementedError:
        if not solutions_mode():
            raise NotImplementedError(
                f"{name}: replace `raise NotImplementedError` with your code, then run the cell again "
                f"(stuck? open the hint, then `solution({name!r})`)") from None
        shown = shown_solution(ex)
        n = run_check(ex, shown)
        print(f"✓ {ex.title}: the reference solution passes {n} random cases (solutions mode)")
        return shown
    print(f"✓ {ex.title}: your function matches tinylib's reference on {n} random cases")
    return fn


def solution(name: str):
    """The reference solution's source, in a collapsible block (an HTML object a notebook displays)."""
    from IPython.display import HTML  # only notebooks show solutions

    ex = get(name)
    source = inspect.getsource(shown_solution(ex))
    return HTML(f"<details><summary><b>Solution: {html.escape(ex.title)}</b></summary>"
                f"<pre>{html.escape(source)}</pre></details>")


def header(name: str) -> str:
    """'Title: difficulty ●●○○○, importance ●●●●○, ~10 min' for the exercise's markdown cell."""
    return get(name).header()
