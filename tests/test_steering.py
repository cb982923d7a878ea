"""Steering on the shipped reference model: strength 0 is plain generation token for token, the hook adds
exactly strength x direction, the KV-cache path equals the recompute path under steering, the direction is the
mean difference TransformerLens's hooks give, and the happy-sad direction moves " happy" against " sad"."""

from __future__ import annotations

import pytest
import torch

from tinylib.checkpoint import find_reference_checkpoint, load_model, load_tokenizer
from tinylib.generate import generate
from tinylib.interp.bridge import to_lens
from tinylib.interp.steering import HAPPY, SAD, happy_sad_vector, steer, steering_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny-model decoding is fastest on one thread
LAYER = 2


@pytest.fixture(scope="module")
def reference():
    path = find_reference_checkpoint()
    if path is None:
        pytest.skip("no reference checkpoint (checkpoints/reference) in this checkout")
    return load_model(path).eval(), load_tokenizer(path)


@pytest.fixture(scope="module")
def vector(reference):
    return happy_sad_vector(*reference, LAYER)


def test_strength_zero_is_plain_generation(reference, vector):
    model, tok = reference
    plain = generate(model, tok, "Once upon a time", max_new_tokens=40, temperature=0.8, seed=7)
    with steer(model, vector, 0.0):
        steered = generate(model, tok, "Once upon a time", max_new_tokens=40, temperature=0.8, seed=7)
    assert steered.tokens == plain.tokens and len(plain.tokens) > 10
    with steer(model, vector, 4.0):
        moved = generate(model, tok, "Once upon a time", max_new_tokens=40, temperature=0.8, seed=7)
    assert moved.tokens != plain.tokens


@torch.no_grad()
def test_hook_adds_exactly_the_vector_and_is_removed(reference, vector):
    model, tok = reference
    ids = torch.tensor([tok.encode("Tom and his dog", bos=True)])
    seen = []
    grab = model.blocks[LAYER].register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
    with steer(model, vector, 3.0):  # registered after `grab`, so `grab` sees the unsteered output
        steered_logits = model(ids)[0]
    grab.remove()
    with steer(model, vector.direction, 3.0, layer=LAYER):
        hooks = [model.blocks[LAYER].register_forward_hook(lambda _m, _i, out: seen.append(out[0]))]
        model(ids)
        hooks[0].remove()
    torch.testing.assert_close(seen[1] - seen[0], (3.0 * vector.direction).expand_as(seen[0]),
                               atol=1e-5, rtol=0)
    assert not model.blocks[LAYER]._forward_hooks  # both steering hooks are gone
    assert not torch.equal(model(ids)[0], steered_logits)


def test_cache_and_recompute_agree_under_steering(reference, vector):
    """The recompute path steers every position of every step; equal ids mean the cached prompt and every
    new token were steered too."""
    model, tok = reference
    with steer(model, vector, 2.0):
        cached = generate(model, tok, "The little bird", max_new_tokens=30, temperature=0)
        recomputed = generate(model, tok, "The little bird", max_new_tokens=30, temperature=0,
                              use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert cached.tokens != generate(model, tok, "The little bird", max_new_tokens=30, temperature=0).tokens


def test_direction_is_the_mean_difference_of_lens_activations(reference, vector):
    model, tok = reference
    bridge = to_lens(model, tok)
    name = f"blocks.{LAYER}.hook_resid_post"

    def mean(prompts):
        rows = []
        for text in prompts:
            _, cache = bridge.run_with_cache(torch.tensor([tok.encode(text, bos=True)]), names_filter=[name])
            rows.append(cache[name][0, 1:].float().mean(0))
        return torch.stack(rows).mean(0)

    torch.testing.assert_close(vector.direction, mean(HAPPY) - mean(SAD), atol=1e-4, rtol=1e-4)
    assert vector.layer == LAYER and vector.name == "happy - sad" and vector.norm > 0


@torch.no_grad()
def test_happy_direction_favours_happy_words(reference, vector):
    model, tok = reference
    ids = torch.tensor([tok.encode("Lily looked at the box and felt very", bos=True)])
    happy, sad = tok.encode(" happy", bos=False)[0], tok.encode(" sad", bos=False)[0]
    gaps = []
    for strength in (-4.0, -2.0, 0.0, 2.0, 4.0):
        with steer(model, vector, strength):
            last = model(ids)[0][0, -1]
        gaps.append(float(last[happy] - last[sad]))
    assert gaps == sorted(gaps) and gaps[-1] - gaps[0] > 4, gaps


def test_bad_input_says_what_to_fix(reference, vector):
    model, tok = reference
    with pytest.raises(ValueError, match="pick a layer from 0 to 3"):
        steering_vector(model, tok, HAPPY, SAD, layer=9)
    with pytest.raises(ValueError, match="non-empty list"):
        steering_vector(model, tok, "happy", SAD, layer=0)
    with pytest.raises(ValueError, match="needs layer="):
        with steer(model, vector.direction, 1.0):
            pass
    with pytest.raises(ValueError, match=r"expected \(128,\)"):
        with steer(model, torch.zeros(64), 1.0, layer=0):
            pass


def test_sentiment_counts_whole_words_only():
    from tinylib.interp.steering import sentiment_counts

    assert sentiment_counts("Lily was happy. She smiled, then cried: SAD day, sadly.") == (2, 2)
    assert sentiment_counts("unhappy Sadie") == (0, 0)


def test_steering_curve_at_strength_zero_is_the_unsteered_model_on_its_own_stories(reference, vector):
    from tinylib.interp.steering import plot_steering_curve, steering_curve, story_loss

    model, tok = reference
    curve = steering_curve(model, tok, vector, [0.0, 8.0], n_stories=3, max_new_tokens=12, progress=False)
    plain = generate(model, tok, ["Once upon a time"] * 3, seed=0, max_new_tokens=12)
    assert curve.texts[0] == [r.text for r in plain]  # the same seeds at every strength
    r = plain[1]
    ids = torch.tensor([r.prompt_tokens + r.tokens])
    logits, _ = model(ids)
    n = len(r.prompt_tokens)
    expected = torch.nn.functional.cross_entropy(logits[0, n - 1:-1].float(), ids[0, n:]).item()
    assert story_loss(model, r.prompt_tokens, r.tokens) == pytest.approx(expected, rel=1e-5)
    assert float(curve.fluency[0, 1]) == pytest.approx(expected, rel=1e-5)
    rows = curve.summary()
    assert [row["strength"] for row in rows] == [0.0, 8.0]
    assert rows[1]["sentiment"] >= rows[0]["sentiment"] and rows[1]["fluency"] > rows[0]["fluency"]
    assert rows[0]["sentiment_ci"][0] <= rows[0]["sentiment"] <= rows[0]["sentiment_ci"][1]
    import matplotlib
    matplotlib.use("Agg")
    assert plot_steering_curve(curve) is not None
    with pytest.raises(ValueError, match="at least 2 stories"):
        steering_curve(model, tok, vector, [0.0], n_stories=1)
