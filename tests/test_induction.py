"""Induction heads: the training recipe, per-checkpoint scores, and the circuit measures from the weights."""

import copy
import json

import pytest
import torch

from tinylib.batches import RandomBatches
from tinylib.config import get_config
from tinylib.data import prepare_dataset
from tinylib.interp.attention import head_scores, repeated_tokens
from tinylib.interp.circuits import (
    ablated_induction_scores,
    composition_score,
    composition_scores,
    copying_accuracy,
    copying_rate,
    full_ov_circuit,
    head_direct_logits,
    head_matrices,
    random_composition_baseline,
    zero_head,
)
from tinylib.interp.induction import (
    InductionConfig,
    Probe,
    RepeatedSpans,
    add_text_tokens,
    bootstrap_interval,
    checkpoint_steps,
    checkpoints_of,
    copy_losses,
    crossing_step,
    icl_per_window,
    icl_score,
    icl_shift,
    load_scores,
    score_checkpoint,
    score_run,
    train_induction,
    write_spans,
)
from tinylib.model import Transformer


def gpt_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = get_config("gpt_tiny", vocab_size=96, n_layer=2, n_head=4, d_model=32, d_mlp=64, max_seq_len=64,
                     **kw)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # trained-looking norms and biases, so that folding them in is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else 0 * p)
    return model


def test_checkpoint_steps_are_log_spaced_and_include_both_ends():
    steps = checkpoint_steps(3000, 24)
    assert steps[0] == 0 and steps[-1] == 3000 and steps == sorted(set(steps)) and len(steps) <= 24
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps[0] < gaps[-1] / 20  # dense early, sparse late
    with pytest.raises(ValueError, match="n >= 2"):
        checkpoint_steps(10, 1)


def test_the_dense_window_places_the_transition_to_its_spacing():
    log_only = checkpoint_steps(2000, 40)
    near = [s for s in log_only if 700 <= s <= 1300]
    assert max(b - a for a, b in zip(near, near[1:])) > 150  # log spacing is coarsest where the head forms
    steps = checkpoint_steps(2000, 40, (800, 1200, 25))
    assert set(range(800, 1201, 25)) <= set(steps) and set(log_only) <= set(steps)
    assert checkpoint_steps(12, 5, (800, 1200, 25)) == checkpoint_steps(12, 5)  # past the end: nothing added
    with pytest.raises(ValueError, match="dense"):
        checkpoint_steps(2000, 40, (1200, 800, 25))


def test_write_spans_writes_the_window_both_inputs_and_targets_see():
    window = torch.arange(2 * 11).view(2, 11)
    x, y = window[:, :-1].clone(), window[:, 1:].clone()
    span = torch.tensor([100, 101, 102])
    nx, ny = write_spans(x, y, [(1, span, 0, 8)])
    new = torch.cat([nx, ny[:, -1:]], 1)
    assert torch.equal(nx[:, 1:], ny[:, :-1]) and torch.equal(new[0], window[0])
    assert new[1].tolist() == [100, 101, 102, 14, 15, 16, 17, 18, 100, 101, 102]
    assert torch.equal(x, window[:, :-1])  # the inputs are left as they were
    with pytest.raises(ValueError, match="must not overlap"):
        write_spans(x, y, [(0, span, 2, 4)])


def test_icl_interval_is_over_windows():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(200, 50, generator=g) + torch.linspace(1, 0, 50)
    per = icl_per_window(losses)
    assert per.shape == (200,) and float(per.mean()) == pytest.approx(icl_score(losses), abs=1e-6)
    lo, hi = bootstrap_interval(per)
    assert lo < float(per.mean()) < hi and hi - lo < 0.1
    lo_few, hi_few = bootstrap_interval(per[:10])
    assert hi_few - lo_few > hi - lo  # fewer windows, a wider interval
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval(per[:1])


