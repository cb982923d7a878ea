"""Two parts of the story generator: where a story is shown (`StoryView`) and the background thread that
writes it (`StoryRunner`).

ipywidgets 8 widgets may be updated from a thread, so a story appears token by token while the kernel stays
free to take the Stop button. One click can write several stories in a row, each into its own view and
optionally inside a context (the steered story runs inside `tinylib.interp.steering.steer`); all of them use
one seed, so side by side they differ only by what the context changed. A run submitted while another is
going starts right after it (the latest wins), so moving a slider twice quickly still ends on the last value.

What it leaves to others: the controls and the layout (`tinylib.widgets.story`), generation itself
(`tinylib.generate`).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import ipywidgets as widgets

from tinylib.engine import SamplingConfig, row_seeds
from tinylib.generate import GenerationResult, stream

_STORY_STYLE = ("white-space: pre-wrap; word-break: normal; font-family: Georgia, serif; font-size: 15px; "
                "line-height: 1.5")
_WHY = {"eos": "end of story", "max_tokens": "max new tokens reached", "stop_string": "stop string",
        "context": "context full", "interrupted": "stopped"}

# One story of a run: the view it is written into, and the context it is generated in (None: none), made
# from the loaded (model, tokenizer).
Job = tuple["StoryView", Callable[[Any, Any], AbstractContextManager] | None]


class UserError(Exception):
    """A mistake the learner can fix; shown as a message, not a traceback."""


class StoryView:
    """A heading, the story (an Output) and the status line under it; `text` is the story shown and `result`
    the GenerationResult that wrote it."""

    def __init__(self, title: str = "", css_class: str = "tinylib-story"):
        self.title = widgets.HTML(value="")
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ddd", padding="4px",
                                                           min_height="80px"))
        self.status = widgets.HTML(value="")
        self.box = widgets.VBox([self.title, self.output, self.status],
                                layout=widgets.Layout(flex="1 1 0", min_width="0"))
        self.box.add_class(css_class)  # a handle for the browser test (and for custom CSS)
        self.text = ""
        self.result: GenerationResult | None = None
        self.set_title(title)

    def set_title(self, title: str) -> None:
        self.title.value = f"<b>{html.escape(title)}</b>" if title else ""

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
    """Writes stories into StoryViews from a background thread; `result` is the last story's GenerationResult.
    `on_busy(True/False)` is called when a run starts and when the last queued one ends (to flip buttons)."""

    def __init__(self, view: StoryView, on_busy: Callable[[bool], None]):
        self.view = view  # where a run's error is shown when no story view is being written yet
        self.result: GenerationResult | None = None
        self._on_busy = on_busy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = False
        self._queued: tuple | None = None

    @property
    def running(self) -> bool:
        return self._active or (self._thread is not None and self._thread.is_alive())

    def start(self, load: Callable[[], tuple[Any, Any]], prompt: str, sampling: SamplingConfig,
              seed: int | None, jobs: Sequence[Job] | None = None) -> None:
        """Generate in the background: `load()` gives (model, tokenizer), then each job's story streams into
        its view (default: one story into `view`). While a run is going this one is queued behind it."""
        run = (load, prompt, sampling, seed, list(jobs) if jobs else [(self.view, None)])
        with self._lock:
            if self._active:
                self._queued = run
                return
            self._active = True
        self._stop.clear()
        self._on_busy(True)
        self._thread = threading.Thread(target=self._loop, args=(run,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the story being written after its current token; nothing queued runs after it."""
        self._stop.set()

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the current run (and any queued behind it) ends; False if still running after
        `timeout` seconds."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self, run: tuple | None) -> None:
        try:
            while run is not None:
                self._run(*run)
                with self._lock:  # under the lock, so a run submitted now is either taken here or starts anew
                    run = None if self._stop.is_set() else self._queued
                    self._queued = None
                    if run is None:
                        self._active = False
                        self._on_busy(False)
        finally:
            if self._active:  # only when something escaped _run
                self._active = False
                self._on_busy(False)

    def _run(self, load: Callable[[], tuple[Any, Any]], prompt: str, sampling: SamplingConfig,
             seed: int | None, jobs: list[Job]) -> None:
        view = self.view
        try:
            model, tokenizer = load()
            seed = row_seeds(seed, 1)[0]  # one seed for every story of this run
            for view, make_context in jobs:
                with make_context(model, tokenizer) if make_context else nullcontext():
                    self._write(view, model, tokenizer, prompt, sampling, seed)
                if self._stop.is_set():
                    break
        except (UserError, ValueError) as e:  # prompt too long, a bad checkpoint: the message says the fix
            view.show_status(str(e), error=True)
        except Exception as e:  # anything else still becomes a message: a widget must not spill a traceback
            view.show_status(f"Generation failed ({type(e).__name__}): {e}", error=True)

    def _write(self, view: StoryView, model: Any, tokenizer: Any, prompt: str, sampling: SamplingConfig,
               seed: int) -> None:
        view.show_text(prompt)
        view.show_status("generating...")
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
        r = view.result = self.result = s.result
        view.show_status(f"{r.n_new} tokens in {r.elapsed_s:.2f} s: {r.tokens_per_s:.1f} tokens/s, first "
                         f"token after {1000 * r.time_to_first_token_s:.0f} ms; seed {r.seed}; "
                         f"{_WHY[r.stop_reason]}")
