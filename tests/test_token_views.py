"""The hoverable token views' HTML (tinylib.widgets.token_views): self-contained (nothing fetched), every
token shown and escaped, the numbers embedded as given, and the same patterns whichever way the model is read.
What the views do in a browser (hover, highlight) is tests/test_browser.py's."""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser

import pytest
import torch

from tinylib.widgets.models import open_model
from tinylib.widgets.token_views import (
    SCALE,
    attention_view,
    cache_patterns,
    model_attention_view,
    token_label,
    token_view,
)

NASTY = ["<s>", "Once", " upon", "</script><script>alert(1)</script>", " a & b", "\n", "\"quoted\"", "",
         "tab\there", "\x00", "<!--", " time"]


class Parsed(HTMLParser):
    """The token spans' texts (per panel), the scripts, and every attribute that could load something."""

    def __init__(self, html: str):
        super().__init__()
        self.tokens: list[str] = []
        self.scripts: list[tuple[dict, str]] = []
        self.loads: list[str] = []
        self._in_token = self._in_script = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.loads += [v for k, v in attrs.items() if k in ("src", "href", "srcset", "data") and v]
        if tag == "span" and "tlv-tok" in (attrs.get("class") or ""):
            self._in_token = ""
        if tag == "script":
            self._in_script = (attrs, "")

    def handle_endtag(self, tag):
        if tag == "span" and self._in_token is not None:
            self.tokens.append(self._in_token)
            self._in_token = None
        if tag == "script" and self._in_script is not None:
            self.scripts.append(self._in_script)
            self._in_script = None

    def handle_data(self, data):
        if self._in_token is not None:
            self._in_token += data
        if self._in_script is not None:
            self._in_script = (self._in_script[0], self._in_script[1] + data)


def payload(html: str) -> dict:
    (data,) = [text for attrs, text in Parsed(html).scripts if attrs.get("type") == "application/json"]
    return json.loads(data)


def decoded_patterns(data: dict) -> torch.Tensor:
    """The JSON's thousandths, each row padded back with the zeros it left out, as [layer, head, T, T]."""
    T = data["n_tokens"]
    return torch.tensor([[[r + [0] * (T - len(r)) for r in head] for head in layer] for layer in data["p"]]
                        ) / data["scale"]


