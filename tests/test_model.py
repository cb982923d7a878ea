"""The model: parameter counts in closed form, SDPA == eager, cache == no cache, GQA, RoPE, causality."""

import math

import pytest
import torch

from tinylib.config import PRESETS, ModelConfig, get_config, param_counts
from tinylib.model import Transformer, apply_rope, gelu_tanh, rope_tables


def hand_count(cfg: ModelConfig) -> int:
    """Parameters written out per layer the way one counts them on paper."""
    d, h, V, L = cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_layer
    kv = cfg.n_kv_head * (d // cfg.n_head)
    if cfg.style == "gpt":  # LayerNorm(w, b), qkv + o with biases, up/down with biases, learned positions
        per_layer = 2 * (2 * d) + (d * (d + 2 * kv) + (d + 2 * kv)) + (d * d + d) + (d * h + h) + (h * d + d)
        return V * d + cfg.max_seq_len * d + L * per_layer + 2 * d + (0 if cfg.tie_embeddings else V * d)
    per_layer = 2 * d + d * (d + 2 * kv) + d * d + 3 * d * h  # RMSNorm x2, q k v o, gate up down
    return V * d + L * per_layer + d + (0 if cfg.tie_embeddings else V * d)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("vocab", [512, 4096, 50257])
def test_param_counts_match_closed_form_and_the_built_model(preset, vocab):
    cfg = get_config(preset, vocab_size=vocab)
    counts = param_counts(cfg)
    assert counts.total == hand_count(cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_params() == counts.total
    assert model.num_params(non_embedding=True) == counts.non_embedding
    by_part = {"attention": 0, "mlp": 0, "norms": 0}
    for name, p in model.named_parameters():
        part = ("attention" if ".attn." in name else "mlp" if ".mlp." in name
                else "norms" if "norm" in name else None)
        if part:
            by_part[part] += p.numel()
    assert by_part == {"attention": counts.attention, "mlp": counts.mlp, "norms": counts.norms}


def test_gpt2_124M_has_gpt2s_parameter_count():
    # GPT-2 small with its 50,257-token vocabulary, tied head and 1024 positions: 124,439,808 parameters.
    assert param_counts(get_config("gpt2_124M", vocab_size=50257)).total == 124_439_808


def test_untied_and_gqa_counts():
    cfg = get_config("llama_6L_6H_288D", vocab_size=512, tie_embeddings=False, n_kv_head=2)
    assert param_counts(cfg).lm_head == 512 * 288
    assert Transformer(cfg).num_params() == param_counts(cfg).total == hand_count(cfg)


@pytest.fixture(params=["gpt", "llama", "llama_gqa", "gpt_nobias_untied"])
def model(request):
    torch.manual_seed(0)
    overrides = {
        "gpt": dict(preset="gpt_tiny"),
        "llama": dict(preset="llama_tiny"),
        "llama_gqa": dict(preset="llama_tiny", n_kv_head=2),
        "gpt_nobias_untied": dict(preset="gpt_tiny", bias=False, tie_embeddings=False),
    }[request.param]
    preset = overrides.pop("preset")
    return Transformer(get_config(preset, vocab_size=300, max_seq_len=64, **overrides)).eval()


def test_eager_attention_equals_sdpa_and_patterns_are_causal_distributions(model):
    idx = torch.randint(0, 300, (2, 33))
    logits, _ = model(idx)
    logits_eager, patterns = model.forward_with_patterns(idx)
    torch.testing.assert_close(logits_eager, logits, atol=1e-5, rtol=1e-5)
    assert len(patterns) == model.cfg.n_layer
    for p in patterns:
        assert p.shape == (2, model.cfg.n_head, 33, 33)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, model.cfg.n_head, 33))
        assert torch.all(p.triu(diagonal=1) == 0)


def test_kv_cache_in_chunks_equals_one_full_forward(model):
    idx = torch.randint(0, 300, (2, 40))
    full, _ = model(idx)
    cache = model.make_cache(batch_size=2, max_len=64)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 9), (9, 10), (10, 25), (25, 26), (26, 40)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 40
    # the eager path with a cache agrees too
    cache.reset()
    eager = [model.forward_with_patterns(idx[:, a:b], cache=cache)[0]
             for a, b in [(0, 17), (17, 18), (18, 40)]]
    torch.testing.assert_close(torch.cat(eager, dim=1), full, atol=1e-5, rtol=1e-5)


