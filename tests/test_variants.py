"""The architecture-lab variants: each against a closed form or a reference computation, cached == uncached,
save/load, FLOPs against PyTorch's counter, and export either exact or refused with the field named."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_generate import chaotic_model

from tinylib.checkpoint import load_model, save_checkpoint
from tinylib.config import ModelConfig, TrainConfig, get_config, param_counts
from tinylib.engine import SamplingConfig, sample_tokens
from tinylib.flops import count_flops, flops_per_token
from tinylib.fp8 import fp8_problems, to_float8_training
from tinylib.interop.hf import from_hf, to_hf
from tinylib.interop.llama2c import export_llama2c, load_llama2c
from tinylib.interp.bridge import to_lens
from tinylib.model import Transformer, attention_mask
from tinylib.optim import WSD_DECAY_FRACTION, lr_scale

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
# every switch, on a LLaMA-style and a GPT-style base (factorized embeddings need d_model >= r)
VARIANTS = {
    "window": dict(sliding_window=8),
    "factorized": dict(embed_rank=16),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "softcap": dict(logit_softcap=5.0),
    "zero_init": dict(zero_init=True),
}


def chaotic(style: str = "llama", seed: int = 0, **kw) -> Transformer:
    """test_generate's small random model with large weights (greedy decoding wanders over many ids)."""
    return chaotic_model(style, vocab_size=V, max_seq_len=40, seed=seed, **kw)


