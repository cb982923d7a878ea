"""Where things live: the repository root, its data and checkpoint folders, and `../shared` beside it.

Every other module asks here instead of counting `parents[...]` itself, and writes files through
`write_atomic` (or, streamed, `atomic_writer`), so that a crash never leaves half a file under its final
name. `shared_dir()` reads $TINYLIB_SHARED at call time, so tests and notebooks can point it elsewhere (or at
nothing, to see the offline fallbacks). What it leaves to others: what goes into the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
TOKENIZER_DIR = DATA_DIR / "tokenizers"  # the shipped BPEs (tinystories-512/4096/8192)
CHECKPOINTS_DIR = ROOT / "checkpoints"
REFERENCE_DIR = CHECKPOINTS_DIR / "reference"  # the small model the project ships
INDUCTION_DIR = CHECKPOINTS_DIR / "induction"  # the shipped 2-layer model with induction heads (notebook 08)


def shared_dir() -> Path:
    """`../shared` beside the repository (real TinyStories text, llama2.c models), or $TINYLIB_SHARED."""
    return Path(os.environ.get("TINYLIB_SHARED", ROOT.parent / "shared"))


def shared_tinystories() -> Path:
    return shared_dir() / "data" / "tinystories"


def shared_llama2c() -> Path:
    return shared_dir() / "models" / "llama2c"


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to stream `path` into: written under a temporary name beside it and renamed into place
    when the block ends without an error (removed when it raises). For files too big to hold in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary name beside `path`, then rename it into place: whole or not at all."""
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)
