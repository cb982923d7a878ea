"""Generation: the sampler against transformers' reference processors, KV cache == no cache token for token
(GPT-style and LLaMA-style with GQA, random and trained weights, across the context limit), seeds, stop ids,
stop strings, padded vocabularies, batching, streaming that never splits a UTF-8 character, timing, and the
one frozen SamplingConfig that carries the settings."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from tinylib.config import get_config
from tinylib.engine import SamplingConfig, apply_sampling_rules, choose_next, sample_tokens
from tinylib.generate import GenerationResult, TextDecoder, generate, stop_ids_of, stream
from tinylib.model import Transformer
from tinylib.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny-model decoding is fastest on one thread


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("tinystories-512")


def chaotic_model(style: str, vocab_size: int = 512, max_seq_len: int = 48, seed: int = 0,
                  **kw) -> Transformer:
    """A small random model with large weights, so greedy decoding wanders over many ids (a GPT-2-style init
    repeats one id forever, which would make cache-vs-no-cache comparisons vacuous)."""
    preset = "gpt_tiny" if style == "gpt" else "llama_tiny"
    extra = {"n_kv_head": 2} if style == "llama" else {}
    torch.manual_seed(seed)
    cfg = get_config(preset, vocab_size=vocab_size, n_layer=2, n_head=4, d_model=64, d_mlp=128,
                     max_seq_len=max_seq_len, **{**extra, **kw})
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny LLaMA-style (GQA) model trained until greedy decoding recites one sentence with an emoji and
    CJK, which the 512-token BPE splits into single-byte tokens."""
    text = " Tom saw a cat 🙂 and said 你好 to it. The cat was happy."
    ids = tok.encode(text, bos=True, eos=True)
    torch.manual_seed(0)
    cfg = get_config("llama_tiny", vocab_size=576, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_mlp=128,
                     max_seq_len=64)  # vocab padded past the tokenizer's 512, as training may do
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([ids[1:]])
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    return model, text


# ------------------------------------------------------------------------------------------------------------
# Sampling rules against transformers' logits processors


def test_sampling_rules_match_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 97, generator=g) * 3
    ids = torch.randint(0, 97, (4, 12), generator=g)
    seen = torch.zeros(4, 97, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_sampling_rules(logits, SamplingConfig(repetition_penalty=1.3), seen)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, ref)
    for k in (1, 5, 40):
        ours = apply_sampling_rules(logits, SamplingConfig(top_k=k))
        ref = TopKLogitsWarper(k)(ids, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        assert (torch.isfinite(ours).sum(-1) == k).all()
    for p in (0.1, 0.5, 0.9, 0.99):
        ours = apply_sampling_rules(logits, SamplingConfig(top_p=p))
        ref = TopPLogitsWarper(p)(ids, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), p
    ours = apply_sampling_rules(logits, SamplingConfig(temperature=0.7, top_k=20, top_p=0.8))
    warped = TopKLogitsWarper(20)(ids, TemperatureLogitsWarper(0.7)(ids, logits.clone()))
    ref = TopPLogitsWarper(0.8)(ids, warped)
    torch.testing.assert_close(ours, ref)


def test_sampling_frequencies_follow_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    gen = [torch.Generator().manual_seed(1)]
    counts = torch.zeros(5)
    n = 4000
    for _ in range(n):
        counts[choose_next(logits, SamplingConfig(), None, gen)] += 1
    expected = logits.softmax(-1)[0] * n
    assert counts[4] == 0  # a masked id is never drawn
    assert ((counts[:4] - expected[:4]).abs() < 4 * expected[:4].sqrt() + 5).all(), (counts, expected)


def test_settings_are_validated(tok):
    model = chaotic_model("gpt")
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2),
                dict(repetition_penalty=0), dict(max_new_tokens=-1), dict(on_context_full="wrap")):
        with pytest.raises(ValueError, match="invalid sampling settings"):
            generate(model, tok, "Hi", **bad)
        (name, value), = bad.items()
        with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")):
            SamplingConfig(**bad)  # refused where it enters, with the bad value named


