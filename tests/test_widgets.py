"""The story generator widget, driven from Python like a user: set the controls, press the buttons, read the
story and the status line. Generation runs in the widget's background thread; `wait()` joins it."""

from __future__ import annotations

import pytest
import torch

from tinylib.checkpoint import find_reference_checkpoint, save_checkpoint
from tinylib.config import get_config
from tinylib.engine import SamplingConfig
from tinylib.finetune.instruct import request_prompt
from tinylib.generate import generate
from tinylib.interp.steering import happy_sad_vector, steer
from tinylib.model import Transformer
from tinylib.tokenizer import get_tokenizer
from tinylib.widgets.models import open_model
from tinylib.widgets.story import SamplingControls, StoryGenerator, story_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny-model decoding is fastest on one thread


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("tinystories-512")


def small_model(max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(0)
    cfg = get_config("llama_tiny", vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_mlp=128,
                     max_seq_len=max_seq_len)
    model = Transformer(cfg)
    with torch.no_grad():  # large weights: greedy output wanders instead of repeating one id
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "emb" in name else 1.5 / p.shape[1] ** 0.5)
    return model.eval()


def run(w: StoryGenerator) -> None:
    w.click_generate()
    assert w.wait(30), "generation did not finish in 30 s"


def test_one_click_gives_a_story(tok, tmp_path):
    w = story_generator(small_model(), tok, tmp_path)
    assert w.checkpoint.options[0][1] == "__passed__"
    assert w.prompt.value and w.temperature.value > 0  # defaults are ready to go
    w.max_new_tokens.value = 30
    run(w)
    assert w.text.startswith(w.prompt.value) and len(w.text) > len(w.prompt.value)
    assert w.output.outputs[-1]["data"]["text/plain"] == w.text and len(w.output.outputs) == 1
    assert "tokens/s" in w.status.value and "seed" in w.status.value
    assert not w.generate_button.disabled and w.stop_button.disabled
    assert w._repr_mimebundle_()  # displays as its VBox


def test_controls_reach_the_sampler(tok, tmp_path):
    model = small_model()
    w = StoryGenerator(model, tok, tmp_path)
    w.prompt.value = "Tom had a"
    w.temperature.value, w.top_k.value, w.top_p.value, w.max_new_tokens.value = 1.2, 40, 0.8, 25
    w.seed.value = "123"
    run(w)
    ref = generate(model, tok, "Tom had a", max_new_tokens=25, temperature=1.2, top_k=40, top_p=0.8, seed=123)
    assert w.text == "Tom had a" + ref.text and w.result.tokens == ref.tokens
    assert generate(model, tok, "Tom had a", w.controls.sampling(), seed=123).tokens == ref.tokens
    w.temperature.value, w.top_k.value, w.top_p.value = 0.0, 0, 1.0  # greedy; 0 and 1.0 mean "off"
    run(w)
    assert w.result.tokens == generate(model, tok, "Tom had a", max_new_tokens=25, temperature=0).tokens


def test_controls_read_as_a_sampling_config():
    c = SamplingControls("Tom")
    c.temperature.value, c.top_k.value, c.top_p.value, c.max_new_tokens.value = 0.5, 0, 1.0, 25
    c.seed.value = " 7 "
    assert c.read() == ("Tom", SamplingConfig(temperature=0.5, max_new_tokens=25), 7)  # 0 and 1.0 are "off"
    c.top_k.value, c.top_p.value, c.seed.value = 40, 0.8, ""
    assert c.read() == ("Tom", SamplingConfig(temperature=0.5, top_k=40, top_p=0.8, max_new_tokens=25), None)


def test_stop_button_interrupts(tok, tmp_path):
    model = small_model()
    first = generate(model, tok, "Once", max_new_tokens=1, temperature=0)
    assert first.stop_reason != "eos"  # so only the Stop button can end the run early
    w = StoryGenerator(model, tok, tmp_path)
    w.prompt.value, w.temperature.value, w.max_new_tokens.value = "Once", 0.0, 1024
    w.click_generate()
    w.click_stop()
    assert w.wait(30)
    assert w.result.stop_reason == "interrupted" and w.result.n_new < 1024
    assert "stopped" in w.status.value


