"""Notebook 12's assembly checks: the reference solutions, put together, give tinylib's logits, training steps
and sampled ids; and a planted wrong part (a LayerNorm eps, a missing causal mask, a KV cache one position
off, a missing zero_grad, a different draw) makes the check fail naming the module it is in."""

from __future__ import annotations

import pytest
import torch

from tinylib.checkpoint import find_reference_checkpoint, load_model, load_tokenizer
from tinylib.exercises import nb12_build as nb
from tinylib.exercises.assembly import (
    AssemblyFailed,
    check_logits,
    check_sampler,
    check_training,
    collect_parts,
    first_merge_difference,
    train_learner_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest, even on a busy CPU


@pytest.fixture(scope="module")
def reference():
    path = find_reference_checkpoint()
    if path is None:
        pytest.skip("checkpoints/reference is not in this checkout")
    return load_model(path), load_tokenizer(path)


def parts():
    return collect_parts(vars(nb))  # the solutions look each other up here, so a monkeypatch plants a part


def test_the_reference_solutions_assemble_into_tinylib(reference):
    model, tok = reference
    diffs = check_logits(parts(), model)
    assert len(diffs) == 3 and max(diffs.values()) <= 1e-4
    trained = check_training(parts())
    assert trained["max_weight_diff"] <= 1e-4 and trained["max_loss_diff"] <= 1e-5
    sampled = check_sampler(parts(), model, tok, "Once upon a time", n_new=16, seed=3)
    assert sampled["n"] >= 1


def _layer_norm_eps_hard_coded(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight + bias  # 1e-6, not the config's norm_eps (1e-5)


def test_a_wrong_layer_norm_eps_is_named(reference, monkeypatch):
    monkeypatch.setattr(nb, "layer_norm", _layer_norm_eps_hard_coded)
    with pytest.raises(AssemblyFailed,
                       match=r"on a GPT-style model .*: blocks\.0\.attn_norm \(layernorm\) is the first"):
        check_logits(parts(), reference[0])


def test_a_missing_causal_mask_is_named(reference, monkeypatch):
    monkeypatch.setattr(nb, "attention", nb._attention_no_mask)
    with pytest.raises(AssemblyFailed,
                       match=r"on the reference checkpoint: blocks\.0\.attn is the first module"):
        check_logits(parts(), reference[0])


def test_a_kv_cache_one_position_off_is_named(reference, monkeypatch):
    monkeypatch.setattr(nb, "KVCache", nb._CacheOnePositionOff)
    with pytest.raises(AssemblyFailed, match=r"with your cache .*: blocks\.0\.attn reading your KVCache: at "
                                             r"position"):
        check_sampler(parts(), *reference, "Once upon a time", n_new=12)


def test_a_missing_zero_grad_is_named(monkeypatch):
    monkeypatch.setattr(nb, "train_step", nb._step_no_zero_grad)
    with pytest.raises(AssemblyFailed,
                       match=r"after step 2 of 5, \S+ \(module \S+\) is the first parameter .*zero_grad"):
        check_training(parts())


def test_a_different_draw_is_named(reference, monkeypatch):
    monkeypatch.setattr(nb, "sample_next", nb._sample_multinomial)
    with pytest.raises(AssemblyFailed, match=r"differ from tinylib's generate at generated token 0 .*: "
                                             r"sample_next"):
        check_sampler(parts(), *reference, "Once upon a time", n_new=12)


def test_the_learners_model_learns():
    """A few seconds of training the assembled model on a text with structure: the loss falls."""
    cfg = nb.small_config("llama", vocab_size=64, max_seq_len=32)
    tokens = (torch.arange(6000) % 7 + 3 * (torch.arange(6000) // 700 % 2)).numpy().astype("uint16")
    run = train_learner_model(parts(), cfg, tokens, tokens, max_steps=40, batch_size=8,
                              seq_len=32, eval_every=20, progress=False)
    assert run.steps == 40 and run.val_losses[-1] < 0.5 * run.val_losses[0]


def test_merges_that_part_at_a_tie_are_told_so():
    texts = ["the cat sat on the mat with the hat", "a bat and a rat sat"] * 3
    theirs = nb.merges_of(nb.train_bpe(texts, 280))
    assert nb.bpe_train(texts, 280) == theirs
    assert first_merge_difference(theirs, theirs, texts) is None
    why = first_merge_difference(nb._bpe_train_ties_largest(texts, 280), theirs, texts)
    assert why is not None and "a tie: break it towards the smaller pair" in why