def test_sampling_config_is_frozen_and_is_what_runs(tok):
    cfg = SamplingConfig(temperature=0.8, top_k=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"top_p=1\.5 must be in \(0, 1\]"):
        dataclasses.replace(cfg, top_p=1.5)
    model = chaotic_model("gpt")
    by_keywords = generate(model, tok, "Hi", max_new_tokens=15, temperature=0.8, top_k=50, seed=0)
    by_config = generate(model, tok, "Hi", dataclasses.replace(cfg, max_new_tokens=15), seed=0)
    overridden = generate(model, tok, "Hi", SamplingConfig(temperature=0.1), max_new_tokens=15,
                          temperature=0.8, top_k=50, seed=0)  # keywords override the config's fields
    assert by_keywords.tokens == by_config.tokens == overridden.tokens
    engine = SamplingConfig(max_new_tokens=15, temperature=0.8, top_k=50)
    ids = list(sample_tokens(model, by_config.prompt_tokens, engine, seed=0))
    assert ids[:len(by_config.tokens)] == by_config.tokens  # generate runs exactly the engine's ids


def test_unknown_keywords_are_refused(tok):
    model = chaotic_model("gpt")
    with pytest.raises(TypeError, match=r"generate\(\) got unexpected keyword argument\(s\) 'temprature'.*"
                                        r"temperature, top_k, top_p"):
        generate(model, tok, "Hi", temprature=0.5)
    with pytest.raises(TypeError, match=r"stream\(\) got unexpected keyword argument\(s\) 'max_tokens'"):
        stream(model, tok, "Hi", max_tokens=5)
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        generate(model, tok, "Hi", 50)  # a number where the SamplingConfig goes
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        sample_tokens(model, [1, 2], {"temperature": 0})


# ------------------------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_greedy_with_cache_equals_without_cache(style):
    model = chaotic_model(style)
    prompt = [1, 2, 3, 4, 5, 6, 7]
    # 100 new tokens on a 48-token context: the window slides twice, the same way on both paths.
    greedy = SamplingConfig(max_new_tokens=100, temperature=0)
    with_cache = list(sample_tokens(model, prompt, greedy))
    without = list(sample_tokens(model, prompt, dataclasses.replace(greedy, use_cache=False)))
    assert with_cache == without
    assert len(set(with_cache)) > 10  # the comparison is not vacuous
    # The first token is the argmax of a plain forward pass.
    assert with_cache[0] == int(model(torch.tensor([prompt]))[0][0, -1].argmax())


def test_cache_equals_no_cache_on_a_trained_model_and_with_sampling(trained, tok):
    model, _ = trained
    for kw in (dict(temperature=0), dict(temperature=1.0, top_k=20, seed=3),
               dict(temperature=0.9, top_p=0.9, seed=4)):
        a = generate(model, tok, "Tom saw", max_new_tokens=40, use_cache=True, **kw)
        b = generate(model, tok, "Tom saw", max_new_tokens=40, use_cache=False, **kw)
        assert a.tokens == b.tokens and a.text == b.text


def test_cache_equals_no_cache_on_stories260k(llama2c_dir):
    from tinylib.interop.llama2c import load_llama2c
    from tinylib.interop.sentencepiece import SentencePieceTokenizer

    model = load_llama2c(llama2c_dir / "stories260K.bin")  # LLaMA with 8 heads sharing 4 KV heads
    tok = SentencePieceTokenizer(llama2c_dir / "tok512.model")
    a = generate(model, tok, "Once upon a time", max_new_tokens=60, temperature=0)
    b = generate(model, tok, "Once upon a time", max_new_tokens=60, temperature=0, use_cache=False)
    assert a.tokens == b.tokens
    assert a.text.startswith(",") and " " in a.text  # real text: the SentencePiece-aware decoder kept spaces
    assert stop_ids_of(tok) == [1, 2]  # llama2.c's models end a story with BOS


# ------------------------------------------------------------------------------------------------------------
# The context limit


def test_prompt_longer_than_context_is_a_clear_error(tok):
    model = chaotic_model("llama", max_seq_len=16)
    with pytest.raises(ValueError, match="context is 16 tokens: shorten the prompt"):
        generate(model, tok, "Once upon a time there was a little girl who liked to play in the park",
                 bos=True)


def test_context_full_stops_or_slides(tok):
    model = chaotic_model("llama", max_seq_len=16)
    r = generate(model, tok, "Hi", max_new_tokens=50, temperature=0, on_context_full="stop")
    T = len(r.prompt_tokens)
    assert r.stop_reason == "context" and r.n_new == 16 - T + 1  # the last token fills the context exactly
    r = generate(model, tok, "Hi", max_new_tokens=50, temperature=0)  # default: slide
    assert r.stop_reason in ("max_tokens", "eos")
    if r.stop_reason == "max_tokens":
        assert r.n_new == 50


