"""llama2.c interop: stories260K against an independent reference forward, exports, bad files, tokenizers.

The reference forward below is llama2.c's model.py written out on its own weights (interleaved complex-style
RoPE, repeat_kv for grouped-query attention); tinylib's converted model must give the same logits. Downloads
by name (tinylib.interop.tinyllamas) go through a fake Hub on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakehub import serve

from tinylib.config import ModelConfig, get_config
from tinylib.interop.llama2c import (
    export_llama2c,
    half_to_interleaved,
    interleaved_to_half,
    load_llama2c,
    read_llama2c,
    read_llama2c_header,
)
from tinylib.interop.sentencepiece import SentencePieceTokenizer
from tinylib.interop.tinyllamas import MODELS, download_llama2c, find_llama2c_tokenizer, resolve_llama2c
from tinylib.model import Transformer
from tinylib.tokenizer import Tokenizer

SHA_260K = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"


# --- an independent llama2.c forward ------------------------------------------------------------------------


def reference_logits(
    sd: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int, idx: torch.Tensor
) -> torch.Tensor:
    """llama2.c model.py's Transformer.forward on its own state dict (no tinylib code involved)."""
    B, T = idx.shape
    dim = sd["tok_embeddings.weight"].shape[1]
    hs = dim // n_heads
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hs, 2)[: hs // 2].float() / hs))
    angles = torch.outer(torch.arange(T), freqs).float()
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]

    def rope(x):  # pairs (2i, 2i+1) rotate together
        xr, xi = x.float().reshape(x.shape[:-1] + (-1, 2)).unbind(-1)
        return torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], -1).flatten(3)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def repeat_kv(x):
        rep = n_heads // n_kv_heads
        return x[:, :, :, None].expand(B, T, n_kv_heads, rep, hs).reshape(B, T, n_heads, hs)

    x = sd["tok_embeddings.weight"][idx]
    for i in range(n_layers):
        def w(name, i=i):
            return sd[f"layers.{i}.{name}.weight"]

        a = rms(x, w("attention_norm"))
        q = rope((a @ w("attention.wq").T).view(B, T, n_heads, hs))
        k = repeat_kv(rope((a @ w("attention.wk").T).view(B, T, n_kv_heads, hs)))
        v = repeat_kv((a @ w("attention.wv").T).view(B, T, n_kv_heads, hs))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        x = x + o.transpose(1, 2).reshape(B, T, dim) @ w("attention.wo").T
        m = rms(x, w("ffn_norm"))
        x = x + (F.silu(m @ w("feed_forward.w1").T) * (m @ w("feed_forward.w3").T)) @ w("feed_forward.w2").T
    x = rms(x, sd["norm.weight"])
    return x @ sd.get("output.weight", sd["tok_embeddings.weight"]).T


def random_llama2c_ckpt(path, *, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab=40, seq=24, hidden=48,
                        tied=False, seed=0) -> dict[str, torch.Tensor]:
    """A checkpoint shaped like llama2.c's train.py writes (compiled model, AdamW state), random weights."""
    g = torch.Generator().manual_seed(seed)
    kv = n_kv_heads * dim // n_heads
    shapes = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(n_layers):
        shapes.update({f"layers.{i}.attention.wq.weight": (dim, dim),
                       f"layers.{i}.attention.wk.weight": (kv, dim),
                       f"layers.{i}.attention.wv.weight": (kv, dim),
                       f"layers.{i}.attention.wo.weight": (dim, dim),
                       f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                       f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
                       f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                       f"layers.{i}.attention_norm.weight": (dim,), f"layers.{i}.ffn_norm.weight": (dim,)})
    sd = {k: torch.randn(s, generator=g) * (0.3 if len(s) == 2 else 1.0) + (1.0 if len(s) == 1 else 0.0)
          for k, s in shapes.items()}
    sd["output.weight"] = sd["tok_embeddings.weight"] if tied else torch.randn(vocab, dim, generator=g) * 0.3
    params = [torch.nn.Parameter(t.clone()) for t in sd.values()]
    opt = torch.optim.AdamW(params)
    sum((p * p).sum() for p in params).backward()
    opt.step()
    torch.save({
        "model": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "optimizer": opt.state_dict(),
        "model_args": dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                           vocab_size=vocab, multiple_of=16, max_seq_len=seq, dropout=0.0),
        "iter_num": 10,
        "best_val_loss": torch.tensor(2.5),
        "config": {"batch_size": 8, "learning_rate": 5e-4, "compile": True, "dataset": "tinystories"},
    }, path)
    return sd


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- stories260K --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def m260k(llama2c_dir):
    return load_llama2c(llama2c_dir / "stories260K.bin")


