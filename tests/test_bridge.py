"""TransformerLens bridge: logits and attention patterns equal tinylib's eager path; hook names learners know;
compatibility-mode folding keeps log-probs; the tokenizer adapter gives to_tokens/to_str_tokens."""

from __future__ import annotations

import pytest
import torch

from tinylib.config import get_config
from tinylib.interp.bridge import str_tokens, to_lens
from tinylib.model import Transformer


def _model(preset: str, **kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(get_config(preset, vocab_size=300, n_layer=2, max_seq_len=64, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("preset,kw", [("llama_tiny", dict(n_kv_head=2)), ("gpt_tiny", dict(bias=False))])
def test_bridge_matches_tinylib(preset, kw):
    m = _model(preset, **kw)
    bridge = to_lens(m)
    idx = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, patterns = m.forward_with_patterns(idx)
        b_logits, cache = bridge.run_with_cache(idx)
    assert torch.allclose(logits, b_logits, atol=1e-4)
    for layer in range(2):
        assert torch.allclose(cache[f"blocks.{layer}.attn.hook_pattern"], patterns[layer], atol=1e-5)
    cfg = m.cfg
    assert cache["blocks.1.attn.hook_z"].shape == (2, 24, cfg.n_head, cfg.d_head)
    assert cache["blocks.1.mlp.hook_post"].shape == (2, 24, cfg.d_mlp)
    # the residual after the last block, through tinylib's final norm and head, gives the logits
    resid = cache["blocks.1.hook_resid_post"]
    assert torch.allclose(m.lm_head(m.norm_f(resid)), logits, atol=1e-4)


def test_compatibility_mode_keeps_log_probs():
    m = _model("gpt_tiny")
    bridge = to_lens(m, compatibility_mode=True)
    idx = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = m(idx)[0], bridge(idx)
    assert torch.allclose(ours.log_softmax(-1), theirs.log_softmax(-1), atol=1e-4)


def test_tokenizer_adapter_tiktoken():
    from tinylib.tokenizer import get_tokenizer

    tok = get_tokenizer("tinystories-512")
    bridge = to_lens(_model("llama_tiny"), tok)
    text = "Once upon a time, Lily saw a big dog."
    ids = tok.encode(text, bos=True)
    assert bridge.to_tokens(text)[0].tolist() == ids
    assert bridge.to_string(torch.tensor(ids[1:])) == text
    assert "".join(bridge.to_str_tokens(text)[1:]) == text
    assert "".join(str_tokens(bridge, ids[1:])) == text


def test_tokenizer_adapter_sentencepiece(llama2c_dir):
    from tinylib.interop.llama2c import load_llama2c
    from tinylib.interop.sentencepiece import SentencePieceTokenizer

    tok = SentencePieceTokenizer(llama2c_dir / "tok512.model")
    model = load_llama2c(llama2c_dir / "stories260K.bin")
    bridge = to_lens(model, tok)
    text = "Once upon a time, there was a little girl named Lily."
    ids = tok.encode(text, bos=True)
    assert bridge.to_tokens(text)[0].tolist() == ids
    with torch.no_grad():
        _, patterns = model.forward_with_patterns(torch.tensor([ids]))
        _, cache = bridge.run_with_cache(torch.tensor([ids]))
    assert torch.allclose(cache["blocks.4.attn.hook_pattern"], patterns[4], atol=1e-5)
    assert str_tokens(bridge, ids)[:3] == ["<s>", " Once", " upon"]
