"""Everything a run does when things go wrong, in one place a first reading can skip: divergence, stop
signals, a lost DDP rank, and a second run in the same folder.

- `DivergenceGuard` judges each optimizer step before it is applied: a non-finite loss or gradient norm, or a
  loss above `guard_spike` x the median of the last 50 applied steps, is not applied. After `guard_bad_steps`
  such steps in a row the run returns to its newest intact checkpoint that a later step confirmed (a step's
  loss judges the weights the step before it left) with the peak learning rates lowered (each time x
  `guard_lr_factor`: x 0.5, then x 0.25; kept across rollbacks and saved with the checkpoints), at most
  `guard_rollbacks` times, then stops with `DivergenceError`. Under DDP the
  verdict comes from values all-reduced over ranks, so every rank decides the same; the same one collective
  carries the stop request of `StopSignals`, so all ranks stop at the same step.
- `StopSignals` turns SIGINT/SIGTERM (Ctrl-C, a preempted machine) into a request to save and stop at the next
  step boundary; a second signal acts as it did before (stop at once).
- `Watchdog` ends a DDP process that has finished no step for `dist_timeout_s` (a rank that died or hangs),
  with a message, instead of leaving it waiting; `lost_rank` turns a failed collective into a clear error.
- `run_lock`: one run per folder, an exclusive non-blocking `fcntl.flock` on a small file inside it. Two
  trainers writing the same `--out-dir` would interleave their metrics and overwrite each other's checkpoints.
  The lock file records its holder (pid, host, start time) so the second run can say whom it collided with.
  The OS drops a flock when its process dies (even on SIGKILL), so a stale file never blocks a later run.
  Different names are different locks: the trainer holds `TRAINER_LOCK`, the experiment runner
  `EXPERIMENT_LOCK`, both in one process; `is_locked` probes one without taking it (`LOCKS` names them all).

What it leaves to others: the step itself and when to save (`tinylib.train`), checkpoint files
(`tinylib.checkpoint`), the lr factor the guard lowers (`tinylib.optim`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from tinylib.checkpoint import TrainState, history, step_of
from tinylib.config import TrainConfig, UserError
from tinylib.metrics import MetricsLog
from tinylib.optim import peak_lrs, set_peak_lrs


class DivergenceError(UserError, RuntimeError):
    """Training diverged and rolling back did not help (or there was nothing to roll back to)."""


class LostRankError(UserError, RuntimeError):
    """Under DDP, a collective failed or timed out: another process died, was killed or hangs."""


def lost_rank(e: BaseException, rank: int, step: int, run_dir: Path) -> LostRankError | None:
    """A clear error for a collective that failed because a peer is gone (None for any other error)."""
    text = str(e).strip()
    first = text.splitlines()[0].split(". This is typically")[0][:240] if text else type(e).__name__
    if not any(m in text for m in ("gloo", "NCCL", "onnection", "imed out", "Timeout")):
        return None
    return LostRankError(
        f"rank {rank}: lost contact with another training process at step {step + 1} (it died, was killed or "
        f"hangs): {first}. The checkpoints in {run_dir} are intact: once every process "
        "has stopped, run the same command with --resume")


class DivergenceGuard:
    """Decides whether each step is applied, and when the run rolls back or stops (see the module doc)."""

    def __init__(self, cfg: TrainConfig, world: int = 1, signals: StopSignals | None = None):
        self.cfg, self.world, self.signals = cfg, world, signals or StopSignals()
        self.recent: deque[float] = deque(maxlen=50)  # losses of the last applied steps
        self.nan_at = set(cfg.nan_at_steps)  # fault injection: these steps' loss is NaN until a rollback past
        self.bad_in_row = 0
        self.rollbacks = 0
        # Weights are confirmed by the step after them: a step's loss is computed on the weights the step
        # before left, so an update that wrecks the weights is applied and shows only in the next loss. A
        # rollback goes to a checkpoint no later than the newest confirmed step, never to the wrecked weights.
        self.confirmed = 0
        # An update can wreck the weights and leave a finite, unremarkable loss (a model that predicts the
        # uniform distribution scores ln(vocab)): the weights' norm is watched too. `pending` is the norm of
        # the weights the last step left (on the device, read with the next verdict), `norm` the last read.
        self.pending: torch.Tensor | None = None
        self.norm: float | None = None
        self.wrecked = False  # the last refusal was for wrecked weights, not for a loss
        self.reason = ""
        self.loss = math.nan  # the last step's loss, averaged over ranks
        self.stop_requested = False

    def accept(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """Whether step `step` (loss and clipped gradient norm, on the device) is applied. Syncs once."""
        if step in self.nan_at:
            loss = loss * math.nan
        gn = grad_norm if grad_norm is not None else torch.zeros_like(loss)
        stop = torch.tensor(float(self.signals.received is not None), device=loss.device)
        wn = self.pending if self.pending is not None else torch.full_like(loss, math.nan)
        vals = torch.stack([loss.float(), gn.float(), stop, wn.float().to(loss.device)])
        if self.world > 1:
            dist.all_reduce(vals)  # a sum: NaN anywhere is NaN everywhere, and any rank's stop stops all
        loss_v, gn_v, stop_v, wn_v = vals.tolist()
        self.loss, self.stop_requested = loss_v / self.world, self.stop_requested or stop_v > 0
        median = statistics.median(self.recent) if self.recent else math.inf
        wn_v /= self.world  # the same weights on every rank
        growth = self.cfg.guard_weight_growth
        if growth and self.norm is not None and not wn_v <= growth * self.norm:
            self.reason = (f"the weights' norm went from {self.norm:.4g} to {wn_v:.4g} in step {step - 1} "
                           f"(more than x {growth:g}): that update wrecked them, retrying cannot mend them")
            self.bad_in_row, self.wrecked = max(1, self.cfg.guard_bad_steps), True  # roll back at once
            self.confirmed = min(self.confirmed, step - 2)
            return False
        if self.pending is not None:
            self.norm = wn_v
        self.wrecked = False
        if not (math.isfinite(self.loss) and math.isfinite(gn_v)):
            self.reason = f"loss {self.loss}, gradient norm {gn_v / self.world:.4g}"
        elif self.cfg.guard_spike and self.loss > self.cfg.guard_spike * median:
            self.reason = (f"loss {self.loss:.4g} > {self.cfg.guard_spike:g} x {median:.4g}, the median of "
                           f"the last {len(self.recent)} steps")
        else:
            self.recent.append(self.loss)
            self.bad_in_row = 0
            self.confirmed = step - 1  # this loss came from the weights of step - 1
            return True
        self.bad_in_row += 1
        return False

    def watch(self, model: torch.nn.Module) -> None:
        """Note the norm of `model`'s weights (no sync: it is read with the next step's verdict)."""
        self.pending = torch.nn.utils.get_total_norm([p.detach() for p in model.parameters()])

    def must_roll_back(self) -> bool:
        return self.bad_in_row >= max(1, self.cfg.guard_bad_steps)

    def roll_back(self, state: TrainState, run_dir: Path, tokenizer: str, log: MetricsLog | None) -> str:
        """Go back to the newest intact checkpoint that a later step confirmed, with every peak lr x
        guard_lr_factor (DivergenceError if it can't). The lowered peaks are taken before the optimizer state
        is restored and written after it, so they keep falling (x 0.5, then x 0.25); they are saved with the
        next checkpoints (the optimizer's param groups), so a resumed run keeps them."""
        what = f"training diverged at step {state.step + 1}: " + (
            self.reason if self.wrecked else
            f"{self.bad_in_row} steps in a row were not applied (last: {self.reason})")
        peaks, failed = peak_lrs(state.optimizer), state.step + 1
        advice = (f"Lower the learning rate (peak lr now {_lrs(peaks)}) or lengthen the warmup, then start "
                  "again")
        if self.rollbacks >= self.cfg.guard_rollbacks:
            raise DivergenceError(f"{what}, after {self.rollbacks} rollback(s) with lower learning rates. "
                                  f"{advice}; {_confirmed(run_dir, self.confirmed)}.")
        folder, _ = state.resume(run_dir, tokenizer, at_most=self.confirmed)
        if folder is None:
            raise DivergenceError(f"{what}; there is no checkpoint to roll back to yet (none at or before "
                                  f"step {self.confirmed}, the last whose weights a later step confirmed). "
                                  f"{advice}.")
        lowered = [lr * self.cfg.guard_lr_factor for lr in peaks]
        set_peak_lrs(state.optimizer, lowered)
        self.rollbacks += 1
        self.confirmed = state.step
        self.nan_at = {s for s in self.nan_at if s > failed}  # an injected fault is transient: once only
        if log:  # the steps after the checkpoint are taken again
            log.truncate_after(state.step)
        self.bad_in_row = 0
        self.recent.clear()
        self.pending = self.norm = None  # the restored weights are watched afresh
        return (f"{what}; rolled back to {folder} (step {state.step}) with the peak lr x "
                f"{self.cfg.guard_lr_factor:g}: {_lrs(peaks)} -> {_lrs(lowered)} (rollback {self.rollbacks} "
                f"of {self.cfg.guard_rollbacks})")


def _lrs(lrs: list[float]) -> str:
    return ", ".join(f"{lr:.3g}" for lr in dict.fromkeys(lrs))


def _confirmed(run_dir: Path, step: int) -> str:
    """Where the last good weights are: the newest checkpoint of a confirmed step."""
    latest = run_dir / "latest"
    for folder in [latest, *history(latest)]:
        if folder.exists() and (s := step_of(folder)) is not None and s <= step:
            return f"{folder} holds the last good weights (step {s})"
    return f"no checkpoint in {run_dir} is of a confirmed step (<= {step})"


class StopSignals:
    """While active (main thread only), SIGINT and SIGTERM set `received` instead of stopping the process."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # a signal ignored by the parent stays so
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
                         if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name
        self.__exit__()  # a second signal acts as before
        print(f"\n{self.received} received: saving a checkpoint at the end of this step (send it again to "
              "stop at once, without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


class Watchdog:
    """A daemon thread that ends the process with a message when `beat()` is not called for timeout_s."""

    def __init__(self, timeout_s: float, what: str):
        self.timeout_s, self.what = timeout_s, what
        self.last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="tinylib-watchdog").start()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def beat(self) -> None:
        self.last = time.monotonic()

    def close(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                print(f"{self.what}: no training step finished for {idle:.0f} s (dist_timeout_s="
                      f"{self.timeout_s:g}): another process died or hangs; ending this one.",
                      file=sys.stderr, flush=True)
                os._exit(3)


# --- one run per folder ------------------------------------------------------------------------------------

TRAINER_LOCK = ".lock"  # held by tinylib.train for the whole run
EXPERIMENT_LOCK = "experiment.lock"  # held by the experiment runner around a run (tinylib.experiments)
LOCKS = (TRAINER_LOCK, EXPERIMENT_LOCK)  # what a status probe checks: any held one means "running"


class RunLockedError(UserError, RuntimeError):
    """Another process holds the folder's lock; the message names the folder, its pid, host and start time."""


def read_holder(path: str | os.PathLike) -> dict:
    """What the lock file says about its (last) holder; {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _locked_message(folder: Path, path: Path) -> str:
    holder = read_holder(path)
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else "an unknown time"
    return (
        f"{folder} is in use by another run (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"started {when}; lock file {path}). Wait for it to finish, stop it, or choose another folder."
    )


@contextmanager
def run_lock(folder: str | os.PathLike, name: str = TRAINER_LOCK) -> Iterator[Path]:
    """Hold an exclusive lock on folder/name (fcntl.flock; the OS releases it when the process dies) ...

    ... for the duration of the block. Raises RunLockedError at once (non-blocking) when another process, or
    another open of the same file, holds it. Yields the lock file's path, into which the holder's pid, host
    and start time are written for the next one's message.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(_locked_message(folder, path)) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(path: str | os.PathLike) -> bool:
    """Whether another open of `path` holds its flock (probed with a shared lock; nothing is written)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# --- a new run never destroys an old one -------------------------------------------------------------------

RUN_MARKS = ("latest", "best", "previous")  # what makes a folder hold a run worth keeping


class RunExistsError(UserError, RuntimeError):
    """A new run was asked to start in a folder that holds an earlier run's checkpoints."""


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds checkpoints of a run (latest/, best/ or previous/)."""
    return any((Path(folder) / m).exists() for m in RUN_MARKS)


def free_run_folder(base: Path, resume: bool) -> Path:
    """The default run folder: `base` for a new run unless it holds one, then `base-2`, `base-3`, ...; with
    resume, the newest of those that holds a run (or `base`)."""
    names = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]
    if resume:
        taken = [p for p in names if holds_run(p)]
        return taken[-1] if taken else base
    return next(p for p in names if not holds_run(p))


def claim_run_folder(folder: Path, *, resume: bool, overwrite: bool) -> str | None:
    """Called under the folder's lock before a run writes anything: a new run in a folder that holds one is
    refused (RunExistsError), or with `overwrite` the old run is moved aside to `<folder>.old-<UTC time>`,
    never deleted. Returns what was done (None: nothing to do)."""
    if resume or not holds_run(folder):
        return None
    if not overwrite:
        found = ", ".join(f"{m}/" + (f" (step {s})" if (s := step_of(folder / m)) is not None else "")
                          for m in RUN_MARKS if (folder / m).exists())
        raise RunExistsError(
            f"{folder} already holds a run ({found}); a new run there would replace it. Continue it with "
            "--resume, choose another --out-dir, or pass --overwrite to move it to "
            f"{folder}.old-<time> and start anew")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = folder.with_name(f"{folder.name}.old-{stamp}")
    for i in range(2, 100):
        if not aside.exists():
            break
        aside = folder.with_name(f"{folder.name}.old-{stamp}-{i}")
    aside.mkdir()
    for entry in folder.iterdir():
        if entry.name not in LOCKS:  # the lock this run holds stays
            entry.rename(aside / entry.name)
    return f"moved the earlier run in {folder} to {aside} (--overwrite)"
