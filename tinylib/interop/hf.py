"""Export to Hugging Face transformers: an in-memory model, a tokenizer, and a folder `from_pretrained` loads.

`to_hf(model)` builds a `LlamaForCausalLM` (LLaMA-style: RMSNorm, SwiGLU, RoPE) or a `GPT2LMHeadModel`
(GPT-style: LayerNorm, GELU, learned positions) from our config and copies our weights in.
`save_hf(model, folder, tokenizer)` writes `config.json` + `model.safetensors` (+ `tokenizer.json`) so that
`AutoModelForCausalLM.from_pretrained(folder)` works offline. `hf_tokenizer(tok)` turns our tokenizers into a
`PreTrainedTokenizerFast`; TransformerLens needs one for `to_tokens`/`to_str_tokens` (see
`tinylib.interp.bridge`). `from_hf` goes back. Training, checkpoints and analysis live elsewhere; this module
only translates.

Pitfalls the conversion handles (each one is checked by tests/test_hf.py against tinylib's own logits):
- Weight layouts. Our Linear weights are [out, in], as are Llama's, so LLaMA export is a pure rename. GPT-2
  uses `Conv1D`, whose weight is [in, out]: every matrix is transposed. GPT-2 also fuses q, k, v into one
  `c_attn` ([d_model, 3 * d_model], columns q | k | v).
- GPT-2 always has biases (linear layers and LayerNorm). A GPT-style model with `bias=False` exports zero
  biases, which is exact. The LM head never has a bias.
- Grouped-query attention. Llama has `num_key_value_heads`. GPT-2 has no GQA, so a GPT-style model with
  n_kv_head < n_head is exported with each k/v head repeated for the query heads that share it (query head h
  reads kv head h // (n_head / n_kv_head), as in our eager path). The outputs are identical; the file is
  larger, and `from_hf` brings back a multi-head model.
- RoPE pairing. Our RoPE rotates dims (i, i + d_head/2) ("rotate half"), the convention of transformers'
  Llama, so q/k weights need no permutation. (llama2.c and Meta use interleaved pairs (2i, 2i+1);
  tinylib.interop.llama2c converts those on import.) transformers 5.x configures RoPE through
  `rope_parameters={"rope_type": "default", "rope_theta": ...}`.
- Tied embeddings. `tie_word_embeddings` follows `cfg.tie_embeddings`; save_pretrained stores the tied
  matrix once.
- Attention implementation. We build models with `attn_implementation="eager"` so logits agree to ~1e-6 and
  attention weights are available; `from_pretrained(folder)` picks SDPA by default, which agrees within 1e-5.
- Vocabulary padding. Training may round `cfg.vocab_size` up past the tokenizer's vocabulary; the export keeps
  the model's size (the extra rows are never produced by the tokenizer).
- Architecture-lab variants (tinylib.config.ModelConfig). Exact: `zero_init` (an initialisation only),
  `embed_rank` (the factors multiply out to an ordinary tied [vocab, d_model] embedding; logits agree to
  rounding), and `mlp="relu2"` in a GPT-style model (GPT-2's `activation_function="relu2"`). Refused, naming
  the field: `sliding_window`, `qk_norm`, `logit_softcap` (LlamaForCausalLM and GPT2LMHeadModel have no such
  switch), and ReLU squared in a LLaMA-style model (Llama's MLP is gated).
- Tokenizers. tiktoken ranks become a byte-level BPE in `tokenizers` (GPT-2's byte-to-unicode alphabet, the
  same split regex, `ignore_merges` so whole-token ranks win as in tiktoken); SentencePiece models load
  through transformers' `LlamaTokenizer`. Both prepend BOS like our data framing (`[bos] + tokens`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tinylib.checkpoint import load_model
from tinylib.config import ModelConfig
from tinylib.model import Transformer


def variant_problems(cfg: ModelConfig) -> list[str]:
    """The config fields that LlamaForCausalLM and GPT2LMHeadModel cannot express (empty: export is exact)."""
    out = []
    if cfg.sliding_window is not None:
        out.append(f"sliding_window={cfg.sliding_window} (their attention always sees the whole context)")
    if cfg.qk_norm:
        out.append("qk_norm=True (they do not normalise queries and keys)")
    if cfg.logit_softcap is not None:
        out.append(f"logit_softcap={cfg.logit_softcap} (they do not cap logits)")
    return out


def _family(cfg: ModelConfig) -> str:
    """'llama' or 'gpt2': which transformers class can hold this config exactly."""
    problems = variant_problems(cfg)
    if problems:
        raise ValueError("cannot export to transformers exactly: " + "; ".join(problems)
                         + ". Train without these fields to export, or analyse the model with tinylib itself")
    if cfg.style != "custom":
        return {"llama": "llama", "gpt": "gpt2"}[cfg.style]
    if (cfg.norm, cfg.mlp, cfg.pos) == ("layernorm", "relu2", "learned"):
        return "gpt2"  # GPT-2's MLP is ungated: activation_function="relu2" is exactly ours
    raise ValueError(
        f"no transformers class matches norm={cfg.norm!r}, mlp={cfg.mlp!r}, pos={cfg.pos!r}: export supports "
        "LLaMA-style (rmsnorm, swiglu, rope -> LlamaForCausalLM) and GPT-style (layernorm, gelu, learned -> "
        "GPT2LMHeadModel) models; train with one of those presets to export")


def resolve_model(model: Transformer | str | os.PathLike) -> Transformer:
    """A tinylib model from a model or a checkpoint path (a checkpoint folder or a run folder)."""
    if isinstance(model, Transformer):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"expected a tinylib Transformer or a checkpoint path, got {type(model).__name__}")


def hf_config(cfg: ModelConfig, *, bos_id: int | None = None, eos_id: int | None = None,
              attn_implementation: str = "eager"):
    """The transformers config (LlamaConfig or GPT2Config) that describes `cfg` exactly."""
    if _family(cfg) == "llama":
        return LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=max(cfg.d_mlp, 1),
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            head_dim=cfg.d_head, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
            attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.attn_dropout,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=None,
            attn_implementation=attn_implementation, architectures=["LlamaForCausalLM"])
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=max(cfg.d_mlp, 1), layer_norm_epsilon=cfg.norm_eps,
        activation_function="relu2" if cfg.mlp == "relu2" else "gelu_new",
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
        attn_implementation=attn_implementation, architectures=["GPT2LMHeadModel"])


def _expand_kv(w: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Repeat each kv head's rows (weight [n_kv*dh, in] or bias [n_kv*dh])
    for the query heads that share it."""
    rep = cfg.n_head // cfg.n_kv_head
    w = w.reshape(cfg.n_kv_head, cfg.d_head, *w.shape[1:])
    return w.repeat_interleave(rep, dim=0).reshape(cfg.n_head * cfg.d_head, *w.shape[2:])


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names and layouts (fresh tensors; the tinylib model is not shared)."""
    cfg = model.cfg
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.d_mlp == 0:  # attention only: transformers cannot hold a zero-width MLP; one zero unit computes
        sd = {k: torch.zeros([n or 1 for n in v.shape], dtype=v.dtype) if v.numel() == 0 else v  # the same
              for k, v in sd.items()}
    if model.emb_proj is not None:  # factorized: the product of the factors is an ordinary tied embedding
        sd["tok_emb.weight"] = sd["lm_head.weight"] = model.dense_embedding().detach().clone()
    out: dict[str, torch.Tensor] = {}
    if _family(cfg) == "llama":
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(cfg.n_layer):
            src, dst = f"blocks.{i}.", f"model.layers.{i}."
            out[dst + "input_layernorm.weight"] = sd[src + "attn_norm.weight"]
            out[dst + "post_attention_layernorm.weight"] = sd[src + "mlp_norm.weight"]
            for p in ("q", "k", "v", "o"):
                for kind in ("weight", "bias") if cfg.bias else ("weight",):
                    out[dst + f"self_attn.{p}_proj.{kind}"] = sd[src + f"attn.{p}_proj.{kind}"]
            for p in ("gate", "up", "down"):
                for kind in ("weight", "bias") if cfg.bias else ("weight",):
                    out[dst + f"mlp.{p}_proj.{kind}"] = sd[src + f"mlp.{p}_proj.{kind}"]
        out["model.norm.weight"] = sd["norm_f.weight"]
        out["lm_head.weight"] = sd["lm_head.weight"]
        return out

    def bias(name: str, size: int) -> torch.Tensor:
        return sd[name] if name in sd else torch.zeros(size, dtype=sd["tok_emb.weight"].dtype)

    d = cfg.d_model
    out["transformer.wte.weight"] = sd["tok_emb.weight"]
    out["transformer.wpe.weight"] = sd["pos_emb.weight"]
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[dst + f"{theirs}.weight"] = sd[src + f"{ours}.weight"]
            out[dst + f"{theirs}.bias"] = bias(src + f"{ours}.bias", d)
        q, k, v = (sd[src + f"attn.{p}_proj.weight"] for p in "qkv")
        qb, kb, vb = (bias(src + f"attn.{p}_proj.bias", w.shape[0]) for p, w in zip("qkv", (q, k, v)))
        if cfg.n_kv_head != cfg.n_head:
            k, v, kb, vb = (_expand_kv(t, cfg) for t in (k, v, kb, vb))
        out[dst + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t().contiguous()  # Conv1D: [in, out]
        out[dst + "attn.c_attn.bias"] = torch.cat([qb, kb, vb])
        out[dst + "attn.c_proj.weight"] = sd[src + "attn.o_proj.weight"].t().contiguous()
        out[dst + "attn.c_proj.bias"] = bias(src + "attn.o_proj.bias", d)
        out[dst + "mlp.c_fc.weight"] = sd[src + "mlp.up_proj.weight"].t().contiguous()
        out[dst + "mlp.c_fc.bias"] = bias(src + "mlp.up_proj.bias", max(cfg.d_mlp, 1))
        out[dst + "mlp.c_proj.weight"] = sd[src + "mlp.down_proj.weight"].t().contiguous()
        out[dst + "mlp.c_proj.bias"] = bias(src + "mlp.down_proj.bias", d)
    out["transformer.ln_f.weight"] = sd["norm_f.weight"]
    out["transformer.ln_f.bias"] = bias("norm_f.bias", d)
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def to_hf(model: Transformer | str | os.PathLike, *, attn_implementation: str = "eager",
          tokenizer: Any = None):
    """A `LlamaForCausalLM` or `GPT2LMHeadModel` holding our weights,
    in eval mode, on the model's device/dtype.

    The result owns copies of the weights, so later training of `model` does not change it (call again).
    `tokenizer` (ours) only fills bos/eos ids in the config.
    """
    model = resolve_model(model)
    cfg = model.cfg
    bos = getattr(tokenizer, "bos_id", None)
    eos = getattr(tokenizer, "eos_id", None)
    config = hf_config(cfg, bos_id=bos, eos_id=eos, attn_implementation=attn_implementation)
    ref = model.tok_emb.weight
    cls = LlamaForCausalLM if _family(cfg) == "llama" else GPT2LMHeadModel
    hf = cls(config).to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"export to {cls.__name__} left weights unmatched: missing {missing}, unexpected "
                           f"{unexpected}; the installed transformers may have renamed parameters")
    if cfg.tie_embeddings and (
        hf.get_output_embeddings().weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr()
    ):
        hf.tie_weights()
    return hf.eval()


def from_hf(hf_model) -> Transformer:
    """A tinylib model from a `LlamaForCausalLM` or `GPT2LMHeadModel` (the inverse of `to_hf`)."""
    c = hf_model.config
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    tied = bool(getattr(c, "tie_word_embeddings", False))
    if c.model_type == "llama":
        bias = bool(c.attention_bias)
        if bool(c.mlp_bias) != bias:
            raise ValueError("tinylib has one `bias` switch; this Llama has attention_bias != mlp_bias")
        rope = getattr(c, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(
                f"rope_type={rope.get('rope_type')!r} is not supported; tinylib implements plain RoPE"
            )
        cfg = ModelConfig(
            vocab_size=c.vocab_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
            n_kv_head=c.num_key_value_heads, d_model=c.hidden_size, d_mlp=c.intermediate_size,
            max_seq_len=c.max_position_embeddings, norm="rmsnorm", mlp="swiglu", pos="rope",
            rope_theta=float(rope.get("rope_theta", 10000.0)), bias=bias, tie_embeddings=tied,
            norm_eps=c.rms_norm_eps)
        if cfg.d_head != c.head_dim:
            raise ValueError(f"head_dim={c.head_dim} differs from hidden_size/num_heads={cfg.d_head}")
        ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm_f.weight": sd["model.norm.weight"],
                "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
        for i in range(cfg.n_layer):
            src, dst = f"model.layers.{i}.", f"blocks.{i}."
            ours[dst + "attn_norm.weight"] = sd[src + "input_layernorm.weight"]
            ours[dst + "mlp_norm.weight"] = sd[src + "post_attention_layernorm.weight"]
            for key in [k for k in sd if k.startswith(src + "self_attn.") or k.startswith(src + "mlp.")]:
                ours[dst + key[len(src):].replace("self_attn.", "attn.")] = sd[key]
    elif c.model_type == "gpt2":
        cfg = ModelConfig(
            vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, d_model=c.n_embd,
            d_mlp=c.n_inner or 4 * c.n_embd, max_seq_len=c.n_positions, norm="layernorm",
            mlp="relu2" if c.activation_function == "relu2" else "gelu",
            pos="learned", bias=True, tie_embeddings=tied, norm_eps=c.layer_norm_epsilon)
        d = cfg.d_model
        ours = {"tok_emb.weight": sd["transformer.wte.weight"],
                "pos_emb.weight": sd["transformer.wpe.weight"],
                "norm_f.weight": sd["transformer.ln_f.weight"], "norm_f.bias": sd["transformer.ln_f.bias"],
                "lm_head.weight": sd.get("lm_head.weight", sd["transformer.wte.weight"])}
        for i in range(cfg.n_layer):
            src, dst = f"transformer.h.{i}.", f"blocks.{i}."
            for theirs, mine in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                ours[dst + f"{mine}.weight"] = sd[src + f"{theirs}.weight"]
                ours[dst + f"{mine}.bias"] = sd[src + f"{theirs}.bias"]
            w, b = sd[src + "attn.c_attn.weight"].t(), sd[src + "attn.c_attn.bias"]
            for j, p in enumerate("qkv"):
                ours[dst + f"attn.{p}_proj.weight"] = w[j * d:(j + 1) * d].contiguous()
                ours[dst + f"attn.{p}_proj.bias"] = b[j * d:(j + 1) * d]
            for theirs, mine in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                                 ("mlp.c_proj", "mlp.down_proj")):
                ours[dst + f"{mine}.weight"] = sd[src + f"{theirs}.weight"].t().contiguous()
                ours[dst + f"{mine}.bias"] = sd[src + f"{theirs}.bias"]
    else:
        raise ValueError(f"model_type={c.model_type!r}: from_hf reads Llama and GPT-2 models only")
    model = Transformer(cfg)
    model.load_state_dict(ours, strict=True)
    return model.to(next(hf_model.parameters()).device).eval()


# ------------------------------------------------------------------------------------------------------------
# Tokenizers


def _tiktoken_backend(encoding, bos_token: str):
    """A `tokenizers.Tokenizer` equal to a tiktoken Encoding:
    byte-level BPE over the same ranks and split regex."""
    byte_to_char = bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(byte_to_char[x] for x in b)

    ranks: dict[bytes, int] = encoding._mergeable_ranks  # tiktoken keeps no public accessor for these
    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok in sorted(ranks, key=ranks.__getitem__):
        if len(tok) > 1:
            pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
            pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
            merges.extend((as_str(a), as_str(b)) for a, b in pairs)
    backend = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(encoding._pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = dict(encoding._special_tokens)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, specials[bos_token])])
    return backend


def _spm_proto(tokenizer: Any) -> bytes | None:
    """The serialized SentencePiece model behind a tokenizer
    (tinylib.interop.llama2c's, or a `.model` path), if any."""
    if isinstance(tokenizer, (str, os.PathLike)) and str(tokenizer).endswith(".model"):
        return Path(tokenizer).read_bytes()
    proto = getattr(tokenizer, "model_proto", None) or getattr(tokenizer, "_proto", None)
    return proto if isinstance(proto, bytes) else None


def hf_tokenizer(tokenizer: Any):
    """A transformers `PreTrainedTokenizerFast` that encodes like our tokenizer and prepends BOS.

    Accepts a tinylib `Tokenizer` (tiktoken: ours or GPT-2),
    `tinylib.interop.sentencepiece.SentencePieceTokenizer` (or any tokenizer exposing its serialized
    SentencePiece model), a path to a `.model` file, or an HF tokenizer.
    """
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    proto = _spm_proto(tokenizer)
    if proto is not None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.model").write_bytes(proto)
            # legacy=False + add_prefix_space: the "▁" prefix sentencepiece adds to the first word
            return LlamaTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=True,
                                                  add_bos_token=True)
    encoding = None
    try:
        encoding = tokenizer.encoding
    except (AttributeError, NotImplementedError):
        pass
    if encoding is None or not hasattr(encoding, "_mergeable_ranks"):
        raise TypeError(f"cannot express {type(tokenizer).__name__} as a Hugging Face tokenizer: expected a "
                        "tinylib Tokenizer over tiktoken, a SentencePiece tokenizer with its .model file, "
                        "or a transformers tokenizer")
    bos = encoding.decode_single_token_bytes(tokenizer.bos_id).decode("utf-8")
    eos = encoding.decode_single_token_bytes(tokenizer.eos_id).decode("utf-8")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=_tiktoken_backend(encoding, bos), bos_token=bos,
                                     eos_token=eos, add_bos_token=True, model_max_length=1 << 30,
                                     clean_up_tokenization_spaces=False)
    # TransformerLens reads init_kwargs["name_or_path"] (a hub name for tokenizers that were downloaded)
    hf_tok.init_kwargs.setdefault("name_or_path", getattr(tokenizer, "name", "tinylib"))
    return hf_tok


# ------------------------------------------------------------------------------------------------------------
# Folder export


def save_hf(model: Transformer | str | os.PathLike, folder: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a folder `AutoModelForCausalLM.from_pretrained(folder)` loads offline (and `AutoTokenizer` too,
    when `tokenizer` is given). Written under a temporary name and renamed into place."""
    model = resolve_model(model)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    hf = to_hf(model, tokenizer=tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            hf_tokenizer(tokenizer).save_pretrained(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
