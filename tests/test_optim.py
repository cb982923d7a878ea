"""Muon: the Newton-Schulz orthogonalisation, the update against a hand computation,
AdamW groups against torch."""

import pytest
import torch

from tinylib.config import TrainConfig, get_config
from tinylib.model import Transformer
from tinylib.optim import MuonAdamW, configure_optimizer, orthogonalize


@pytest.mark.parametrize("shape", [(48, 64), (256, 64), (64, 256), (3, 96, 32)])
def test_orthogonalize_equalises_singular_values_and_keeps_the_directions(shape):
    """Rectangular shapes: a square random matrix has singular values near 0, which five steps leave small."""
    torch.manual_seed(0)
    g = torch.randn(*shape)
    o = orthogonalize(g, steps=5).float()
    assert o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.max() < 1.25 and s.min() > 0.5  # Newton-Schulz brings every singular value near 1, not exactly
    # the polar factor U V^T is what it approximates: the two agree in direction
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (o * polar).sum((-2, -1)) / (o.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cos > 0.9).all()


def test_muon_update_is_nesterov_momentum_orthogonalised_and_scaled():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 32))  # tall: the update is scaled by sqrt(96 / 32)
    w0 = w.detach().clone()
    opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.05, momentum=0.9, weight_decay=0.1)
    grads = [torch.randn(96, 32) for _ in range(2)]
    expected, buf = w0.clone(), torch.zeros(96, 32)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        expected = expected * (1 - 0.05 * 0.1) - 0.05 * 3**0.5 * orthogonalize(nesterov[None])[0]
    torch.testing.assert_close(w.detach(), expected, atol=1e-6, rtol=1e-5)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(10, 4)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = MuonAdamW([{"params": [a[0]], "weight_decay": 0.1}, {"params": [a[1]], "weight_decay": 0.0}],
                     lr=3e-3, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": [b[0]], "weight_decay": 0.1},
                             {"params": [b[1]], "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_configure_optimizer_puts_block_matrices_on_muon_and_the_rest_on_adamw():
    model = Transformer(get_config("llama_tiny", vocab_size=256))
    opt = configure_optimizer(model, TrainConfig(optimizer="muon", muon_lr=0.02, lr=3e-3),
                              torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [g for g in opt.param_groups if g["muon"]]
    adam = [g for g in opt.param_groups if not g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == 0.02
    muon_names = {names[id(p)] for p in muon[0]["params"]}
    assert muon_names and all(n.startswith("blocks.") and n.endswith("_proj.weight") for n in muon_names)
    adam_names = {names[id(p)] for g in adam for p in g["params"]}
    assert "tok_emb.weight" in adam_names and not any(
        n.startswith("blocks.") and "proj" in n for n in adam_names
    )
    assert len(muon_names) + len(adam_names) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="expected 'adamw' or 'muon'"):
        configure_optimizer(model, TrainConfig(optimizer="sgd"), torch.device("cpu"))
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonAdamW([{"params": [model.norm_f.weight], "muon": True}])