def random_patterns(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    T = shape[-1]
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    scores = torch.randn(*shape, generator=g).masked_fill(future, -torch.inf)
    return scores.softmax(-1)


def test_the_attention_view_is_self_contained_and_escapes_every_token():
    patterns = random_patterns(2, 3, len(NASTY), len(NASTY))
    html = attention_view(NASTY, patterns, layer=1, head=2, title="<b>title & more</b>").html
    parsed = Parsed(html)
    assert not re.search(r"https?:|//[a-z]|@import|url\(", html), "the view must not fetch anything"
    assert parsed.loads == []
    # two scripts: the data and the code; the token "</script><script>..." opened none of its own
    assert [a.get("type") for a, _ in parsed.scripts] == ["application/json", None]
    assert "alert(1)</script>" not in html and "<!--" not in html.replace("&lt;!--", "")
    # every token once, in order, shown readably: newline and tab visible, a control char as \x00
    visible = ["<s>", "Once", " upon", "</script><script>alert(1)</script>", " a & b", "\u21b5", "\"quoted\"",
               "\u2205", "tab\u21e5here", "\\x00", "<!--", " time"]
    assert parsed.tokens == visible
    assert "&lt;b&gt;title &amp; more&lt;/b&gt;" in html
    data = payload(html)
    assert data["layer_names"] == ["L0", "L1"] and data["heads"] == [0, 1, 2]
    torch.testing.assert_close(decoded_patterns(data), patterns, atol=0.501 / SCALE, rtol=0)
    assert 'value="1" selected' in html and 'value="2" selected' in html  # the layer and head shown first


def test_a_long_text_keeps_every_label_and_a_newline_breaks_the_line():
    tokens = [f" w{i}" if i % 25 else "\n" for i in range(120)]  # past the 40 labels the heatmaps kept
    html = attention_view(tokens, random_patterns(4, 120, 120)).html
    assert Parsed(html).tokens == [unescape(token_label(t)) for t in tokens]
    assert html.count("\u21b5</span><br>") == tokens.count("\n")
    # a causal pattern's rows travel without the zeros after the query: about half the numbers
    rows = payload(html)["p"][0][0]
    assert [len(r) for r in rows] == list(range(1, 121))


def test_a_one_layer_stack_is_named_by_its_layer():
    data = payload(attention_view(["a", "b"], random_patterns(3, 2, 2), layer=5).html)
    assert data["layer_names"] == ["L5"] and len(data["p"]) == 1
    data = payload(attention_view(["a", "b"], random_patterns(2, 3, 2, 2), layers=[4, 7], layer=1).html)
    assert data["layer_names"] == ["L4", "L7"]


def test_bad_input_is_refused_with_what_to_do():
    p = random_patterns(2, 3, 3)
    with pytest.raises(ValueError, match="2 tokens but the patterns cover 3 positions"):
        attention_view(["a", "b"], p)
    with pytest.raises(TypeError, match="list of strings"):
        attention_view("abc", p)
    with pytest.raises(ValueError, match=r"expected \[n_head, T, T\]"):
        attention_view(["a", "b", "c"], p[None, None])
    with pytest.raises(ValueError, match="attention weights in"):
        attention_view(["a", "b", "c"], p * 3)
    with pytest.raises(ValueError, match="queries and keys must be the same"):
        attention_view(["a", "b"], p[:, :2, :])
    with pytest.raises(ValueError, match="head=5"):
        attention_view(["a", "b", "c"], p, head=5)
    with pytest.raises(ValueError, match="layer=3"):
        attention_view(["a", "b", "c"], p[None].expand(2, -1, -1, -1), layer=3)
    with pytest.raises(ValueError, match="NaN"):
        token_view(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="2 names for 3 units"):
        token_view(["a", "b"], torch.ones(3, 2), names=["x", "y"])


def test_the_token_view_embeds_values_and_colours_them_without_a_script():
    tokens = ["<s>", " Lily", " & ", "\n", " Tom"]
    values = torch.tensor([[0.0, 2.5, -1.25, 0.123456, -5.0], [1.0, 1.0, 1.0, 1.0, 4.0]])
    html = token_view(tokens, values, names=["L3N114", "feature <7>"]).html
    parsed = Parsed(html)
    assert parsed.tokens == [unescape(token_label(t)) for t in tokens] and not re.search(r"https?:", html)
    data = payload(html)
    assert data["names"] == ["L3N114", "feature <7>"] and data["vmax"] == [5.0, 4.0]
    assert data["values"][0] == [0.0, 2.5, -1.25, 0.1235, -5.0]  # 4 significant digits
    # the first unit's colours and hover titles are in the HTML itself: an untrusted notebook still shows them
    spans = re.findall(r'<span class="tlv-tok" data-i="\d+" style="background-color:([^"]+)" title="([^"]+)"',
                       html)
    assert spans[1] == ("rgba(220, 40, 40, 0.500)", "L3N114: 2.5")  # 2.5 / 5 of full red
    assert spans[4] == ("rgba(40, 80, 220, 1.000)", "L3N114: -5.0")  # full blue
    assert "feature &lt;7&gt;" in html and "<7>" not in html.split('class="tlv-data">')[0]
    one = payload(token_view(tokens, values[0], vmax=2.0).html)
    assert one["names"] == ["value"] and one["vmax"] == [2.0]


@pytest.fixture(scope="module")
def reference():
    return open_model("reference")


TEXT = "Once upon a time, there was a little girl named Lily. Lily liked to play."


def test_the_model_view_shows_the_models_own_patterns(reference, tmp_path):
    model, tok = reference.model, reference.tokenizer
    view = model_attention_view(model, TEXT, tok, layer=1, head=0)
    ids = torch.tensor([tok.encode(TEXT, bos=True)])
    with torch.no_grad():
        expected = torch.stack([p[0] for p in model.forward_with_patterns(ids)[1]])
    data = payload(view.html)
    torch.testing.assert_close(decoded_patterns(data), expected, atol=0.501 / SCALE, rtol=0)
    assert len(Parsed(view.html).tokens) == ids.shape[1] == data["n_tokens"]
    assert f"attention, {ids.shape[1]} tokens" in view.html
    short = payload(model_attention_view(model, TEXT, tok, max_tokens=5).html)
    assert short["n_tokens"] == 5
    page = view.save(tmp_path / "view.html").read_text()
    assert page.startswith("<!doctype html>") and view.html in page


def test_the_bridge_and_its_cache_give_the_same_view(reference):
    """Two paths that must agree: TransformerLens' hook_pattern and tinylib's eager patterns."""
    from tinylib.interp.bridge import encode, to_lens  # TransformerLens is heavy: only this test needs it

    bridge = to_lens(reference.model, reference.tokenizer)
    by_model = payload(model_attention_view(reference.model, TEXT, reference.tokenizer).html)
    by_bridge = payload(model_attention_view(bridge, TEXT).html)
    torch.testing.assert_close(decoded_patterns(by_bridge), decoded_patterns(by_model), atol=1.5 / SCALE,
                               rtol=0)
    _, cache = bridge.run_with_cache(encode(bridge, TEXT))
    torch.testing.assert_close(cache_patterns(cache), decoded_patterns(by_model), atol=1 / SCALE, rtol=0)
    assert cache_patterns(cache, [2]).shape[0] == 1
    with pytest.raises(ValueError, match="blocks.9.attn.hook_pattern"):
        cache_patterns(cache, [9])