@pytest.fixture(scope="module")
def tok512(llama2c_dir):
    return SentencePieceTokenizer(llama2c_dir / "tok512.model")


def test_legacy_and_v1_load_identical_weights(llama2c_dir, m260k):
    assert hashlib.sha256((llama2c_dir / "stories260K.bin").read_bytes()).hexdigest() == SHA_260K
    cfg = m260k.cfg
    shape = (cfg.d_model, cfg.d_mlp, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.vocab_size, cfg.max_seq_len)
    assert shape == (64, 172, 5, 8, 4, 512, 512)
    assert cfg.style == "llama" and cfg.tie_embeddings and cfg.norm_eps == 1e-5 and cfg.rope_theta == 10000.0
    assert m260k.lm_head.weight is m260k.tok_emb.weight
    assert same_weights(m260k, load_llama2c(llama2c_dir / "stories260K_v1.bin"))
    h = read_llama2c_header(llama2c_dir / "stories260K_v1.bin")
    assert (h.version, h.shared_classifier, h.n_kv_heads) == (1, True, 4)


def test_gqa_and_rope_conversion_match_llama2c_forward(llama2c_dir, m260k):
    """Permuted q/k rows + rotate-half RoPE give llama2.c's interleaved-RoPE logits (8 query, 4 kv heads)."""
    h, sd = read_llama2c(llama2c_dir / "stories260K.bin")
    idx = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = m260k(idx)
        ref = reference_logits(sd, h.n_heads, h.n_kv_heads, idx)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # Without the permutation the model is different: the check above would notice a broken conversion.
    broken = load_llama2c(llama2c_dir / "stories260K.bin")
    with torch.no_grad():
        for blk, i in zip(broken.blocks, range(h.n_layers)):
            blk.attn.q_proj.weight.copy_(sd[f"layers.{i}.attention.wq.weight"])
            blk.attn.k_proj.weight.copy_(sd[f"layers.{i}.attention.wk.weight"])
        assert (broken(idx)[0] - ref).abs().max() > 0.1


def test_export_reproduces_llama2c_files_byte_for_byte(llama2c_dir, m260k, tmp_path):
    for version, name in ((0, "stories260K.bin"), (1, "stories260K_v1.bin")):
        out = export_llama2c(m260k, tmp_path / f"v{version}.bin", version=version)
        assert out.read_bytes() == (llama2c_dir / name).read_bytes(), name
    assert not list(tmp_path.glob(".*tmp"))


def test_validation_loss_near_published(m260k, tok512, tinystories_dir):
    """llama2.c's published 1.297 is on its own validation shard. On this file (first 1000 V1 validation
    stories, BOS + tokens, 512-token windows) the full figure is 1.50: the first 100 stories are easy (1.25),
    the later ones harder, and 51 stories carry mojibake ("â€™") that tok512 spells byte by byte. Here, for
    time, the first 40 stories."""
    from tinylib.data import frame_stories
    from tinylib.evaluate import evaluate_loss
    from tinylib.stories import parse_stories

    text = (tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text(encoding="utf-8")
    stories = parse_stories(text)
    assert len(stories) == 1000
    tokens = frame_stories(tok512, stories[:40])
    assert tokens[0] == 1 and tokens.dtype == np.uint16
    loss = evaluate_loss(m260k, tokens, seq_len=512, batch_size=8)
    assert 1.0 < loss < 1.40, loss


# llama2.c doc/stories260K.md, run.c (C): `./run stories260K/stories260K.bin -z stories260K/tok512.bin -t 0.0`
RUN_C_GREEDY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, "
    "let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your "
    "ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I "
    "didn't know what to do.\"\nLily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't "
    "know what to do.\" Her mom said, \"Don't worry, Lily. We can help you.")


def test_greedy_generation_matches_run_c(m260k, tok512):
    """200 greedy tokens from BOS via tinylib.generate: the text llama2.c's run.c prints, word for word."""
    from tinylib.generate import generate

    res = generate(m260k, tok512, "", max_new_tokens=200, temperature=0.0)
    assert res.prompt_tokens == [1] and len(res.tokens) == 200 and res.stop_reason == "max_tokens"
    assert len(res.text) > 450 and RUN_C_GREEDY.startswith(res.text), res.text


