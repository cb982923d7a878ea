"""Every exercise check passes tinylib's reference and fails each plausible wrong answer, with a message that
says what differs; every notebook has its exercises, and each one is checked in the notebook itself."""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinylib.exercises.catalog import REGISTRY
from tinylib.exercises.checks import CheckFailed, _copy, check, difference, get, run_check, shown_solution

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


def test_difference_compares_infinities_dtypes_and_ints_exactly():
    inf = float("-inf")
    assert difference(torch.tensor([inf, 1.0]), torch.tensor([inf, 1.0]), 1e-5, 1e-4) is None
    why = difference(torch.tensor([inf, 1.0]), torch.tensor([3.0, 1.0]), 1e-5, 1e-4)
    assert "expected -inf, got 3" in why
    assert "expected 3, got -inf" in difference(torch.tensor([3.0]), torch.tensor([inf]), 1e-5, 1e-4)
    assert difference(torch.ones(2, dtype=torch.bool), torch.ones(2), 0, 0) == (
        "result: expected dtype bool, got float32")
    assert "expected dtype int64, got int32" in difference(torch.arange(3), torch.arange(3).int(), 0, 0)
    assert difference(torch.arange(3), torch.arange(3).int(), 0, 0, any_dtype=True) is None
    assert "expected dtype uint32" in difference(np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.uint16),
                                                 0, 0)
    assert "expected the int 1000, got the float 1000.0" in difference(1000, 1000.0, 1e-5, 1e-4)
    assert difference(1000.0, 1000, 1e-5, 1e-4) is None  # an int where a float is expected is fine
    assert difference(float("inf"), 1e300, 1e-5, 1e-4) is not None


def test_a_config_case_is_named_by_its_preset_and_overrides():
    from tinylib.config import TrainConfig, get_config
    from tinylib.exercises.checks import describe_case

    cfg = get_config("llama_6L_6H_288D", vocab_size=512, n_kv_head=3)
    assert describe_case((cfg, 4), {}) == "get_config('llama_6L_6H_288D', vocab_size=512, n_kv_head=3), 4"
    assert describe_case((TrainConfig(lr=0.5),), {}) == "TrainConfig(lr=0.5)"

    def kv_off_by_100(cfg, batch, context, nbytes):
        return float(get("kv_cache_bytes").reference(cfg, batch, context, nbytes) + 100)

    with pytest.raises(CheckFailed, match=r"^kv_cache_bytes\(get_config\('llama_tiny', vocab_size=512, "
                                          r"n_kv_head=2\), .*expected the int"):
        run_check(get("kv_cache_bytes"), kv_off_by_100)


def wrong_answers_from_the_issue():
    """The plausible wrong answers issue 26 found passing, each by the exercise it must fail."""
    from tinylib.exercises import (
        nb01_data,
        nb02_budget,
        nb04_generation,
        nb06_neurons,
        nb09_finetune,
        nb11_architecture,
    )
    return {
        "top_k_filter": [nb04_generation._top_k_filters_nothing, nb04_generation._top_k_keeps_k_plus_one],
        "top_p_filter": [nb04_generation._top_p_filters_nothing, nb04_generation._top_p_keeps_one_too_many],
        "sliding_window_mask": [nb11_architecture._mask_as_int, nb11_architecture._mask_as_float],
        "top_positions": [nb06_neurons._top_positions_int32],
        "frame_stories": [nb01_data._frame_always_uint16],  # a case has a vocabulary over 65,536
        "step_plan": [nb02_budget._steps_float, nb02_budget._steps_plus_one],  # a case divides exactly
        "kv_cache_bytes": [nb04_generation._kv_bytes_float],
        "chinchilla_tokens": [nb02_budget._chinchilla_truncated],
        "merge_pair": [nb01_data._merge_as_text],  # ([11, 2], (1, 2), 7)
        "wsd_lr": [nb11_architecture._wsd_decay_inside_warmup],  # warmup past the decay start
        "story_word_inclusion": [nb09_finetune._inclusion_s_ed_only],  # smiled, boxes, jumping
        "word_mask": [nb06_neurons._word_mask_inside_words],  # Sadie, tomato, tomb, band
    }


@pytest.mark.parametrize("name", sorted(wrong_answers_from_the_issue()))
def test_the_wrong_answers_that_used_to_pass_fail(name):
    assert_each_fails_naming_the_difference(name, wrong_answers_from_the_issue()[name])


