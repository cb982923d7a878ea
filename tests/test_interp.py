"""Analysis helpers on small models: head scores, ablations, neurons, logit lens/DLA.

The induction checks need a model that has induction heads: a 2-layer model trained here for a few hundred
steps on repeated random sequences (seconds on CPU), where the second half can only be predicted by copying.
"""

from __future__ import annotations

import matplotlib
import pytest
import torch

from tinylib.config import ModelConfig
from tinylib.interp.ablation import (
    ablate_each_head,
    ablated_loss,
    ablation_hooks,
    component_means,
    each_head_losses,
    plot_ablation,
    token_losses,
)
from tinylib.interp.attention import (
    attention_patterns,
    head_scores,
    plot_head_scores,
    plot_pattern,
    repeated_tokens,
    scores_from_patterns,
    top_heads,
)
from tinylib.interp.bridge import to_lens
from tinylib.interp.logit_lens import direct_logit_attribution, logit_lens
from tinylib.interp.neurons import (
    WORD_CLASSES,
    class_ids,
    neuron_activations,
    neuron_selectivity,
    story_html,
    token_share,
    top_activations,
    top_k_entropy,
    word_class,
    word_positions,
    words_at,
)
from tinylib.model import Transformer

matplotlib.use("Agg")
V, P, HALF = 24, 32, 12  # token ids 0..22 (+ BOS 23), positions, half of the repeated sequence
BOS = V - 1


@torch.no_grad()
def build_induction_model() -> Transformer:
    """A 2-layer GPT-style model with a hand-set induction circuit (instant, unlike training one on 2 CPUs).

    Residual = [token one-hot | position one-hot | previous-token one-hot]. L0H0 attends from t to t-1
    (position query vs shifted position key) and copies that token into the previous-token block; L1H0
    attends to keys whose previous token equals the query token and writes their token into the token block,
    which the unembedding reads. MLPs and the other heads are zero. Query rows are centred so LayerNorm's
    mean shift cancels.
    """
    D = V + P + V
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=D, d_mlp=16, max_seq_len=P, norm="layernorm",
                      mlp="gelu", pos="learned", bias=True, tie_embeddings=False)
    m = Transformer(cfg)
    for p in m.parameters():
        p.zero_()
    for name, p in m.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
    dh, tok, pos, prev = cfg.d_head, slice(0, V), slice(V, V + P), slice(V + P, D)
    m.tok_emb.weight[:, tok] = torch.eye(V)
    m.pos_emb.weight[:, pos] = torch.eye(P)
    unit = 5.0  # LayerNorm makes a one-hot entry about this large
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    a0.q_proj.weight[:P, pos] = 2.0 * (torch.eye(P) - 1.0 / P)
    a0.k_proj.weight[1:P, pos] = 2.0 * torch.eye(P)[:P - 1]  # key of s is position s + 1
    a0.v_proj.weight[:V, tok] = torch.eye(V)
    a0.o_proj.weight[prev, :V] = torch.eye(V) / unit
    a1.q_proj.weight[:V, tok] = 2.0 * (torch.eye(V) - 1.0 / V)
    a1.k_proj.weight[:V, prev] = 2.0 * torch.eye(V)
    a1.v_proj.weight[:V, tok] = torch.eye(V)
    a1.o_proj.weight[tok, :V] = 3.0 * torch.eye(V) / unit
    m.lm_head.weight[:, tok] = 3.0 * torch.eye(V)
    assert dh >= P
    return m.eval()


@pytest.fixture(scope="module")
def induction_model() -> Transformer:
    return build_induction_model()


@pytest.fixture(scope="module")
def bridge(induction_model):
    return to_lens(induction_model)


@pytest.fixture(scope="module")
def rep() -> torch.Tensor:
    return repeated_tokens(BOS, 16, HALF, bos_id=BOS, seed=10_000)