def test_seeded_sampling_is_reproducible(m260k, tok512):
    from tinylib.generate import generate

    a, b, c = (generate(m260k, tok512, "Once upon a time", max_new_tokens=40, temperature=1.0, top_p=0.9,
                        seed=s) for s in (7, 7, 8))
    assert a.tokens == b.tokens and a.text == b.text and a.tokens != c.tokens
    assert a.text and b.stop_reason in ("eos", "max_tokens")


def test_sample_script(llama2c_dir, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "llama2c_sample.py"
    spec = importlib.util.spec_from_file_location("llama2c_sample", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(llama2c_dir / "stories260K.bin"), "-t", "0", "-n", "12"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and RUN_C_GREEDY.startswith(out.strip()), out


# --- synthetic checkpoints: ckpt.pt, untied classifier, GQA, round trips ------------------------------------


def test_ckpt_pt_with_orig_mod_prefix_loads_with_weights_only(tmp_path):
    sd = random_llama2c_ckpt(tmp_path / "ckpt.pt")
    model = load_llama2c(tmp_path / "ckpt.pt")
    cfg = model.cfg
    assert (cfg.n_head, cfg.n_kv_head, cfg.d_mlp, cfg.vocab_size, cfg.max_seq_len, cfg.tie_embeddings) == (
        4, 2, 48, 40, 24, False)
    idx = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference_logits(sd, 4, 2, idx), atol=1e-4, rtol=1e-4)
    # Untied + GQA through both .bin formats: negative vocab in the legacy header, the classifier at the end.
    for version in (0, 1):
        path = export_llama2c(model, tmp_path / f"m{version}.bin", version=version)
        h = read_llama2c_header(path)
        assert (h.version, h.shared_classifier, h.vocab_size, h.n_kv_heads) == (version, False, 40, 2)
        vocab_field = struct.unpack_from("<i", path.read_bytes(), 20 if version == 0 else 28)[0]
        assert vocab_field == (-40 if version == 0 else 40)
        assert same_weights(model, load_llama2c(path))


def test_tied_ckpt_is_tied(tmp_path):
    random_llama2c_ckpt(tmp_path / "ckpt.pt", tied=True, n_kv_heads=4)
    model = load_llama2c(tmp_path / "ckpt.pt")
    assert model.cfg.tie_embeddings and model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_head=1, tie_embeddings=False), dict(n_kv_head=2)])
def test_round_trip_tinylib_models(tmp_path, overrides):
    torch.manual_seed(0)
    model = Transformer(get_config("llama_tiny", vocab_size=96, n_layer=2, max_seq_len=32, **overrides))
    for version in (0, 1):
        back = load_llama2c(export_llama2c(model, tmp_path / f"m{version}.bin", version=version))
        assert back.cfg == model.cfg
        assert same_weights(model, back)


def test_rope_permutation_is_a_bijection():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).view(32, 3)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, 4), 4), w)
    # Head 0, rows 2i and 2i+1 (a rotation pair in llama2.c) land at i and i + 4 (a pair in rotate-half).
    p = interleaved_to_half(w, 4)
    assert torch.equal(p[:8, 0], w[[0, 2, 4, 6, 1, 3, 5, 7], 0])


@pytest.mark.parametrize("cfg, expect", [
    (dict(preset="gpt_tiny"), "norm='layernorm'"),
    (dict(preset="llama_tiny", bias=True), "bias=True"),
    (dict(preset="llama_tiny", norm_eps=1e-6), "norm_eps"),
    (dict(preset="llama_tiny", rope_theta=500000.0), "rope_theta"),
])
def test_non_llama_models_are_not_exportable(tmp_path, cfg, expect):
    model = Transformer(get_config(vocab_size=64, n_layer=1, **cfg))
    with pytest.raises(ValueError, match="cannot be exported to llama2.c") as e:
        export_llama2c(model, tmp_path / "m.bin")
    assert expect in str(e.value)
    assert not (tmp_path / "m.bin").exists()


# --- bad files ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bins(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, n_layer=1, n_head=4, n_kv_head=2, d_model=16, d_mlp=24,
                                    max_seq_len=8))
    d = tmp_path_factory.mktemp("bins")
    return tuple(export_llama2c(model, d / f"v{v}.bin", v).read_bytes() for v in (0, 1))


@pytest.mark.parametrize("case", ["truncated0", "padded0", "truncated1", "padded1", "header_dim",
                                  "header_vocab", "version2", "version7", "garbage", "tiny", "gguf",
                                  "bad_flag"])
