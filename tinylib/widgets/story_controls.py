"""The story generator's two optional modes, as widget parts: steering and "story on request".

- `SteeringControls`: a direction (off, the built-in happy - sad, or directions passed in), the layer after
  which it is added, and a strength slider. `context(model, tokenizer, settings)` is the
  `tinylib.interp.steering.steer` block the steered story is generated in; the direction is recomputed for
  each model and layer (a dozen forward passes of short openings) and kept for the next click.
- `RequestControls`: a mode switch ("continue a prompt" or "story on request") and the words and features
  fields. `prompt()` builds the request with `tinylib.finetune.instruct.request_prompt`, the same text an
  instruction-tuned checkpoint was fine-tuned on, so it ends where that model's story begins.

Bad input raises ValueError with the fix; the widget shows it as a message. What it leaves to others: the
layout, the buttons and the background thread (`tinylib.widgets.story`), the directions and the hook
(`tinylib.interp.steering`), the prompt format (`tinylib.finetune.instruct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from tinylib.finetune.instruct import FEATURES, request_prompt
from tinylib.interp.steering import HAPPY, SAD, SteeringVector, steer, steering_vector

BUILT_IN = "happy - sad"
_STYLE = {"description_width": "110px"}


@dataclass(frozen=True)
class SteeringSettings:
    """What the steering controls said when Generate was pressed (the sliders may move during a run)."""

    name: str
    layer: int
    strength: float

    def describe(self) -> str:
        return f"steered: {self.name} x {self.strength:+g} after block {self.layer}"


class SteeringControls:
    """Direction, layer and strength. `directions` adds choices: name -> (positive prompts, negative prompts),
    recomputed at the chosen layer, or name -> SteeringVector, added at the chosen layer as it is."""

    def __init__(self, directions: dict[str, Any] | None = None, n_layer: int = 4):
        self.directions: dict[str, Any] = {BUILT_IN: (HAPPY, SAD), **(directions or {})}
        options = [("off", "")] + [(f"{n} (built-in)" if n == BUILT_IN else n, n) for n in self.directions]
        self.direction = widgets.Dropdown(options=options, value="", description="steering", style=_STYLE,
                                          tooltip="a direction added to the residual stream while generating")
        self.layer = widgets.IntSlider(value=n_layer // 2, min=0, max=max(0, n_layer - 1),
                                       description="after block", style=_STYLE, continuous_update=False)
        self.strength = widgets.FloatSlider(value=2.0, min=-10.0, max=10.0, step=0.5, description="strength",
                                            readout_format="+.1f", style=_STYLE, continuous_update=False)
        self.box = widgets.HBox([self.direction, self.layer, self.strength])
        self._last: tuple[Any, str, int, SteeringVector] | None = None  # (model, name, layer, vector)

    @property
    def on(self) -> bool:
        return bool(self.direction.value)

    def settings(self) -> SteeringSettings:
        return SteeringSettings(self.direction.value, int(self.layer.value), float(self.strength.value))

    def set_layers(self, n_layer: int) -> None:
        """Fit the layer slider to a model with `n_layer` blocks (the value is clamped into range)."""
        self.layer.max = max(0, n_layer - 1)

    def vector(self, model: Any, tokenizer: Any, s: SteeringSettings) -> SteeringVector:
        """The direction for this model at this layer (recomputed only when one of them changes)."""
        n = len(model.blocks)
        if not 0 <= s.layer < n:
            raise ValueError(f"Steering after block {s.layer}, but this model has {n} blocks: pick a layer "
                             f"from 0 to {n - 1}.")
        last = self._last
        if last is None or last[0] is not model or last[1:3] != (s.name, s.layer):
            made = self.directions[s.name]
            if isinstance(made, SteeringVector):
                vector = SteeringVector(made.direction, s.layer, s.name)
            else:
                positive, negative = made
                vector = steering_vector(model, tokenizer, positive, negative, s.layer, name=s.name)
            self._last = (model, s.name, s.layer, vector)
        return self._last[3]

    def context(self, model: Any, tokenizer: Any, s: SteeringSettings) -> AbstractContextManager:
        """The block to generate the steered story in."""
        return steer(model, self.vector(model, tokenizer, s), s.strength)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def canonical_features(names: Sequence[str]) -> list[str]:
    """Feature names as the instruct data spells them ("dialogue" -> "Dialogue"); an unknown one raises."""
    known = {f.lower(): f for f in FEATURES}
    out = []
    for name in names:
        if name.lower() not in known:
            raise ValueError(f"Unknown feature {name!r}: an instruction-tuned model knows "
                             f"{', '.join(FEATURES)} (comma-separated).")
        out.append(known[name.lower()])
    return out


class RequestControls:
    """The mode switch, and the words and features of a story on request."""

    def __init__(self):
        self.mode = widgets.ToggleButtons(options=[("continue a prompt", "prompt"),
                                                   ("story on request", "request")], value="prompt",
                                          style={"button_width": "150px"})
        self.words = widgets.Text(value="", placeholder="dog, ball, happy", description="words",
                                  style=_STYLE, layout=widgets.Layout(width="60%"))
        self.features = widgets.Text(value="", placeholder=", ".join(FEATURES[:2]), description="features",
                                     style=_STYLE, layout=widgets.Layout(width="60%"))
        self.note = widgets.HTML(value="")
        self.box = widgets.VBox([self.words, self.features, self.note])

    @property
    def on(self) -> bool:
        return self.mode.value == "request"

    def prompt(self) -> str:
        """The request as the instruct data writes it; empty fields raise ValueError with the fix."""
        words, features = _split(self.words.value), canonical_features(_split(self.features.value))
        if not words and not features:
            raise ValueError("The request is empty: type some words the story should use (e.g. dog, ball), "
                             f"features ({', '.join(FEATURES)}), or both, comma-separated.")
        return request_prompt(words, features)

    def show_model_kind(self, instruct: bool) -> None:
        """Switch to the chosen model's natural mode; say so when a request goes to a plain model."""
        self.mode.value = "request" if instruct else "prompt"
        self.note.value = ("" if instruct else '<span style="color:#555">This model was not '
                           "instruction-tuned: it will continue the request as plain text.</span>")
