"""Instruction fine-tuning: the masked loss is cross-entropy over response tokens only, prompt-only batches
are skipped and counted, packing never scores another example's prompt, bad examples are reported with their
line, the official files download through a fake Hub, and a short stage writes an "instruct" checkpoint."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakehub import serve

from tinylib import train as train_module
from tinylib.checkpoint import TrainState, load_meta, load_model
from tinylib.config import TrainConfig, config_parser, get_config
from tinylib.faults import DivergenceGuard, RunExistsError
from tinylib.finetune import instruct
from tinylib.finetune.batches import Encoded, WindowBatches, encode_examples, make_windows
from tinylib.finetune.instruct import (
    HF_REPO,
    INSTRUCT_FILES,
    Example,
    derived_examples,
    download_instruct,
    is_instruct_checkpoint,
    parse_instruct,
    read_instruct,
    request_prompt,
)
from tinylib.finetune.stage import FinetuneConfig, finetune, response_loss, scored
from tinylib.model import Transformer
from tinylib.optim import configure_optimizer
from tinylib.tokenizer import get_tokenizer
from tinylib.train import Run, next_micro_batches, run_loop

SEQ = 64
TEXT = """Features: Dialogue
Words: quit, oak, gloomy
Summary: Sara and Ben play under an oak.
Story:<sp>

Sara and Ben played under the big oak tree.

"Let's not quit," said Ben.
<|endoftext|>
Words: cat
Summary: a prompt with no story
<|endoftext|>
Random sentence: The sun was hot.
Words: dog
Story:
<|endoftext|>
Summary: Tom runs.
Story: Tom ran fast.
<|endoftext|>
""".replace("<sp>", " ")  # the official files write "Story: " with a trailing space


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("tinystories-4096")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=2,
                     d_mlp=64, max_seq_len=SEQ)
    return Transformer(cfg).eval()


def examples(n: int) -> list[Example]:
    words = ("cat", "dog", "ball", "tree", "sun", "cake")
    return [Example(story=" ".join(["The", words[i % 6], "was", "happy."] * (1 + i % 7)),
                    words=(words[i % 6],), features=("Dialogue",) * (i % 2), line=10 * i + 1, source="t.txt")
            for i in range(n)]


# --- the prompt format and parsing --------------------------------------------------------------------------

def test_request_prompt_is_the_training_prompt():
    parsed = parse_instruct(TEXT, "t.txt")
    first = parsed.examples[0]
    assert first.words == ("quit", "oak", "gloomy") and first.features == ("Dialogue",)
    assert first.story == 'Sara and Ben played under the big oak tree.\n"Let\'s not quit," said Ben.'
    assert first.prompt == request_prompt(["quit", "oak", "gloomy"], ["Dialogue"],
                                          "Sara and Ben play under an oak.")
    assert request_prompt(["cat", " run "], ["Dialogue"]) == "Words: cat, run\nFeatures: Dialogue\nStory:\n"
    assert request_prompt() == "Story:\n"
    assert is_instruct_checkpoint({"stage": "instruct", "parent": "x"})
    assert not is_instruct_checkpoint({"step": 3}) and not is_instruct_checkpoint(None)


# Records in the published format (TinyStories-Instruct-valid.txt): fields in varying order, a "Summary:"
# after the story, records separated by <|endoftext|>, CRLF line ends; the last one has an unknown header.
PUBLISHED = """Features: Dialogue
Words: quit, oak, gloomy
Summary: Sara and Ben were playing in the park, but Sara did not want to quit.
Story:<sp>

Sara and Ben were playing in the park. They liked to climb the big oak tree.
"Let's not quit," said Ben.
<|endoftext|>
Random sentence: The sun was hot.
Words: dog, hat, run
Story:<sp>

Lily's dog found a red hat. It ran to Lily with it.
Summary: A dog finds a hat and brings it to Lily.
Features: Twist
<|endoftext|>
Words: frog, jump, green
Moral: always be kind
Story:<sp>

