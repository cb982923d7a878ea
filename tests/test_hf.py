"""Export to transformers: logits equal tinylib's (fp32, 1e-4) for both families, GQA, tying and no biases;
a saved folder loads offline with from_pretrained and gives the same logits; tokenizers encode identically."""

from __future__ import annotations

import pytest
import torch

from tinylib.config import get_config
from tinylib.interop.hf import from_hf, hf_tokenizer, save_hf, to_hf
from tinylib.model import Transformer

CASES = {
    "llama_gqa_tied": ("llama_tiny", dict(n_kv_head=2)),
    "llama_untied_bias": ("llama_tiny", dict(tie_embeddings=False, bias=True)),
    "gpt_bias_tied": ("gpt_tiny", {}),
    "gpt_nobias_gqa_untied": ("gpt_tiny", dict(bias=False, n_kv_head=2, tie_embeddings=False)),
}


def _model(preset: str, **kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(get_config(preset, vocab_size=300, n_layer=2, max_seq_len=64, **kw)).eval()
    with torch.no_grad():  # move off the init so every weight (norms, biases) matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("case", sorted(CASES))
def test_to_hf_logits_match(case):
    preset, kw = CASES[case]
    m = _model(preset, **kw)
    hf = to_hf(m)
    idx = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = m(idx)[0], hf(idx).logits
        back = from_hf(hf)(idx)[0]
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.allclose(ours, back, atol=1e-5)
    assert type(hf).__name__ == ("LlamaForCausalLM" if preset.startswith("llama") else "GPT2LMHeadModel")
    assert ((hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr())
            == m.cfg.tie_embeddings)


def test_custom_family_is_refused():
    m = Transformer(get_config("llama_tiny", vocab_size=64, n_layer=1, mlp="gelu"))
    with pytest.raises(ValueError, match="no transformers class"):
        to_hf(m)


@pytest.mark.parametrize("case", ["llama_gqa_tied", "gpt_nobias_gqa_untied"])
def test_save_hf_loads_offline(case, tmp_path):
    from transformers import AutoModelForCausalLM

    preset, kw = CASES[case]
    m = _model(preset, **kw)
    folder = save_hf(m, tmp_path / "export")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    idx = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(m(idx)[0], loaded(idx).logits, atol=1e-4)
    save_hf(m, folder)  # overwriting an export replaces it in place
    assert not list(tmp_path.glob(".export*"))


def test_tiktoken_tokenizer_exports(tmp_path, tinystories_dir):
    from transformers import AutoTokenizer

    from tinylib.tokenizer import get_tokenizer

    tok = get_tokenizer("tinystories-512")
    folder = save_hf(_model("llama_tiny"), tmp_path / "export", tokenizer=tok)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = (tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text()[:40_000]
    for story in text.split("<|endoftext|>")[:40]:
        assert hf_tok(story, add_special_tokens=False)["input_ids"] == tok.encode(story)
    assert hf_tok("Once upon a time")["input_ids"] == tok.encode("Once upon a time", bos=True)
    assert hf_tok.decode(tok.encode("Lily was happy.")) == "Lily was happy."


def test_sentencepiece_tokenizer_exports(llama2c_dir, tinystories_dir):
    from tinylib.interop.sentencepiece import SentencePieceTokenizer

    tok = SentencePieceTokenizer(llama2c_dir / "tok512.model")
    hf_tok = hf_tokenizer(tok)
    text = (tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text()[:40_000]
    for story in [s.strip() for s in text.split("<|endoftext|>")[:40]]:
        assert hf_tok(story)["input_ids"] == tok.encode(story, bos=True)
