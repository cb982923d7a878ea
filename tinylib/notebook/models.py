"""Which model a notebook generates from or studies: chosen by name, with one fallback order written once.

`open_model(choice)` takes "reference" (the small model the project ships), "stories260K" (llama2.c's real
TinyStories model in ../shared), "latest" (the newest checkpoint a training run wrote), "untrained" (random
weights, for checking mechanics), or a checkpoint path. When the choice is not available it walks `fallback`
in order and says in `source` what it picked, so a notebook never switches models silently.
`validation_stories` gives real TinyStories text to analyse.

What it leaves to others: checkpoint files (`tinylib.checkpoint`), llama2.c files (`tinylib.interop.llama2c`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinylib import checkpoint
from tinylib.config import get_config
from tinylib.interop.llama2c import load_llama2c
from tinylib.interop.sentencepiece import SentencePieceTokenizer
from tinylib.model import Transformer
from tinylib.paths import CHECKPOINTS_DIR, shared_llama2c, shared_tinystories
from tinylib.tokenizer import get_tokenizer

CHOICES = ("reference", "stories260K", "latest", "untrained")


@dataclass
class StoryModel:
    """A model, its tokenizer, and where they came from (shown to the learner)."""

    model: Any
    tokenizer: Any
    source: str
    name: str  # the choice that was loaded: one of CHOICES, or "checkpoint" for a path


def _latest(checkpoints_dir: Path) -> Path | None:
    reference = checkpoint.find_reference_checkpoint()
    found = [p for p in checkpoint.list_checkpoints(checkpoints_dir)
             if reference is None or p.resolve() != reference.resolve()]
    return found[0] if found else None


def _try_open(choice: str, checkpoints_dir: Path, device: str) -> StoryModel | None:
    """The model `choice` names, or None when it is not on this machine."""
    if choice == "reference":
        path = checkpoint.find_reference_checkpoint()
        if path is None:
            return None
        return StoryModel(checkpoint.load_model(path, device=device), checkpoint.load_tokenizer(path),
                          f"reference checkpoint {path}", "reference")
    if choice == "stories260K":
        folder = shared_llama2c()
        if not ((folder / "stories260K.bin").is_file() and (folder / "tok512.model").is_file()):
            return None
        return StoryModel(load_llama2c(folder / "stories260K.bin", device=device),
                          SentencePieceTokenizer(folder / "tok512.model"),
                          f"llama2.c stories260K ({folder})", "stories260K")
    if choice == "latest":
        path = _latest(checkpoints_dir)
        if path is None:
            return None
        return StoryModel(checkpoint.load_model(path, device=device), checkpoint.load_tokenizer(path),
                          f"checkpoint {path}", "latest")
    if choice == "untrained":
        tok = get_tokenizer("tinystories-512")
        torch.manual_seed(0)
        model = Transformer(get_config("tiny", vocab_size=tok.vocab_size)).to(device).eval()
        return StoryModel(model, tok, "an UNTRAINED tiny model (random weights: expect gibberish); "
                                      "train one with `make demo`", "untrained")
    path = Path(choice)
    if not path.exists():
        raise ValueError(f"unknown model {choice!r}: use one of {list(CHOICES)} or the path of a checkpoint")
    return StoryModel(checkpoint.load_model(path, device=device), checkpoint.load_tokenizer(path),
                      f"checkpoint {path}", "checkpoint")


def open_model(choice: str | os.PathLike = "reference", *,
               fallback: Sequence[str] = ("reference", "stories260K"),
               checkpoints_dir: str | os.PathLike = CHECKPOINTS_DIR, device: str = "cpu") -> StoryModel:
    """The model `choice` names, else the first of `fallback` that exists here (see the module docstring).

    Raises FileNotFoundError, saying how to get one, when none of them is available.
    """
    tried = [str(choice)] + [c for c in fallback if c != str(choice)]
    for name in tried:
        found = _try_open(name, Path(checkpoints_dir), device)
        if found is not None:
            if name != str(choice):
                found.source += f" (asked for {choice!r}, which is not available here)"
            return found
    raise FileNotFoundError(f"no model found: tried {tried}. Train one with `make demo`, put ../shared (with "
                            f"models/llama2c/stories260K.bin) beside the repository, or ask for 'untrained'")


def validation_stories(n: int | None = None) -> list[str]:
    """TinyStories validation stories from ../shared (the first 1,000), for analyses on real text."""
    path = shared_tinystories() / "TinyStories-valid.first1000.hf.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: put ../shared beside the repository or set TINYLIB_SHARED"
        )
    stories = [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>")]
    stories = [s for s in stories if s]
    return stories[:n] if n is not None else stories