def assert_each_fails_naming_the_difference(name, wrongs):
    ex = get(name)
    for wrong in wrongs:
        assert wrong in ex.wrong
        with pytest.raises(CheckFailed, match=rf"^{name}\(.*\): .*(expected|differ)"):
            run_check(ex, wrong)


def wrong_answers_of_issue_28():
    """The wrong answers issue 28 names for notebook 08's measurements: the wrong head ablated, a patching
    metric normalised by the clean run only, a composition score with no baseline."""
    from tinylib.exercises import nb08_induction as nb08
    return {
        "ablation_table": [nb08._ablate_the_neighbour, nb08._ablate_in_layer_one],
        "patching_recovered": [nb08._recovered_by_clean_only],
        "k_composition_excess": [nb08._excess_no_baseline],
        "repeat_spans": [nb08._spans_into_x_only, nb08._spans_same_index_in_y],
    }


@pytest.mark.parametrize("name", sorted(wrong_answers_of_issue_28()))
def test_the_wrong_answers_of_issue_28_fail(name):
    assert_each_fails_naming_the_difference(name, wrong_answers_of_issue_28()[name])


def test_the_specific_cases_are_there():
    from tinylib.exercises.nb01_data import merge_pair
    from tinylib.exercises.nb09_finetune import story_word_inclusion

    assert merge_pair([11, 2], (1, 2), 7) == [11, 2]
    assert story_word_inclusion("She smiled at the boxes while jumping.", ["smile", "box", "jump"]) == 1.0
    gen = torch.Generator().manual_seed(0)
    assert any(args[0].vocab_size > 65_536 for args, _ in get("frame_stories").cases(gen))
    assert any(args[0] % args[1] == 0 for args, _ in
               [((t, m * s * a * w), k) for (t, m, s, a, w), k in get("step_plan").cases(gen)])
    assert any(kw["warmup"] > kw["total"] - round(0.2 * kw["total"]) for _, kw in get("wsd_lr").cases(gen))


def test_whole_words_only_and_an_in_place_hook_returning_none_pass():
    from tinylib.interp.neurons import word_positions
    from tinylib.tokenizer import get_tokenizer

    tok = get_tokenizer("tinystories-512")
    ids = torch.tensor([tok.encode("Sadie saw a tomato and a tomb in the band, Tom was sad.")])
    mask = word_positions(tok, ids, ["sad", "Tom", "and"])
    marked = [tok.decode(ids[0, : t + 1].tolist()).split()[-1] for t in mask[0].nonzero().flatten().tolist()]
    assert marked == ["and", "Tom", "sad"], marked

    def zero_in_place(z, hook, head):
        z[:, :, head] = 0.0  # TransformerLens keeps the edited tensor when a hook returns None

    def mean_in_place(z, hook, head, mean_z):
        z[:, :, head] = mean_z[head]

    assert run_check(get("zero_ablate_head"), zero_in_place) >= 3
    assert run_check(get("mean_ablate_head"), mean_in_place) >= 3


# --- generic wrong answers, built from each reference's own result ------------------------------------------

def _leaves(x: Any, leaf: Callable[[Any], Any], sequence: Callable[[Any], Any] | None = None) -> Any:
    """`x` with `leaf` applied to every tensor, array and scalar in it (`sequence` to lists and tuples)."""
    if sequence is not None and isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return sequence(x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_leaves(v, leaf, sequence) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_leaves(v, leaf, sequence) for v in x)
    if isinstance(x, dict):
        if sequence is not None and len(x) > 1:  # each value moves to the next key
            values = list(x.values())
            return dict(zip(x, values[-1:] + values[:-1]))
        return {k: _leaves(v, leaf, sequence) for k, v in x.items()}
    return leaf(x)


def _zeros(x):
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x)
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    return type(x)(0) if isinstance(x, (bool, int, float)) else "" if isinstance(x, str) else x


def _constant(x):
    if isinstance(x, torch.Tensor):
        return torch.full_like(x, True if x.dtype == torch.bool else 3)
    if isinstance(x, np.ndarray):
        return np.full_like(x, 3)
    return type(x)(3) if isinstance(x, (bool, int, float)) else "the" if isinstance(x, str) else x


def _roll(x):
    if isinstance(x, torch.Tensor) and x.ndim and x.shape[-1] > 1:
        return x.roll(1, -1)
    if isinstance(x, np.ndarray) and x.ndim and x.shape[-1] > 1:
        return np.roll(x, 1, -1)
    return x


