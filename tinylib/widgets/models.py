"""Which model a notebook generates from or studies: chosen by name, with one fallback order written once.

`open_model(choice)` takes "reference" (the small model the project ships), "induction" (the shipped 2-layer
model with induction heads, notebook 08), "stories260K" (llama2.c's real
TinyStories model in ../shared), "latest" (the newest checkpoint a training run wrote), "untrained" (random
weights, for checking mechanics), or a checkpoint path. When the choice is not available it walks `fallback`
in order and says in `source` what it picked, so a notebook never switches models silently.
`validation_stories` gives TinyStories text to analyse: ../shared's validation file, else stories decoded from
prepared token files under data/, else stories sampled from the model studied (its `source` says which).

What it leaves to others: checkpoint files (`tinylib.checkpoint`), llama2.c files (`tinylib.interop.llama2c`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylib import checkpoint
from tinylib.config import get_config
from tinylib.data import open_split, read_meta
from tinylib.generate import generate
from tinylib.interop.llama2c import load_llama2c
from tinylib.interop.sentencepiece import SentencePieceTokenizer
from tinylib.model import Transformer
from tinylib.paths import CHECKPOINTS_DIR, DATA_DIR, INDUCTION_DIR, shared_llama2c, shared_tinystories
from tinylib.tokenizer import get_tokenizer

CHOICES = ("reference", "induction", "stories260K", "latest", "untrained")


@dataclass
class StoryModel:
    """A model, its tokenizer, and where they came from (shown to the learner)."""

    model: Any
    tokenizer: Any
    source: str
    name: str  # the choice that was loaded: one of CHOICES, or "checkpoint" for a path


def _latest(checkpoints_dir: Path) -> Path | None:
    shipped = {p.resolve() for p in (checkpoint.find_reference_checkpoint(), INDUCTION_DIR) if p is not None}
    found = [p for p in checkpoint.list_checkpoints(checkpoints_dir) if p.resolve() not in shipped]
    return found[0] if found else None


def _try_open(choice: str, checkpoints_dir: Path, device: str) -> StoryModel | None:
    """The model `choice` names, or None when it is not on this machine."""
    if choice == "reference":
        path = checkpoint.find_reference_checkpoint()
        if path is None:
            return None
        return StoryModel(checkpoint.load_model(path, device=device), checkpoint.load_tokenizer(path),
                          f"reference checkpoint {path}", "reference")
    if choice == "induction":
        if not (INDUCTION_DIR / "model.safetensors").is_file():
            return None
        return StoryModel(checkpoint.load_model(INDUCTION_DIR, device=device),
                          checkpoint.load_tokenizer(INDUCTION_DIR), f"induction checkpoint {INDUCTION_DIR}",
                          "induction")
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


class Stories(list):
    """Story texts, with `source` saying where they came from (real validation text, or not)."""

    def __init__(self, stories: Sequence[str], source: str):
        super().__init__(stories)
        self.source = source


def validation_stories(n: int | None = None, tokenizer: Any = None, model: Any = None, *,
                       data_dir: str | os.PathLike = DATA_DIR, seed: int = 0) -> Stories:
    """`n` TinyStories validation stories (all there are when n is None), for analyses on real text.

    From the first source that exists here, named in the result's `source`:
    1. ../shared's `TinyStories-valid.first1000.hf.txt` (or $TINYLIB_SHARED's);
    2. the `val.bin` of a prepared `data/tinystories-*` folder whose tokenizer loads, decoded back to text
       (a folder tokenized with `tokenizer` first);
    3. stories sampled from `model` with `tokenizer` (the model's own idea of a story: fine for the
       mechanics of an analysis, but not real data; n defaults to 50).
    Raises FileNotFoundError, saying what to provide, when none applies.
    """
    path = shared_tinystories() / "TinyStories-valid.first1000.hf.txt"
    if path.is_file():
        stories = [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>")]
        stories = [s for s in stories if s]
        return Stories(stories[:n] if n is not None else stories, f"TinyStories validation text ({path})")
    decoded = _stories_from_token_files(Path(data_dir), n, tokenizer)
    if decoded is not None:
        return decoded
    if model is not None and tokenizer is not None:
        return _sampled_stories(model, tokenizer, 50 if n is None else n, seed)
    raise FileNotFoundError(
        f"no validation stories: {path} is missing, no data/tinystories-* folder holds a val.bin, and no "
        "model was given to sample from. Put ../shared beside the repository (or set TINYLIB_SHARED), run "
        "`python -m tinylib.data --tokenizer tinystories-4096 --out data/tinystories-4096`, or pass "
        "tokenizer= and model=")


def _stories_from_token_files(data_dir: Path, n: int | None, tokenizer: Any) -> Stories | None:
    """Stories decoded from the first prepared folder whose tokenizer loads and matches its meta.json."""
    folders = sorted(data_dir.glob("tinystories-*"))
    wanted = getattr(tokenizer, "hash", None)
    folders.sort(key=lambda f: _recorded_hash(f) != wanted)  # the model's own tokenizer first
    for folder in folders:
        try:
            meta = read_meta(folder)
            tok = get_tokenizer(meta["tokenizer"]["name"])
            ids = open_split(folder, "val", tok)
        except (FileNotFoundError, ValueError, KeyError):
            continue
        starts = np.flatnonzero(ids == tok.bos_id).tolist() + [len(ids)]  # each story is [bos] + tokens
        bounds = list(zip(starts, starts[1:]))[:n]  # decode only what was asked for
        stories = [s for s in (tok.decode(ids[a + 1: b]).strip() for a, b in bounds) if s]
        if stories:
            return Stories(stories, f"validation stories decoded from {folder / 'val.bin'} "
                                    f"(../shared's validation text is not here)")
    return None


def _recorded_hash(folder: Path) -> str | None:
    try:
        return read_meta(folder)["tokenizer"].get("hash")
    except (FileNotFoundError, ValueError, KeyError, AttributeError):
        return None


def _sampled_stories(model: Any, tokenizer: Any, n: int, seed: int) -> Stories:
    """n stories the model writes from BOS (one batch, temperature 1): stand-ins for real text."""
    max_new = min(256, model.cfg.max_seq_len - 1)
    results = generate(model, tokenizer, [""] * n, seed=seed, max_new_tokens=max_new)
    stories = [r.text.strip() for r in results]
    return Stories([s for s in stories if s], f"{n} stories SAMPLED from the model studied (no validation "
                                              "text here: ../shared and data/tinystories-* are missing)")
