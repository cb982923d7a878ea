"""The story generator widget (ipywidgets 8, JupyterLab 4), and how it finds a model to generate from.

`story_generator(...)` shows a dropdown of models (any model passed in, then every checkpoint under
`checkpoints/`), a prompt box, sliders for temperature, top-k, top-p and max new tokens, a seed field,
Generate and Stop buttons, the story streaming into an Output, and a line with tokens/s. Four small parts:
- `SamplingControls`: the prompt, the sliders and the seed; `.sampling()` reads them as a `SamplingConfig`;
- `ModelPicker`: the dropdown and its Refresh button; loads a checkpoint the first time it is chosen;
- `StoryView`: the story and the status line;
- `StoryRunner`: streams one story into the view from a background thread (ipywidgets 8 widgets may be
  updated from threads), so the story appears as it is written and Stop works while the kernel stays free.
`StoryGenerator` lays them out and wires the buttons. Mistakes (no checkpoint, empty prompt, prompt too long,
a bad seed) become a readable message in the widget, never a traceback.

Which model a notebook passes in is chosen explicitly with `tinylib.notebook.models.open_model`.

What it leaves to others: sampling (`tinylib.engine`), decoding text (`tinylib.generate`), checkpoint files
(`tinylib.checkpoint`).
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from tinylib import checkpoint
from tinylib.engine import SamplingConfig
from tinylib.generate import GenerationResult, stream

PASSED = "__passed__"  # dropdown key of a model object given to the widget
_STORY_STYLE = ("white-space: pre-wrap; word-break: normal; font-family: Georgia, serif; font-size: 15px; "
                "line-height: 1.5")
_WHY = {"eos": "end of story", "max_tokens": "max new tokens reached", "stop_string": "stop string",
        "context": "context full", "interrupted": "stopped"}


class _UserError(Exception):
    """A mistake the learner can fix; shown as a message, not a traceback."""


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
        """The prompt, the settings and the seed (None: random); a mistake raises _UserError with the fix."""
        prompt = self.prompt.value
        if not prompt.strip():
            raise _UserError("The prompt is empty: write the start of a story (e.g. 'Once upon a time') "
                             "and press Generate.")
        seed_text = self.seed.value.strip()
        try:
            seed = int(seed_text) if seed_text else None
        except ValueError:
            raise _UserError(f"Seed {seed_text!r} is not a whole number: type one (e.g. 42) or leave it "
                             "empty for a random seed.") from None
        return prompt, self.sampling(), seed


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
                 label: str = "model passed in"):
        self.checkpoints_dir = Path(checkpoints_dir)
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._passed_label = label
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

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the chosen entry; a missing or broken checkpoint raises _UserError."""
        key = self.checkpoint.value
        if not key:
            raise _UserError(f"No model to generate from: no checkpoint under {self.checkpoints_dir}. "
                             "Train one with `make demo` (or the training notebook) and press Refresh list, "
                             "or pass model= and tokenizer= to the generator.")
        if key not in self._loaded:
            try:
                self._loaded[key] = (checkpoint.load_model(key), checkpoint.load_tokenizer(key))
            except Exception as e:  # missing files, bad JSON, corrupt safetensors: all say "could not load"
                raise _UserError(f"Could not load the checkpoint {key} ({type(e).__name__}): {e}") from None
        return self._loaded[key]


