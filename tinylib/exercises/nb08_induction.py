"""Exercises of notebook 08 (induction heads form): the learner writes the measurements the notebook's claims
rest on. The data intervention (a span written twice into a batch), the induction score on repeated tokens,
the in-context score, K-composition and its excess over a random baseline, the causal test (zero-ablate each
layer-0 head, re-measure each layer-1 head's induction score), a copying OV circuit, and the normalisation of
activation patching.

References are the library's own: `tinylib.interp.induction` (`write_spans`, `icl_score`),
`tinylib.interp.attention.scores_from_patterns`, `tinylib.interp.circuits` (`composition_score`,
`ablated_induction_scores`, `copying_accuracy`) and `tinylib.interp.patching` (`logit_diff`,
`fraction_recovered`). Each wrong answer is a mistake people make: the span written into the inputs only, or
at the same index of inputs and targets; the attention to the token's earlier copy instead of to the one after
it, or averaged over the first copy too; the score's sign reversed, single positions instead of averaged
neighbourhoods; the product of K-composition in the order of Q-composition, a normalisation by one matrix
only; the raw composition score with no baseline; the wrong head ablated (its neighbour, or in the wrong
layer); the argmax over the wrong axis of the OV circuit; a patching metric normalised by the clean run only.
"""

from __future__ import annotations

import torch

from tinylib.config import get_config
from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.interp.attention import scores_from_patterns
from tinylib.interp.circuits import ablated_induction_scores, composition_score, copying_accuracy
from tinylib.interp.induction import icl_score, write_spans
from tinylib.interp.patching import fraction_recovered, logit_diff
from tinylib.model import Transformer

Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "08_induction_heads_form"


# --- the data intervention: a span written twice ------------------------------------------------------------

def _repeat_spans_by_tinylib(x: torch.Tensor, y: torch.Tensor, edits: list) -> Batch:
    """(x, y) with each edit (row, span, a, b) written at positions a and b of its row's window, the
    seq_len + 1 tokens x (window[:-1]) and y (window[1:]) were cut from."""
    return write_spans(x, y, edits)


def _spans_into_x_only(x: torch.Tensor, y: torch.Tensor, edits: list) -> Batch:
    x = x.clone()
    for row, span, a, b in edits:  # the targets still hold the old text: the model learns nonsense pairs
        for start in (a, b):
            n = min(len(span), x.shape[1] - start)
            x[row, start:start + n] = span[:n]
    return x, y


def _spans_same_index_in_y(x: torch.Tensor, y: torch.Tensor, edits: list) -> Batch:
    x, y = x.clone(), y.clone()
    for row, span, a, b in edits:  # y[t] is window[t + 1]: writing y at a shifts the span by one
        for t in (x, y):
            for start in (a, b):
                n = min(len(span), t.shape[1] - start)
                t[row, start:start + n] = span[:n]
    return x, y


def _copy_only(x: torch.Tensor, y: torch.Tensor, edits: list) -> Batch:
    window = torch.cat([x, y[:, -1:]], dim=1)
    for row, span, _a, b in edits:  # forgot the first place: the span appears once, nothing to copy from
        window[row, b:b + len(span)] = span
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def _span_cases(gen: torch.Generator):
    for B, T in ((2, 16), (3, 24), (4, 40)):
        x_y = torch.randint(0, 1000, (B, T + 1), generator=gen)
        edits = []
        for row in range(B):
            n = int(torch.randint(2, (T + 1) // 2 + 1, (1,), generator=gen))
            a = 0 if row == 0 else int(torch.randint(0, T + 2 - 2 * n, (1,), generator=gen))  # at the start
            b = T + 1 - n if row == B - 1 else int(torch.randint(a + n, T + 2 - n, (1,), generator=gen))
            edits.append((row, torch.randint(1000, 2000, (n,), generator=gen), a, b))
        yield (x_y[:, :-1].contiguous(), x_y[:, 1:].contiguous(), edits), {}


def repeat_spans(x: torch.Tensor, y: torch.Tensor, edits: list) -> Batch:
    """(x, y) with each edit (row, span, a, b) written at positions a and b of its row's window, the
    seq_len + 1 tokens x (window[:-1]) and y (window[1:]) were cut from."""
    window = torch.cat([x, y[:, -1:]], dim=1)  # x and y overlap: edit the window they share
    for row, span, a, b in edits:
        window[row, a:a + len(span)] = span
        window[row, b:b + len(span)] = span  # the second copy: predictable only by looking back
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


register(Exercise(
    "repeat_spans", "The data intervention: a span written twice", NB, difficulty=2, importance=4, minutes=15,
    reference=_repeat_spans_by_tinylib, shown=repeat_spans, cases=_span_cases,
    wrong=(_spans_into_x_only, _spans_same_index_in_y, _copy_only)))


# --- the induction score on repeated tokens ---------------------------------------------------------------

def _induction_score_repeated_by_tinylib(patterns: torch.Tensor, half: int) -> torch.Tensor:
    """[L, H] from patterns [B, L, H, T, T] on tokens [BOS, r_1..r_half, r_1..r_half] (T = 1 + 2 half, the
    r distinct): each head's attention from every second-copy token to the token after its first copy,
    averaged over those queries and the batch."""
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, half + 1).repeat(2)])
    return scores_from_patterns(patterns, tokens.expand(patterns.shape[0], -1))["induction"]


