"""Exercises for the notebooks: the learner writes a function, `check` runs it against tinylib's reference.

A notebook cell reads

    def top_k_filter(logits, k):
        raise NotImplementedError  # your code

    top_k_filter = check("top_k_filter", top_k_filter)

`check` runs the learner's function on random cases and raises `CheckFailed` naming what differs; on success
it returns the function, so later cells use it. With TINYLIB_SOLUTIONS=1 (how the tests run the notebooks) an
unimplemented stub is replaced by the reference. `solution(name)` shows the reference's source in a
collapsible block; `header(name)` the title, difficulty, importance and time. See `tinylib.exercises.checks`
for the machinery and the `nbXX_*` modules for the exercises of each notebook.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable

from tinylib.exercises import (  # noqa: F401  (importing a module registers its exercises)
    nb01_data,
    nb02_budget,
    nb03_training,
    nb04_generation,
    nb05_attention,
    nb06_neurons,
    nb07_ablations,
)
from tinylib.exercises.checks import REGISTRY, CheckFailed, Exercise, get, run_check, solutions_mode

__all__ = ["REGISTRY", "CheckFailed", "Exercise", "check", "get", "header", "solution"]


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
        n = run_check(ex, ex.reference)
        print(f"✓ {ex.title}: the reference solution passes {n} random cases (solutions mode)")
        return ex.reference
    print(f"✓ {ex.title}: your function matches tinylib's reference on {n} random cases")
    return fn


def solution(name: str):
    """The reference solution's source, in a collapsible block (an HTML object a notebook displays)."""
    from IPython.display import HTML  # only notebooks show solutions

    ex = get(name)
    source = inspect.getsource(ex.reference)
    return HTML(f"<details><summary><b>Solution: {html.escape(ex.title)}</b></summary>"
                f"<pre>{html.escape(source)}</pre></details>")


def header(name: str) -> str:
    """'Title: difficulty ●●○○○, importance ●●●●○, ~10 min' for the exercise's markdown cell."""
    return get(name).header()