def test_scores_on_handmade_patterns():
    """Each score equals its definition on patterns built to have exactly that behaviour."""
    T = 7
    tokens = torch.tensor([[9, 1, 2, 3, 1, 2, 3]])
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    first = torch.zeros(T, T)
    first[:, 0] = 1
    ind = first.clone()
    for t, s in ((4, 2), (5, 3), (6, 4)):  # after the earlier copy of tokens[t]
        ind[t] = 0
        ind[t, s] = 1
    pats = torch.stack([prev, first, ind])[None, None]  # [B=1, L=1, H=3, T, T]
    s = scores_from_patterns(pats, tokens)
    assert s["previous_token"][0].tolist() == pytest.approx([1.0, 1 / 6, 1 / 6])
    assert s["attend_to_first"][0].tolist() == pytest.approx([1 / 6, 1.0, 0.5])
    assert s["induction"][0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert s["duplicate_token"][0].tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_pattern_matches_eager_and_plots(bridge, induction_model, rep):
    pats = attention_patterns(bridge, rep[0])
    _, eager = induction_model.forward_with_patterns(rep[:1])
    assert torch.allclose(pats, torch.stack(eager)[:, 0], atol=1e-5)
    fig = plot_pattern(pats, [str(int(t)) for t in rep[0]], layer=1)
    assert [a.get_title() for a in fig.axes] == ["L1H0", "L1H1"]


def test_induction_heads_found_and_ablation_hurts_copying(bridge, rep):
    scores = head_scores(bridge, rep)
    assert float(scores["induction"][1].max()) > 0.5, scores["induction"]
    assert float(scores["previous_token"][0].max()) > 0.5, scores["previous_token"]
    plot_head_scores(scores)
    losses = token_losses(bridge, rep)
    second = slice(HALF + 1, None)  # predictions inside the repeat
    assert losses[:, second].median() < 0.01 and losses[:, second].mean() < 0.3 * losses[:, :HALF].mean()
    top = [(layer, h) for layer, h, _ in top_heads(scores["induction"], 2)]
    rand = repeated_tokens(BOS, 16, HALF, bos_id=BOS, seed=1)
    rand = torch.cat([rand[:, :1 + HALF], rand.flip(0)[:, 1:1 + HALF]], 1)  # no repeat: no copying possible
    rise_rep = ablated_loss(bridge, rep, heads=top, positions=second) - float(losses[:, second].mean())
    base_rand = float(token_losses(bridge, rand)[:, second].mean())
    rise_rand = ablated_loss(bridge, rand, heads=top, positions=second) - base_rand
    assert rise_rep > 1.0 and rise_rep > 3 * abs(rise_rand)


def test_zero_ablation_equals_zeroed_weights(bridge, induction_model, rep):
    """Ablating head (1, 0) through hook_z equals zeroing its slice of o_proj in tinylib
    (the eager cross-check)."""
    res = ablate_each_head(bridge, rep[:4], "zero")
    m = Transformer(induction_model.cfg)
    m.load_state_dict(induction_model.state_dict())
    dh = m.cfg.d_head
    with torch.no_grad():
        m.blocks[1].attn.o_proj.weight[:, 0:dh] = 0
        _, loss = m(rep[:4, :-1], rep[:4, 1:])
    assert res.delta.shape == (2, 2)
    assert res.base_loss + float(res.delta[1, 0]) == pytest.approx(float(loss), abs=1e-4)
    plot_ablation(res)


def test_mean_ablation(bridge, rep):
    means = component_means(bridge, rep)
    assert means.z.shape == (2, 2, 40) and means.post.shape == (2, 16)
    assert torch.allclose(means.z[1, 0],
                          bridge.run_with_cache(rep)[1]["blocks.1.attn.hook_z"][:, :, 0].mean((0, 1)),
                          atol=1e-5)
    res = ablate_each_head(bridge, rep[:4], "mean", means=means)
    assert sorted(h[:2] for h in res.top(2)) == [(0, 0), (1, 0)]  # the circuit; the idle heads cost nothing
    assert res.delta[:, 1].abs().max() < 1e-5


@pytest.fixture(scope="module")
def random_model() -> Transformer:
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=32, d_mlp=64, max_seq_len=16,
                      norm="layernorm", mlp="gelu", pos="learned", bias=True)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_neuron_helpers(random_model):
    bridge = to_lens(random_model)
    toks = torch.randint(0, 40, (6, 16), generator=torch.Generator().manual_seed(0))
    acts = neuron_activations(bridge, toks, layer=0)
    assert acts.shape == (6, 16, 64)
    post = bridge.run_with_cache(toks)[1]["blocks.0.mlp.hook_post"]
    assert torch.allclose(acts, post)
    ex = top_activations(bridge, toks, 0, 7, k=5, acts=acts)
    assert ex[0].activation == pytest.approx(float(acts[..., 7].max()))
    assert [e.activation for e in ex] == sorted([e.activation for e in ex], reverse=True)
    html = story_html([str(int(t)) for t in toks[0]], acts[0, :, 7])
    assert html.count("<span") == 16

    class Ids:  # a tokenizer whose words are single ids
        def encode(self, text):
            return [int(text.strip())] if text.strip().isdigit() else []

        def decode(self, ids):
            return "".join(f" {i}" for i in ids)  # every id a word of its own

    mask = word_positions(Ids(), toks, ["5", "6"])
    assert mask.sum() == ((toks == 5) | (toks == 6)).sum()
    ranked = neuron_selectivity(bridge, toks, mask, top=3, min_positions=1)  # a few positions: a test
    assert len(ranked) == 3 and ranked[0].score >= ranked[1].score and ranked[0].mean_on > ranked[0].mean_off