def _induction_on_the_copy(patterns: torch.Tensor, half: int) -> torch.Tensor:
    q = torch.arange(half + 1, 2 * half + 1)
    return patterns.float()[..., q, q - half].mean(dim=(0, -1))  # the earlier copy itself: duplicate-token


def _induction_all_queries(patterns: torch.Tensor, half: int) -> torch.Tensor:
    q = torch.arange(half + 1, 2 * half + 1)
    hits = patterns.float()[..., q, q - half + 1].sum(-1)  # summed over the second copy ...
    return (hits / patterns.shape[-1]).mean(0)  # ... but divided by every position


def _score_cases(gen: torch.Generator):
    for B, L, H, half in ((2, 2, 4, 5), (3, 1, 2, 8), (1, 3, 3, 12)):
        T = 1 + 2 * half
        scores = torch.randn(B, L, H, T, T, generator=gen) * 3
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        yield (scores.masked_fill(~causal, float("-inf")).softmax(-1), half), {}


def induction_score_repeated(patterns: torch.Tensor, half: int) -> torch.Tensor:
    """[L, H] from patterns [B, L, H, T, T] on tokens [BOS, r_1..r_half, r_1..r_half]: each head's attention
    from every second-copy token to the token after its first copy, averaged over those queries and the
    batch."""
    q = torch.arange(half + 1, 2 * half + 1)  # the second copy: r_i sits at half + i
    k = q - half + 1  # its first copy sits at i; the token after it at i + 1
    return patterns.float()[..., q, k].mean(dim=(0, -1))  # [B, L, H, half] -> [L, H]


register(Exercise(
    "induction_score_repeated", "The induction score on repeated tokens", NB, difficulty=2, importance=5,
    minutes=10, reference=_induction_score_repeated_by_tinylib, shown=induction_score_repeated,
    cases=_score_cases, wrong=(_induction_on_the_copy, _induction_all_queries)))


# --- the in-context-learning score -------------------------------------------------------------------------

def _in_context_score_by_tinylib(losses: torch.Tensor) -> float:
    """Loss at late positions minus loss at early ones: losses [N, T] per token; early = T // 5,
    late = 4 * T // 5, each averaged over 10 positions starting there."""
    return icl_score(losses)


def _icl_reversed(losses: torch.Tensor) -> float:
    return -icl_score(losses)


