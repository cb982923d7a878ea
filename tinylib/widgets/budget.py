"""Budget pictures and the budget slider panel for notebook 02: plots of plans and an ipywidgets panel.

`plot_chinchilla` and `plot_time_cost` draw a list of `Plan`s; `budget_widget` puts sliders (preset,
vocabulary, batch, sequence, accumulation, GPUs, device, MFU, price) over a live `plan`.

What it leaves to others: every number (`tinylib.budget` computes the plans, `tinylib.flops` holds the device
peaks); this module only shows them.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.axes import Axes

from tinylib.budget import Plan, plan
from tinylib.config import PRESETS, get_config
from tinylib.flops import PEAKS


def plot_chinchilla(plans: Sequence[Plan], ax: Axes | None = None) -> Axes:
    """Parameters versus Chinchilla-optimal tokens, one point per plan (log-log)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for p in plans:
        ax.scatter(p.params, p.tokens)
        ax.annotate(p.name, (p.params, p.tokens), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("training tokens")
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_time_cost(plans: Sequence[Plan], axes: Sequence[Axes] | None = None) -> Sequence[Axes]:
    """Bar charts of wall-clock hours and cost, one bar per plan (label: model on devices)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{p.name}\n{p.n_gpus}x {p.device}" for p in plans]
    axes[0].barh(labels, [p.hours for p in plans])
    axes[0].set_xlabel("wall-clock hours")
    axes[0].set_xscale("log")
    axes[1].barh(labels, [p.cost for p in plans])
    axes[1].set_xlabel("cost ($)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    return axes


def budget_widget(preset: str = "llama_8L_8H_768D", vocab_size: int = 4096, micro_batch: int = 32,
                  seq_len: int = 512, grad_accum: int = 4, n_gpus: int = 1, device: str = "H100 SXM",
                  mfu: float = 0.35, price_per_gpu_hour: float = 2.0) -> widgets.VBox:
    """Sliders (preset, vocabulary, batch, sequence, accumulation, GPUs, device, MFU, price) over a `plan`.

    Returns the ipywidgets box; `box.controls` maps each `plan` argument to its control, `box.plan_output` is
    the Output widget showing the current plan and `box.current()` returns the current Plan (for checks).
    """
    style = {"description_width": "110px"}
    controls = {
        "model": widgets.Dropdown(options=sorted(PRESETS), value=preset, description="preset", style=style),
        "vocab_size": widgets.IntSlider(value=vocab_size, min=256, max=65536, step=256, description="vocab",
                                        style=style, continuous_update=False),
        "micro_batch": widgets.IntSlider(value=micro_batch, min=1, max=256, description="micro-batch",
                                         style=style, continuous_update=False),
        "seq_len": widgets.IntSlider(value=seq_len, min=64, max=2048, step=64, description="sequence",
                                     style=style, continuous_update=False),
        "grad_accum": widgets.IntSlider(value=grad_accum, min=1, max=64, description="accumulation",
                                        style=style, continuous_update=False),
        "n_gpus": widgets.IntSlider(value=n_gpus, min=1, max=64, description="GPUs", style=style,
                                    continuous_update=False),
        "device": widgets.Dropdown(options=[p.name for p in PEAKS], value=device, description="device",
                                   style=style),
        "mfu": widgets.FloatSlider(value=mfu, min=0.05, max=0.7, step=0.01, description="MFU", style=style,
                                   readout_format=".0%", continuous_update=False),
        "price_per_gpu_hour": widgets.FloatSlider(value=price_per_gpu_hour, min=0.1, max=10.0, step=0.05,
                                                  description="$ / GPU-hour", style=style,
                                                  continuous_update=False),
    }
    out = widgets.Output()

    def current() -> Plan:
        values = {k: c.value for k, c in controls.items()}
        cfg = get_config(values.pop("model"), vocab_size=values.pop("vocab_size"),
                         max_seq_len=max(values["seq_len"], 1))
        p = plan(cfg, **values)
        p.name = controls["model"].value
        return p

    def update(_change: object = None) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                display(current())
            except ValueError as e:  # e.g. a shape the preset cannot take: show it, do not break the panel
                print(f"cannot plan this: {e}")

    for c in controls.values():
        c.observe(update, names="value")
    update()
    column = list(controls.values())
    box = widgets.VBox([widgets.HBox([widgets.VBox(column[:5]), widgets.VBox(column[5:])]), out])
    box.controls, box.plan_output, box.current = controls, out, current
    return box