def test_bad_files_give_clear_errors(small_bins, tmp_path, case):
    v0, v1 = small_bins
    data, expect = {
        "truncated0": (v0[:-5], r"has 10,076 bytes, but the file has 10,071: 5 bytes missing"),
        "padded0": (v0 + b"\0" * 12, r"legacy llama2.c export with dim=16.*12 extra bytes"),
        "truncated1": (v1[:-400], r"version-1 llama2.c export .* 400 bytes missing"),
        "padded1": (v1 + b"x", r"1 extra bytes"),
        "header_dim": (struct.pack("<i", 32) + v0[4:], r"dim=32.*bytes, but the file has"),
        "header_vocab": (v0[:20] + struct.pack("<i", -32) + v0[24:],
                         r"shared_classifier=False.*bytes missing"),
        "version2": (v1[:4] + struct.pack("<i", 2) + v1[8:], r"unsupported llama2.c export version 2.*Q8_0"),
        "version7": (v1[:4] + struct.pack("<i", 7) + v1[8:], r"version 7; expected version 1"),
        "garbage": (b"\xff" * 300,
                    r"expected the version-1 magic 0x616b3432 \('ak42'\).*found first uint32 0xffffffff"),
        "tiny": (b"\1\0\0\0", r"too short for a llama2.c model"),
        "gguf": (b"GGUF" + b"\0" * 300, r"GGUF"),
        "bad_flag": (v1[:36] + b"\7" + v1[37:], r"shared_classifier flag at byte 36 is 7"),
    }[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=expect):
        load_llama2c(path)


