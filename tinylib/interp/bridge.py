"""TransformerLens bridge: our models under the hook names interpretability learners know.

`to_lens(model, tokenizer)` exports the model with `tinylib.interop.hf.to_hf` (LlamaForCausalLM or
GPT2LMHeadModel, eager attention) and wraps it in a TransformerLens 4.x `TransformerBridge`, built
offline from the in-memory model and config (no hub, no network). Hooks then read as in every
TransformerLens tutorial:
`blocks.{L}.attn.hook_pattern` [batch, head, query, key], `blocks.{L}.attn.hook_z` [batch, pos, head, d_head],
`blocks.{L}.mlp.hook_post` [batch, pos, d_mlp], `blocks.{L}.hook_resid_pre/mid/post`,
`blocks.{L}.hook_attn_out`, `blocks.{L}.hook_mlp_out`, `hook_embed`, and `bridge.run_with_cache` /
`run_with_hooks` work as documented.

The tokenizer adapter is `tinylib.interop.hf.hf_tokenizer`: our tiktoken tokenizers (and llama2.c
SentencePiece ones) become real transformers tokenizers that prepend BOS like our data framing, so
`bridge.to_tokens`, `to_str_tokens` and `to_string` work. For readable labels in plots, `str_tokens` prefers
our tokenizer's `id_to_piece` (which keeps leading spaces and shows partial UTF-8 as `<0xAB>`).

Pitfall: compatibility mode. `to_lens(..., compatibility_mode=True)` calls `enable_compatibility_mode()`,
which folds the final norm's weights into the unembedding and centres it (HookedTransformer's processing): raw
logits then shift by a per-position constant, log-probs and losses do not. tests/test_bridge.py compares raw
logits without processing and log-softmax with it. The default is no processing, so hook values equal
tinylib's own activations.

Architecture-lab variants go through the export: `zero_init`, `embed_rank` (multiplied out) and GPT-style
ReLU squared bridge exactly; `sliding_window`, `qk_norm` and `logit_softcap` are refused with the field named
(the exported classes cannot express them; use tinylib's own `forward_with_patterns` and hooks instead).

This module builds bridges and token batches; the analyses (attention, neurons, ablation, logit lens) live in
their own modules and accept a tinylib model, a checkpoint path or a bridge.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformer_lens.model_bridge.sources import build_bridge_from_module

from tinylib.checkpoint import load_tokenizer
from tinylib.interop.hf import hf_tokenizer, resolve_model, to_hf, variant_problems
from tinylib.model import Transformer


def _offline() -> None:
    """Nothing in the bridge may wait on the network: the model and tokenizer are in memory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def to_lens(model: Transformer | str | os.PathLike, tokenizer: Any = None, *,
            compatibility_mode: bool = False):
    """A TransformerLens `TransformerBridge` around an exported copy of `model`.

    `tokenizer` (ours, a SentencePiece one, or an HF tokenizer) enables `to_tokens`/`to_str_tokens`.
    The bridge keeps `tinylib_model` and `tinylib_tokenizer` attributes for the analysis helpers.
    """
    _offline()
    model = resolve_model(model)
    problems = variant_problems(model.cfg)
    if problems:
        raise ValueError("TransformerLens cannot express this model (the bridge wraps a transformers export) "
                         + "; ".join(problems) + ". Use tinylib's forward_with_patterns and forward hooks")
    hf = to_hf(model, tokenizer=tokenizer, attn_implementation="eager")
    architecture = hf.config.architectures[0]
    bridge = build_bridge_from_module(
        hf, architecture, hf_config=hf.config,
        tokenizer=hf_tokenizer(tokenizer) if tokenizer is not None else None,
        model_name=f"tinylib-{model.cfg.style}")
    if compatibility_mode:
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    bridge.tinylib_model = model
    bridge.tinylib_tokenizer = tokenizer
    return bridge


def is_bridge(obj: Any) -> bool:
    return type(obj).__name__ == "TransformerBridge" and hasattr(obj, "run_with_cache")


def as_bridge(model: Any, tokenizer: Any = None):
    """The bridge itself, or a new one for a tinylib model / checkpoint path
    (tokenizer from the checkpoint)."""
    if is_bridge(model):
        return model
    if tokenizer is None and isinstance(model, (str, os.PathLike)):
        try:
            tokenizer = load_tokenizer(model)
        except (ImportError, ValueError, FileNotFoundError):
            tokenizer = None
    return to_lens(model, tokenizer)


def tinylib_model(bridge: Any) -> Transformer:
    """The tinylib model a bridge was built from (for the eager cross-check and its config)."""
    model = getattr(bridge, "tinylib_model", None)
    if model is None:
        raise ValueError(
            "this bridge was not built by tinylib.interp.bridge.to_lens; build it with to_lens(model)"
        )
    return model


def str_tokens(bridge_or_tokenizer: Any, tokens: torch.Tensor | Sequence[int]) -> list[str]:
    """One readable label per token id
    (our `id_to_piece` when available, else the bridge's `to_str_tokens`)."""
    ids = [int(t) for t in (tokens.flatten().tolist() if torch.is_tensor(tokens) else tokens)]
    tok = getattr(bridge_or_tokenizer, "tinylib_tokenizer", bridge_or_tokenizer)
    if tok is not None and hasattr(tok, "id_to_piece"):
        n = getattr(tok, "vocab_size", None)
        return [tok.id_to_piece(i) if n is None or i < n else f"<{i}>" for i in ids]
    if is_bridge(bridge_or_tokenizer) and bridge_or_tokenizer.tokenizer is not None:
        return bridge_or_tokenizer.to_str_tokens(torch.tensor(ids))
    return [f"<{i}>" for i in ids]


def encode(bridge_or_tokenizer: Any, text: str, *, bos: bool = True) -> torch.Tensor:
    """[1, T] ids of `text` with our tokenizer (BOS first, as in training data)."""
    tok = getattr(bridge_or_tokenizer, "tinylib_tokenizer", bridge_or_tokenizer)
    if tok is None:
        raise ValueError("no tokenizer: build the bridge with to_lens(model, tokenizer) or pass token ids")
    return torch.tensor([tok.encode(text, bos=bos)], dtype=torch.long)


def story_windows(tokenizer: Any, stories: Sequence[str], seq_len: int,
                  n_windows: int | None = None) -> torch.Tensor:
    """[N, seq_len] windows cut in order from `[bos] + story` for each story,
    concatenated (training framing)."""
    ids: list[int] = []
    for story in stories:
        ids += tokenizer.encode(story, bos=True)
        if n_windows is not None and len(ids) >= n_windows * seq_len:
            break
    n = len(ids) // seq_len if n_windows is None else min(n_windows, len(ids) // seq_len)
    if n < 1:
        raise ValueError(f"{len(ids)} tokens from {len(stories)} stories do not fill one window of {seq_len}")
    return torch.tensor(np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len))