# ------------------------------------------------------------------------------------------------------------
# Seeds, stop ids, vocab masking, batching


def test_seed_reproduces_and_batch_rows_match_single_runs(tok):
    model = chaotic_model("gpt")
    a = generate(model, tok, "Once upon a time", max_new_tokens=30, seed=7, temperature=1.0)
    b = generate(model, tok, "Once upon a time", max_new_tokens=30, seed=7, temperature=1.0)
    c = generate(model, tok, "Once upon a time", max_new_tokens=30, seed=8, temperature=1.0)
    assert a.tokens == b.tokens and a.seed == 7 and a.tokens != c.tokens
    prompts = ["Once upon a time", "Tom", "The dog ran", "Lily saw a big"]
    batch = generate(model, tok, prompts, max_new_tokens=20, seed=7, top_k=50)
    assert [r.prompt for r in batch] == prompts
    for i, (p, r) in enumerate(zip(prompts, batch)):
        single = generate(model, tok, p, max_new_tokens=20, seed=7 + i, top_k=50)
        assert r.tokens == single.tokens and r.text == single.text and r.seed == 7 + i
    greedy = generate(model, tok, prompts, max_new_tokens=20, temperature=0)
    assert [r.tokens for r in greedy] == [generate(model, tok, p, max_new_tokens=20, temperature=0).tokens
                                          for p in prompts]


def test_engine_stops_on_stop_ids_per_row():
    model = chaotic_model("llama")
    greedy = SamplingConfig(max_new_tokens=30, temperature=0)
    free = list(sample_tokens(model, [[1, 2, 3], [4, 5, 6]], greedy))
    first, second = [s[0] for s in free], [s[1] for s in free]
    stop = {first[4], second[9]}
    k0 = next(i for i, t in enumerate(first) if t in stop)
    k1 = next(i for i, t in enumerate(second) if t in stop)
    got = list(sample_tokens(model, [[1, 2, 3], [4, 5, 6]], greedy, stop_ids=stop))
    assert len(got) == max(k0, k1) + 1 and got == free[:len(got)]


def test_engine_accepts_lists_tensors_and_arrays():
    import numpy as np

    model = chaotic_model("gpt")
    rows = [[1, 2, 3], [4, 5, 6]]
    greedy = SamplingConfig(max_new_tokens=5, temperature=0)
    want = list(sample_tokens(model, rows, greedy))
    assert list(sample_tokens(model, torch.tensor(rows), greedy)) == want
    assert list(sample_tokens(model, np.array(rows), greedy)) == want
    assert list(sample_tokens(model, rows[1], greedy)) == [w[1] for w in want]
    with pytest.raises(ValueError, match="different lengths"):
        sample_tokens(model, [[1, 2], [3]], greedy)  # refused at the call, before any decoding


def test_generation_stops_at_end_of_text(tok):
    """A GPT-style model rigged so <|endoftext|> always wins: generation ends at once, with no text."""
    model = chaotic_model("gpt", tie_embeddings=False)
    with torch.no_grad():
        model.norm_f.weight.zero_()
        model.norm_f.bias.fill_(1.0)  # every position's final hidden state is all ones...
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_id] = 1.0  # ...so the eos logit is d_model and every other logit 0
    r = generate(model, tok, "Once upon a time", max_new_tokens=20, temperature=0)
    assert r.stop_reason == "eos" and r.tokens == [] and r.text == ""
    r = generate(model, tok, "Once upon a time", max_new_tokens=20, temperature=1.0, seed=0)
    assert r.stop_reason == "eos"