def test_bad_checkpoints(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="expected llama2.c's checkpoint dict with 'model_args' and 'model'"):
        load_llama2c(tmp_path / "a.pt")
    torch.save({"model": {"x": torch.zeros(1)}, "model_args": {"dim": 8}}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_llama2c(tmp_path / "b.pt")
    # A pickled object of an arbitrary class is refused, never executed.
    torch.save({"model": {}, "model_args": {}, "obj": random.Random(0)}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_llama2c(tmp_path / "c.pt")
    # A missing file: load_llama2c takes paths only and names the module that downloads models by name.
    with pytest.raises(FileNotFoundError, match=r"missing.bin not found.*tinyllamas.resolve_llama2c"):
        load_llama2c(tmp_path / "missing.bin")
    with pytest.raises(FileNotFoundError, match="stories260K"):
        resolve_llama2c(tmp_path / "missing.bin")
    assert resolve_llama2c(tmp_path / "a.pt") == tmp_path / "a.pt"  # an existing file is left as it is


# --- tokenizers ---------------------------------------------------------------------------------------------


def test_sentencepiece_tokenizer_matches_sentencepiece(llama2c_dir, tok512, tinystories_dir):
    import sentencepiece as spm

    from tinylib.stories import parse_stories

    sp = spm.SentencePieceProcessor(model_file=str(llama2c_dir / "tok512.model"))
    assert isinstance(tok512, Tokenizer)
    assert (tok512.vocab_size, tok512.bos_id, tok512.eos_id, tok512.name) == (512, 1, 2, "tok512")
    assert tok512.stop_ids == (1, 2)
    assert tok512.hash == hashlib.sha256((llama2c_dir / "tok512.model").read_bytes()).hexdigest()
    stories = parse_stories((tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text())[:200]
    encoded = tok512.encode_batch(stories, bos=True)
    assert encoded == [[1] + sp.encode(s) for s in stories]
    assert tok512.encode(stories[0], bos=True, eos=True) == encoded[0] + [2]
    assert all(tok512.decode(ids) == sp.decode(ids) for ids in encoded)
    assert tok512.decode(tok512.encode("Once upon a time, Lily saw a 😀.\nThe end.")) == (
        "Once upon a time, Lily saw a 😀.\nThe end.")
    # Arbitrary id sequences (controls included): the same text as SentencePiece whenever it is valid UTF-8.
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(1, 512) for _ in range(rng.randrange(0, 10))]
        ours = tok512.decode_bytes(ids)
        try:
            assert ours.decode("utf-8") == sp.decode(ids)
        except UnicodeDecodeError:
            pass
    assert tok512.id_to_piece(403) == " Once" and tok512.id_to_piece(13) == "<0x0A>"
    assert tok512.id_to_piece(1) == "<s>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok512.decode([512])


def test_streaming_by_difference_gives_the_decoded_text(tok512):
    """generate's streamer takes decode_bytes([prev, tok]) - decode_bytes([prev]); joined: decode(ids)."""
    ids = tok512.encode("Once upon a time, a bird 🐦 sang.\nIt was happy!", bos=True)
    pieces, prev = b"", None
    for t in ids:
        if prev is None:
            pieces += tok512.decode_bytes([t])
        else:
            before, both = tok512.decode_bytes([prev]), tok512.decode_bytes([prev, t])
            assert both.startswith(before)
            pieces += both[len(before):]
        prev = t
    assert pieces.decode() == tok512.decode(ids) == "Once upon a time, a bird 🐦 sang.\nIt was happy!"


def test_llama2_tokenizer_and_pickling(llama2c_dir, tok512):
    tok = SentencePieceTokenizer(llama2c_dir / "tokenizer.model")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.decode(tok.encode("Hello world", bos=True)) == "Hello world"
    back = pickle.loads(pickle.dumps(tok512))
    assert back.hash == tok512.hash and back.encode("a cat") == tok512.encode("a cat")
    with pytest.raises(AttributeError, match="no tiktoken encoding"):
        _ = tok512.encoding
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(llama2c_dir / "stories260K.config.json")


# --- download through a fake Hub on 127.0.0.1 ---------------------------------------------------------------


@pytest.fixture
def fake_hub(llama2c_dir, monkeypatch):
    files = {"stories260K/stories260K.bin": (llama2c_dir / "stories260K.bin").read_bytes(),
             "stories260K/tok512.model": (llama2c_dir / "tok512.model").read_bytes()}
    yield from serve(monkeypatch, files, repo="karpathy/tinyllamas")


def test_download_through_fake_hub_then_offline(fake_hub, tmp_path, monkeypatch, m260k):
    path = download_llama2c("stories260K", dest=tmp_path)
    assert path == tmp_path / "stories260K" / "stories260K.bin"
    assert path.read_bytes() == fake_hub.files["stories260K/stories260K.bin"]
    assert (tmp_path / "stories260K" / "tok512.model").is_file()
    assert not list(tmp_path.rglob("*.part*"))  # tinylib.download's partial files are renamed or removed
    assert ("GET", "/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin", None) in fake_hub.log
    assert same_weights(load_llama2c(path), m260k)
    assert find_llama2c_tokenizer(path) == tmp_path / "stories260K" / "tok512.model"
    # Offline: the downloaded copy is found without the network; a model never downloaded is a clear error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(fake_hub.log)
    assert download_llama2c("stories260K", dest=tmp_path) == path
    assert len(fake_hub.log) == n
    advice = r"HF_HUB_OFFLINE is set.*load_llama2c\('path/to/stories15M.bin'\)"
    with pytest.raises(FileNotFoundError, match=advice):
        download_llama2c("stories15M", dest=tmp_path)
    # Online but the file is missing on the Hub: the same advice.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(FileNotFoundError, match="download from http://127.0.0.1.*failed"):
        download_llama2c("stories42M", dest=tmp_path)
    assert set(MODELS) == {"stories260K", "stories15M", "stories42M", "stories110M"}


# --- the rest of the workspace: transformers export ---------------------------------------------------------


def test_imported_model_exports_to_transformers(m260k, tok512, tmp_path, tinystories_dir):
    hf_mod = pytest.importorskip("tinylib.interop.hf",
                                 reason="tinylib.interop.hf (to_hf/save_hf) not in this checkout")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinylib.stories import parse_stories

    folder = hf_mod.save_hf(m260k, tmp_path / "hf", tokenizer=tok512)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    stories = parse_stories((tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text())[:5]
    for s in stories:
        assert hf_tok(s)["input_ids"] == tok512.encode(s, bos=True)
    idx = torch.tensor([tok512.encode(stories[0], bos=True)[:64]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, m260k(idx)[0], atol=1e-4, rtol=1e-4)


def test_imported_model_goes_through_transformer_lens(m260k, tok512):
    lens = pytest.importorskip("tinylib.interp.bridge",
                               reason="tinylib.interp.bridge (to_lens) not in this checkout")
    bridge = lens.to_lens(m260k, tok512)
    idx = torch.tensor([tok512.encode("Once upon a time, there was a cat named Tom.", bos=True)])
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(idx)
        ours, patterns = m260k.forward_with_patterns(idx)
    torch.testing.assert_close(logits, ours, atol=1e-4, rtol=1e-4)
    # 8 query heads over 4 shared key/value heads: the bridge's patterns are our eager ones.
    torch.testing.assert_close(cache["blocks.4.attn.hook_pattern"], patterns[4], atol=1e-5, rtol=1e-4)
