"""Activation patching on the shipped reference model: the names task lines up in our BPE, the grid's fixed
points (0 where nothing differs, exactly 1 where the whole answer is patched in), and every cell against the
same patch done with plain PyTorch hooks on the tinylib model (no TransformerLens)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from tinylib.checkpoint import find_reference_checkpoint, load_model, load_tokenizer
from tinylib.interp.bridge import to_lens
from tinylib.interp.patching import (
    NAMES_TASK,
    NamesTask,
    logit_diff,
    patch_heads,
    patch_residual,
    plot_head_patching,
    plot_residual_patching,
)
from tinylib.tokenizer import get_tokenizer

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: a tiny model runs fastest on one thread


@pytest.fixture(scope="module")
def reference():
    path = find_reference_checkpoint()
    if path is None:
        pytest.skip("no reference checkpoint (checkpoints/reference) in this checkout")
    model, tok = load_model(path).eval(), load_tokenizer(path)
    return model, tok, to_lens(model, tok)


@pytest.fixture(scope="module")
def residual(reference):
    return patch_residual(reference[2])


def test_names_task_lines_up_in_our_bpe():
    tok = get_tokenizer("tinystories-4096")
    clean, corrupted = tok.encode(NAMES_TASK.clean, bos=True), tok.encode(NAMES_TASK.corrupted, bos=True)
    assert len(clean) == len(corrupted)
    differ = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
    assert len(differ) == 3  # the three names, each one token
    assert len(tok.encode(NAMES_TASK.answer, bos=False)) == len(tok.encode(NAMES_TASK.wrong, bos=False)) == 1


def _prompts(tok):
    return (torch.tensor([tok.encode(t, bos=True)]) for t in (NAMES_TASK.clean, NAMES_TASK.corrupted))


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # a tinylib Block returns (residual, pattern)


@torch.no_grad()
def _native(model, clean, corrupted, answer, wrong, module, patch):
    """The corrupted run's logit difference with `patch(value, clean_value)` applied in plain PyTorch to
    `module`'s output, or for an o_proj to its input (the heads' concatenated outputs)."""
    grab = []
    if isinstance(module, torch.nn.Linear):
        h = module.register_forward_pre_hook(lambda _m, args: grab.append(args[0].clone()))
        model(clean)
        h.remove()
        h = module.register_forward_pre_hook(lambda _m, args: (patch(args[0].clone(), grab[0]),))
    else:
        h = module.register_forward_hook(lambda _m, _i, out: grab.append(_first(out).clone()))
        model(clean)
        h.remove()

        def fn(_m, _i, out):
            patched = patch(_first(out).clone(), grab[0])
            return (patched, *out[1:]) if isinstance(out, tuple) else patched
        h = module.register_forward_hook(fn)
    try:
        return float(logit_diff(model(corrupted)[0], answer, wrong)[0])
    finally:
        h.remove()


def test_residual_grid_fixed_points_and_native_hooks(reference, residual):
    model, tok, _ = reference
    r = residual
    clean, corrupted = _prompts(tok)
    T, L = clean.shape[1], model.cfg.n_layer
    assert r.grid.shape == (L + 1, T) and len(r.columns) == T
    assert r.rows[-1] == f"blocks.{L - 1}.hook_resid_post"
    assert r.clean_diff > 0 > r.corrupted_diff  # the model names the other child in both prompts
    same = (clean == corrupted)[0]
    assert r.grid[0, same].abs().max() < 1e-5  # patching an identical embedding changes nothing
    assert r.grid[-1, -1] == pytest.approx(1.0, abs=1e-4)  # the final stream, last position: clean logits
    assert r.grid[-1, :-1].abs().max() < 1e-5  # earlier positions' final stream reaches no later logit
    answer, wrong = (tok.encode(a, bos=False)[0] for a in (NAMES_TASK.answer, NAMES_TASK.wrong))
    span = r.clean_diff - r.corrupted_diff
    for row, module in [(0, model.tok_emb), (1, model.blocks[0]), (L, model.blocks[L - 1])]:
        for pos in range(T):
            def patch(out, clean_out, _p=pos):
                out[:, _p] = clean_out[:, _p]
                return out
            want = (_native(model, clean, corrupted, answer, wrong, module, patch) - r.corrupted_diff) / span
            assert float(r.grid[row, pos]) == pytest.approx(want, abs=2e-3), (row, pos)
    assert "Tom/ Lily" in r.columns[3] and r.top(1)[0][2] == pytest.approx(1.0, abs=1e-4)


def test_head_grid_against_native_hooks(reference):
    model, tok, bridge = reference
    r = patch_heads(bridge)
    L, H, d = model.cfg.n_layer, model.cfg.n_head, model.cfg.d_head
    assert r.grid.shape == (L, H) and r.columns == [f"H{h}" for h in range(H)]
    clean, corrupted = _prompts(tok)
    answer, wrong = (tok.encode(a, bos=False)[0] for a in (NAMES_TASK.answer, NAMES_TASK.wrong))
    span = r.clean_diff - r.corrupted_diff
    for layer in (0, L - 1):
        for h in range(H):
            def patch(z, clean_z, _h=h):
                z[..., _h * d:(_h + 1) * d] = clean_z[..., _h * d:(_h + 1) * d]
                return z
            got = _native(model, clean, corrupted, answer, wrong, model.blocks[layer].attn.o_proj, patch)
            assert float(r.grid[layer, h]) == pytest.approx((got - r.corrupted_diff) / span, abs=2e-3)
    assert plot_head_patching(r) is not None


def test_plots_draw(residual):
    fig = plot_residual_patching(residual)
    assert "fraction recovered" in fig.axes[-1].get_ylabel()


def test_bad_tasks_say_what_to_fix(reference):
    bridge = reference[2]
    with pytest.raises(ValueError, match="same length"):
        patch_residual(bridge, NamesTask(corrupted="Ellie and Tom went to the park. Ellie gave the ball to"))
    with pytest.raises(ValueError, match="one token"):
        patch_heads(bridge, NamesTask(answer=" Ellie"))
    with pytest.raises(ValueError, match="nothing to recover"):
        patch_heads(bridge, NamesTask(corrupted=NAMES_TASK.clean))


def test_fraction_recovered_is_linear_between_the_two_runs():
    from tinylib.interp.patching import fraction_recovered

    got = fraction_recovered(torch.tensor([-3.0, 5.0, 1.0, 9.0]), 5.0, -3.0)
    assert got.tolist() == [0.0, 1.0, 0.5, 1.5]


def test_names_tasks_line_up_and_the_profile_matches_the_patterns(reference):
    from tinylib.interp.circuits import head_direct_logits
    from tinylib.interp.patching import name_head_profile, names_tasks

    model, tok, _ = reference
    tasks = names_tasks(tok)
    assert len(tasks) >= 30 and tasks[0] == NAMES_TASK
    for task in tasks:
        assert len(tok.encode(task.clean)) == len(tok.encode(task.corrupted))
    profile = name_head_profile(model, tok, tasks[:3], 3, 2)
    ids = torch.tensor([tok.encode(tasks[0].clean, bos=True)])
    _, patterns = model.forward_with_patterns(ids)
    assert float(profile.to_answer[0]) == pytest.approx(float(patterns[3][0, 2, -1, 3]), abs=1e-6)  # " Tom"
    assert float(profile.to_repeated[0]) == pytest.approx(float(patterns[3][0, 2, -1, 9]), abs=1e-6)
    answer, wrong = tok.encode(" Tom", bos=False)[0], tok.encode(" Lily", bos=False)[0]
    logits = head_direct_logits(model, ids, 3, 2)[0, -1]
    assert float(profile.direct[0]) == pytest.approx(float(logits[answer] - logits[wrong]), abs=1e-5)
