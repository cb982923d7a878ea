"""Training metrics: one JSON object per line in `<run>/metrics.jsonl`, read back and plotted.

The trainer appends; notebooks and the budget module read. Plotting takes the data read here; the plot that
redraws while a notebook trains is `tinylib.notebook.live.LivePlot`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per record and flushes, so a crash loses at most the line being written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`:
        a resumed run rewrites the steps an interrupted run logged after its save."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a run folder's metrics.jsonl (or of the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}: train a run first (python -m tinylib.train ...)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(runs, metrics=("train_loss", "val_loss"), x: str = "tokens", ax=None, labels=None):
    """Curves of one or several runs (run folders or metrics files) on one matplotlib Axes."""
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for i, run in enumerate(runs):
        records = read_metrics(run)
        name = labels[i] if labels else Path(run).name
        for metric in metrics:
            pts = [(r[x], r[metric]) for r in records if r.get(metric) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if metric == "val_loss" else None, ms=3, label=f"{name} {metric}")
    ax.set_xlabel(x)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