def _rotate(seq):
    return type(seq)(list(seq[-1:]) + list(seq[:-1])) if len(seq) > 1 else type(seq)(_roll(v) for v in seq)


def _one_unit(x):
    """+1 on an integer, 1 + 1% on a float (a tolerance absorbs less), a bool flipped."""
    if isinstance(x, torch.Tensor):
        return ~x if x.dtype == torch.bool else x + 1 + 0.01 * x.abs() if x.is_floating_point() else x + 1
    if isinstance(x, np.ndarray):
        return ~x if x.dtype == bool else x + 1 + 0.01 * np.abs(x) if x.dtype.kind == "f" else x + 1
    if isinstance(x, bool):
        return not x
    return x + 1 if isinstance(x, int) else x + 1 + 0.01 * abs(x) if isinstance(x, float) else x


_OTHER_DTYPE = {torch.float32: torch.float64, torch.float64: torch.float32, torch.bool: torch.int64,
                torch.int64: torch.int32, torch.int32: torch.int64, torch.uint8: torch.int64,
                torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _other_dtype(x):
    if isinstance(x, torch.Tensor):
        return x.to(_OTHER_DTYPE.get(x.dtype, torch.float64))
    if isinstance(x, np.ndarray):
        return x.astype(np.int32 if x.dtype == np.int64 else np.int64)
    if isinstance(x, np.dtype):  # a dtype as the answer: the other width
        return np.dtype(np.uint32 if x == np.uint16 else np.uint16)
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


GENERIC = {"zeros": lambda e: _leaves(e, _zeros), "constant": lambda e: _leaves(e, _constant),
           "shifted_position": lambda e: _leaves(e, _roll, _rotate),
           "shifted_unit": lambda e: _leaves(e, _one_unit), "wrong_dtype": lambda e: _leaves(e, _other_dtype)}


def _same(a: Any, b: Any) -> bool:
    """Structurally identical: the mutation found nothing to change (a float has no dtype to get wrong)."""
    return difference(a, b, 0.0, 0.0) is None and type(a) is type(b) and repr(a) == repr(b)


def generic_wrong_answers_passed(ex) -> list[str]:
    """The generic wrong answers `ex`'s check accepts, compared case by case exactly as `run_check` compares
    (a harness exercise's answer is its harness's result). A mutation that changes nothing in any case (no
    position in a scalar, no dtype in a float) does not apply."""
    cases = list(ex.cases(torch.Generator().manual_seed(0)))
    expected = [ex.reference(*_copy(args), **_copy(kwargs)) for args, kwargs in cases]

    def rejected(gots) -> bool:
        return any(difference(e, g, ex.atol, ex.rtol, any_dtype=ex.any_dtype) is not None
                   for e, g in zip(expected, gots))

    passed = [] if rejected([args[0] if args else None for args, _ in cases]) else ["identity"]
    for kind, mutate in GENERIC.items():
        gots = [mutate(e) for e in expected]
        if not all(_same(e, g) for e, g in zip(expected, gots)) and not rejected(gots):
            passed.append(kind)
    return passed


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_check_rejects_generic_wrong_answers(name):
    """Each check rejects the input returned unchanged, zeros, a constant, its own result shifted by one
    position or one unit, and its result in another dtype; one that passes must be declared in the exercise's
    `generic_exempt` with its reason."""
    ex = get(name)
    exempt = dict(ex.generic_exempt)
    passed = generic_wrong_answers_passed(ex)
    unexplained = [k for k in passed if k not in exempt]
    assert not unexplained, f"{name}'s check accepts the generic wrong answers {unexplained}"
    stale = [k for k in exempt if k not in passed]
    assert not stale, f"{name} declares {stale} exempt, but its check rejects them: drop the declaration"


def test_the_generic_wrong_answers_catch_a_weak_check():
    from tinylib.exercises.checks import Exercise

    def weak_cases(gen):  # every case expects zeros, of one dtype, the input's shape
        for n in (3, 4, 5):
            yield (torch.zeros(n),), {}

    weak = Exercise("weak", "weak", "none", 1, 1, 1, reference=lambda x: torch.zeros_like(x),
                    cases=weak_cases, any_dtype=True)
    assert generic_wrong_answers_passed(weak) == ["identity", "wrong_dtype"]  # zeros: nothing to change
    assert generic_wrong_answers_passed(get("token_dtype")) == []