def test_logit_lens_and_dla_sum_to_logit(bridge, rep):
    seq = rep[0]
    lens = logit_lens(bridge, seq, pos=HALF + 3)
    assert lens.target == int(seq[HALF + 4]) and len(lens.labels) == 3
    assert lens.target_logprob[-1] > lens.target_logprob[0]  # the copy is made by the layers
    dla = direct_logit_attribution(bridge, seq, pos=HALF + 3)
    assert dla.total == pytest.approx(dla.logit, abs=1e-3)
    assert dla.heads(2, 2).shape == (2, 2)
    assert max(dla.top(3), key=lambda kv: kv[1])[0] == "L1H0"  # the induction head writes the answer
    dla2 = direct_logit_attribution(bridge, seq, pos=HALF + 3, distractor=int(seq[1]))
    assert dla2.total == pytest.approx(dla2.logit, abs=1e-3)


def test_dla_layernorm_gpt_model(random_model):
    seq = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(2))
    dla = direct_logit_attribution(random_model, seq, pos=5)
    assert dla.total == pytest.approx(dla.logit, abs=1e-3)
    assert "final norm bias" in dla.names and "L1 attn bias" in dla.names


def test_helpers_accept_a_checkpoint_path(tmp_path, induction_model, rep):
    from tinylib.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run" / "best", induction_model, {"step": 0})
    scores = head_scores(tmp_path / "run", rep[:4])
    assert top_heads(scores["induction"], 1)[0][:2] == (1, 0)