def test_future_tokens_do_not_change_past_logits(model):
    idx = torch.randint(0, 300, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 300
    torch.testing.assert_close(model(idx)[0][:, :12], model(changed)[0][:, :12])


def test_gelu_is_gpt2s_tanh_gelu_with_the_same_gradient():
    """The compiled form (x sigmoid(2z)) is the same function as F.gelu(approximate="tanh"),
    values and gradients."""
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64, requires_grad=True)
    traced = []

    def backend(gm, example_inputs):  # sees the graph inductor would see, runs it without a C++ build
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    compiled = torch.compile(gelu_tanh, backend=backend)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(compiled(x.float()), ref.float(), rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(compiled(x).sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    assert any("sigmoid" in t for t in traced) and not any("gelu" in t for t in traced)


def test_grouped_query_attention_equals_multi_head_with_shared_kv():
    torch.manual_seed(0)
    gqa = Transformer(get_config("llama_tiny", vocab_size=100, n_kv_head=2, max_seq_len=32)).eval()
    mha = Transformer(get_config("llama_tiny", vocab_size=100, max_seq_len=32)).eval()
    state = gqa.state_dict()
    rep = gqa.cfg.n_head // gqa.cfg.n_kv_head
    for key in list(state):
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            w = state[key].view(gqa.cfg.n_kv_head, gqa.cfg.d_head, -1)
            state[key] = w.repeat_interleave(rep, dim=0).reshape(-1, w.shape[-1])
    mha.load_state_dict(state)
    idx = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(16, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        return (apply_rope(q, cos[i:i + 1], sin[i:i + 1]) * apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum()

    torch.testing.assert_close(score(10, 3), score(50, 43))
    assert not torch.isclose(score(10, 3), score(10, 4))


def test_loss_ignores_minus_one_and_matches_log_vocab_at_init():
    torch.manual_seed(0)
    model = Transformer(get_config("llama_tiny", vocab_size=1000, max_seq_len=32))
    idx, y = torch.randint(0, 1000, (2, 4, 32))
    _, loss = model(idx, y)
    assert abs(loss.item() - math.log(1000)) < 0.2  # small init: near-uniform predictions
    targets = y.clone()
    targets[:, 16:] = -1
    _, half = model(idx, targets)
    _, first = model(idx[:, :16], y[:, :16])
    torch.testing.assert_close(half, first)


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = Transformer(get_config("gpt_6L_6H_288D", vocab_size=4096))
    o = torch.cat([b.attn.o_proj.weight.flatten() for b in model.blocks])
    q = torch.cat([b.attn.q_proj.weight.flatten() for b in model.blocks])
    assert abs(q.std().item() - 0.02) < 1e-3
    assert abs(o.std().item() - 0.02 / math.sqrt(2 * 6)) < 5e-4
    assert model.lm_head.weight is model.tok_emb.weight


def test_bad_configs_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        ModelConfig(d_model=130, n_head=4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"d_model": 128, "n_heads": 4})
    model = Transformer(get_config("tiny", vocab_size=100, max_seq_len=16))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.make_cache(1, 8)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_config_round_trips_through_dict():
    cfg = get_config("llama_6L_6H_288D", vocab_size=512, n_kv_head=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.style == "llama" and get_config("gpt2_124M").style == "gpt"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_and_gradients_equal_the_plain_logits_path(dtype):
    torch.manual_seed(0)
    model = Transformer(get_config("llama_tiny", vocab_size=700, max_seq_len=64))
    idx, y = torch.randint(0, 700, (2, 3, 64))
    y[0, :5] = -1
    grads = []
    for return_logits in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits, loss = model(idx, y, return_logits=return_logits)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        assert (logits is None) == (not return_logits)
    (l1, g1), (l2, g2) = grads
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(l2, l1, **tol)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], **tol, msg=name)
    with torch.no_grad():  # evaluation takes the gradient-free branch
        torch.testing.assert_close(model(idx, y, return_logits=False)[1], model(idx, y)[1],
                                   atol=1e-5, rtol=1e-5)


def test_compile_plan_writes_attention_out_on_cpu_only_below_long_contexts():
    from tinylib.config import TrainConfig
    from tinylib.device import LONG_CONTEXT, compile_plan

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert compile_plan(TrainConfig(seq_len=256), cpu) == (True, "eager")  # inductor's fused loop wins
    assert compile_plan(TrainConfig(seq_len=LONG_CONTEXT), cpu) == (True, "sdpa")  # flash skips the mask
    assert compile_plan(TrainConfig(seq_len=256, compile="off"), cpu) == (False, "sdpa")
    assert compile_plan(TrainConfig(seq_len=256), gpu) == (True, "sdpa")