@pytest.mark.parametrize("setup, expected", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(seed="forty-two"), "not a whole number"),
    (dict(prompt="Once upon a time there was a girl. " * 20), "shorten the prompt"),
])
def test_mistakes_become_messages(tok, tmp_path, setup, expected):
    w = StoryGenerator(small_model(max_seq_len=32), tok, tmp_path)
    w.max_new_tokens.value = 5
    if "prompt" in setup:
        w.prompt.value = setup["prompt"]
    if "seed" in setup:
        w.seed.value = setup["seed"]
    run(w)
    assert expected in w.status.value and "b00020" in w.status.value  # shown in red
    assert "Traceback" not in w.status.value and not w.generate_button.disabled


def test_no_checkpoint_message(tmp_path):
    w = StoryGenerator(checkpoints_dir=tmp_path / "empty")
    if find_reference_checkpoint() is not None:
        pytest.skip("a reference checkpoint is shipped, so the list is never empty")
    assert w.checkpoint.value == ""
    run(w)
    assert "No model to generate from" in w.status.value and "make demo" in w.status.value


def test_checkpoints_are_listed_and_loaded(tok, tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "ckpt" / "run1" / "best", model, {"tokenizer": "tinystories-512", "step": 10})
    (tmp_path / "ckpt" / "broken" / "best").mkdir(parents=True)
    (tmp_path / "ckpt" / "broken" / "best" / "model.safetensors").write_bytes(b"not safetensors")
    w = StoryGenerator(checkpoints_dir=tmp_path / "ckpt")
    labels = dict(w.checkpoint.options)
    assert "run1/best" in labels and "broken/best" in labels
    w.checkpoint.value = labels["run1/best"]
    w.temperature.value, w.max_new_tokens.value = 0.0, 15
    run(w)
    assert w.result.tokens == generate(model, tok, w.prompt.value, max_new_tokens=15, temperature=0).tokens
    w.checkpoint.value = labels["broken/best"]
    run(w)
    assert "Could not load the checkpoint" in w.status.value
    assert "Traceback" not in w.status.value
    save_checkpoint(tmp_path / "ckpt" / "run2" / "latest", model, {"tokenizer": "tinystories-512"})
    w.refresh()
    assert "run2/latest" in dict(w.checkpoint.options)


def test_open_model_loads_what_it_is_asked_for(tmp_path, monkeypatch):
    model = small_model()
    save_checkpoint(tmp_path / "run" / "latest", model, {"tokenizer": "tinystories-512"})
    for choice in ("latest", tmp_path / "run" / "latest"):
        found = open_model(choice, checkpoints_dir=tmp_path, fallback=())
        assert str(tmp_path) in found.source and "asked for" not in found.source
        assert torch.equal(found.model.tok_emb.weight, model.tok_emb.weight)
    untrained = open_model("untrained")
    assert "UNTRAINED" in untrained.source and untrained.tokenizer.vocab_size == 512
    with pytest.raises(ValueError, match="unknown model 'nonsense'"):
        open_model("nonsense")
    monkeypatch.setenv("TINYLIB_SHARED", str(tmp_path / "no-shared"))
    with pytest.raises(FileNotFoundError, match="make demo"):
        open_model("stories260K", fallback=())
    fallback = open_model("stories260K", fallback=("latest",), checkpoints_dir=tmp_path)
    assert fallback.name == "latest" and "asked for 'stories260K'" in fallback.source


def test_open_model_stories260k(llama2c_dir, monkeypatch):
    monkeypatch.setenv("TINYLIB_SHARED", str(llama2c_dir.parents[1]))
    found = open_model("stories260K", fallback=())
    assert "stories260K" in found.source and found.name == "stories260K"
    r = generate(found.model, found.tokenizer, "Once upon a time", max_new_tokens=30, temperature=0)
    assert r.text.count(" ") >= 4  # real words


def steered_reference(model, tok, prompt, strength, layer, **kw):
    with steer(model, happy_sad_vector(model, tok, layer), strength):
        return generate(model, tok, prompt, **kw)


