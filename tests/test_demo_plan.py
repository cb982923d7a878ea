"""The demo's plan: timing tables give the expected choice, a budget nothing fits is refused with the way out,
and a plan repeats exactly."""

from __future__ import annotations

import pytest
import torch

from tinylib.demo.__main__ import plan_run
from tinylib.demo.plan import (
    CANDIDATES,
    MIN_STEPS,
    Candidate,
    Plan,
    PlanError,
    candidate_named,
    choose,
    measure,
    steps_in,
)

BIG = Candidate("big", "tiny", {"d_model": 192, "n_head": 6}, min_steps=1000, about="wider")
MID = Candidate("mid", "tiny", {}, min_steps=500, about="the tiny preset")
SMALL = Candidate("small", "tiny", {"mlp": "relu2"}, min_steps=0, about="cheaper")
TABLE = (BIG, MID, SMALL)


def test_steps_in_holds_back_the_overhead():
    assert steps_in(600, 0.5) == 1080  # 600 s x 0.9 / 0.5 s
    assert steps_in(600, 0.5, overhead=0.0) == 1200
    with pytest.raises(ValueError, match="positive"):
        steps_in(600, 0.0)


@pytest.mark.parametrize("timings, expected", [
    ({"big": 0.3, "mid": 0.2, "small": 0.15}, "big"),  # a fast machine: 1,800 steps of the big one
    ({"big": 0.9, "mid": 0.6, "small": 0.5}, "mid"),  # big gets 600 of its 1,000; mid gets 900
    ({"big": 3.0, "mid": 1.5, "small": 1.2}, "small"),  # mid gets 360 of its 500; small gets 450
])
def test_the_largest_candidate_that_gets_its_steps_is_chosen(timings, expected):
    plan = choose(timings, 600, TABLE)
    assert plan.name == expected
    assert plan.steps == steps_in(600, timings[expected])
    assert expected in plan.reason and f"{plan.steps:,} steps" in plan.reason
    for skipped in TABLE[:[c.name for c in TABLE].index(expected)]:  # why each bigger one lost
        assert f"{skipped.name} would get {steps_in(600, timings[skipped.name]):,} of the" in plan.reason


def test_a_budget_nothing_fits_is_refused_with_what_would_fit():
    timings = {"big": 9.0, "mid": 6.0, "small": 5.0}  # small: 108 steps in 10 minutes, MIN_STEPS is 200
    with pytest.raises(PlanError, match=r"no candidate fits 10.0 minutes .* Give --minutes 19 or more"):
        choose(timings, 600, TABLE)
    assert MIN_STEPS * 5.0 / 0.9 / 60 == pytest.approx(18.5, abs=0.1)


def test_a_missing_timing_is_named():
    with pytest.raises(ValueError, match=r"no measured step time for \['small'\]"):
        choose({"big": 0.1, "mid": 0.1}, 600, TABLE)


def test_the_shipped_candidates_are_ordered_and_end_with_a_fallback():
    assert CANDIDATES[-1].min_steps == 0
    assert [c.min_steps for c in CANDIDATES] == sorted((c.min_steps for c in CANDIDATES), reverse=True)
    assert len({c.name for c in CANDIDATES}) == len(CANDIDATES)
    for c in CANDIDATES:
        c.train_config().model_config(4096)  # every candidate builds


def test_a_plan_repeats_from_its_json_or_its_name():
    plan = choose({c.name: 0.1 for c in CANDIDATES}, 600)
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.candidate() == CANDIDATES[0]
    assert candidate_named(plan.name) == plan.candidate()
    with pytest.raises(PlanError, match="unknown plan 'huge'"):
        candidate_named("huge")
    with pytest.raises(PlanError, match="is not a plan's JSON"):
        Plan.from_json('{"name": "tiny-relu2-512"')


class Args:
    minutes, preset, plan = 10.0, None, None


def test_plan_run_takes_a_plan_or_a_preset_without_measuring(monkeypatch):
    monkeypatch.setattr("tinylib.demo.__main__.measure", lambda *a, **k: pytest.fail("measured"))
    args = Args()
    args.plan = CANDIDATES[-1].name
    cand, why = plan_run(args, torch.device("cpu"), torch.float32, 4096)
    assert cand == CANDIDATES[-1] and "no planning" in why
    args.plan = choose({c.name: 0.1 for c in CANDIDATES}, 600).to_json()
    assert plan_run(args, torch.device("cpu"), torch.float32, 4096)[0] == CANDIDATES[0]
    args.plan, args.preset = None, "tiny"  # the demo before plans: the tiny preset, batch 16, the same recipe
    cand, _ = plan_run(args, torch.device("cpu"), torch.float32, 4096)
    cfg = cand.train_config()
    assert (cfg.preset, cfg.batch_size, cfg.seq_len, cfg.optimizer, cfg.model_overrides) == (
        "tiny", 16, 256, "muon", {"dropout": 0.1, "attn_dropout": 0.0})


def test_measure_times_real_steps_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cands = (Candidate("a", "tiny", {"n_layer": 1, "d_model": 32, "n_head": 2}, batch_size=2, seq_len=16),
             Candidate("b", "tiny", {"n_layer": 2, "d_model": 64, "n_head": 2}, batch_size=2, seq_len=16))
    timings = measure(cands, 256, torch.device("cpu"), torch.float32, steps=2)
    assert set(timings) == {"a", "b"} and all(t > 0 for t in timings.values())
    assert torch.equal(torch.rand(3), expected)


def test_dropout_follows_the_passes_over_the_sample():
    """The first candidate (the many-pass bf16 budget) keeps residual dropout; the batch-8 x 256 candidates
    (the few-pass AVX2 budget, where dropout only cost: 1.067 vs 1.053 bits/byte) train without it; attention
    dropout is off."""
    overrides = {c.name: c.train_config().model_overrides for c in CANDIDATES}
    assert overrides["tiny-relu2-512"]["dropout"] == 0.1
    assert overrides["tiny-relu2-b8"]["dropout"] == overrides["small-relu2-b8"]["dropout"] == 0.0
    assert all(o["attn_dropout"] == 0.0 for o in overrides.values())