def test_padded_vocab_ids_are_never_sampled(tok):
    model = chaotic_model("llama", vocab_size=640, tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[tok.vocab_size:] *= 50  # make the padding rows win wherever they can
    for kw in (dict(temperature=0), dict(temperature=1.5, seed=1), dict(temperature=1.0, top_p=0.5, seed=2)):
        r = generate(model, tok, "Hi", max_new_tokens=40, **kw)
        assert r.tokens and max(r.tokens) < tok.vocab_size
    raw = list(sample_tokens(model, [1, 2], SamplingConfig(max_new_tokens=20, temperature=0)))
    assert max(raw) >= tok.vocab_size  # without the mask the padding would have been chosen


def test_repetition_penalty_reduces_repeats(tok):
    model = chaotic_model("gpt")
    plain = generate(model, tok, "Hi", max_new_tokens=40, temperature=0)
    penal = generate(model, tok, "Hi", max_new_tokens=40, temperature=0, repetition_penalty=3.0)
    assert len(set(penal.tokens)) > len(set(plain.tokens))


def test_model_mode_is_restored(tok):
    model = chaotic_model("gpt", dropout=0.1).train()
    a = generate(model, tok, "Hi", max_new_tokens=10, temperature=0)
    b = generate(model, tok, "Hi", max_new_tokens=10, temperature=0)
    assert a.tokens == b.tokens  # dropout was off during generation
    assert model.training


# ------------------------------------------------------------------------------------------------------------
# Text: stop strings, streaming, timing


def test_stop_string_cuts_text_and_stream_agrees(trained, tok):
    model, text = trained
    full = generate(model, tok, "Tom", max_new_tokens=60, temperature=0)
    assert full.stop_reason == "eos" and full.text == text[len(" Tom"):]  # it learned its sentence
    r = generate(model, tok, "Tom", max_new_tokens=60, temperature=0, stop=["to it", "zebra"])
    assert r.stop_reason == "stop_string" and r.text == full.text[:full.text.index("to it")]
    s = stream(model, tok, "Tom", max_new_tokens=60, temperature=0, stop="to it")
    pieces = list(s)
    assert "".join(pieces) == r.text and s.result.text == r.text and s.result.stop_reason == "stop_string"


def test_stream_never_splits_a_character(trained, tok):
    model, text = trained
    s = stream(model, tok, "Tom saw", max_new_tokens=60, temperature=0)
    pieces = list(s)
    assert "".join(pieces) == text[len(" Tom saw"):]
    assert not any("\ufffd" in p for p in pieces)
    emoji_bytes = len("🙂".encode())
    assert s.result.n_new >= len(pieces) + emoji_bytes - 1  # several tokens per character: a split happened
    assert "🙂" in pieces or any(p.startswith("🙂") or p.endswith("🙂") for p in pieces)


def test_text_decoder_matches_bulk_decode_on_arbitrary_bytes(tok):
    """Random ids (so random bytes, broken UTF-8 included): incremental text == decoding all at once."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, tok.vocab_size - 1, (30,), generator=g).tolist()
        dec = TextDecoder(tok)
        pieces = [dec.feed(i) for i in ids] + [dec.finish("max_tokens")]
        assert "".join(pieces) == tok.decode(ids)


def test_text_decoder_with_gpt2_multibyte(gpt2_available):
    gpt2 = get_tokenizer("gpt2")
    text = "A smile 🙂, a dragon 🐉 and 日本語の文字."
    ids = gpt2.encode(text)
    assert len(ids) > len(text.split())  # several ids per emoji/character
    dec = TextDecoder(gpt2, prompt_ids=[gpt2.bos_id])
    pieces = [dec.feed(i) for i in ids]
    assert "".join(pieces) == text and "" in pieces and not any("\ufffd" in p for p in pieces)


def test_result_fields_and_timing(tok):
    model = chaotic_model("llama")
    r = generate(model, tok, "Once", max_new_tokens=12, temperature=0.8, seed=0)
    assert isinstance(r, GenerationResult)
    assert r.prompt_tokens == tok.encode("Once", bos=True)
    assert r.n_new == len(r.tokens) <= 12
    assert 0 < r.time_to_first_token_s <= r.elapsed_s and r.tokens_per_s > 0
    assert r.text == tok.decode(r.tokens)
    s = stream(model, tok, "Once", max_new_tokens=200, temperature=0.8, seed=0)
    next(iter(s), None)
    s.close()  # like the Stop button
    assert s.result.stop_reason in ("interrupted", "eos")
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, tok, "", bos=False)
    assert generate(model, tok, "", max_new_tokens=3, temperature=0).prompt_tokens == [tok.bos_id]


def test_measures(trained, tok):
    from tinylib.generate import continuation_logprob, distinct_n

    assert distinct_n([1, 2, 3, 4, 5], 2) == 1.0 and distinct_n([7, 7, 7, 7, 7], 2) == 0.25
    model, text = trained
    r = generate(model, tok, "Tom", max_new_tokens=60, temperature=0)
    ref = model(torch.tensor([r.prompt_tokens + r.tokens]))[0][0].detach().log_softmax(-1)
    T = len(r.prompt_tokens)
    expected = sum(float(ref[T - 1 + i, t]) for i, t in enumerate(r.tokens)) / len(r.tokens)
    assert continuation_logprob(model, r.prompt_tokens, r.tokens) == pytest.approx(expected, abs=1e-5)
    assert expected > -0.1  # the memorised sentence is near certain
