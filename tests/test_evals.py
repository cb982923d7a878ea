"""The evaluation benchmark (tinylib.evals): its generated items, scoring against hand computations, ties,
the n-gram floors, and the errors bad input gets."""

from __future__ import annotations

import math
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tinylib.evals import families as F
from tinylib.evals.floors import NGramLossModel
from tinylib.evals.items import Item, ItemFileError, read_items, write_items
from tinylib.evals.models import VocabMismatchError, check_vocab, load_loss_model
from tinylib.evals.scoring import (
    Encoded,
    NetworkLossModel,
    Unscorable,
    bootstrap_centred,
    centred,
    encode_item,
    is_correct,
    paired_difference,
    score_items,
    summarize,
)
from tinylib.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def generated() -> list[Item]:
    """Every template family's items (story endings need validation text, tested separately)."""
    return F.build_benchmark(validation_stories=[]).items


@pytest.fixture(scope="module")
def train_stories(tinystories_dir) -> list[str]:
    from tinylib.stories import parse_stories
    return parse_stories((tinystories_dir / "TinyStories-train.first2316.txt").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def valid_stories(tinystories_dir) -> list[str]:
    from tinylib.stories import parse_stories
    return parse_stories((tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text(encoding="utf-8"))


# --- generators ---------------------------------------------------------------------------------------------

def test_counts_per_family(generated, valid_stories):
    counts = Counter(it.family for it in generated)
    assert set(counts) == {"grammar", "consistency", "tracking", "knowledge"}
    assert all(n >= 100 for n in counts.values()), counts
    endings = F.ending_items(valid_stories)
    assert len(endings) >= 100 and len(generated) + len(endings) >= 600
    assert len({it.id for it in generated + endings}) == len(generated) + len(endings)


def test_generators_are_deterministic():
    first, again = (F.build_benchmark(3, validation_stories=[]).items for _ in range(2))
    assert first == again
    assert F.grammar_items(0) != F.grammar_items(1)


def _words(s: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", s)


def test_pairs_differ_only_where_they_should(generated):
    pairs = [it for it in generated if it.kind == "pair"]
    assert {it.task for it in pairs} == set(F.GRAMMAR_TASKS)
    for it in pairs:
        good, bad = (_words(c) for c in it.choices)
        if it.task == "word_order":  # the same words in another order
            assert Counter(good) == Counter(bad), it
            diff = [i for i, (a, b) in enumerate(zip(good, bad)) if a != b]
            if it.meta["how"] == "adjacent_swap":
                assert len(diff) == 2 and diff[1] == diff[0] + 1, it
                assert good[diff[0]] == bad[diff[1]] and good[diff[1]] == bad[diff[0]], it
        else:  # one word replaced, nothing else touched
            assert len(good) == len(bad), it
            assert sum(a != b for a, b in zip(good, bad)) == 1, it


def test_multiple_choice_options_differ_only_in_the_answer(generated):
    for it in generated:
        if it.kind == "mc":
            assert it.context and not it.context.endswith(" ")
            assert all(c.startswith(" ") for c in it.choices), it  # the continuation carries its space
            if it.family in ("consistency", "tracking"):  # one word against one word
                assert {len(_words(c)) for c in it.choices} in ({1}, {2}), it
        if it.kind == "schema":
            a, b = (_words(c) for c in it.choices)
            assert a[0] == b[0] and a != b, it  # the same name (or subject), another situation


def test_every_template_fills_cleanly():
    for seed in range(3):
        for it in F.build_benchmark(seed, validation_stories=[]).items:
            for text in it.texts():
                assert "{" not in text and "}" not in text, it
                assert "  " not in text and text == text.strip(), it
                assert not re.search(r"\ba [aeiou]", text), it  # "an orange", never "a orange"
                assert text[0].isupper(), it


def test_each_option_is_the_answer_as_often_as_a_distractor(generated):
    """Balance: a model that only knows word frequencies scores chance on the two-option tasks."""
    for task in ("pronoun_after_name", "colors", "places", "states"):
        items = [it for it in generated if it.task == task]
        golds = Counter(it.choices[it.gold] for it in items)
        wrongs = Counter(c for it in items for i, c in enumerate(it.choices) if i != it.gold)
        assert golds == wrongs, (task, golds, wrongs)
    schema = [it for it in generated if it.kind == "schema"]
    assert Counter(it.gold for it in schema) == {0: len(schema) // 2, 1: len(schema) // 2}
    causes = Counter(it.choices[it.gold] for it in generated if it.task == "cause_effect")
    assert len(set(causes.values())) == 1  # every effect is the answer equally often


def test_no_item_text_occurs_in_the_training_stories(generated, valid_stories, train_stories):
    text = "\n".join(train_stories)
    for it in generated:
        for option in it.texts():
            assert option not in text, it.id
    for it in F.ending_items(valid_stories):
        assert it.context not in text, it.id  # held out: the validation story is not training text


def test_split_ending():
    story = 'Tom had a ball. He threw it. "Wow!" said Mom.\nThe end came soon.'
    before = 'Tom had a ball. He threw it. "Wow!" said Mom.'
    assert F.split_ending(story) == (before, "\n", "The end came soon.")
    assert F.split_ending("One. Two.") is None


# --- scoring, against hand computations ---------------------------------------------------------------------

class CharTokenizer:
    """One id per character of "abcd" and BOS = 4: small enough to compute every loss by hand."""

    name, vocab_size, bos_id, eos_id = "chars", 5, 4, 4

    def encode(self, text: str) -> list[int]:
        return ["abcd".index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join("abcd"[i] for i in ids)


class TableModel:
    """p(next | previous) from a fixed table: a LossModel whose every loss is known."""

    name, max_len = "table", None

    def __init__(self, table: np.ndarray):
        self.table, self.tokenizer = table, CharTokenizer()

    def token_losses(self, seqs):
        return [np.array([-math.log(self.table[a, b]) for a, b in zip(s[:-1], s[1:])]) for s in seqs]


TABLE = np.array([  # rows: previous id (a, b, c, d, BOS); columns: next id (a, b, c, d, BOS)
    [0.1, 0.5, 0.2, 0.1, 0.1],
    [0.1, 0.1, 0.4, 0.3, 0.1],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.6, 0.1, 0.1, 0.1, 0.1],
    [0.7, 0.1, 0.1, 0.05, 0.05],
])


def test_multiple_choice_by_mean_continuation_loss():
    lm = TableModel(TABLE)
    # context "ab"; options "c" (p = 0.4) and "da" (p = 0.3 then 0.6: mean loss (-ln .3 - ln .6) / 2 = 0.857)
    item = Item("t/mc", "f", "t", "mc", ("c", "da"), gold=1, context="ab")
    enc = encode_item(item, lm.tokenizer)
    assert enc.seqs == [[4, 0, 1, 2], [4, 0, 1, 3, 0]] and enc.spans == [(3, 4), (3, 5)]
    [res] = score_items(lm, [item], progress=False).results
    assert res.scores == pytest.approx([-math.log(0.4), (-math.log(0.3) - math.log(0.6)) / 2])
    assert res.correct  # 0.857 < 0.916: the longer option wins on the mean, though its total (1.71) is larger


def test_schema_by_the_shared_continuation():
    lm = TableModel(TABLE)
    # contexts "a" / "b", continuation "cc": only the continuation's loss counts
    item = Item("t/s", "f", "t", "schema", ("a", "b"), gold=1, continuation="cc")
    [res] = score_items(lm, [item], progress=False).results
    by_hand = [(-math.log(0.2) - math.log(0.2)) / 2, (-math.log(0.4) - math.log(0.2)) / 2]
    assert res.scores == pytest.approx(by_hand)
    assert res.correct


def test_minimal_pair_by_total_loss():
    lm = TableModel(TABLE)
    item = Item("t/p", "f", "t", "pair", ("ab", "abd"), gold=0)
    [res] = score_items(lm, [item], progress=False).results
    assert res.scores == pytest.approx([-math.log(0.7 * 0.5), -math.log(0.7 * 0.5 * 0.3)])
    assert res.correct


def test_ties_count_as_wrong():
    assert not is_correct([1.0, 1.0], 0) and not is_correct([1.0, 1.0], 1)
    assert not is_correct([0.5, 0.5 + 1e-9, 2.0], 0)  # closer than TIE_TOL is a tie
    assert is_correct([0.5, 0.6, 2.0], 0) and not is_correct([0.5, 0.6, 0.5], 0)
    uniform = TableModel(np.full((5, 5), 0.2))  # identical predictions everywhere: every pair ties
    items = [Item(f"t/{i}", "f", "t", "pair", (a, b), gold=0)
             for i, (a, b) in enumerate([("ab", "ba"), ("cd", "dc")])]
    scored = score_items(uniform, items, progress=False)
    assert [r.correct for r in scored.results] == [False, False]
    assert summarize(scored.results).centred == -1.0


def test_unigram_floor_ties_every_reordered_sentence(generated, train_stories):
    """A unigram model gives a sentence and its reordering the same total loss: all counted wrong."""
    lm = NGramLossModel(1, get_tokenizer("tinystories-4096"), train_stories[:200])
    order = [it for it in generated if it.task == "word_order"]
    scored = score_items(lm, order, progress=False)
    assert len(scored.results) == len(order) and not any(r.correct for r in scored.results)


def test_centred_and_bootstrap():
    assert centred(0.5, 0.5) == 0 and centred(1.0, 0.25) == 1 and centred(0.0, 0.5) == -1
    assert centred(0.625, 0.25) == pytest.approx(0.5)
    assert bootstrap_centred(np.ones(50), np.full(50, 0.5)) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    small, large = rng.random(100) < 0.7, rng.random(2000) < 0.7
    lo, hi = bootstrap_centred(small, np.full(100, 0.5))
    assert lo < centred(small.mean(), 0.5) < hi
    lo2, hi2 = bootstrap_centred(large, np.full(2000, 0.5))
    assert hi2 - lo2 < (hi - lo) / 3  # ~1/sqrt(20) as wide
    # the paired difference of a result with itself is exactly 0
    lm = TableModel(TABLE)
    res = score_items(lm, [Item("t/p", "f", "t", "pair", ("ab", "abd"), gold=0)], progress=False).results
    assert paired_difference(res, res) == (0.0, (0.0, 0.0))


def test_network_losses_match_the_models_own_loss():
    """Batched, padded and cropped losses equal the model's loss on each sequence alone."""
    from tinylib.config import get_config
    from tinylib.model import Transformer

    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=64, max_seq_len=16)).eval()
    lm = NetworkLossModel(model, CharTokenizer(), "tiny", batch_tokens=40)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (3, 9, 17, 30, 5)]
    got = lm.token_losses(seqs)
    for s, losses in zip(seqs, got):
        assert losses.shape == (len(s) - 1,)
        window = torch.tensor(s[-17:])
        _, loss = model(window[None, :-1], window[None, 1:])
        kept = losses[~np.isnan(losses)]
        assert len(kept) == min(len(s) - 1, 16)
        assert kept.mean() == pytest.approx(loss.item(), abs=1e-5)


# --- the floors ---------------------------------------------------------------------------------------------

def test_floors_are_distributions_and_count_by_hand():
    tok = get_tokenizer("tinystories-512")
    stories = ["Tom had a ball.", "Lily had a kite.", "Tom had a kite."]
    uni, bi = NGramLossModel(1, tok, stories), NGramLossModel(2, tok, stories)
    assert np.exp(uni.logp_uni).sum() == pytest.approx(1.0)
    ids = tok.encode_batch(stories, bos=True)
    flat = [t for s in ids for t in s]
    kite = tok.encode(" kite.")[0]
    by_hand = math.log((flat.count(kite) + 1) / (len(flat) + tok.vocab_size))
    assert uni.logp_uni[kite] == pytest.approx(by_hand)
    a = tok.encode(" a")[0]
    follows = [s[i + 1] for s in ids for i in range(len(s) - 1) if s[i] == a]
    p = 0.9 * follows.count(kite) / len(follows) + 0.1 * math.exp(uni.logp_uni[kite])
    assert bi.logprob(np.array([a]), np.array([kite]))[0] == pytest.approx(math.log(p))
    every = np.arange(tok.vocab_size)
    for prev in (a, tok.bos_id, 7):  # seen and unseen contexts: each row sums to 1
        assert np.exp(bi.logprob(np.full_like(every, prev), every)).sum() == pytest.approx(1.0)


def test_reference_beats_chance_where_the_floors_cannot(generated):
    """The schema items defeat the unigram floor by construction (the context cannot change its losses)."""
    schema = [it for it in generated if it.kind == "schema"]
    lm = load_loss_model("unigram")
    assert summarize(score_items(lm, schema, progress=False).results).acc == 0.0


# --- what the tokenizer cannot encode, and bad input --------------------------------------------------------

def test_unscorable_items_are_reported_with_the_reason(llama2c_dir):
    lm = load_loss_model("stories260K")
    spaced = Item("t/u", "f", "t", "pair", ("Tom ran  home.", "Tom run home."), gold=0)
    long = Item("t/l", "f", "t", "mc", (" " + "la " * 600 + "la.", " no."), gold=1, context="Tom said")
    fine = Item("t/f", "f", "t", "pair", ("Tom ran home.", "Tom run home."), gold=0)
    scored = score_items(lm, [spaced, long, fine], progress=False)
    assert [r.item.id for r in scored.results] == ["t/f"]
    reasons = {u.item.id: u.reason for u in scored.unscorable}
    assert "decodes back as" in reasons["t/u"] and "longer than the model's context (512)" in reasons["t/l"]
    assert isinstance(encode_item(fine, lm.tokenizer), Encoded)
    assert isinstance(encode_item(spaced, lm.tokenizer), Unscorable)


def test_malformed_item_file_names_file_and_line(tmp_path):
    good = Item("x/1", "grammar", "t", "pair", ("A dog ran.", "A dog runned."), gold=0)
    path = write_items([good], tmp_path / "items.jsonl")
    assert read_items(path) == [good]
    lines = path.read_text().splitlines()
    cases = {
        "{not json": "not valid JSON",
        '{"id": "x/2", "family": "f", "task": "t", "kind": "mc", "choices": [" a", " b"], "gold": 0}':
            "kind 'mc' needs a context",
        '{"id": "x/3", "family": "f", "task": "t", "kind": "pair", "choices": ["a", "b"], "gold": 2}':
            "gold 2 is not an index",
        '{"id": "x/4", "family": "f", "task": "t", "kind": "pair", "choices": ["a", "b"]}':
            "missing field(s) ['gold']",
        '{"id": "x/1", "family": "f", "task": "t", "kind": "pair", "choices": ["a", "b"], "gold": 0}':
            "id 'x/1' already used on line 1",
    }
    for bad, message in cases.items():
        path.write_text("\n".join([*lines, "# a comment", "", bad]) + "\n")
        with pytest.raises(ItemFileError) as e:
            read_items(path)
        assert str(e.value).startswith(f"{path}:4:") and message in str(e.value), str(e.value)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        load_loss_model("gpt-5")
    for name in ("stories260K", "reference", "induction", "demo", "unigram", "bigram"):
        assert name in str(e.value)


def test_vocabulary_mismatch_is_refused_before_scoring(capsys):
    tok = get_tokenizer("tinystories-512")
    check_vocab(512, tok, "ok")
    check_vocab(512, SimpleNamespace(name="500 ids", vocab_size=500), "padded to a multiple of 64")
    for vocab in (511, 576, 4096):
        with pytest.raises(VocabMismatchError, match=f"the model has {vocab} token ids but its tokenizer"):
            check_vocab(vocab, tok, "m")
    with pytest.raises(VocabMismatchError, match="Nothing was scored"):
        load_loss_model("reference", tokenizer=tok)  # 4096 ids, a 512-id tokenizer
    from tinylib.evals.__main__ import main
    assert main(["--model", "nonesuch", "--no-progress"]) == 2
    assert "unknown model 'nonesuch'" in capsys.readouterr().err


def test_cli_writes_reports_and_the_runs_evals_json(tmp_path, capsys):
    """A run folder scored with --into-run gets evals.json, which the tracker's results table reads."""
    import json
    import shutil

    from tinylib.evals.__main__ import main
    from tinylib.experiments.results import EVALS_FILE, results_markdown
    from tinylib.paths import INDUCTION_DIR

    run = tmp_path / "run"
    (run / "latest").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(INDUCTION_DIR / name, run / "latest" / name)
    items = [it for it in F.build_benchmark(validation_stories=[]).items if it.task in ("colors", "states")]
    path = write_items(items, tmp_path / "items.jsonl")
    assert main(["--model", str(run), "--model", "unigram", "--items", str(path), "--into-run",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    report = json.loads((run / EVALS_FILE).read_text())
    assert report["model"] == "run" and report["families"]["tracking"]["n"] == 80
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"run.json", "run.md", "unigram.json", "unigram.md", "comparison.md"}
    assert "| unigram |" in capsys.readouterr().out
    lo, hi = report["overall"]["ci"]
    row = {"name": "run", "preset": "tiny", "style": "gpt", "optimizer": "muon", "params": 1e6, "tokens": 1e6,
           "flops": 1e12, "wall_s": 1.0, "tokens_per_s": 1.0, "mfu": 0.1, "val_loss": 3.0, "val_bpb": 1.0,
           "eval": report["overall"]["centred"], "eval_lo": lo, "eval_hi": hi, "done": True, "sample": ""}
    assert f"{report['overall']['centred']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in results_markdown([row])
    assert "| n/a |" in results_markdown([{**row, "eval": float("nan")}])


# --- the instruction family --------------------------------------------------------------------------------

def test_wilson_interval_against_closed_form_values():
    from tinylib.evals.scoring import wilson

    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # not empty at k = 0, unlike p +- z se
    lo, hi = wilson(60, 600)
    assert lo < 0.1 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.1 * 0.9 / 600), rel=0.02)
    with pytest.raises(ValueError, match="k=11"):
        wilson(11, 10)


