"""Sparse autoencoders: the forward pass and gradients against a hand computation, splicing an exact identity
leaves the model's loss unchanged, a resumed run equals an uninterrupted one, decoder rows stay unit norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinylib.config import get_config
from tinylib.interp.sae import (
    SAEConfig,
    SparseAutoencoder,
    evaluate_sae,
    load_sae,
    mean_loss,
    site_activations,
    splice,
    topk_relu,
    train_sae,
    zero_ablate,
)
from tinylib.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(get_config("llama_tiny", vocab_size=256, n_layer=2, d_model=32, n_head=2, d_mlp=64,
                                  max_seq_len=64)).eval()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 256, size=20_000).astype(np.uint16)


def test_forward_backward_by_hand():
    torch.manual_seed(1)
    for kind in ("relu", "topk"):
        cfg = SAEConfig(d_in=6, n_features=10, kind=kind, k=3, l1=2.0)
        sae = SparseAutoencoder(cfg)
        with torch.no_grad():
            sae.scale.fill_(1.7)
            sae.b_dec.normal_()
            sae.b_enc.normal_()
        x = torch.randn(5, 6, dtype=torch.float64)
        sae = sae.double()
        out = sae(x)
        # by hand, each row on its own
        W_enc, W_dec = sae.W_enc.detach().clone(), sae.W_dec.detach().clone()
        b_enc, b_dec, s = sae.b_enc.detach(), sae.b_dec.detach(), 1.7
        W_enc.requires_grad_(True)
        W_dec.requires_grad_(True)
        loss = 0.0
        for i, row in enumerate(x):
            pre = (row * s - b_dec) @ W_enc + b_enc
            if kind == "relu":
                f = pre.clamp(min=0)
            else:
                keep = pre >= pre.sort(descending=True).values[2]
                f = torch.where(keep, pre.clamp(min=0), torch.zeros_like(pre))
            rec = f @ W_dec + b_dec
            assert torch.allclose(out.recon[i], rec.detach() / s)  # back in the input's units
            loss = loss + ((row * s - rec) ** 2).sum() / 6 / len(x)
            if kind == "relu":
                loss = loss + 2.0 * f.sum() / 6 / len(x)
        assert torch.allclose(out.loss, loss), kind
        out.loss.backward()
        loss.backward()
        assert torch.allclose(sae.W_enc.grad, W_enc.grad), kind
        assert torch.allclose(sae.W_dec.grad, W_dec.grad), kind


def test_topk_keeps_k_largest():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -1.0, -2.0, 4.0]])
    got = topk_relu(pre, 2)
    assert torch.equal(got, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 4.0]]))  # -1 kept, ReLU'd
    assert ((got > 0).sum(-1) <= 2).all()


def test_aux_loss_only_dead_features():
    torch.manual_seed(2)
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_features=16, k=2, aux_k=4))
    x = torch.randn(32, 8)
    none = sae(x, torch.zeros(16, dtype=torch.bool))
    assert float(none.aux) == 0.0 and torch.equal(none.loss, none.mse)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:5] = True
    out = sae(x, dead)
    out.aux.backward()
    assert out.aux > 0
    assert sae.W_dec.grad[5:].abs().sum() == 0 and sae.W_dec.grad[:5].abs().sum() > 0


def identity_sae(d: int, site: str, layer: int) -> SparseAutoencoder:
    """Features = [x, -x] through ReLU: x_hat = relu(x) - relu(-x) = x exactly, with unit decoder rows."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=2 * d, kind="relu", site=site, layer=layer))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("site", ["mlp", "resid"])
def test_identity_splice_keeps_the_loss(model, tokens, site):
    windows = torch.from_numpy(tokens[:8 * 32].astype(np.int64)).view(8, 32)
    d = model.cfg.d_mlp if site == "mlp" else model.cfg.d_model
    sae = identity_sae(d, site, 0)
    clean = mean_loss(model, windows)
    with splice(model, sae):
        spliced = mean_loss(model, windows)
    assert spliced == pytest.approx(clean, abs=1e-6)
    with torch.no_grad():
        logits, loss = model(windows[:, :-1], windows[:, 1:])
    assert clean == pytest.approx(F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]),
                                                  windows[:, 2:].reshape(-1)).item(), abs=1e-5)
    with zero_ablate(model, site, 0):
        zero = mean_loss(model, windows)
    assert abs(zero - clean) > 1e-5  # the zero-ablation baseline does change it
    m = evaluate_sae(model, sae, windows)
    assert m.loss_recovered == pytest.approx(1.0, abs=1e-4) and m.explained_variance == pytest.approx(1.0)


def test_site_activations_are_the_lens_hook(model):
    """'mlp' is what TransformerLens calls blocks.L.mlp.hook_post; 'resid' is hook_resid_post."""
    from tinylib.interp.bridge import to_lens

    bridge = to_lens(model)
    idx = torch.randint(0, 256, (2, 16))
    _, cache = bridge.run_with_cache(idx)
    for site, name in (("mlp", "blocks.1.mlp.hook_post"), ("resid", "blocks.1.hook_resid_post")):
        assert torch.allclose(site_activations(model, idx, site, 1), cache[name].float(), atol=1e-5), site


def test_resume_equals_uninterrupted(model, tokens, tmp_path):
    cfg = SAEConfig(d_in=64, n_features=128, k=4, steps=12, batch_size=64, seq_len=32, buffer_windows=4,
                    dead_tokens=200, save_every=5, layer=1)
    whole = train_sae(model, tokens, cfg, out_dir=tmp_path / "whole", progress=False)
    train_sae(model, tokens, cfg, out_dir=tmp_path / "split", until_step=7, progress=False)
    assert load_sae(tmp_path / "split", with_state=True)[1]["step"] == 7
    resumed = train_sae(model, tokens, cfg, out_dir=tmp_path / "split", resume=True, progress=False)
    assert resumed.step == whole.step == 12
    for k, v in whole.sae.state_dict().items():
        assert torch.equal(v, resumed.sae.state_dict()[k]), k
    assert resumed.history == whole.history
    for k, v in load_sae(tmp_path / "whole").state_dict().items():
        assert torch.equal(v, whole.sae.state_dict()[k]), k
    with pytest.raises(ValueError, match="other settings"):
        train_sae(model, tokens, SAEConfig(**{**cfg.__dict__, "k": 5}), out_dir=tmp_path / "split",
                  resume=True, progress=False)


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_decoder_rows_stay_unit_norm(model, tokens, kind):
    cfg = SAEConfig(d_in=64, n_features=128, kind=kind, k=4, steps=20, batch_size=64, seq_len=32,
                    buffer_windows=4, dead_tokens=100, resample_every=10, layer=0, lr=1e-2)
    run = train_sae(model, tokens, cfg, progress=False, log_every=5)
    norms = run.sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert run.history[-1]["mse"] < run.history[0]["mse"]


def test_bad_input_is_named(model, tokens):
    with pytest.raises(ValueError, match="d_in=10"):
        train_sae(model, tokens, SAEConfig(d_in=10, n_features=20, k=2), progress=False)
    with pytest.raises(ValueError, match="site='attn'"):
        site_activations(model, torch.zeros(1, 4, dtype=torch.long), "attn", 0)
    with pytest.raises(ValueError, match="layer=5"):
        site_activations(model, torch.zeros(1, 4, dtype=torch.long), "mlp", 5)
    with pytest.raises(ValueError, match="kind='gated'"):
        SAEConfig(kind="gated")
