"""The story generator widget (ipywidgets 8, JupyterLab 4), and how it finds a model to generate from.

`story_generator(...)` shows a dropdown of models (any model passed in, then every checkpoint under
`checkpoints/`), a prompt box, sliders for temperature, top-k, top-p and max new tokens, a seed field,
Generate and Stop buttons, the story streaming into an Output, and a line with tokens/s. Its parts:
- `SamplingControls`: the prompt, the sliders and the seed; `.sampling()` reads them as a `SamplingConfig`;
- `ModelPicker`: the dropdown and its Refresh button; loads a checkpoint the first time it is chosen;
- `StoryView` and `StoryRunner` (`tinylib.widgets.story_runner`): a story with its status line, and the
  background thread that streams stories into views, so Stop works while the kernel stays free;
- `SteeringControls` and `RequestControls` (`tinylib.widgets.story_controls`): a steering direction, layer
  and strength, and the "story on request" mode (words, features) for instruction-tuned checkpoints.
`StoryGenerator` lays them out and wires the buttons. With steering on, Generate writes two stories with the
same seed side by side, without and with steering; moving a steering control afterwards rewrites the steered
one (same prompt, settings and seed), so the effect of the strength is seen directly. Mistakes (no
checkpoint, empty prompt, prompt too long, a bad seed, a layer the model lacks) become a readable message in
the widget, never a traceback.

Which model a notebook passes in is chosen explicitly with `tinylib.widgets.models.open_model`.

What it leaves to others: sampling (`tinylib.engine`), decoding text (`tinylib.generate`), checkpoint files
(`tinylib.checkpoint`), steering (`tinylib.interp.steering`), the request format
(`tinylib.finetune.instruct`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from tinylib import checkpoint
from tinylib.engine import SamplingConfig, row_seeds
from tinylib.finetune.instruct import is_instruct_checkpoint
from tinylib.generate import GenerationResult
from tinylib.widgets.story_controls import RequestControls, SteeringControls
from tinylib.widgets.story_runner import StoryRunner, StoryView, UserError

PASSED = "__passed__"  # dropdown key of a model object given to the widget
_HIDDEN, _SHOWN = "none", ""


class SamplingControls:
    """The prompt box, the sampling sliders and the seed field, read as (prompt, SamplingConfig, seed)."""

    def __init__(self, prompt: str = "Once upon a time"):
        style = {"description_width": "110px"}
        self.prompt = widgets.Textarea(value=prompt, description="Prompt", placeholder="Once upon a time",
                                       rows=3, layout=widgets.Layout(width="100%"), style=style)
        self.temperature = widgets.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05,
                                               description="temperature", readout_format=".2f", style=style)
        self.top_k = widgets.IntSlider(value=0, min=0, max=200, description="top-k (0 = off)", style=style)
        self.top_p = widgets.FloatSlider(value=0.9, min=0.05, max=1.0, step=0.05,
                                         description="top-p (1 = off)", readout_format=".2f", style=style)
        self.max_new_tokens = widgets.IntSlider(value=200, min=1, max=1024, description="max new tokens",
                                                style=style)
        self.seed = widgets.Text(value="", placeholder="random", description="seed", style=style)

    def sampling(self) -> SamplingConfig:
        """The sliders as the engine's settings; the sliders' 0 (top-k) and 1 (top-p) mean "off"."""
        return SamplingConfig(temperature=float(self.temperature.value), top_k=int(self.top_k.value) or None,
                              top_p=None if self.top_p.value >= 1.0 else float(self.top_p.value),
                              max_new_tokens=int(self.max_new_tokens.value))

    def read(self) -> tuple[str, SamplingConfig, int | None]:
        """The prompt, the settings and the seed (None: random); a mistake raises UserError with the fix."""
        prompt = self.prompt.value
        if not prompt.strip():
            raise UserError("The prompt is empty: write the start of a story (e.g. 'Once upon a time') "
                            "and press Generate.")
        return prompt, self.sampling(), self.seed_value()

    def seed_value(self) -> int | None:
        """The seed field as a number (None when empty: a random seed)."""
        seed_text = self.seed.value.strip()
        try:
            return int(seed_text) if seed_text else None
        except ValueError:
            raise UserError(f"Seed {seed_text!r} is not a whole number: type one (e.g. 42) or leave it "
                            "empty for a random seed.") from None


def _checkpoint_options(checkpoints_dir: Path) -> list[tuple[str, str]]:
    paths = checkpoint.list_checkpoints(checkpoints_dir)
    reference = checkpoint.find_reference_checkpoint()
    if reference is not None and all(p.resolve() != reference.resolve() for p in paths):
        paths.append(reference)
    options = []
    for p in paths:
        try:
            label = str(p.relative_to(checkpoints_dir))
        except ValueError:
            label = str(p)
        options.append((label, str(p)))
    return options


class ModelPicker:
    """The model dropdown and its Refresh button. Checkpoints are loaded when first generated from (in the
    runner's thread, so a slow load does not freeze the notebook) and kept, so the next click is instant."""

    def __init__(self, checkpoints_dir: str | os.PathLike, model: Any = None, tokenizer: Any = None,
                 label: str = "model passed in", meta: dict | None = None):
        self.checkpoints_dir = Path(checkpoints_dir)
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._passed_label = label
        self._passed_meta = meta or {}
        if model is not None:
            self._loaded[PASSED] = (model, tokenizer)
        self.checkpoint = widgets.Dropdown(description="model", style={"description_width": "110px"},
                                           layout=widgets.Layout(width="60%"))
        self.refresh_button = widgets.Button(description="Refresh list", icon="refresh",
                                             tooltip="look for new checkpoints")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        """Re-list the checkpoints (keeps the current choice when it is still there)."""
        options = [(self._passed_label, PASSED)] if PASSED in self._loaded else []
        options += _checkpoint_options(self.checkpoints_dir)
        if not options:
            options = [(f"(no checkpoint under {self.checkpoints_dir})", "")]
        current = self.checkpoint.value
        self.checkpoint.options = options
        keys = [k for _, k in options]
        self.checkpoint.value = current if current in keys else keys[0]

    def is_loaded(self) -> bool:
        return self.checkpoint.value in self._loaded

    def meta(self) -> dict:
        """The chosen checkpoint's config.json ({} when it cannot be read: loading will say why)."""
        key = self.checkpoint.value
        if key == PASSED or not key:
            return self._passed_meta if key else {}
        try:
            return checkpoint.load_meta(key)
        except (OSError, ValueError):
            return {}

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the chosen entry; a missing or broken checkpoint raises UserError."""
        key = self.checkpoint.value
        if not key:
            raise UserError(f"No model to generate from: no checkpoint under {self.checkpoints_dir}. "
                             "Train one with `make demo` (or the training notebook) and press Refresh list, "
                             "or pass model= and tokenizer= to the generator.")
        if key not in self._loaded:
            try:
                self._loaded[key] = (checkpoint.load_model(key), checkpoint.load_tokenizer(key))
            except Exception as e:  # missing files, bad JSON, corrupt safetensors: all say "could not load"
                raise UserError(f"Could not load the checkpoint {key} ({type(e).__name__}): {e}") from None
        return self._loaded[key]


class StoryGenerator:
    """The story generator UI. Display it (it is the last expression of a cell) and press Generate.

    model/tokenizer: a model object to offer first in the dropdown (both or neither); `meta` its checkpoint's
    config.json, if any (an instruction-tuned one opens in "story on request" mode). checkpoints_dir: where to
    look for checkpoints. `directions`: more steering choices (see `SteeringControls`). The parts are
    attributes (prompt, temperature, top_k, top_p, max_new_tokens, seed, checkpoint, direction, layer,
    strength, mode, words, features, generate_button, stop_button, output, status, steered_output,
    steered_status) so code and tests can drive it like a user; `text` and `steered_view.text` are the
    stories shown, `result` / `steered_result` their GenerationResults, `wait()` blocks until generation
    ends. The pieces themselves are `controls`, `picker`, `steering`, `request`, `view`, `steered_view` and
    `runner`.
    """

    def __init__(self, model: Any = None, tokenizer: Any = None,
                 checkpoints_dir: str | os.PathLike = "checkpoints", *, prompt: str = "Once upon a time",
                 model_label: str = "model passed in", meta: dict | None = None,
                 directions: dict[str, Any] | None = None):
        if (model is None) != (tokenizer is None):
            raise ValueError("pass model and tokenizer together (or neither, to pick a checkpoint from the "
                             "list)")
        self.controls = SamplingControls(prompt)
        self.picker = ModelPicker(checkpoints_dir, model, tokenizer, model_label, meta)
        self.steering = SteeringControls(directions, getattr(getattr(model, "cfg", None), "n_layer", 4))
        self.request = RequestControls()
        self.view, self.steered_view = StoryView(), StoryView(css_class="tinylib-steered-story")
        self.runner = StoryRunner(self.view, self._set_busy)
        self._last: tuple[str, SamplingConfig, int] | None = None  # prompt, settings, seed of the last click
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop",
                                          disabled=True)
        self.generate_button.on_click(lambda _b: self.click_generate())
        self.stop_button.on_click(lambda _b: self.click_stop())
        c, st, rq = self.controls, self.steering, self.request  # the parts under the names code and tests use
        self.prompt, self.temperature, self.top_k, self.top_p = c.prompt, c.temperature, c.top_k, c.top_p
        self.max_new_tokens, self.seed = c.max_new_tokens, c.seed
        self.checkpoint, self.refresh_button = self.picker.checkpoint, self.picker.refresh_button
        self.checkpoints_dir = self.picker.checkpoints_dir
        self.direction, self.layer, self.strength = st.direction, st.layer, st.strength
        self.mode, self.words, self.features = rq.mode, rq.words, rq.features
        self.output, self.status = self.view.output, self.view.status
        self.steered_output, self.steered_status = self.steered_view.output, self.steered_view.status
        self.ui = widgets.VBox([
            widgets.HBox([self.checkpoint, self.refresh_button]),
            self.mode,
            self.prompt,
            rq.box,
            widgets.HBox([widgets.VBox([self.temperature, self.top_k]),
                          widgets.VBox([self.top_p, self.max_new_tokens])]),
            st.box,
            widgets.HBox([self.seed, self.generate_button, self.stop_button]),
            widgets.HBox([self.view.box, self.steered_view.box], layout=widgets.Layout(width="100%")),
        ])
        for control in (self.direction, self.layer, self.strength):
            control.observe(lambda _change: self._steering_moved(), "value")
        self.mode.observe(lambda _change: self._show_parts(), "value")
        self.checkpoint.observe(lambda _change: self._model_chosen(), "value")
        self._model_chosen()

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    @property
    def text(self) -> str:
        return self.view.text

    @property
    def result(self) -> GenerationResult | None:
        return self.view.result

    @property
    def steered_result(self) -> GenerationResult | None:
        return self.steered_view.result

    def refresh(self) -> None:
        """Re-list the checkpoints (keeps the current choice when it is still there)."""
        self.picker.refresh()

    def _set_busy(self, busy: bool) -> None:
        self.generate_button.disabled = busy
        self.stop_button.disabled = not busy

    def _show_parts(self) -> None:
        """Show the prompt or the request fields, and the steered column only while steering is on."""
        self.prompt.layout.display = _HIDDEN if self.request.on else _SHOWN
        self.request.box.layout.display = _SHOWN if self.request.on else _HIDDEN
        self.steered_view.box.layout.display = _SHOWN if self.steering.on else _HIDDEN
        self.view.set_title("without steering" if self.steering.on else "")

    def _model_chosen(self) -> None:
        self.request.show_model_kind(is_instruct_checkpoint(self.picker.meta()))
        self._show_parts()

    def _load(self) -> tuple[Any, Any]:
        """The chosen model (loaded in the runner's thread); the layer slider is fitted to it."""
        model, tokenizer = self.picker.load()
        self.steering.set_layers(model.cfg.n_layer)
        return model, tokenizer

    def _steered_job(self):
        settings = self.steering.settings()
        self.steered_view.set_title(settings.describe())
        return self.steered_view, lambda model, tok: self.steering.context(model, tok, settings)

    def _steering_moved(self) -> None:
        """A steering control moved: rewrite the steered story of the last click with its prompt and seed."""
        self._show_parts()
        if self.steering.on and self._last is not None:
            self.runner.start(self._load, *self._last, [self._steered_job()])

    def click_generate(self) -> None:
        """Press Generate from code (what the button does); ignored while a story is being generated."""
        if self.runner.running:
            return
        try:
            if self.request.on:
                prompt, sampling = self.request.prompt(), self.controls.sampling()
                seed = self.controls.seed_value()
            else:
                prompt, sampling, seed = self.controls.read()
        except (UserError, ValueError) as e:
            self.view.show_status(str(e), error=True)
            return
        self._last = (prompt, sampling, row_seeds(seed, 1)[0])  # drawn here: both stories share it
        jobs = [(self.view, None)] + ([self._steered_job()] if self.steering.on else [])
        self.view.show_status("generating..." if self.picker.is_loaded() else "loading the model...")
        self.runner.start(self._load, *self._last, jobs)

    def click_stop(self) -> None:
        """Press Stop from code: the story ends after the current token, keeping what was written."""
        self.runner.stop()

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the current generation ends; False if it is still running after `timeout` seconds."""
        return self.runner.wait(timeout)


def story_generator(model: Any = None, tokenizer: Any = None,
                    checkpoints_dir: str | os.PathLike = "checkpoints", **kwargs: Any) -> StoryGenerator:
    """A `StoryGenerator`; make it the last expression of a notebook cell to show it."""
    return StoryGenerator(model, tokenizer, checkpoints_dir, **kwargs)