def test_icl_shift_is_the_paired_change_of_the_mean_and_subtracts_a_baseline_run():
    g = torch.Generator().manual_seed(0)
    difficulty = torch.randn(300, generator=g)  # each window's own level: pairing must cancel it

    def rows(drop_at, drop):
        return [{"step": s, "icl_windows": (difficulty - (drop if s >= drop_at else 0.0)
                                            + 0.01 * torch.randn(300, generator=g)).tolist()}
                for s in range(800, 1225, 25)]

    mixed, plain = rows(1050, 0.05), rows(1050, 0.02)
    drop, lo, hi = icl_shift(mixed, 1050)
    assert drop == pytest.approx(0.05, abs=0.003) and lo < drop < hi and hi - lo < 0.01  # paired: narrow
    excess, lo, hi = icl_shift(mixed, 1050, plain)
    assert excess == pytest.approx(0.03, abs=0.003) and lo < 0.03 < hi
    unpaired = torch.tensor(mixed[0]["icl_windows"]) - torch.tensor(mixed[-1]["icl_windows"]).roll(1)
    assert float(unpaired.std()) > 1  # without pairing, the windows' levels would swamp a 0.05 drop
    with pytest.raises(ValueError, match="no icl_windows"):
        icl_shift([{"step": 800, "icl": 0.1}, *mixed[1:]], 1050)
    with pytest.raises(ValueError, match="before"):
        icl_shift(mixed, 800)
    with pytest.raises(ValueError, match="one Probe"):
        icl_shift(mixed, 1050, [{**r, "icl_windows": r["icl_windows"][:10]} for r in plain])


def test_random_composition_baseline_is_well_above_zero_and_reproducible():
    base = random_composition_baseline(128, 32, n=50)
    assert torch.equal(base, random_composition_baseline(128, 32, n=50))
    assert 0.08 < float(base.mean()) < 0.1 and float(base.std()) < 0.01  # rank 32 in 128 dimensions
    assert float(random_composition_baseline(32, 8, n=50).mean()) > float(base.mean())  # smaller: closer


def test_ablated_induction_scores_equal_a_model_with_the_heads_output_columns_zeroed():
    model = gpt_model()
    tokens = repeated_tokens(96, batch=3, half=10, bos_id=0)
    table = ablated_induction_scores(model, tokens)
    assert table.shape == (4, 4)
    for h in (0, 2):
        cut = copy.deepcopy(model)
        with torch.no_grad():
            cut.blocks[0].attn.o_proj.weight[:, h * 8:(h + 1) * 8] = 0
        _, patterns = cut.forward_with_patterns(tokens)
        expected = head_scores(cut, tokens)["induction"][1]
        torch.testing.assert_close(table[h], expected, rtol=1e-4, atol=1e-5)
        assert patterns[0].shape[1] == 4
    _, before = model.forward_with_patterns(tokens)
    with zero_head(model, 0, 1):
        pass
    _, after = model.forward_with_patterns(tokens)  # the hook is gone
    torch.testing.assert_close(before[1], after[1])
    with pytest.raises(ValueError, match="has 4 heads"):
        with zero_head(model, 0, 4):
            pass


def test_repeated_spans_copy_a_span_of_the_row_to_a_random_later_place():
    tokens = torch.randperm(5000).numpy()  # all distinct: a repeat can only come from the wrapper
    plain = RandomBatches(tokens, 8, 32, seed=3)
    x0, y0 = plain.next_batch()
    x, y = RepeatedSpans(RandomBatches(tokens, 8, 32, seed=3), 1.0, seed=3).next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])  # still next-token pairs
    window, original = torch.cat([x, y[:, -1:]], 1), torch.cat([x0, y0[:, -1:]], 1)
    distances = set()
    for row, orig in zip(window, original):
        later = [t for t in range(33) if row[t] in row[:t]]  # positions holding a copy of an earlier token
        n, b = len(later), later[0]
        assert later == list(range(b, b + n)) and n >= 8  # one contiguous copied span
        a = int((row[:b] == row[b]).nonzero())
        assert torch.equal(row[b:b + n], row[a:a + n]) and torch.equal(row[:b], orig[:b])
        distances.add(b - a)
    assert len(distances) > 2  # the copy is not always the same distance back
    again, _ = RepeatedSpans(RandomBatches(tokens, 8, 32, seed=3), 1.0, seed=3).next_batch()
    assert torch.equal(again, x)
    x_none, y_none = RepeatedSpans(RandomBatches(tokens, 8, 32, seed=3), 0.0).next_batch()
    assert torch.equal(x_none, x0) and torch.equal(y_none, y0)
    xs, ys = RepeatedSpans(RandomBatches(tokens, 64, 32, seed=3), 0.25, seed=3).next_batch()
    xb, yb = RandomBatches(tokens, 64, 32, seed=3).next_batch()
    changed = (torch.cat([xs, ys[:, -1:]], 1) != torch.cat([xb, yb[:, -1:]], 1)).any(1)
    assert 4 <= int(changed.sum()) <= 28  # about a quarter of 64 rows
    with pytest.raises(ValueError, match="fraction"):
        RepeatedSpans(plain, 1.5)


