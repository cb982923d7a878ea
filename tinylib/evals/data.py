"""The TinyStories text the benchmark reads: validation stories (story endings, held out from training) and
training stories (to fit the n-gram floors, and to check that no item was copied from them).

Both come from ../shared (`tinylib.paths.shared_tinystories`); each loader returns (stories, why): `why` is
"" when the text was found and otherwise says what is missing, so callers report it instead of failing.
"""

from __future__ import annotations

from tinylib.paths import shared_tinystories
from tinylib.stories import parse_stories

VALID_FILE = "TinyStories-valid.first1000.hf.txt"
TRAIN_FILE = "TinyStories-train.first2316.txt"


def _load(name: str, what: str) -> tuple[list[str], str]:
    path = shared_tinystories() / name
    if not path.is_file():
        return [], (f"no {what} stories: {path} not found (put ../shared beside the repository or set "
                    "TINYLIB_SHARED)")
    return parse_stories(path.read_text(encoding="utf-8")), ""


def load_validation_stories() -> tuple[list[str], str]:
    return _load(VALID_FILE, "validation")


def load_training_stories() -> tuple[list[str], str]:
    return _load(TRAIN_FILE, "training")
