"""What state a run folder is in: not started, running, interrupted at step N, or done.

Read from the folder alone, so any process can ask (`make list` while another process trains): running means
another process holds one of the folder's locks (`tinylib.faults`: the trainer's `.lock`, the experiment
runner's `experiment.lock`; the OS drops them when their process dies, even on SIGKILL); otherwise the
`latest/` checkpoint's step against its schedule's length says interrupted or done. The probe only reads: it
never creates the folder or rewrites a lock file. What it leaves to others: taking the locks and probing
one (`tinylib.faults`), running (`runner.py` here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tinylib.faults import LOCKS, is_locked


@dataclass
class Status:
    state: str  # "not started", "running", "interrupted" or "done"
    step: int | None = None  # of the latest checkpoint
    total_steps: int | None = None
    damaged: bool = False  # latest/config.json is unreadable

    def __str__(self) -> str:
        of = f" of {self.total_steps}" if self.total_steps else ""
        if self.damaged:
            return "interrupted (latest/ damaged)"
        if self.state == "interrupted":
            return f"interrupted at step {self.step or 0}{of}"
        if self.state == "running":
            return f"running (saved step {self.step}{of})" if self.step else "running"
        return f"done ({self.step} steps)" if self.state == "done" else self.state


def run_status(run_dir: str | os.PathLike, *, holding: bool = False) -> Status:
    """The state of the run in `run_dir`. `holding`: the caller holds the folder's lock, so no other process
    runs it and only the checkpoint decides."""
    run_dir = Path(run_dir)
    latest = run_dir / "latest"
    try:
        meta, damaged = (json.loads((latest / "config.json").read_text())
                         if (latest / "config.json").is_file() else {}), False
    except (ValueError, OSError):  # a damaged config.json: resuming falls back to previous/
        meta, damaged = {}, True
    step, total = meta.get("step"), meta.get("total_steps")
    if not holding and any(is_locked(run_dir / name) for name in LOCKS):
        return Status("running", step, total)
    if damaged:
        return Status("interrupted", None, None, damaged=True)
    if meta and total is not None and step >= total:
        return Status("done", step, total)
    if meta or (run_dir / "metrics.jsonl").is_file():
        return Status("interrupted", step or 0, total)
    return Status("not started")
