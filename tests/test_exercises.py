"""Every exercise check passes tinylib's reference and fails each plausible wrong answer, with a message that
says what differs; every notebook has its exercises, and each one is checked in the notebook itself."""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from tinylib.exercises.catalog import REGISTRY
from tinylib.exercises.checks import CheckFailed, check, difference, get, run_check, shown_solution

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny cases: one thread is fastest, even when busy


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_check_passes_the_reference_and_fails_every_wrong_answer(name):
    ex = get(name)
    assert run_check(ex, ex.reference) >= 3, "too few random cases to trust the check"
    assert ex.wrong, f"{name} has no wrong answer: a check that cannot fail is a defect"
    for wrong in ex.wrong:
        with pytest.raises(CheckFailed, match=rf"^{name}\(.*\): .*(expected|differ)"):
            run_check(ex, wrong)
    assert 1 <= ex.difficulty <= 5 and 1 <= ex.importance <= 5 and ex.minutes > 0


def calls_into_tinylib(fn) -> list[str]:
    """The calls in `fn`'s source whose callee is a tinylib object outside tinylib.exercises (a function, a
    class, a module's attribute), resolved in the namespace the source runs in."""
    namespace = vars(sys.modules[fn.__module__])
    found = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if not isinstance(node, ast.Call):
            continue
        root = node.func
        while isinstance(root, ast.Attribute):
            root = root.value
        obj = namespace.get(root.id) if isinstance(root, ast.Name) else None
        where = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if where and where.startswith("tinylib.") and not where.startswith("tinylib.exercises"):
            found.append(ast.unparse(node.func))
    return found


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_shown_solution_is_written_out_not_a_call_into_tinylib(name):
    """A stuck learner learns nothing from `return param_counts(cfg).total`: the solution `solution(name)`
    shows is code that does the work, while the check still compares with tinylib's own function."""
    ex = get(name)
    shown = shown_solution(ex)
    assert not calls_into_tinylib(shown), (
        f"{name}'s shown solution calls into tinylib ({calls_into_tinylib(shown)}): write it out and "
        "register it as Exercise(shown=...), keeping tinylib's function as the reference")
    assert run_check(ex, shown) >= 3


def test_the_written_out_rule_catches_a_call_into_tinylib():
    from tinylib.exercises import nb04_generation

    assert calls_into_tinylib(nb04_generation._top_k_filter_by_tinylib) == ["apply_sampling_rules",
                                                                             "SamplingConfig"]
    assert calls_into_tinylib(nb04_generation.top_k_filter) == []


def test_there_are_enough_exercises_in_every_notebook():
    per_notebook = Counter(ex.notebook for ex in REGISTRY.values())
    assert sum(per_notebook.values()) >= 25
    for nb in ("01_data_and_tokenizers", "02_flop_token_budget", "03_training", "04_generation",
               "05_attention_patterns", "06_neurons", "07_ablations", "10_experiments",
               "11_architecture_lab"):
        assert per_notebook[nb] >= 3, (nb, per_notebook[nb])
    assert per_notebook["12_build_it_yourself"] >= 10  # the build-it-yourself track


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_exercise_is_posed_and_checked_in_its_notebook(name):
    ex = get(name)
    nb = json.loads((NOTEBOOKS / f"{ex.notebook}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert f'check("{name}"' in code, f"notebook {ex.notebook} never checks {name}"
    assert "raise NotImplementedError" in code
    assert f'solution("{name}")' in code and "<summary>Hint" in text
    assert ex.header() in text, f"the notebook's markdown should state: {ex.header()}"


def test_check_says_what_differs_and_returns_the_function_to_use(monkeypatch):
    shape = difference(torch.zeros(2, 3), torch.zeros(3, 2), 1e-5, 1e-4)
    assert shape == "result: expected shape (2, 3), got (3, 2)"
    why = difference(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 3.0]), 1e-5, 1e-4)
    assert why == "result: 1 of 3 values differ; first at index (1,): expected 2, got 2.5"
    assert difference(4096, 4097, 0, 0) == "result: expected 4096, got 4097"

    def stub(logits, k):
        raise NotImplementedError

    monkeypatch.delenv("TINYLIB_SOLUTIONS", raising=False)
    with pytest.raises(NotImplementedError, match="replace `raise NotImplementedError`"):
        check("top_k_filter", stub)
    monkeypatch.setenv("TINYLIB_SOLUTIONS", "1")
    assert check("top_k_filter", stub) is shown_solution(get("top_k_filter"))
    reference = get("top_k_filter").reference
    assert check("top_k_filter", reference) is reference