def test_weighted_bootstrap_is_the_pooled_rate_resampled_by_request():
    correct, chance = np.array([1.0, 0.0, 2 / 3, 1 / 3]), np.array([0.0, 0.0, 1 / 3, 0.0])
    w = np.array([1, 1, 3, 3])
    lo, hi = bootstrap_centred(correct, chance, weights=w)
    pooled = centred(float(correct @ w / w.sum()), float(chance @ w / w.sum()))
    assert lo <= pooled <= hi
    assert bootstrap_centred(correct, chance, weights=np.ones(4)) == pytest.approx(
        bootstrap_centred(correct, chance))


def test_judge_counts_inflected_forms_dialogue_and_sad_endings_only_when_asked():
    from tinylib.evals.requests import judge

    story = 'Tom smiled at the boxes. "Look!" he said, jumping. Then he went home and cried, sad and alone.'
    j = judge(story, ["smile", "box", "jump", "cat"], ["Dialogue", "BadEnding"])
    assert j["words"] == [True, True, True, False] and j["dialogue"] and j["sad_ending"]
    assert not j["satisfied"]  # "cat" is missing
    assert judge("He ran to catch it.", ["cat"], [])["words"] == [False]  # not inside another word
    plain = judge("Tom smiled. They were happy forever.", ["smile"], [])
    assert plain == {"words": [True], "dialogue": None, "sad_ending": None, "satisfied": True}
    asked = judge("Tom smiled. They were happy forever.", ["smile"], ["Dialogue", "BadEnding"])
    assert asked["dialogue"] is False and asked["sad_ending"] is False and not asked["satisfied"]


