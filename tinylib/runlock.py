"""One run per folder: an exclusive, non-blocking `fcntl.flock` on a small file inside it.

Two trainers writing the same `--out-dir` interleave their metrics and overwrite each other's checkpoints. The
lock file records who holds it (pid, host, start time) so the second run can say whom it collided with. The
OS drops a flock when its process dies (even on SIGKILL), so a stale file never blocks a later run; the file
itself stays and is rewritten by the next holder. Different `name`s are different locks: the trainer holds
`.lock`, the experiment runner `experiment.lock`, both in one process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunLockedError(RuntimeError):
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
def run_lock(folder: str | os.PathLike, name: str = ".lock") -> Iterator[Path]:
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