def copy_into(dst: Transformer, src: Transformer) -> Transformer:
    """src's weights in dst (which may have extra parameters, left as they are)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected, unexpected
    return dst.eval()


# --- closed forms and references, one per variant ----------------------------------------------------------

@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_banded_mask_equals_full_attention_when_the_window_covers_the_sequence(attn_impl):
    full = chaotic(n_kv_head=2)
    idx = torch.randint(0, V, (2, 24))
    want = full(idx)[0]
    for W in (24, 40):
        windowed = copy_into(Transformer(dataclasses.replace(full.cfg, sliding_window=W), attn_impl), full)
        torch.testing.assert_close(windowed(idx)[0], want, atol=1e-5, rtol=1e-5)
    narrow = copy_into(Transformer(dataclasses.replace(full.cfg, sliding_window=5), attn_impl), full)
    assert not torch.allclose(narrow(idx)[0], want, atol=1e-3)
    # the first 5 positions: the band is the causal mask
    torch.testing.assert_close(narrow(idx)[0][:, :5], want[:, :5], atol=1e-5, rtol=1e-5)
    # the mask by hand: query i sees keys i-4..i
    band = torch.tensor([[0 <= i - j < 5 for j in range(9)] for i in range(9)])
    assert torch.equal(attention_mask(torch.arange(9), torch.arange(9), 5), band)


def test_one_window_layer_equals_full_attention_on_the_last_w_tokens():
    """RoPE sees only relative positions, so with one layer, position t under a window W is exactly the last
    position of a full-attention pass over tokens t-W+1..t."""
    two = chaotic()
    full = Transformer(dataclasses.replace(two.cfg, n_layer=1)).eval()
    full.load_state_dict({k: v for k, v in two.state_dict().items() if not k.startswith("blocks.1.")})
    W = 6
    windowed = copy_into(Transformer(dataclasses.replace(full.cfg, sliding_window=W)), full)
    idx = torch.randint(0, V, (1, 20))
    got = windowed(idx)[0]
    for t in range(W - 1, 20):
        torch.testing.assert_close(got[:, t], full(idx[:, t - W + 1:t + 1])[0][:, -1], atol=1e-4, rtol=1e-4)


def test_factorized_embeddings_with_r_equal_d_and_identity_factors_equal_plain_embeddings():
    plain = chaotic()
    d = plain.cfg.d_model
    factorized = copy_into(Transformer(dataclasses.replace(plain.cfg, embed_rank=d)), plain)
    with torch.no_grad():
        factorized.emb_proj.weight.copy_(torch.eye(d))
    idx, y = torch.randint(0, V, (2, 2, 30))
    torch.testing.assert_close(factorized(idx)[0], plain(idx)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(factorized(idx, y, return_logits=False)[1], plain(idx, y)[1])
    # rank r: vocab x r + r x d parameters, and the product of the factors is the embedding
    small = Transformer(get_config("tiny", vocab_size=V, embed_rank=16))
    assert small.num_params() == param_counts(small.cfg).total
    assert param_counts(small.cfg).embedding == V * 16 + 16 * 128
    assert small.dense_embedding().shape == (V, 128)
    with pytest.raises(ValueError, match="embed_rank needs tie_embeddings"):
        ModelConfig(embed_rank=16, tie_embeddings=False)


def test_softcap_bounds_the_logits_and_the_chunked_loss_keeps_its_gradient():
    model = chaotic(logit_softcap=2.0)
    uncapped = copy_into(Transformer(dataclasses.replace(model.cfg, logit_softcap=None)), model)
    idx, y = torch.randint(0, V, (2, 2, 30))
    logits, raw = model(idx)[0], uncapped(idx)[0]
    assert raw.abs().max() > 4 and logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    grads = []
    for return_logits in (True, False):
        model.zero_grad()
        loss = model(idx, y, return_logits=return_logits)[1]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    model = chaotic(qk_norm=True)
    idx = torch.randint(0, V, (1, 20))
    want = model(idx)[0]
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(7.0)
            block.attn.k_proj.weight.mul_(3.0)  # (scaling down would let the norm's eps show)
    torch.testing.assert_close(model(idx)[0], want, atol=1e-4, rtol=1e-4)
    assert param_counts(model.cfg).norms == model.num_params() - param_counts(model.cfg).attention \
        - param_counts(model.cfg).mlp - param_counts(model.cfg).embedding


def test_relu2_mlp_is_down_of_relu_squared():
    model = chaotic("gpt", mlp="relu2")
    mlp = model.blocks[0].mlp
    x = torch.randn(3, model.cfg.d_model)
    torch.testing.assert_close(mlp(x), mlp.down_proj(torch.relu(mlp.up_proj(x)) ** 2))
    assert model.num_params() == param_counts(model.cfg).total


def test_zero_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=V, zero_init=True)).eval()
    assert all(b.attn.o_proj.weight.abs().sum() == 0 and b.mlp.down_proj.weight.abs().sum() == 0
               for b in model.blocks)
    idx = torch.randint(0, V, (1, 16))
    torch.testing.assert_close(model(idx)[0], model.unembed(model.norm_f(model.tok_emb(idx))))


def test_wsd_schedule_is_warmup_then_flat_then_linear_decay():
    total, warmup, floor = 100, 10, 0.1
    wsd = [lr_scale(s, warmup=warmup, total=total, floor=floor, schedule="wsd") for s in range(total + 1)]
    decay_start = total - round(WSD_DECAY_FRACTION * total)
    assert wsd[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert wsd[warmup:decay_start + 1] == pytest.approx([1.0] * (decay_start + 1 - warmup))
    assert wsd[decay_start + 10] == pytest.approx(1 - (1 - floor) * 0.5)
    assert wsd[total] == pytest.approx(floor)
    assert lr_scale(50, warmup=10, total=100, floor=0.1) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * 40 / 90)))  # cosine stays the default
    with pytest.raises(ValueError, match="schedule='linear'"):
        lr_scale(5, warmup=1, total=10, floor=0.1, schedule="linear")
    assert TrainConfig.from_dict({"schedule": "wsd", "fp8": False}).schedule == "wsd"


def test_fp8_refuses_clearly_on_cpu():
    model = chaotic()
    assert "CUDA GPU with FP8" in fp8_problems("cpu")[0]
    with pytest.raises(RuntimeError, match="fp8=True needs a CUDA GPU .* device is cpu"):
        to_float8_training(model)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


# --- every variant with everything else -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kv_cache_in_chunks_equals_one_full_forward(name):
    model = chaotic(**VARIANTS[name])
    idx = torch.randint(0, V, (2, 36))
    full = model(idx)[0]
    cache = model.make_cache(2)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 11), (11, 12), (12, 25), (25, 26), (26, 36)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)
    cache.reset()  # the eager path with a cache agrees too
    eager = [model.forward_with_patterns(idx[:, a:b], cache=cache)[0] for a, b in [(0, 3), (3, 20), (20, 36)]]
    torch.testing.assert_close(torch.cat(eager, dim=1), full, atol=1e-4, rtol=1e-4)


def test_window_cache_keeps_only_the_window_and_generation_matches_uncached_past_it():
    model = chaotic(sliding_window=8)
    cache = model.make_cache(1)
    assert cache.k[0].shape[2] == 8  # W slots, not max_seq_len
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # the prefill alone overflows the window
    # 80 new tokens on a 40-token context: past the window many times and past the context twice (slides)
    greedy = SamplingConfig(max_new_tokens=80, temperature=0)
    with_cache = list(sample_tokens(model, prompt, greedy))
    assert with_cache == list(sample_tokens(model, prompt, dataclasses.replace(greedy, use_cache=False)))
    assert len(set(with_cache)) > 10  # the comparison is not vacuous
    sampled = SamplingConfig(max_new_tokens=60, temperature=1.0, top_k=20)
    rows = [[1, 2, 3], [4, 5, 6]]
    assert (list(sample_tokens(model, rows, sampled, seed=3))
            == list(sample_tokens(model, rows, dataclasses.replace(sampled, use_cache=False), seed=3)))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_save_and_load_round_trip(name, tmp_path):
    model = chaotic("gpt" if name == "relu2" else "llama", **VARIANTS[name])
    save_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    idx = torch.randint(0, V, (1, 30))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_flops_match_pytorchs_counter(name):
    """Meta device: shapes only. The window's model FLOPs count W keys per query; SDPA with a banded mask
    still computes all T, which the counter sees as 12 L (T - W) d more per token."""
    cfg = get_config("tiny", vocab_size=512, **VARIANTS[name])
    T = 64
    counted = count_flops(cfg, batch_size=1, seq_len=T, training=True).per_token
    extra = 12 * cfg.n_layer * (T - cfg.sliding_window) * cfg.d_model if cfg.sliding_window else 0
    assert counted - extra == pytest.approx(flops_per_token(cfg, T), rel=0.005)
    forward = count_flops(cfg, batch_size=1, seq_len=T, training=False).per_token
    assert forward - extra / 3 == pytest.approx(flops_per_token(cfg, T, training=False), rel=0.005)
    if cfg.embed_rank:
        assert flops_per_token(cfg, T) < flops_per_token(get_config("tiny", vocab_size=512), T)


@pytest.mark.parametrize("style", ["llama", "gpt"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_hf_export_is_exact_or_refused_naming_the_field(style, name):
    model = chaotic(style, **VARIANTS[name])
    idx = torch.randint(0, V, (2, 20))
    refused = {"window": "sliding_window", "qk_norm": "qk_norm", "softcap": "logit_softcap"}
    if name in refused or (name == "relu2" and style == "llama"):
        field = refused.get(name, "mlp='relu2'")
        with pytest.raises(ValueError, match=field):
            to_hf(model)
        return
    hf = to_hf(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=1e-4)
    back = from_hf(hf)  # a plain model (factors multiplied out) with the same logits
    assert back.cfg.mlp == model.cfg.mlp
    torch.testing.assert_close(back(idx)[0], model(idx)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_llama2c_export_is_exact_or_refused_naming_the_field(name, tmp_path):
    model = chaotic(**VARIANTS[name])
    refused = {"window": "sliding_window", "qk_norm": "qk_norm", "softcap": "logit_softcap", "relu2": "mlp"}
    if name in refused:
        with pytest.raises(ValueError, match=refused[name]):
            export_llama2c(model, tmp_path / "m.bin")
        return
    back = load_llama2c(export_llama2c(model, tmp_path / "m.bin"))
    idx = torch.randint(0, V, (2, 20))
    torch.testing.assert_close(back(idx)[0], model(idx)[0], atol=1e-4, rtol=1e-4)


def test_bridge_is_exact_for_factorized_embeddings_and_refuses_a_window():
    model = chaotic(embed_rank=16)
    idx = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(to_lens(model)(idx), model(idx)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="TransformerLens cannot express .*sliding_window=8"):
        to_lens(chaotic(sliding_window=8))