def test_requests_summary_against_counts_by_hand():
    from tinylib.evals.requests import summarize_requests, swapped, words_used

    samples = [{"story": "The dog ran to the park.", "words": ["dog", "park"], "features": []},
               {"story": '"Hi," said the cat to the dog.', "words": ["cat", "hat"], "features": ["Dialogue"]},
               {"story": "A bird sang in the tree.", "words": ["bird", "tree", "sing"], "features": []}]
    assert [s["story"] for s in swapped(samples)] == [samples[1]["story"], samples[2]["story"],
                                                      samples[0]["story"]]
    assert words_used(samples) == (5, 7) and words_used(swapped(samples)) == (1, 7)  # "dog" in story 2
    s = summarize_requests(samples)
    assert s["words"]["acc"] == pytest.approx(5 / 7) and s["words"]["chance"] == pytest.approx(1 / 7)
    assert s["words"]["trials"] == 7 and s["words"]["n"] == 3
    assert s["requests"]["acc"] == pytest.approx(1 / 3) and s["requests"]["chance"] == 0  # only the dog's
    assert s["dialogue"]["n"] == 1 and s["dialogue"]["acc"] == 1 and s["dialogue"]["chance"] == 0
    assert "sad_ending" not in s  # nobody asked for one
    assert s["words"]["centred"] == pytest.approx(centred(5 / 7, 1 / 7))
    lo, hi = s["words"]["acc_ci"]
    assert lo < 5 / 7 < hi


