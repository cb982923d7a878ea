"""Hoverable views of a text's tokens: where each attention head looks, and how strongly a unit fires.

- `attention_view(tokens, patterns)`: the text, token by token. Hover a token (the query) and every earlier
  token it attends to is shaded by the attention weight (darker = more); click to pin the query. Pick the
  layer and the head, or "all heads" to see every head of the layer side by side (small multiples), each
  with a thumbnail of its whole [query, key] pattern. `patterns` is [n_head, T, T] (one layer) or
  [n_layer, n_head, T, T].
- `token_view(tokens, values)`: the text shaded by one unit's activation per token (red positive, blue
  negative; a neuron, an SAE feature, a logit difference...); hover shows the value. values [T], or
  [n_unit, T] with `names` and a picker.
- `model_attention_view(model, text)`: tokenizes `text` and reads the patterns from a tinylib `Transformer`
  (its eager `forward_with_patterns`) or a TransformerLens bridge (`blocks.L.attn.hook_pattern`);
  `cache_patterns(cache)` stacks the patterns of an `ActivationCache` you already have.

Each view is self-contained HTML: its own CSS and a few lines of plain JavaScript inline, the numbers embedded
as JSON; nothing is fetched (no CDN, no network), so it works offline in JupyterLab 4 and in a saved HTML
file. circuitsvis, the view ARENA uses, was checked and not taken: version 1.43.3 probes google.com each time
it renders and, when online, loads its JavaScript from unpkg.com; offline it inlines a 1.3 MB bundle into
every output. Text is escaped (tokens are shown with `textContent` / `html.escape`, JSON has `<`, `>`, `&`
escaped), newlines show as "↵" and break the line, long texts wrap: no label is ever dropped.

The token spans are plain HTML, so a notebook whose outputs are not trusted (JupyterLab runs no script in
them) still shows the text, and the token view its static colours and hover values; the interactive parts
need the cell run (or the notebook trusted). What it leaves to others: computing patterns and activations
(`tinylib.model`, `tinylib.interp`); this module only shows them.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinylib.interp.attention import attention_patterns
from tinylib.interp.bridge import encode, is_bridge, str_tokens
from tinylib.paths import write_atomic

SCALE = 1000  # attention weights travel as integers in thousandths: 3 decimals, a third of the bytes
MAX_CELLS = 4_000_000  # layers x heads x T x T numbers one view embeds (a few MB of JSON at most)

_CSS = """
.tinylib-view{font-family:var(--jp-code-font-family,monospace);font-size:13px;line-height:1.75;margin:6px 0}
.tinylib-view .tlv-title{font-weight:bold;margin-bottom:2px}
.tinylib-view .tlv-controls{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin-bottom:4px}
.tinylib-view .tlv-readout{color:var(--jp-ui-font-color1,#333);white-space:pre-wrap}
.tinylib-view .tlv-text{white-space:pre-wrap;word-break:break-word}
.tinylib-view .tlv-tok{border-radius:2px;box-shadow:inset -1px 0 0 rgba(128,128,128,.25);cursor:pointer}
.tinylib-view .tlv-tok.tlv-query{outline:2px solid #e67e00;outline-offset:-1px}
.tinylib-view .tlv-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.tinylib-view .tlv-grid .tlv-text{font-size:10px;line-height:1.6}
.tinylib-view .tlv-panel-title{font-weight:bold;cursor:pointer;white-space:pre-wrap}
.tinylib-view canvas{image-rendering:pixelated;border:1px solid #bbb;display:block;margin:2px 0}
"""

# The attention view's script: `root` is the view's div, `data` its JSON (patterns in thousandths, each row's
# trailing zeros left out). Tokens are never re-rendered from strings: panels clone the server-made spans.
_ATTENTION_JS = """
(function () {
  var root = document.getElementById(__VIEW_ID__);
  if (!root || root.dataset.ready) return;
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector("script.tlv-data").textContent);
  var T = data.n_tokens, H = data.n_heads;
  var layerSel = root.querySelector("select.tlv-layer"), headSel = root.querySelector("select.tlv-head");
  var readout = root.querySelector(".tlv-readout"), panels = root.querySelector(".tlv-panels");
  var template = root.querySelector(".tlv-template .tlv-text");
  var labels = Array.prototype.map.call(template.querySelectorAll(".tlv-tok"), function (s) {
    return JSON.stringify(s.textContent);
  });
  var state = {query: null, pinned: false};
  function row(l, h, q) {
    var r = data.p[l][h][q], out = new Array(T);
    for (var k = 0; k < T; k++) out[k] = k < r.length ? r[k] / data.scale : 0;
    return out;
  }
  function label(i) { return labels[i]; }
  function heads() { return headSel.value === "all" ? data.heads : [Number(headSel.value)]; }
  function thumb(l, h) {
    var c = document.createElement("canvas"), px = Math.max(1, Math.min(4, Math.floor(160 / T)));
    c.width = T; c.height = T; c.style.width = (T * px) + "px"; c.style.height = (T * px) + "px";
    var ctx = c.getContext("2d"), img = ctx.createImageData(T, T);
    for (var q = 0; q < T; q++) {
      var r = row(l, h, q);
      for (var k = 0; k < T; k++) {
        var o = 4 * (q * T + k), w = r[k];
        img.data[o] = 255 - 215 * w; img.data[o + 1] = 255 - 175 * w; img.data[o + 2] = 255 - 35 * w;
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    c.title = "the whole pattern: query down, key across";
    return c;
  }
  function build() {
    var l = Number(layerSel.value), hs = heads();
    panels.innerHTML = "";
    panels.className = "tlv-panels" + (hs.length > 1 ? " tlv-grid" : "");
    hs.forEach(function (h) {
      var panel = document.createElement("div");
      panel.className = "tlv-panel"; panel.dataset.head = h;
      var title = document.createElement("div");
      title.className = "tlv-panel-title"; title.dataset.head = h;
      title.title = hs.length > 1 ? "click to show this head alone" : "";
      panel.appendChild(title);
      if (hs.length > 1) panel.appendChild(thumb(l, h));
      panel.appendChild(template.cloneNode(true));
      panels.appendChild(panel);
    });
    paint();
  }
  function paint() {
    var l = Number(layerSel.value), q = state.query;
    var parts = [];
    panels.querySelectorAll(".tlv-panel").forEach(function (panel) {
      var h = Number(panel.dataset.head), name = data.layer_names[l] + "H" + h;
      var r = q === null ? null : row(l, h, q), best = 0;
      panel.querySelectorAll(".tlv-tok").forEach(function (span) {
        var k = Number(span.dataset.i), w = r ? r[k] : 0;
        span.style.backgroundColor = "rgba(40, 80, 220, " + w.toFixed(3) + ")";
        span.style.color = w > 0.55 ? "white" : "";
        span.title = r ? "attention from " + q + " to " + k + ": " + w.toFixed(3) : "";
        span.classList.toggle("tlv-query", k === q);
        if (r && r[k] > r[best]) best = k;
      });
      var title = panel.querySelector(".tlv-panel-title");
      title.textContent = r ? name + " \\u2192 " + label(best) + " (" + best + ") " + r[best].toFixed(2)
                            : name;
      if (r) parts.push([name, r]);
    });
    if (q === null) {
      readout.textContent = "hover a token to see where it attends; click to pin it";
    } else if (parts.length === 1) {
      var r = parts[0][1], order = r.map(function (w, k) { return k; });
      order.sort(function (a, b) { return r[b] - r[a]; });
      readout.textContent = parts[0][0] + ": query " + q + " " + label(q) + " \\u2192 " + order.slice(0, 3)
        .map(function (k) { return label(k) + " (" + k + ") " + r[k].toFixed(2); }).join(", ") +
        (state.pinned ? "   [pinned: click it again to unpin]" : "");
    } else {
      readout.textContent = "query " + q + " " + label(q) + (state.pinned ? "   [pinned]" : "");
    }
  }
  panels.addEventListener("mouseover", function (e) {
    var t = e.target.closest(".tlv-tok");
    if (t && !state.pinned) { state.query = Number(t.dataset.i); paint(); }
  });
  panels.addEventListener("mouseleave", function () {
    if (!state.pinned) { state.query = null; paint(); }
  });
  panels.addEventListener("click", function (e) {
    var t = e.target.closest(".tlv-tok"), title = e.target.closest(".tlv-panel-title");
    if (t) {
      var i = Number(t.dataset.i);
      state.pinned = !(state.pinned && state.query === i);
      state.query = i; paint();
    } else if (title && headSel.value === "all") {
      headSel.value = title.dataset.head; build();
    }
  });
  layerSel.addEventListener("change", build);
  headSel.addEventListener("change", build);
  build();
})();
"""

_TOKENS_JS = """
(function () {
  var root = document.getElementById(__VIEW_ID__);
  if (!root || root.dataset.ready) return;
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector("script.tlv-data").textContent);
  var unitSel = root.querySelector("select.tlv-unit"), readout = root.querySelector(".tlv-readout");
  var legend = root.querySelector(".tlv-legend"), spans = root.querySelectorAll(".tlv-tok");
  function unit() { return unitSel ? Number(unitSel.value) : 0; }
  function paint() {
    var u = unit(), v = data.values[u], vmax = data.vmax[u];
    spans.forEach(function (span) {
      var k = Number(span.dataset.i), x = Math.max(-1, Math.min(1, v[k] / vmax));
      span.style.backgroundColor = x >= 0 ? "rgba(220, 40, 40, " + x.toFixed(3) + ")"
                                          : "rgba(40, 80, 220, " + (-x).toFixed(3) + ")";
      span.title = data.names[u] + ": " + v[k];
    });
    legend.textContent = data.names[u] + ": full colour at |value| = " + vmax +
      " (red positive, blue negative)";
  }
  root.querySelector(".tlv-text").addEventListener("mouseover", function (e) {
    var t = e.target.closest(".tlv-tok");
    if (!t) return;
    var k = Number(t.dataset.i);
    readout.textContent = data.names[unit()] + " at token " + k + " " + JSON.stringify(t.textContent) +
      ": " + data.values[unit()][k];
  });
  if (unitSel) unitSel.addEventListener("change", paint);
  paint();
})();
"""


@dataclass(frozen=True)
class View:
    """A self-contained HTML view: shown by Jupyter (`_repr_html_`), written to a file by `save`."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        """A standalone HTML page of the view (opens in any browser, offline)."""
        page = f'<!doctype html><html><head><meta charset="utf-8"></head><body>{self.html}</body></html>'
        path = Path(path)
        write_atomic(path, page.encode("utf-8"))
        return path


def token_label(token: str) -> str:
    """How a token is shown: HTML-escaped, with whitespace and control characters made visible."""
    if token == "":
        return "\u2205"  # an empty token stays hoverable
    shown = []
    for ch in token:
        if ch == "\n":
            shown.append("\u21b5")
        elif ch == "\t":
            shown.append("\u21e5")
        elif ord(ch) < 32 or ord(ch) == 127:
            shown.append(f"\\x{ord(ch):02x}")
        else:
            shown.append(ch)
    return html.escape("".join(shown))


def _spans(tokens: Sequence[str]) -> str:
    """One span per token; a token that holds a newline also breaks the line after it, as the text does."""
    return "".join(f'<span class="tlv-tok" data-i="{i}">{token_label(t)}</span>' + _line_break(t)
                   for i, t in enumerate(tokens))


def _line_break(token: str) -> str:
    return "<br>" if "\n" in token else ""


def _json_for_script(obj: Any) -> str:
    """JSON that cannot end its <script> element or open a comment inside it."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_tokens(tokens: Sequence[str], T: int, what: str) -> list[str]:
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"tokens must be a list of strings (one label per token, e.g. "
                        f"tinylib.interp.bridge.str_tokens(...)), got {type(tokens).__name__}")
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} tokens but {what} cover {T} positions; pass one label per position")
    return list(tokens)


def _page(view_id: str, kind: str, body: str, payload: Any, script: str) -> View:
    return View(f'<div class="tinylib-view {kind}" id="{view_id}"><style>{_CSS}</style>{body}'
                f'<script type="application/json" class="tlv-data">{_json_for_script(payload)}</script>'
                f"<script>{script.replace('__VIEW_ID__', json.dumps(view_id))}</script></div>")


def _title(title: str) -> str:
    return f'<div class="tlv-title">{html.escape(title)}</div>' if title else ""


def _options(values: Sequence[Any], labels: Sequence[str], selected: Any) -> str:
    return "".join(f'<option value="{html.escape(str(v))}"{" selected" if v == selected else ""}>'
                   f"{html.escape(str(lab))}</option>" for v, lab in zip(values, labels))


def attention_view(tokens: Sequence[str], patterns: torch.Tensor, *, layer: int = 0,
                   head: int | str = "all", layers: Sequence[int] | None = None, title: str = "") -> View:
    """Hover a token, see where each head attends. patterns [n_head, T, T] or [n_layer, n_head, T, T]
    (query, key); `layer` is the layer shown first (the only one's name when patterns has 3 dims), `head` the
    head shown first or "all" for every head of the layer; `layers` names the layers of a 4-dim stack when it
    is not range(n_layer)."""
    p = torch.as_tensor(patterns).detach().float().cpu()
    if p.dim() == 3:
        p, names = p[None], [layer]
        layer = 0
    elif p.dim() == 4:
        names = list(range(p.shape[0])) if layers is None else [int(x) for x in layers]
        if len(names) != p.shape[0]:
            raise ValueError(f"layers={list(layers)} names {len(names)} layers; patterns has {p.shape[0]}")
        if layer not in range(p.shape[0]):
            raise ValueError(f"layer={layer} is not in 0..{p.shape[0] - 1} (index into the patterns' layers)")
    else:
        raise ValueError(f"patterns has shape {tuple(p.shape)}; expected [n_head, T, T] or "
                         "[n_layer, n_head, T, T] (query, key): for a batch, pick one sequence")
    n_layer, n_head, T, S = p.shape
    if T != S:
        raise ValueError(f"patterns are [.., {T}, {S}]: queries and keys must be the same {T} positions "
                         "(a prefilled KV cache gives more keys than queries; run the whole text instead)")
    if head != "all" and head not in range(n_head):
        raise ValueError(f"head={head!r}; expected 'all' or a head in 0..{n_head - 1}")
    if p.numel() > MAX_CELLS:
        raise ValueError(f"{n_layer} layers x {n_head} heads x {T}^2 positions is {p.numel():,} numbers "
                         f"(at most {MAX_CELLS:,}); pass fewer layers (patterns[layer]) or a shorter text")
    if not torch.isfinite(p).all() or float(p.min()) < -1e-6 or float(p.max()) > 1 + 1e-6:
        raise ValueError("patterns must be attention weights in [0, 1] (softmax outputs), got values in "
                         f"[{float(p.nan_to_num().min()):.3g}, {float(p.nan_to_num().max()):.3g}] or NaN")
    tokens = _check_tokens(tokens, T, "the patterns")
    q = (p.clamp(0, 1) * SCALE).round().to(torch.int32).tolist()
    for per_layer in q:  # each row without its trailing zeros: a causal pattern sends half the numbers
        for per_head in per_layer:
            for i, r in enumerate(per_head):
                n = len(r)
                while n and r[n - 1] == 0:
                    n -= 1
                per_head[i] = r[:n]
    payload = {"n_tokens": T, "n_heads": n_head, "heads": list(range(n_head)), "scale": SCALE,
               "layer_names": [f"L{x}" for x in names], "p": q}
    controls = (f'<div class="tlv-controls"><label>layer <select class="tlv-layer">'
                f"{_options(range(n_layer), [f'L{x}' for x in names], layer)}</select></label>"
                f'<label>head <select class="tlv-head">'
                f"{_options(['all', *range(n_head)], ['all heads', *map(str, range(n_head))], head)}"
                "</select></label>"
                '<span class="tlv-readout">(run the cell to make the view interactive: JupyterLab runs no '
                "script in a saved notebook's outputs until you trust it)</span></div>")
    body = (_title(title) + controls + '<div class="tlv-panels"></div>'
            f'<div class="tlv-template" hidden><div class="tlv-text">{_spans(tokens)}</div></div>')
    return _page(f"tlv-{uuid.uuid4().hex[:12]}", "tinylib-attention", body, payload, _ATTENTION_JS)


def token_view(tokens: Sequence[str], values: torch.Tensor | Sequence[float], *,
               names: Sequence[str] | None = None, vmax: float | None = None, title: str = "") -> View:
    """Tokens shaded by a unit's activation (red positive, blue negative), the value on hover. values [T] for
    one unit, or [n_unit, T] with `names` (one per unit) and a picker; `vmax` is the |value| of full colour
    (default: each unit's largest |value|)."""
    v = torch.as_tensor(values).detach().float().cpu()
    if v.dim() == 1:
        v = v[None]
    if v.dim() != 2:
        raise ValueError(f"values has shape {tuple(v.shape)}; expected [T] (one unit) or [n_unit, T]")
    n_unit, T = v.shape
    if not torch.isfinite(v).all():
        raise ValueError(f"values hold {int((~torch.isfinite(v)).sum())} NaN or infinite entries; "
                         "the view shows finite activations")
    names = [f"unit {i}" for i in range(n_unit)] if names is None and n_unit > 1 else \
        list(names) if names is not None else ["value"]
    if len(names) != n_unit:
        raise ValueError(f"{len(names)} names for {n_unit} units; pass one name per row of values")
    if vmax is not None and not vmax > 0:
        raise ValueError(f"vmax={vmax}: expected a positive |value| at which the colour is full")
    tokens = _check_tokens(tokens, T, "values")
    rounded = [[float(f"{x:.4g}") for x in r] for r in v.tolist()]
    scales = [float(f"{vmax or (max(map(abs, r)) or 1.0):.4g}") for r in rounded]
    payload = {"names": names, "values": rounded, "vmax": scales}
    # static colours and hover titles for the first unit: they show even where no script runs
    spans = []
    for i, (t, x) in enumerate(zip(tokens, rounded[0])):
        a = max(-1.0, min(1.0, x / scales[0]))
        colour = f"rgba(220, 40, 40, {a:.3f})" if a >= 0 else f"rgba(40, 80, 220, {-a:.3f})"
        spans.append(f'<span class="tlv-tok" data-i="{i}" style="background-color:{colour}" '
                     f'title="{html.escape(names[0])}: {x}">{token_label(t)}</span>' + _line_break(t))
    picker = (f'<label>unit <select class="tlv-unit">{_options(range(n_unit), names, 0)}</select></label>'
              if n_unit > 1 else "")
    body = (_title(title) + f'<div class="tlv-controls">{picker}<span class="tlv-readout">hover a token to '
            f'see its value</span></div><div class="tlv-text">{"".join(spans)}</div>'
            f'<div class="tlv-legend">{html.escape(names[0])}: full colour at |value| = {scales[0]}</div>')
    return _page(f"tlv-{uuid.uuid4().hex[:12]}", "tinylib-tokens", body, payload, _TOKENS_JS)


def cache_patterns(cache: Any, layers: Sequence[int] | None = None, *, batch_index: int = 0) -> torch.Tensor:
    """[n_layer, n_head, T, T] from a TransformerLens ActivationCache's `blocks.L.attn.hook_pattern`."""
    if layers is None:
        layers = []
        while f"blocks.{len(layers)}.attn.hook_pattern" in cache:
            layers.append(len(layers))
    missing = [name for name in (f"blocks.{x}.attn.hook_pattern" for x in layers) if name not in cache]
    if not layers or missing:
        raise ValueError(f"the cache has no {missing or 'blocks.0.attn.hook_pattern'}: run the model with "
                         "run_with_cache and no names_filter, or one that keeps the attention patterns")
    return torch.stack([cache[f"blocks.{x}.attn.hook_pattern"][batch_index] for x in layers]).float()


@torch.no_grad()
def model_attention_view(model: Any, text: str, tokenizer: Any = None, *, layer: int = 0,
                         head: int | str = "all", max_tokens: int = 256, title: str | None = None) -> View:
    """The attention view of `text` (BOS first, as in training) on a tinylib `Transformer` (with its
    tokenizer) or a TransformerLens bridge made by `tinylib.interp.bridge.to_lens`."""
    tok = getattr(model, "tinylib_tokenizer", None) if tokenizer is None else tokenizer
    if tok is None:
        raise ValueError("no tokenizer: pass tokenizer=... (e.g. open_model(...).tokenizer)")
    ids = encode(tok, text)
    n = ids.shape[1]
    ids = ids[:, :max_tokens]
    if is_bridge(model):
        patterns = attention_patterns(model, ids)
    elif hasattr(model, "forward_with_patterns"):
        patterns = torch.stack([p[0] for p in model.forward_with_patterns(ids)[1]]).float()
    else:
        raise TypeError(f"model is a {type(model).__name__}; expected a tinylib Transformer or a "
                        "TransformerBridge from tinylib.interp.bridge.to_lens")
    shown = f"{n} tokens" if n <= max_tokens else f"the first {max_tokens} of {n} tokens"
    return attention_view(str_tokens(tok, ids[0]), patterns, layer=layer, head=head,
                          title=f"attention, {shown}" if title is None else title)


__all__ = ["View", "attention_view", "cache_patterns", "model_attention_view", "token_label", "token_view"]