def _icl_single_positions(losses: torch.Tensor) -> float:
    n = losses.shape[1]
    return float(losses[:, 4 * n // 5].mean() - losses[:, n // 5].mean())


def _loss_cases(gen: torch.Generator):
    for N, T in ((4, 255), (2, 100), (8, 63)):
        decay = 3.0 + 2.0 / (1 + torch.arange(T, dtype=torch.float32) / 10)  # later tokens are easier
        yield (decay + torch.rand(N, T, generator=gen),), {}


def in_context_score(losses: torch.Tensor) -> float:
    """Loss at late positions minus loss at early ones: losses [N, T] per token; early = T // 5,
    late = 4 * T // 5, each averaged over 10 positions starting there."""
    T = losses.shape[1]
    early, late = T // 5, 4 * T // 5
    return float(losses[:, late:late + 10].mean() - losses[:, early:early + 10].mean())  # < 0: context helps


register(Exercise(
    "in_context_score", "The in-context-learning score", NB, difficulty=1, importance=4, minutes=5,
    reference=_in_context_score_by_tinylib, shown=in_context_score,
    cases=_loss_cases, wrong=(_icl_reversed, _icl_single_positions)))


# --- K-composition -----------------------------------------------------------------------------------------

def _k_composition_by_tinylib(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    """How much a later head's keys read what an earlier head writes: ||W_QK W_OV^T||_F / (||W_QK||_F
    ||W_OV||_F), for the earlier head's W_OV and the later head's W_QK, both [d_model, d_model]."""
    return composition_score(w_ov, w_qk, "k")


def _k_in_q_order(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    return composition_score(w_ov, w_qk, "q")  # W_OV W_QK: the earlier head feeding the queries


def _k_one_norm(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    return (w_qk @ w_ov.T).norm() / w_qk.norm().square()


def _matrix_cases(gen: torch.Generator):
    for d, rank in ((8, 2), (16, 4), (32, 3), (12, 12)):
        w_ov = torch.randn(d, rank, generator=gen) @ torch.randn(rank, d, generator=gen)
        w_qk = torch.randn(d, rank, generator=gen) @ torch.randn(rank, d, generator=gen)
        yield (w_ov, w_qk), {}


def k_composition(w_ov: torch.Tensor, w_qk: torch.Tensor) -> torch.Tensor:
    """How much a later head's keys read what an earlier head writes: ||W_QK W_OV^T||_F / (||W_QK||_F
    ||W_OV||_F)."""
    read = w_qk @ w_ov.T  # the keys' side of W_QK applied to what W_OV writes
    return read.norm() / (w_qk.norm() * w_ov.norm())  # Frobenius norms: 0 (unrelated) .. 1


register(Exercise(
    "k_composition", "K-composition of two heads", NB, difficulty=2, importance=4, minutes=10,
    reference=_k_composition_by_tinylib, shown=k_composition,
    cases=_matrix_cases, wrong=(_k_in_q_order, _k_one_norm)))


# --- does the OV circuit copy? -----------------------------------------------------------------------------

def _ov_copying_by_tinylib(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    """Fraction of tokens i for which the full OV circuit w_e @ w_ov @ w_u ([vocab, vocab]: attended token
    -> logits) raises logit i above every other logit. w_e [vocab, d], w_ov [d, d], w_u [d, vocab]."""
    return copying_accuracy(w_e @ w_ov @ w_u)


def _ov_argmax_over_rows(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    circuit = w_e @ w_ov @ w_u
    return float((circuit.argmax(0) == torch.arange(circuit.shape[0])).float().mean())


def _ov_without_embedding(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    return copying_accuracy(w_e @ w_u)  # the direct path: no head at all


def _circuit_cases(gen: torch.Generator):
    for vocab, d, copy in ((40, 16, 1.0), (100, 32, 0.5), (64, 8, 0.2), (30, 30, 2.0)):
        w_e = torch.randn(vocab, d, generator=gen)
        # a head that partly copies (w_ov ~ identity) and partly mixes; w_u a noisy transpose of w_e
        w_ov = copy * torch.eye(d) + torch.randn(d, d, generator=gen) / d ** 0.5
        w_u = w_e.T + torch.randn(d, vocab, generator=gen)
        yield (w_e, w_ov, w_u), {}


def ov_copying(w_e: torch.Tensor, w_ov: torch.Tensor, w_u: torch.Tensor) -> float:
    """Fraction of tokens i for which the full OV circuit w_e @ w_ov @ w_u raises logit i above every other
    logit."""
    circuit = w_e @ w_ov @ w_u  # [vocab, vocab]: row i, the logits when the head attends to token i
    copies = circuit.argmax(dim=-1) == torch.arange(circuit.shape[0])  # the row's top logit is its own token
    return float(copies.float().mean())


register(Exercise(
    "ov_copying", "Does a head's OV circuit copy?", NB, difficulty=2, importance=3, minutes=10,
    reference=_ov_copying_by_tinylib, shown=ov_copying,
    cases=_circuit_cases, wrong=(_ov_argmax_over_rows, _ov_without_embedding)))


# --- K-composition against a random baseline ------------------------------------------------------------

def _k_composition_excess_by_tinylib(w_ov: torch.Tensor, w_qk: torch.Tensor, random_ov: torch.Tensor,
                                     random_qk: torch.Tensor) -> torch.Tensor:
    """[Hs, Hd]: the K-composition of each earlier head (w_ov [Hs, d, d]) into each later head
    (w_qk [Hd, d, d]) minus the mean K-composition of the random pairs (random_ov[i], random_qk[i])."""
    baseline = torch.stack([composition_score(a, b, "k") for a, b in zip(random_ov, random_qk)]).mean()
    return torch.stack([torch.stack([composition_score(a, b, "k") for b in w_qk]) for a in w_ov]) - baseline


def _excess_no_baseline(w_ov, w_qk, random_ov, random_qk) -> torch.Tensor:
    return torch.stack([torch.stack([composition_score(a, b, "k") for b in w_qk]) for a in w_ov])


def _excess_baseline_in_q_order(w_ov, w_qk, random_ov, random_qk) -> torch.Tensor:
    baseline = torch.stack([composition_score(a, b, "q") for a, b in zip(random_ov, random_qk)]).mean()
    return _excess_no_baseline(w_ov, w_qk, random_ov, random_qk) - baseline


def _excess_ratio(w_ov, w_qk, random_ov, random_qk) -> torch.Tensor:
    baseline = torch.stack([composition_score(a, b, "k") for a, b in zip(random_ov, random_qk)]).mean()
    return _excess_no_baseline(w_ov, w_qk, random_ov, random_qk) / baseline


def _low_rank(gen: torch.Generator, n: int, d: int, rank: int) -> torch.Tensor:
    return torch.randn(n, d, rank, generator=gen) @ torch.randn(n, rank, d, generator=gen)


def _excess_cases(gen: torch.Generator):
    for hs, hd, d, rank, n in ((2, 3, 8, 2, 5), (4, 4, 16, 4, 12), (3, 2, 12, 3, 20)):
        yield (_low_rank(gen, hs, d, rank), _low_rank(gen, hd, d, rank), _low_rank(gen, n, d, rank),
               _low_rank(gen, n, d, rank)), {}


def k_composition_excess(w_ov: torch.Tensor, w_qk: torch.Tensor, random_ov: torch.Tensor,
                         random_qk: torch.Tensor) -> torch.Tensor:
    """[Hs, Hd]: the K-composition of each earlier head (w_ov [Hs, d, d]) into each later head
    (w_qk [Hd, d, d]) minus the mean K-composition of the random pairs (random_ov[i], random_qk[i])."""
    def k_comp(ov: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
        return (qk @ ov.T).norm() / (qk.norm() * ov.norm())

    baseline = torch.stack([k_comp(ov, qk) for ov, qk in zip(random_ov, random_qk)]).mean()  # unrelated pairs
    scores = torch.stack([torch.stack([k_comp(ov, qk) for qk in w_qk]) for ov in w_ov])
    return scores - baseline  # > 0: more composition than two unrelated matrices of the same rank show


register(Exercise(
    "k_composition_excess", "K-composition against a random baseline", NB, difficulty=2, importance=4,
    minutes=10, reference=_k_composition_excess_by_tinylib, shown=k_composition_excess, cases=_excess_cases,
    wrong=(_excess_no_baseline, _excess_baseline_in_q_order, _excess_ratio)))


# --- the causal test: ablate each layer-0 head, re-measure each layer-1 head --------------------------------

def _ablation_table_by_tinylib(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """[H0, H1]: row h, each layer-1 head's induction score on `tokens` ([BOS, r, r], the r distinct) with
    layer-0 head h zero-ablated (its slice of blocks[0].attn.o_proj's input set to 0)."""
    return ablated_induction_scores(model, tokens)


def _ablate(model: Transformer, tokens: torch.Tensor, layer: int, head_of_row) -> torch.Tensor:
    attn = model.blocks[layer].attn
    dh, half = attn.d_head, (tokens.shape[1] - 1) // 2
    rows = []
    for h in range(model.blocks[0].attn.n_head):
        def zero(_module, inputs, h=h):
            z = inputs[0].clone()
            z[..., head_of_row(h) * dh:(head_of_row(h) + 1) * dh] = 0
            return (z,)

        handle = attn.o_proj.register_forward_pre_hook(zero)
        try:
            _, patterns = model.forward_with_patterns(tokens)
        finally:
            handle.remove()
        q = torch.arange(half + 1, 2 * half + 1)
        rows.append(patterns[1].float()[..., q, q - half + 1].mean(dim=(0, -1)))
    return torch.stack(rows)


def _ablate_the_neighbour(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return _ablate(model, tokens, 0, lambda h: (h + 1) % model.cfg.n_head)  # head h + 1 instead of h


def _ablate_in_layer_one(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return _ablate(model, tokens, 1, lambda h: h)  # a layer-1 head's output cannot move its own pattern


def _model_cases(gen: torch.Generator):
    for seed, vocab, half in ((0, 64, 6), (1, 80, 10), (2, 100, 8)):
        torch.manual_seed(seed)
        cfg = get_config("gpt_tiny", vocab_size=vocab, n_layer=2, n_head=4, d_model=32, d_mlp=0,
                         max_seq_len=32)
        model = Transformer(cfg).eval()
        with torch.no_grad():  # sharper attention than at initialisation, so that each head matters
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "tok_emb.weight", "pos_emb.weight")):
                    param.mul_(4.0)
        r = torch.randperm(vocab - 1, generator=gen)[:half]
        tokens = torch.stack([torch.cat([torch.tensor([vocab - 1]), r, r]),
                              torch.cat([torch.tensor([vocab - 1]), r.flip(0), r.flip(0)])])
        yield (model, tokens), {}


def ablation_table(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """[H0, H1]: row h, each layer-1 head's induction score on `tokens` ([BOS, r, r], the r distinct) with
    layer-0 head h zero-ablated (its slice of blocks[0].attn.o_proj's input set to 0)."""
    attn0 = model.blocks[0].attn
    dh, half = attn0.d_head, (tokens.shape[1] - 1) // 2
    q = torch.arange(half + 1, 2 * half + 1)  # second-copy queries; the token after each one's first copy:
    rows = []
    for h in range(attn0.n_head):
        def zero_head_h(_module, inputs, h=h):  # o_proj's input is the heads' outputs side by side
            z = inputs[0].clone()
            z[..., h * dh:(h + 1) * dh] = 0
            return (z,)

        handle = attn0.o_proj.register_forward_pre_hook(zero_head_h)
        try:
            _, patterns = model.forward_with_patterns(tokens)  # one pattern [B, H, T, T] per layer
        finally:
            handle.remove()  # a hook left behind would ablate every later run
        rows.append(patterns[1].float()[..., q, q - half + 1].mean(dim=(0, -1)))  # q - half + 1; [H1]
    return torch.stack(rows)


register(Exercise(
    "ablation_table", "The causal test: ablate each layer-0 head", NB, difficulty=3, importance=5, minutes=20,
    reference=_ablation_table_by_tinylib, shown=ablation_table, cases=_model_cases,
    wrong=(_ablate_the_neighbour, _ablate_in_layer_one)))


# --- activation patching: the fraction recovered ------------------------------------------------------------

def _patching_recovered_by_tinylib(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor,
                                   answer: int, wrong: int) -> torch.Tensor:
    """[N]: for each patched run (logits [N, T, vocab]), the logit difference answer - wrong at the last
    position, scaled so that the corrupted run (logits [1, T, vocab]) gives 0 and the clean run 1."""
    return fraction_recovered(logit_diff(patched, answer, wrong), logit_diff(clean, answer, wrong)[0],
                              logit_diff(corrupted, answer, wrong)[0])


def _recovered_by_clean_only(patched, clean, corrupted, answer, wrong) -> torch.Tensor:
    return logit_diff(patched, answer, wrong) / logit_diff(clean, answer, wrong)[0]


def _recovered_numerator_only(patched, clean, corrupted, answer, wrong) -> torch.Tensor:
    diff = logit_diff(clean, answer, wrong)[0] - logit_diff(corrupted, answer, wrong)[0]
    return logit_diff(patched, answer, wrong) / diff  # forgot to subtract the corrupted run above


def _recovered_probabilities(patched, clean, corrupted, answer, wrong) -> torch.Tensor:
    def p_diff(logits):
        p = logits[:, -1].float().softmax(-1)
        return p[:, answer] - p[:, wrong]
    return (p_diff(patched) - p_diff(corrupted)[0]) / (p_diff(clean)[0] - p_diff(corrupted)[0])


def _patching_cases(gen: torch.Generator):
    for n, T, vocab in ((3, 5, 10), (6, 9, 30), (4, 7, 50)):
        clean = torch.randn(1, T, vocab, generator=gen) * 3
        corrupted = torch.randn(1, T, vocab, generator=gen) * 3
        mix = torch.rand(n, 1, 1, generator=gen)  # patched runs between the two, and a little beyond
        patched = mix * clean + (1 - mix) * corrupted + 0.5 * torch.randn(n, T, vocab, generator=gen)
        answer, wrong = torch.randperm(vocab, generator=gen)[:2].tolist()
        yield (patched, clean, corrupted, answer, wrong), {}


def patching_recovered(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, answer: int,
                       wrong: int) -> torch.Tensor:
    """[N]: for each patched run (logits [N, T, vocab]), the logit difference answer - wrong at the last
    position, scaled so that the corrupted run (logits [1, T, vocab]) gives 0 and the clean run 1."""
    def diff(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return last[:, answer] - last[:, wrong]

    clean_diff, corrupted_diff = diff(clean)[0], diff(corrupted)[0]
    return (diff(patched) - corrupted_diff) / (clean_diff - corrupted_diff)  # linear: 0 corrupted, 1 clean


register(Exercise(
    "patching_recovered", "Activation patching: the fraction recovered", NB, difficulty=2, importance=5,
    minutes=10, reference=_patching_recovered_by_tinylib, shown=patching_recovered, cases=_patching_cases,
    wrong=(_recovered_by_clean_only, _recovered_numerator_only, _recovered_probabilities)))