def test_each_head_losses_and_intervals_over_rows(bridge, rep):
    means = component_means(bridge, rep)
    losses = each_head_losses(bridge, rep[:6], "mean", means=means)
    assert losses.shape == (2, 2, 6, rep.shape[1] - 1)
    one = token_losses(bridge, rep[:6], ablation_hooks(heads=[(1, 0)], kind="mean", means=means))
    assert torch.allclose(losses[1, 0], one, atol=1e-5)  # entry [l, h] is head h of layer l ablated alone
    second = slice(HALF + 1, None)
    res = ablate_each_head(bridge, rep[:6], "mean", means=means, positions=second)
    again = ablate_each_head(bridge, rep[:6], "mean", means=means, positions=second, losses=losses)
    assert torch.allclose(res.per_row, again.per_row) and res.per_row.shape == (2, 2, 6)
    assert torch.allclose(res.delta, res.per_row.mean(-1))  # equal rows: mean of row means = mean of tokens
    lo, hi = res.ci(1, 0)
    assert lo <= float(res.delta[1, 0]) <= hi and hi - lo > 0
    assert res.cis().shape == (2, 2, 2)
    assert res.ci(0, 1) == (0.0, 0.0) or abs(res.ci(0, 1)[1]) < 1e-5  # an idle head: no cost, no spread
    with pytest.raises(ValueError, match="needs means"):
        each_head_losses(bridge, rep[:2], "mean")


class _SpaceFirst:
    """Like SentencePiece: every text is encoded with a space in front, so "Lily" at a line start differs."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, text):
        return self.inner.encode(text if text.startswith(" ") else " " + text)

    def token_bytes(self, i):
        return self.inner.token_bytes(i)


def test_word_positions_find_line_starts_and_words_and_classes():
    from tinylib.tokenizer import get_tokenizer

    tok = get_tokenizer("tinystories-512")
    text = "Tim saw Tom.\nTim and he ran to tomato land."
    ids = torch.tensor([tok.encode(text)])
    for t in (tok, _SpaceFirst(tok)):
        marked = word_positions(t, ids, ["Tim", "Tom"]).nonzero()[:, 1].tolist()
        words = words_at(t, ids)[0]
        assert [words[i] for i in marked] == ["Tim", "Tom", "Tim"]  # the line-start Tim too, not tomato
    words = words_at(tok, ids)[0]
    assert "tomato" in words and "." in words
    assert [word_class(w) for w in ("Tim", "he", "the", "tomato", ".", "42")] == [
        "capitalised word", "pronoun", "function word", "content word", "punctuation or space", "number"]
    assert class_ids([["Tim", "he"]]).tolist() == [[WORD_CLASSES.index("capitalised word"),
                                                    WORD_CLASSES.index("pronoun")]]


def test_min_group_size_top_k_entropy_and_token_share(random_model):
    bridge = to_lens(random_model)
    toks = torch.randint(0, 40, (6, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(6, 16, dtype=torch.bool)
    mask[0, :3] = True
    with pytest.raises(ValueError, match="fewer than min_positions=20"):
        neuron_selectivity(bridge, toks, mask)
    assert len(neuron_selectivity(bridge, toks, mask, min_positions=3, top=2)) == 2

    labels = torch.tensor([[0, 0, 1, 1, 2, 3, 3, 3]])
    acts = torch.zeros(1, 8, 3)
    acts[0, :2, 0] = 5.0  # neuron 0: top-2 both label 0 -> 0 bits
    acts[0, [0, 2], 1] = 5.0  # neuron 1: labels 0 and 1 -> 1 bit
    acts[0, 2:6, 2] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # neuron 2, k=4: 1, 1, 2, 3 -> 1.5 bits
    assert torch.allclose(top_k_entropy(acts, labels, 2)[:2], torch.tensor([0.0, 1.0]))
    assert top_k_entropy(acts, labels, 4)[2].item() == pytest.approx(1.5)

    tokens = torch.randint(0, 4, (50, 20), generator=torch.Generator().manual_seed(1))
    by_token = torch.tensor([0.0, 1.0, 3.0, -2.0])[tokens]
    assert token_share(by_token, tokens).share == pytest.approx(1.0)  # reads only the current token
    noise = torch.randn(50, 20, generator=torch.Generator().manual_seed(2))
    assert token_share(noise, tokens).share < 0.05  # does not depend on the token at all
    mixed = token_share(by_token + 2 * noise, tokens)
    assert 0.2 < mixed.share < 0.6 and mixed.n_tokens == 4 and mixed.n_positions == 1000