The green frog liked to jump.
<|endoftext|>
""".replace("<sp>", " ").replace("\n", "\r\n")


def test_published_records_read_by_header_in_any_order_with_crlf(tmp_path):
    for parsed in (parse_instruct(PUBLISHED, "v.txt"),
                   read_instruct(write_bytes(tmp_path / "TinyStories-Instruct-valid.txt", PUBLISHED))):
        a, b, c = parsed.examples
        assert a.summary.startswith("Sara and Ben were playing") and a.features == ("Dialogue",)
        assert a.story.endswith('"Let\'s not quit," said Ben.') and "\r" not in a.story
        assert (b.words, b.features, b.sentence) == (("dog", "hat", "run"), ("Twist",), "The sun was hot.")
        assert b.summary == "A dog finds a hat and brings it to Lily."  # after the story: the summary ...
        assert b.story == "Lily's dog found a red hat. It ran to Lily with it."  # ... not story text
        assert c.words == ("frog", "jump", "green")  # the unknown header is not glued onto Words
        assert c.story == "The green frog liked to jump."
        name = "v.txt" if parsed.examples[0].source == "v.txt" else "TinyStories-Instruct-valid.txt"
        assert parsed.problems == [f"{name}:18: unknown header 'Moral:' (known: Words:, Features:, Summary:, "
                                   "Random sentence:, Story:); line left out"]


def write_bytes(path, text: str):
    path.write_bytes(text.encode())  # CRLF kept as written
    return path


def test_bad_examples_are_reported_with_their_line_and_skipped(tok, tmp_path):
    parsed = parse_instruct(TEXT, "t.txt")
    assert [e.line for e in parsed.examples] == [1, 17]
    assert parsed.problems == [
        "t.txt:10: example without a 'Story:' part; skipped (there is no response to train on)",
        "t.txt:13: empty story after 'Story:'; skipped (an empty response teaches nothing)"]
    path = tmp_path / "TinyStories-Instruct-valid.txt"
    path.write_text(TEXT)
    assert read_instruct(path).problems == [p.replace("t.txt", path.name) for p in parsed.problems]
    assert [e.story for e in read_instruct(path, max_examples=1).examples] == [parsed.examples[0].story]

    # A prompt longer than the context: refused with its line, never cut into a prompt-only window.
    long = Example(story="Tom ran.", words=tuple(f"word{i}" for i in range(40)), line=7, source="t.txt")
    problems: list[str] = []
    kept = encode_examples([long, *parsed.examples], tok, SEQ, problems)
    assert len(kept) == 2 and len(problems) == 1
    assert problems[0].startswith("t.txt:7: prompt is ") and "the context is 64" in problems[0]
    with pytest.raises(ValueError, match=r"t\.txt:7: prompt is \d+ tokens but the context is 64"):
        encode_examples([long], tok, SEQ)


def test_derived_set_is_labelled_and_requests_words_of_its_story(tinystories_dir):
    parsed = derived_examples(tinystories_dir / "TinyStories-valid.first1000.hf.txt", max_examples=50)
    assert len(parsed.examples) == 50 and not parsed.problems
    for ex in parsed.examples:
        assert ex.source == "derived from TinyStories-valid.first1000.hf.txt"
        assert len(ex.words) == 3 and instruct.word_inclusion(ex.story, ex.words) == 1.0
        assert ("Dialogue" in ex.features) == ('"' in ex.story or "“" in ex.story)
    text = (tinystories_dir / "TinyStories-valid.first1000.hf.txt").read_text().splitlines()
    assert all(text[ex.line - 1].strip() and ex.story.startswith(text[ex.line - 1].strip()[:20])
               for ex in parsed.examples)


def test_word_inclusion_counts_whole_words_and_their_forms():
    story = "The cats jumped. Lily was hurrying to catch the ball."
    assert instruct.included_words(story, ["cat", "jump", "hurry", "dog", "all", "Lily"]) == [
        True, True, True, False, False, True]
    assert instruct.word_inclusion(story, ["dog", "ball"]) == 0.5


# --- the masked loss ----------------------------------------------------------------------------------------

def test_masked_loss_is_cross_entropy_over_response_tokens_only(tok, model):
    encoded = encode_examples(examples(6), tok, SEQ)
    windows = make_windows(encoded, SEQ, layout="padded", pad_id=tok.eos_id)
    x, y = windows.xy(slice(None))
    logits, loss = model(x, y)
    _, chunked = model(x, y, return_logits=False)
    # Reference: for each example, the positions whose next token is a story (or end) token, by hand.
    picked_logits, picked_targets = [], []
    for row, e in enumerate(encoded):
        for t in range(e.n_prompt - 1, len(e.ids) - 1):
            picked_logits.append(logits[row, t])
            picked_targets.append(e.ids[t + 1])
    expected = F.cross_entropy(torch.stack(picked_logits).float(), torch.tensor(picked_targets))
    assert len(picked_targets) == int((y != -1).sum())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(chunked, expected)
    assert response_loss(model, windows, batch_size=4) == pytest.approx(expected.item(), rel=1e-5)
    # and not the loss over every token
    everything = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    assert abs(everything.item() - expected.item()) > 1e-3


def test_a_prompt_only_batch_is_skipped_and_counted(tok):
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=2,
                     d_mlp=64, max_seq_len=SEQ)
    net = Transformer(cfg)
    state = TrainState(net, configure_optimizer(net, TrainConfig(), torch.device("cpu")))
    ids = tok.encode("Words: cat\nStory:\n", bos=True)
    prompt_only = Encoded(ids, n_prompt=len(ids), where="t.txt:1")  # what encode_examples never makes
    x, y = make_windows([prompt_only], SEQ, layout="padded", pad_id=tok.eos_id).xy(slice(None))
    assert bool((y == -1).all())
    assert scored([(x, y)]) == []

    # In the trainer's loop: windows that are all prompt are drawn, counted, and cost no step.
    real = encode_examples(examples(3), tok, SEQ)
    windows = make_windows([prompt_only, prompt_only, *real], SEQ, layout="padded", pad_id=tok.eos_id)
    state.batches = WindowBatches(windows, batch_size=1, seed=0)
    state.total_steps = 6
    ft = FinetuneConfig(max_steps=6, log_every=1, progress=False)
    run = Run(ft, 0, 1, torch.device("cpu"), torch.float32, None, tok, accum=1, guard=DivergenceGuard(ft),
              evaluate=lambda run, state: {"val_loss": 0.0},
              draw=lambda run, state: scored(next_micro_batches(run, state)))
    run_loop(run, state)
    drawn = [int(state.batches.rows(s)[0]) for s in range(state.batches.step)]
    assert state.step == 6 and run.skipped == sum(r < 2 for r in drawn) > 0
    assert len(drawn) == 6 + run.skipped


@pytest.mark.parametrize("layout", ["packed", "stream"])
def test_packing_never_scores_another_examples_prompt(tok, layout):
    encoded = encode_examples(examples(40), tok, SEQ, cut=layout != "stream")
    windows = make_windows(encoded, SEQ, layout=layout, pad_id=tok.eos_id)
    per_window = np.array([len(set(s[s >= 0])) for s in windows.segment])
    assert per_window.max() >= 2, "the test needs windows that hold several examples"
    x, y = windows.xy(slice(None))
    flat_start = np.cumsum([0] + [len(e.ids) for e in encoded])  # "stream": where each example begins
    for w, t in zip(*np.nonzero(y.numpy() != -1)):
        seg = int(windows.segment[w, t + 1])
        e = encoded[seg]
        if layout == "packed":
            at = t + 1 - int(np.argmax(windows.segment[w] == seg))
        else:
            at = w * SEQ + t + 1 - flat_start[seg]  # windows advance by SEQ tokens
        # the target is a token of example `seg`, inside its story: never a prompt token, nor padding
        assert at >= e.n_prompt and e.ids[at] == int(y[w, t]) == int(windows.tokens[w, t + 1])
    # and every story token of every example is scored exactly once
    assert int((y != -1).sum()) == sum(len(e.ids) - e.n_prompt for e in encoded)


def test_window_stream_resumes_exactly(tok):
    windows = make_windows(encode_examples(examples(30), tok, SEQ), SEQ, layout="padded", pad_id=tok.eos_id)
    a = WindowBatches(windows, 4, seed=3)
    first = [a.next_batch()[0] for _ in range(12)]  # crosses epochs (30 windows, 4 per batch)
    b = WindowBatches(windows, 4, seed=3)
    b.load_state_dict(WindowBatches(windows, 4, seed=3).state_dict() | {"step": 5})
    assert all(torch.equal(b.next_batch()[0], first[i]) for i in range(5, 12))
    with pytest.raises(ValueError, match="cannot resume"):
        WindowBatches(windows, 8, seed=3).load_state_dict(a.state_dict())


# --- the official files, through a fake Hub -----------------------------------------------------------------

@pytest.fixture
def fake_hub(monkeypatch):
    body = TEXT.encode() * 200
    files = {INSTRUCT_FILES["train"]: body, INSTRUCT_FILES["valid"]: TEXT.encode()}
    monkeypatch.delenv("TINYSTORIES_INSTRUCT_DIR", raising=False)
    yield from serve(monkeypatch, files, repo=f"datasets/{HF_REPO}")


def test_download_through_fake_hub(fake_hub, tmp_path):
    paths = download_instruct(tmp_path)
    assert paths == {s: tmp_path / n for s, n in INSTRUCT_FILES.items()}
    assert all(paths[s].read_bytes() == fake_hub.files[n] for s, n in INSTRUCT_FILES.items())
    assert len(read_instruct(paths["train"]).examples) == 400
    assert instruct.find_instruct(tmp_path) == paths
    gets = sum(c == "GET" for c, _, _ in fake_hub.log)
    assert download_instruct(tmp_path) == paths and sum(c == "GET" for c, _, _ in fake_hub.log) == gets

    prefix = download_instruct(tmp_path / "quick", ("train",), train_bytes=1000)["train"]
    assert prefix.name == "TinyStories-Instruct-train.first0.001MB.txt"
    whole = fake_hub.files[INSTRUCT_FILES["train"]]
    assert prefix.read_bytes() == whole[: whole[:1000].rfind(b"<|endoftext|>") + len(b"<|endoftext|>")]
    stories = {e.story for e in parse_instruct(TEXT).examples}
    assert {e.story for e in read_instruct(prefix).examples} == stories  # whole examples only


def test_offline_without_files_says_how_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="TINYSTORIES_INSTRUCT_DIR.*derived"):
        download_instruct(tmp_path)
    assert instruct.find_instruct(tmp_path) == {}


# --- the stage end to end -----------------------------------------------------------------------------------

def test_a_short_stage_writes_an_instruct_checkpoint(tinystories_dir, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("TINYSTORIES_INSTRUCT_DIR", str(tmp_path / "none"))  # offline: the derived set
    cfg = FinetuneConfig(max_steps=3, batch_size=4, max_train_examples=24, eval_prompts=2, eval_examples=8,
                         eval_tokens=8, dtype="fp32", out_dir=str(tmp_path / "ft"), progress=False)
    result = finetune(cfg)
    assert result.steps == 3 and result.skipped_batches == 0 and "DERIVED" in result.data
    assert len(result.before["samples"]) == 2 and 0 <= result.after["word_inclusion"] <= 1
    meta = load_meta(tmp_path / "ft" / "latest")
    assert is_instruct_checkpoint(meta) and meta["stage"] == "instruct"
    assert meta["parent"].endswith("checkpoints/reference") and meta["step"] == 3
    assert json.loads(json.dumps(meta["after"]))["response_loss"] == pytest.approx(
        result.after["response_loss"])
    tuned, parent = load_model(tmp_path / "ft").state_dict(), load_model(meta["parent"]).state_dict()
    assert tuned.keys() == parent.keys() and any(not torch.equal(tuned[k], parent[k]) for k in tuned)

    # Resuming continues from the saved step, weights, optimizer and data position.
    more = finetune(dataclasses.replace(cfg, max_steps=5, resume=True, eval_prompts=0, log_every=1))
    assert [r["step"] for r in more.log] == [4, 5] and load_meta(tmp_path / "ft" / "latest")["step"] == 5
    assert more.before["response_loss"] == pytest.approx(result.before["response_loss"])  # the parent's


def test_a_time_budget_replans_the_stage_in_the_trainers_loop(tinystories_dir, tmp_path, monkeypatch):
    """max_time_s goes through the trainer's re-planning (first after 5 timed steps, then at each log step)
    while fine-tuning evaluates only before and at the end (eval_every=0). A clock that advances 0.1 s per
    reading makes the plans independent of how busy the machine is."""
    class Clock:
        t = 0.0

        def perf_counter(self) -> float:
            self.t += 0.1
            return self.t

        def process_time(self) -> float:
            return self.t

    torch.set_num_threads(1)
    monkeypatch.setenv("TINYSTORIES_INSTRUCT_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(train_module, "time", Clock())
    cfg = FinetuneConfig(max_steps=None, max_time_s=3.0, batch_size=2, seq_len=64, max_train_examples=24,
                         eval_prompts=0, eval_examples=4, log_every=1, dtype="fp32", out_dir="",
                         progress=False)
    result = finetune(cfg)
    assert 6 < result.steps < 30 and result.out_dir is None  # planned, then re-planned at each log step
    assert [r["step"] for r in result.log] == list(range(1, result.steps + 1))


def test_help_gives_every_flag_its_description_and_default():
    text = " ".join(config_parser(FinetuneConfig, "python -m tinylib.finetune").format_help().split())
    assert text.count("(default: ") == len(dataclasses.fields(FinetuneConfig))
    assert re.search(r"--lr LR AdamW's peak lr [^)]*\) \(default: 0\.001\)", text)  # the field's own comment
    assert "--warmup-steps WARMUP_STEPS (default: 100)" in text
    assert ("--parent PARENT the pretrained checkpoint to start from (default: 'checkpoints/reference')"
            in text)


def test_a_quiet_stage_still_names_the_lines_it_skipped_and_never_replaces_a_run(tmp_path, monkeypatch,
                                                                                capsys):
    """--no-progress hid which lines were skipped; a second stage into the same folder replaced the first."""
    torch.set_num_threads(1)
    folder = tmp_path / "instruct"
    folder.mkdir()
    for name in INSTRUCT_FILES.values():
        write_bytes(folder / name, PUBLISHED * 8)
    monkeypatch.setenv("TINYSTORIES_INSTRUCT_DIR", str(folder))
    cfg = FinetuneConfig(max_steps=2, batch_size=4, eval_prompts=0, eval_examples=8, dtype="fp32",
                         out_dir=str(tmp_path / "ft"), progress=False, data="official")
    finetune(cfg)
    err = capsys.readouterr().err
    assert re.search(r"\d+ examples skipped or refused:\n  TinyStories-Instruct-\w+.txt:18: unknown header "
                     r"'Moral:'", err), err
    with pytest.raises(RunExistsError, match=r"already holds a run .* --resume.* --overwrite"):
        finetune(cfg)
