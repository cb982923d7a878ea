"""Checkpoint folders that stay trustworthy on disk: checksums, a kept history, and disk-full errors.

Every checkpoint folder carries `checksums.json` (size and SHA-256 of its weights and state files), so a
truncated or bit-flipped file is found before a byte of it is loaded. A replaced `latest/` moves to
`<run>/previous/latest-step<N>/` (the newest `keep_previous` stay), so a damaged checkpoint has an intact one
to fall back to. A write that runs out of space raises `DiskFullError` naming the folder and the bytes it
needed. What it leaves to others: what goes into a checkpoint and how to load it (`tinylib.checkpoint`),
when to save (`tinylib.train`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

MANIFEST = "checksums.json"
HISTORY = "previous"  # <run>/previous/latest-step<N>: the checkpoints that latest/ replaced
DAMAGED = "damaged"  # <run>/damaged/: checkpoints a resume passed over, kept for inspection, never used again


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, what is wrong and what to use instead."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint that does not fit this run (model, tokenizer, data): older ones would not either."""


class DiskFullError(OSError):
    """The filesystem could not hold a checkpoint; nothing was left half-written."""


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size and SHA-256 of the binary files in `folder` (written last, before the folder is renamed).

    config.json is left out: people edit it by hand, and it is checked by parsing it instead."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.iterdir())
             if p.name != "config.json"}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def damage(folder: str | Path, only: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with a checkpoint's files (or the `only` ones): missing, cut short, changed; or None.

    Checkpoints written before checksums existed (no checksums.json) pass when their weights file is there.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None if (folder / "model.safetensors").is_file() else "model.safetensors is missing"
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name, want in files.items():
        if only is not None and name not in only:
            continue
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        try:
            size, digest = file.stat().st_size, sha256(file)
        except OSError as e:  # e.g. moved away by another rank
            return f"{name} is unreadable ({e})"
        if size != want["bytes"]:
            return f"{name} has {size:,} bytes where {want['bytes']:,} were written (cut off)"
        if digest != want["sha256"]:
            return (f"{name} does not match the SHA-256 recorded when it was written (its bytes changed "
                    "since: a bit flip, a partial copy or an edit)")
    return None


def step_of(folder: Path) -> int | None:
    """The training step a checkpoint folder was saved at, from its config.json (None if unreadable)."""
    try:
        return int(json.loads((folder / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def history(folder: Path) -> list[Path]:
    """The earlier versions of checkpoint `folder` kept in <run>/previous/, newest first."""
    kept = (folder.parent / HISTORY).glob(f"{folder.name}-step*")
    return sorted(kept, key=lambda p: int(p.name.rsplit("step", 1)[1]), reverse=True)


def swap_in(tmp: Path, folder: Path, step: int | None, keep_previous: int) -> None:
    """Rename the finished `tmp` to `folder`; the folder it replaces goes to previous/ (or away), and the
    history is cut to `keep_previous`. A crash between the two renames leaves the old one in previous/."""
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        old_step = step_of(folder)
        if keep_previous > 0 and old_step is not None and old_step != step:
            old = folder.parent / HISTORY / f"{folder.name}-step{old_step}"
            old.parent.mkdir(exist_ok=True)
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(folder.with_name(f".{folder.name}.old"), ignore_errors=True)
    for stale in history(folder)[keep_previous:]:
        shutil.rmtree(stale, ignore_errors=True)


def quarantine(folder: Path) -> Path:
    """Move a damaged checkpoint to <run>/damaged/, out of the way of resuming and of the kept history."""
    run = folder.parent.parent if folder.parent.name == HISTORY else folder.parent
    dest = run / DAMAGED / f"{folder.name}-step{step_of(folder)}-{time.strftime('%Y%m%dT%H%M%S')}"
    dest.parent.mkdir(exist_ok=True)
    folder.rename(dest)
    return dest


def alternatives(folder: Path, resumable: bool = False) -> str:
    """'Use X instead' for a damaged checkpoint: the intact (resumable) checkpoints beside it in its run."""
    run = folder.parent.parent if folder.parent.name == HISTORY else folder.parent
    near = [run / "latest", *([] if resumable else [run / "best"]), *history(run / "latest")]
    need = "state.pt" if resumable else "model.safetensors"
    ok = [p for p in near if p != folder and (p / need).is_file() and damage(p) is None]
    if not ok:
        return "No other intact checkpoint is in this run: train again or restore the folder from a copy"
    return f"Use {ok[0]} instead" + (f" (or {', '.join(map(str, ok[1:]))})" if ok[1:] else "")


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in nested dicts/lists: what a checkpoint of them will take on disk, nearly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def is_disk_full(e: BaseException) -> bool:
    # torch.save reports ENOSPC as "[enforce fail at inline_container.cc] unexpected pos ..." or "file write
    # failed"; Python and safetensors as an OSError
    text = str(e)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        m in text for m in ("No space left", "unexpected pos", "file write failed"))


def disk_full(folder: Path, need: int) -> DiskFullError:
    free = shutil.disk_usage(folder.parent).free
    return DiskFullError(
        f"disk full: checkpoint {folder} needs about {need:,} bytes ({need / 2**20:.1f} MiB) but its "
        f"filesystem has {free:,} bytes free; nothing was written (the files already there are intact). "
        "Free some space or choose another --out-dir, then resume with --resume")