def test_instruction_family_only_for_instruction_tuned_checkpoints(tmp_path):
    """A checkpoint whose config.json says stage "instruct" gets the family (kept out of the overall);
    the same weights without it do not."""
    import json
    import shutil

    from tinylib.evals.report import evaluate
    from tinylib.paths import REFERENCE_DIR

    items = [it for it in F.build_benchmark(validation_stories=[]).items if it.task == "colors"]
    plain = evaluate(REFERENCE_DIR, benchmark=F.Benchmark(items), progress=False)
    assert "instruction" not in plain.families
    tuned = tmp_path / "tuned"
    shutil.copytree(REFERENCE_DIR, tuned)
    meta = json.loads((tuned / "config.json").read_text())
    (tuned / "config.json").write_text(json.dumps({**meta, "stage": "instruct"}))
    rep = evaluate(tuned, benchmark=F.Benchmark(items), progress=False, requests=4)
    fam = rep.families["instruction"]
    assert fam["n"] == 4 and 0 <= fam["chance"] <= 1 and "instruction/words" in rep.tasks
    assert rep.tasks["instruction/words"]["trials"] == 12  # 3 words a request
    assert rep.overall == plain.overall  # the overall is the loss-scored families' only
    assert "| **instruction** | 4 |" in rep.markdown()