class StoryView:
    """The story (an Output) and the status line under it; `text` is the story shown."""

    def __init__(self):
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ddd", padding="4px",
                                                           min_height="80px"))
        self.status = widgets.HTML(value="")
        self.text = ""

    def show_text(self, text: str) -> None:
        # Replacing the Output's content (rather than appending) keeps one output however many redraws; HTML
        # so the story wraps at word boundaries in a reading font; text/plain for tests and consoles.
        self.text = text
        story = f'<div style="{_STORY_STYLE}">{html.escape(text)}</div>'
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"text/plain": text, "text/html": story}},)

    def show_status(self, message: str, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self.status.value = f'<span style="color:{color}">{html.escape(message)}</span>'


class StoryRunner:
    """Streams one story at a time into a StoryView from a background thread; `result` is the last one's
    GenerationResult. `on_busy(True/False)` is called when a run starts and ends (to flip the buttons)."""

    def __init__(self, view: StoryView, on_busy: Callable[[bool], None]):
        self.view = view
        self.result: GenerationResult | None = None
        self._on_busy = on_busy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, load: Callable[[], tuple[Any, Any]], prompt: str, sampling: SamplingConfig,
              seed: int | None) -> None:
        """Generate in the background: `load()` gives (model, tokenizer), then the story streams in."""
        self._stop.clear()
        self._on_busy(True)
        self._thread = threading.Thread(target=self._run, args=(load, prompt, sampling, seed), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the current run ends; False if it is still running after `timeout` seconds."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, load: Callable[[], tuple[Any, Any]], prompt: str, sampling: SamplingConfig,
             seed: int | None) -> None:
        view = self.view
        try:
            model, tokenizer = load()
            view.show_text(prompt)
            s = stream(model, tokenizer, prompt, sampling, seed=seed)
            story, last_draw = prompt, 0.0
            for piece in s:
                story += piece
                if self._stop.is_set():
                    s.close()
                    break
                now = time.perf_counter()
                if now - last_draw > 0.05:  # ~20 redraws a second is smooth and cheap
                    view.show_text(story)
                    view.show_status(f"{s.n_new} tokens...")
                    last_draw = now
            view.show_text(story)
            r = self.result = s.result
            view.show_status(f"{r.n_new} tokens in {r.elapsed_s:.2f} s: {r.tokens_per_s:.1f} tokens/s, first "
                             f"token after {1000 * r.time_to_first_token_s:.0f} ms; seed {r.seed}; "
                             f"{_WHY[r.stop_reason]}")
        except (_UserError, ValueError) as e:  # prompt too long, a bad checkpoint: the message says the fix
            view.show_status(str(e), error=True)
        except Exception as e:  # anything else still becomes a message: a widget must not spill a traceback
            view.show_status(f"Generation failed ({type(e).__name__}): {e}", error=True)
        finally:
            self._on_busy(False)


class StoryGenerator:
    """The story generator UI. Display it (it is the last expression of a cell) and press Generate.

    model/tokenizer: a model object to offer first in the dropdown (both or neither). checkpoints_dir: where
    to look for checkpoints. The parts are attributes (prompt, temperature, top_k, top_p, max_new_tokens,
    seed, checkpoint, generate_button, stop_button, output, status) so code and tests can drive it like a
    user; `text` is the story shown, `result` the last GenerationResult, `wait()` blocks until generation
    ends. The pieces themselves are `controls`, `picker`, `view` and `runner`.
    """

    def __init__(self, model: Any = None, tokenizer: Any = None,
                 checkpoints_dir: str | os.PathLike = "checkpoints", *, prompt: str = "Once upon a time",
                 model_label: str = "model passed in"):
        if (model is None) != (tokenizer is None):
            raise ValueError("pass model and tokenizer together (or neither, to pick a checkpoint from the "
                             "list)")
        self.controls = SamplingControls(prompt)
        self.picker = ModelPicker(checkpoints_dir, model, tokenizer, model_label)
        self.view = StoryView()
        self.runner = StoryRunner(self.view, self._set_busy)
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop",
                                          disabled=True)
        self.generate_button.on_click(lambda _b: self.click_generate())
        self.stop_button.on_click(lambda _b: self.click_stop())
        c = self.controls  # the parts under the names code, tests and notebooks use
        self.prompt, self.temperature, self.top_k, self.top_p = c.prompt, c.temperature, c.top_k, c.top_p
        self.max_new_tokens, self.seed = c.max_new_tokens, c.seed
        self.checkpoint, self.refresh_button = self.picker.checkpoint, self.picker.refresh_button
        self.checkpoints_dir = self.picker.checkpoints_dir
        self.output, self.status = self.view.output, self.view.status
        self.ui = widgets.VBox([
            widgets.HBox([self.checkpoint, self.refresh_button]),
            self.prompt,
            widgets.HBox([widgets.VBox([self.temperature, self.top_k]),
                          widgets.VBox([self.top_p, self.max_new_tokens])]),
            widgets.HBox([self.seed, self.generate_button, self.stop_button]),
            self.output,
            self.status,
        ])

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)

    @property
    def text(self) -> str:
        return self.view.text

    @property
    def result(self) -> GenerationResult | None:
        return self.runner.result

    def refresh(self) -> None:
        """Re-list the checkpoints (keeps the current choice when it is still there)."""
        self.picker.refresh()

    def _set_busy(self, busy: bool) -> None:
        self.generate_button.disabled = busy
        self.stop_button.disabled = not busy

    def click_generate(self) -> None:
        """Press Generate from code (what the button does); ignored while a story is being generated."""
        if self.runner.running:
            return
        try:
            prompt, sampling, seed = self.controls.read()
        except _UserError as e:
            self.view.show_status(str(e), error=True)
            return
        self.view.show_status("generating..." if self.picker.is_loaded() else "loading the model...")
        self.runner.start(self.picker.load, prompt, sampling, seed)

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