def test_steering_shows_both_stories_with_one_seed(tok, tmp_path):
    model = small_model()
    w = StoryGenerator(model, tok, tmp_path)
    assert w.steered_view.box.layout.display == "none" and w.layer.max == 1  # off; fitted to 2 blocks
    w.direction.value, w.layer.value, w.strength.value = "happy - sad", 1, 0.0
    assert w.steered_view.box.layout.display == "" and "without steering" in w.view.title.value
    w.temperature.value, w.max_new_tokens.value, w.seed.value = 0.8, 20, "5"
    run(w)
    plain = generate(model, tok, w.prompt.value, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=5)
    assert w.result.tokens == plain.tokens and w.steered_result.tokens == plain.tokens  # strength 0
    assert w.steered_view.text == w.text and "x +0 after block 1" in w.steered_view.title.value
    w.strength.value = 6.0  # moving the slider rewrites the steered story, same prompt and seed
    assert w.wait(30)
    want = steered_reference(model, tok, w.prompt.value, 6.0, 1, max_new_tokens=20, temperature=0.8,
                             top_p=0.9, seed=5)
    assert w.steered_result.tokens == want.tokens != plain.tokens and w.result.tokens == plain.tokens
    assert w.steered_result.seed == w.result.seed == 5 and "x +6 after block 1" in w.steered_view.title.value
    w.direction.value = ""
    assert w.steered_view.box.layout.display == "none" and w.view.title.value == ""


def test_quick_slider_moves_end_on_the_last_value(tok, tmp_path):
    model = small_model()
    w = StoryGenerator(model, tok, tmp_path)
    w.direction.value, w.layer.value, w.temperature.value, w.max_new_tokens.value = "happy - sad", 0, 0.0, 60
    run(w)  # seed drawn at random: the steered story must reuse it
    for strength in (1.0, -3.0, 5.0):  # the first starts a run, the next two queue behind it; the last wins
        w.strength.value = strength
    assert w.wait(30) and not w.runner.running and not w.generate_button.disabled
    want = steered_reference(model, tok, w.prompt.value, 5.0, 0, max_new_tokens=60, temperature=0)
    assert w.steered_result.tokens == want.tokens and w.steered_result.seed == w.result.seed


def test_layer_slider_fits_the_checkpoint(tok, tmp_path):
    save_checkpoint(tmp_path / "run" / "best", small_model(), {"tokenizer": "tinystories-512"})
    w = StoryGenerator(checkpoints_dir=tmp_path)
    w.checkpoint.value = dict(w.checkpoint.options)["run/best"]
    w.direction.value, w.layer.value, w.max_new_tokens.value = "happy - sad", 3, 5  # unknown model: 4 layers
    run(w)
    assert w.layer.max == 1 and w.layer.value == 1  # fitted once loaded; the steered story reran at layer 1
    assert w.steered_result is not None and "after block 1" in w.steered_view.title.value


def test_story_on_request(tok, tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "sft" / "best", model, {"tokenizer": "tinystories-512", "stage": "instruct"})
    save_checkpoint(tmp_path / "plain" / "best", model, {"tokenizer": "tinystories-512"})
    w = StoryGenerator(checkpoints_dir=tmp_path)
    labels = dict(w.checkpoint.options)
    w.checkpoint.value = labels["sft/best"]
    assert w.mode.value == "request" and w.prompt.layout.display == "none"  # an instruct checkpoint
    w.temperature.value, w.max_new_tokens.value = 0.0, 15
    run(w)
    assert "request is empty" in w.status.value and "b00020" in w.status.value
    w.words.value, w.features.value = "dog, ball ,", "dialogue, Rhymes"
    run(w)
    assert "Unknown feature &#x27;Rhymes&#x27;" in w.status.value and "Twist" in w.status.value
    w.features.value = "dialogue"
    run(w)
    prompt = request_prompt(["dog", "ball"], ["Dialogue"])
    assert prompt.startswith("Words: dog, ball\n") and w.text.startswith(prompt)
    assert w.result.tokens == generate(model, tok, prompt, max_new_tokens=15, temperature=0).tokens
    w.checkpoint.value = labels["plain/best"]
    assert w.mode.value == "prompt" and w.prompt.layout.display == ""
    w.mode.value = "request"
    assert "not instruction-tuned" in w.request.note.value and w.request.box.layout.display == ""
