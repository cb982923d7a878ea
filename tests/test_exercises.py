"""Every exercise check passes tinylib's reference and fails each plausible wrong answer, with a message that
says what differs; every notebook has its exercises, and each one is checked in the notebook itself."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tinylib.exercises.catalog import REGISTRY
from tinylib.exercises.checks import CheckFailed, check, difference, get, run_check

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_check_passes_the_reference_and_fails_every_wrong_answer(name):
    ex = get(name)
    assert run_check(ex, ex.reference) >= 3, "too few random cases to trust the check"
    assert ex.wrong, f"{name} has no wrong answer: a check that cannot fail is a defect"
    for wrong in ex.wrong:
        with pytest.raises(CheckFailed, match=rf"^{name}\(.*\): .*(expected|differ)"):
            run_check(ex, wrong)
    assert 1 <= ex.difficulty <= 5 and 1 <= ex.importance <= 5 and ex.minutes > 0


def test_there_are_enough_exercises_in_every_notebook():
    per_notebook = Counter(ex.notebook for ex in REGISTRY.values())
    assert sum(per_notebook.values()) >= 25
    for nb in ("01_data_and_tokenizers", "02_flop_token_budget", "03_training", "04_generation",
               "05_attention_patterns", "06_neurons", "07_ablations", "10_experiments",
               "11_architecture_lab"):
        assert per_notebook[nb] >= 3, (nb, per_notebook[nb])


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
    assert check("top_k_filter", stub) is get("top_k_filter").reference
    reference = get("top_k_filter").reference
    assert check("top_k_filter", reference) is reference
