"""The throughput benchmark's baselines must be the same models as tinylib's presets,
or its speedups mean nothing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import ROOT
from tinylib.config import get_config
from tinylib.model import Transformer


def load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()
SHAPE = dict(n_layer=2, n_head=4, d_model=64, d_mlp=160, max_seq_len=32)


@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_baseline_has_the_presets_parameter_count(style):
    cfg = get_config(f"{style}_tiny", vocab_size=512, **SHAPE)
    Baseline = bench.BaselineLlama if style == "llama" else bench.BaselineGPT
    base = Baseline(512, cfg.max_seq_len, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_mlp)
    assert sum(p.numel() for p in base.parameters()) == Transformer(cfg).num_params()


def test_llama_baseline_computes_tinylibs_llama():
    torch.manual_seed(0)
    cfg = get_config("llama_tiny", vocab_size=512, **SHAPE)
    model = Transformer(cfg)
    base = bench.BaselineLlama(512, cfg.max_seq_len, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_mlp)
    sd = model.state_dict()
    mapped = {"wte.weight": sd["tok_emb.weight"], "norm.weight": sd["norm_f.weight"]}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        mapped |= {
            f"h.{i}.norm_1.weight": sd[p + "attn_norm.weight"],
            f"h.{i}.norm_2.weight": sd[p + "mlp_norm.weight"],
            f"h.{i}.wqkv.weight": torch.cat([sd[p + f"attn.{n}_proj.weight"] for n in "qkv"]),
            f"h.{i}.wo.weight": sd[p + "attn.o_proj.weight"],
            f"h.{i}.w13.weight": torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]),
            f"h.{i}.w2.weight": sd[p + "mlp.down_proj.weight"],
        }
    base.load_state_dict(mapped | {"lm_head.weight": sd["tok_emb.weight"]})
    x, y = torch.randint(0, 512, (2, 3, cfg.max_seq_len))
    _, loss = model(x, y)
    torch.testing.assert_close(base(x, y), loss, rtol=1e-5, atol=1e-5)
