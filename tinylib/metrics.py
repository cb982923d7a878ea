"""Where a run's records go: one JSON object per line in `<run>/metrics.jsonl`, read back and plotted, and
the same records to an external tracker (TensorBoard, trackio, Weights & Biases) when asked.

The trainer appends; notebooks, the budget module and the experiment results read. Plotting takes the data
read here; the plot that redraws while a notebook trains is `tinylib.widgets.live.LivePlot`.

`metrics.jsonl` stays the source of truth; a tracker is a second view, for its dashboards. The trainer
opens one on rank 0 when `TrainConfig.log_to` names it (`--log-to tensorboard`). Which tracker run a folder
logs to is saved in `<run>/tracker.json`, so a resumed run continues the same tracker run: TensorBoard writes
into `<run>/tensorboard/` again and hides what the interrupted run logged after the resumed step (purge_step);
W&B resumes its run id; trackio its run name. A new (not resumed) run in the folder starts a new tracker run.
Each tracker is an optional extra, imported only when asked: `pip install -e '.[tensorboard]'` (also in
`dev`), `'.[trackio]'`, `'.[wandb]'`. What it leaves to others: what is logged and when (`tinylib.train`).
"""

from __future__ import annotations

import atexit
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tinylib.paths import write_atomic

TRACKERS = ("tensorboard", "trackio", "wandb")
PROJECT = "tinylib"  # the W&B / trackio project; $TINYLIB_TRACKER_PROJECT overrides it


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
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a run folder's metrics.jsonl (or of the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}: train a run first (python -m tinylib.train ...)")
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if any(rest.strip() for rest in lines[i:]):  # damage inside the log is not a torn write: say so
                raise ValueError(f"{path}:{i}: not a JSON record ({e}); repair or delete that line") from None
            # a crash or a full disk mid-write leaves a torn last line: it held one record, the rest is sound
            warnings.warn(f"{path}:{i}: dropped a torn last line (a write cut off by a crash or a full "
                          f"disk): {line[:60]!r}", stacklevel=2)
    return records


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


# --- external trackers -------------------------------------------------------------------------------------


class Tracker(Protocol):
    kind: str
    run_id: str

    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a metrics record, without its step (which trackers take separately)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _missing(kind: str, e: ImportError) -> ImportError:
    return ImportError(f"--log-to {kind} needs the {kind} package ({e}): pip install -e '.[{kind}]'")


class TensorBoardTracker:
    kind = "tensorboard"

    def __init__(self, run_dir: Path, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra: needs the tensorboard package
        except ImportError as e:
            raise _missing(self.kind, e) from None
        self.run_id = str(run_dir / "tensorboard")
        # purge_step hides the events at and after it: what an interrupted run logged after its save (a new
        # run at step 0: everything an earlier run in this folder logged)
        self.writer = SummaryWriter(self.run_id, purge_step=resume_step + 1 if resume_step else 0)

    def log(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()  # one small write per record: a crash loses nothing the JSONL has

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    kind = "wandb"

    def __init__(self, run_dir: Path, resume_step: int, run_id: str | None, config: dict):
        try:
            import wandb  # optional extra: only when --log-to wandb
        except ImportError as e:
            raise _missing(self.kind, e) from None
        # a new run (id None) gets its id from W&B; a resumed one passes the saved id back
        self.run = wandb.init(project=os.environ.get("TINYLIB_TRACKER_PROJECT", PROJECT), name=run_dir.name,
                              id=run_id, resume="allow", dir=str(run_dir), config=config)
        self.run_id = self.run.id

    def log(self, record: dict) -> None:
        # W&B ignores steps it has already seen: a resumed run re-logs its redone steps, which (resume being
        # exact) repeat the same values
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    kind = "trackio"

    def __init__(self, run_dir: Path, resume_step: int, run_id: str | None, config: dict):
        try:
            import trackio  # optional extra: only when --log-to trackio
        except ImportError as e:
            raise _missing(self.kind, e) from None
        self.trackio = trackio
        self.run_id = run_id or f"{run_dir.name}-{os.getpid()}"
        trackio.init(project=os.environ.get("TINYLIB_TRACKER_PROJECT", PROJECT), name=self.run_id,
                     config=config, resume="allow")

    def log(self, record: dict) -> None:
        self.trackio.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.trackio.finish()


def open_tracker(kind: str, run_dir: str | os.PathLike, config: dict, resume_step: int = 0) -> Tracker:
    """Open tracker `kind` for the run in `run_dir`; a resumed run (resume_step > 0) continues the tracker run
    saved in `<run>/tracker.json`, whose id this writes."""
    if kind not in TRACKERS:
        raise ValueError(f"log_to={kind!r}; expected one of {TRACKERS}")
    run_dir = Path(run_dir)
    saved_file = run_dir / "tracker.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
    run_id = saved.get("run_id") if resume_step and saved.get("kind") == kind else None
    if kind == "tensorboard":
        tracker: Tracker = TensorBoardTracker(run_dir, resume_step)
    elif kind == "wandb":
        tracker = WandbTracker(run_dir, resume_step, run_id, config)
    else:
        tracker = TrackioTracker(run_dir, resume_step, run_id, config)
    write_atomic(saved_file, json.dumps({"kind": kind, "run_id": tracker.run_id}).encode())
    return tracker


def tracking_hook(kind: str, run_dir: str | os.PathLike, config: dict, resume_step: int = 0,
                  then: Callable[[dict], None] | None = None) -> Callable[[dict], None]:
    """An `on_record` for the trainer: send each record to tracker `kind`, then to `then`. The tracker is
    flushed at every evaluation and closed when the process exits."""
    tracker = open_tracker(kind, run_dir, config, resume_step)
    atexit.register(tracker.close)

    def hook(record: dict) -> None:
        tracker.log(record)
        if then is not None:
            then(record)

    hook.tracker = tracker  # for tests and notebooks: the open tracker (its run_id, close())
    return hook
