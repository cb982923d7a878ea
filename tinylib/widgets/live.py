"""A loss plot that redraws in a notebook while a run trains (it imports IPython, so it lives here)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from IPython.display import display


class LivePlot:
    """A loss plot that redraws in a notebook as records arrive:
    pass it as `train(cfg, on_record=LivePlot())`."""

    def __init__(self, every: int = 1, title: str = "training"):
        self.records: list[dict] = []
        self.every, self.title, self._n = every, title, 0
        self._handle = None

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        self._n += 1
        if self._n % self.every:
            return
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for metric, style in (("train_loss", "-"), ("val_loss", "o-")):
            pts = [(r["tokens"], r[metric]) for r in self.records if r.get(metric) is not None]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=metric)
        ax.set(xlabel="tokens", ylabel="loss (nats/token)", title=self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