def test_icl_score_and_copy_losses_are_the_stated_means():
    losses = torch.arange(100.0).repeat(3, 1)  # loss = position
    assert icl_score(losses, early=10, late=60, width=10) == pytest.approx(50.0)
    assert icl_score(losses) == pytest.approx(4 * 100 // 5 - 100 // 5)
    with pytest.raises(ValueError, match="do not fit"):
        icl_score(losses, early=10, late=95)
    half = 5  # tokens [BOS, r1..r5, r1..r5]: 11 tokens, 10 predictions
    losses = torch.tensor([[9.0, 1, 1, 1, 1, 7, 2, 3, 2, 3]])  # 9 and 7: the unpredictable first tokens
    assert copy_losses(losses, half) == (1.0, 2.5)


def test_eager_head_scores_equal_the_bridge_scores():
    model = gpt_model()
    tokens = repeated_tokens(96, batch=3, half=10, bos_id=0)
    probe = Probe(windows=torch.randint(0, 96, (2, 64)), repeated=tokens, half=10)
    ours = score_checkpoint(model, probe)
    lens = head_scores(model, tokens)
    for kind in ("previous_token", "induction"):
        torch.testing.assert_close(torch.tensor(ours[kind]), lens[kind], rtol=1e-4, atol=1e-5)
    kept = score_checkpoint(model, probe, keep_windows=True)  # each window's ICL score, for icl_shift
    assert "icl_windows" not in ours and len(kept["icl_windows"]) == 2
    assert sum(kept["icl_windows"]) / 2 == pytest.approx(ours["icl"], abs=1e-4)


def test_head_matrices_reproduce_the_models_attention_scores_and_outputs():
    model = gpt_model(n_kv_head=2, bias=False)
    attn, norm = model.blocks[1].attn, model.blocks[1].attn_norm
    x = torch.randn(5, 32)
    xn = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    with torch.no_grad():
        q = attn.q_proj(norm(x)).view(5, 4, 8).transpose(0, 1)
        k = attn.k_proj(norm(x)).view(5, 2, 8).transpose(0, 1).repeat_interleave(2, 0)
        v = attn.v_proj(norm(x)).view(5, 2, 8).transpose(0, 1).repeat_interleave(2, 0)
        w_qk, w_ov = head_matrices(model, 1)
        torch.testing.assert_close(xn @ w_qk @ xn.T, q @ k.transpose(1, 2), rtol=1e-4, atol=1e-4)
        # head h attending fully to row j writes v_h[j] through its slice of o_proj
        wo = attn.o_proj.weight.view(32, 4, 8)
        for h in range(4):
            torch.testing.assert_close(xn @ w_ov[h], v[h] @ wo[:, h].T, rtol=1e-4, atol=1e-4)


def test_composition_score_closed_form_for_rank_one_matrices():
    g = torch.Generator().manual_seed(0)
    u, v, a, b = (torch.randn(16, generator=g) for _ in range(4))
    first_ov, second = torch.outer(u, v), torch.outer(a, b)
    cos = lambda p, q: float(abs(p @ q) / (p.norm() * q.norm()))  # noqa: E731
    assert float(composition_score(first_ov, second, "k")) == pytest.approx(cos(b, v), rel=1e-5)
    assert float(composition_score(first_ov, second, "q")) == pytest.approx(cos(v, a), rel=1e-5)
    assert float(composition_score(first_ov, second, "v")) == pytest.approx(cos(v, a), rel=1e-5)
    scores = composition_scores(gpt_model())
    assert scores.shape == (4, 4) and bool(((scores > 0) & (scores <= 1)).all())
    with pytest.raises(ValueError, match="src_layer < dst_layer"):
        composition_scores(gpt_model(), src_layer=1, dst_layer=1)


def test_full_ov_circuit_and_copying_accuracy():
    model = gpt_model()
    circuit = full_ov_circuit(model, 1, 2)
    _, w_ov = head_matrices(model, 1)
    w_e = model.tok_emb.weight.detach()
    expected = w_e @ w_ov[2] @ (w_e * model.norm_f.weight.detach()).T
    torch.testing.assert_close(circuit, expected, rtol=1e-4, atol=1e-5)
    assert full_ov_circuit(model, 1, 2, ids=torch.tensor([3, 5])).shape == (2, 2)
    assert copying_accuracy(torch.eye(6) + 0.1) == 1.0
    assert copying_accuracy(torch.eye(6).roll(1, 0)) == 0.0


@pytest.fixture(scope="module")
def data_dir(tinystories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ts512"
    prepare_dataset(tinystories_dir, "tinystories-512", out, max_stories=300, num_proc=1, progress=False)
    return out


def test_recipe_saves_log_spaced_checkpoints_and_scores_every_one(data_dir, tmp_path):
    cfg = InductionConfig(data=str(data_dir), out_dir=str(tmp_path / "run"), d_model=32, d_mlp=64, steps=12,
                          batch_size=4, seq_len=64, n_checkpoints=5, repeat_frac=0.5, warmup_steps=2,
                          progress=False, dtype="fp32")
    run = train_induction(cfg)
    folders = checkpoints_of(run)
    assert [int(f.name.split("_")[1]) for f in folders] == checkpoint_steps(12, 5)
    rows = score_run(run, progress=False)
    assert rows == load_scores(run) == json.loads((run / "scores.json").read_text())
    assert [r["step"] for r in rows] == checkpoint_steps(12, 5)
    assert rows[-1]["tokens"] == 12 * 4 * 64
    assert [r["text_tokens"] for r in add_text_tokens(rows, cfg, 512)] == [r["text_tokens"] for r in rows]
    assert 0 < rows[-1]["text_tokens"] < rows[-1]["tokens"]  # half of the windows carry a repeated span
    assert all(r["icl_lo"] <= r["icl"] <= r["icl_hi"] for r in rows)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert all(len(r["induction"]) == 2 and len(r["induction"][0]) == 4 for r in rows)
    assert crossing_step(rows, threshold=2.0) is None and crossing_step(rows, threshold=0.0) == 0
    with pytest.raises(FileNotFoundError, match="train_induction"):
        checkpoints_of(tmp_path)


def test_head_direct_logits_sum_to_the_attention_output_through_the_unembedding():
    model = gpt_model()
    tokens = repeated_tokens(96, batch=2, half=10, bos_id=0)
    seen = {}
    hook = model.blocks[1].attn.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out[0]))
    model(tokens)
    hook.remove()
    out = seen["out"] - model.blocks[1].attn.o_proj.bias
    expected = ((out - out.mean(-1, keepdim=True)) * model.norm_f.weight) @ model.lm_head.weight.T
    total = sum(head_direct_logits(model, tokens, 1, h) for h in range(4))
    torch.testing.assert_close(total, expected.detach(), rtol=1e-4, atol=1e-4)
    rate = copying_rate(model, tokens, 1, 0, slice(11, 20))
    argmax = head_direct_logits(model, tokens, 1, 0)[:, 11:20].argmax(-1)
    assert rate == float((argmax == tokens[:, 12:21]).float().mean())


def test_circuits_read_factorized_embeddings_multiplied_out():
    model = gpt_model(embed_rank=8)
    dense = model.dense_embedding().detach()
    circuit = full_ov_circuit(model, 1, 0)
    _, w_ov = head_matrices(model, 1)
    torch.testing.assert_close(circuit, dense @ w_ov[0] @ (dense * model.norm_f.weight.detach()).T,
                               rtol=1e-4, atol=1e-5)
    tokens = repeated_tokens(96, batch=2, half=10, bos_id=0)
    assert head_direct_logits(model, tokens, 1, 0).shape == (2, 21, 96)
