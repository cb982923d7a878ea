"""Which model a name means, loaded as a `LossModel` with its tokenizer, checked before anything is scored.

Names: "stories260K" (llama2.c's model in ../shared, a model nobody here trained), "reference" (the shipped
checkpoint), "induction" (the shipped 2-layer model of notebook 08), "demo" (the newest checkpoints/demo-*),
"unigram" and "bigram" (the floors, fitted on the training stories with the reference's tokenizer), or a path:
a tinylib checkpoint folder, a run folder (best/, then latest/), or a llama2.c .bin with its tok512.model
beside it. An unknown name lists the known ones. A model whose embedding does not match its tokenizer's
vocabulary is refused here, before any item is scored.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tinylib import checkpoint
from tinylib.evals.data import load_training_stories
from tinylib.evals.floors import NGramLossModel
from tinylib.evals.scoring import NetworkLossModel
from tinylib.interop.llama2c import load_llama2c
from tinylib.interop.sentencepiece import SentencePieceTokenizer
from tinylib.paths import CHECKPOINTS_DIR, INDUCTION_DIR, REFERENCE_DIR, shared_llama2c
from tinylib.tokenizer import get_tokenizer

NAMES = ("stories260K", "reference", "induction", "demo", "unigram", "bigram")
FLOOR_TOKENIZER = "tinystories-4096"  # the reference's, so the floors are its baselines token for token
PAD_MULTIPLE = 256  # training rounds the embedding up to a multiple of vocab_multiple (64 by default)


class VocabMismatchError(ValueError):
    """The model's embedding and its tokenizer disagree: every score would be meaningless."""


def check_vocab(model_vocab: int, tokenizer, what: str) -> None:
    """Refuse a model whose embedding cannot be the one trained with `tokenizer`: fewer rows than the
    tokenizer has ids (an id would index past it), or more than rounding up to a multiple would add."""
    tv = tokenizer.vocab_size
    if not tv <= model_vocab <= math.ceil(tv / PAD_MULTIPLE) * PAD_MULTIPLE:
        raise VocabMismatchError(
            f"{what}: the model has {model_vocab} token ids but its tokenizer {tokenizer.name!r} has {tv}: "
            "they were not trained together, so its scores would be meaningless. Nothing was scored. Pass "
            "the tokenizer it was trained with (config.json's 'tokenizer'), or the model that goes with it")


def demo_checkpoint(root: Path = CHECKPOINTS_DIR) -> Path | None:
    """The newest checkpoints/demo-* run that holds a checkpoint."""
    found = []
    for run in sorted(root.glob("demo-*")):
        try:
            found.append(checkpoint.resolve(run))
        except FileNotFoundError:
            continue
    return max(found, key=lambda p: (p / "model.safetensors").stat().st_mtime) if found else None


def available() -> list[str]:
    """The names that load on this machine."""
    out = []
    if (shared_llama2c() / "stories260K.bin").is_file():
        out.append("stories260K")
    if (REFERENCE_DIR / "model.safetensors").is_file():
        out.append("reference")
    if (INDUCTION_DIR / "model.safetensors").is_file():
        out.append("induction")
    if demo_checkpoint() is not None:
        out.append("demo")
    if load_training_stories()[0]:
        out += ["unigram", "bigram"]
    return out


def _from_checkpoint(folder: Path, name: str, tokenizer=None) -> NetworkLossModel:
    model = checkpoint.load_model(folder)
    tokenizer = tokenizer if tokenizer is not None else checkpoint.load_tokenizer(folder)
    check_vocab(model.cfg.vocab_size, tokenizer, f"{name} ({folder})")
    lm = NetworkLossModel(model, tokenizer, name)
    lm.source, lm.meta = str(folder), checkpoint.load_meta(folder)  # meta: is it instruction-tuned?
    return lm


def _from_llama2c(path: Path, name: str, tokenizer=None) -> NetworkLossModel:
    if tokenizer is None:
        tok_path = path.parent / "tok512.model"
        if not tok_path.is_file():
            raise FileNotFoundError(f"{path} is a llama2.c model but no tok512.model is beside it: pass its "
                                    "tokenizer (tokenizer=SentencePieceTokenizer(path))")
        tokenizer = SentencePieceTokenizer(tok_path)
    model = load_llama2c(path)
    check_vocab(model.cfg.vocab_size, tokenizer, f"{name} ({path})")
    lm = NetworkLossModel(model, tokenizer, name)
    lm.source = f"llama2.c {path}"
    return lm


def run_folder(name: str | os.PathLike) -> Path | None:
    """The training run folder a model path belongs to (where the experiments tracker looks for its
    `evals.json`), or None for a named or llama2.c model."""
    path = Path(name)
    if str(name) in NAMES or path.suffix == ".bin" or not path.exists():
        return None
    folder = checkpoint.resolve(path)
    return folder.parent if folder.name in ("best", "latest") else folder


def _run_name(folder: Path) -> str:
    return folder.parent.name if folder.name in ("best", "latest") else folder.name


def load_loss_model(name: str | os.PathLike, tokenizer=None):
    """The LossModel `name` means (see the module docstring). `tokenizer` overrides the recorded one (the
    vocabulary check still applies)."""
    key = str(name)
    if key in ("unigram", "bigram"):
        stories, why = load_training_stories()
        if not stories:
            raise FileNotFoundError(f"the {key} floor is fitted on the training stories: {why}")
        tok = get_tokenizer(tokenizer or FLOOR_TOKENIZER)
        lm = NGramLossModel(1 if key == "unigram" else 2, tok, stories)
        lm.source = f"{key} fitted on {len(stories)} training stories ({lm.n_tokens:,} {tok.name} tokens)"
        return lm
    if key == "stories260K":
        path = shared_llama2c() / "stories260K.bin"
        if not path.is_file():
            raise FileNotFoundError(f"stories260K: {path} not found (put ../shared beside the repository)")
        return _from_llama2c(path, key, tokenizer)
    if key in ("reference", "induction"):
        folder = REFERENCE_DIR if key == "reference" else INDUCTION_DIR
        return _from_checkpoint(checkpoint.resolve(folder), key, tokenizer)
    if key == "demo":
        folder = demo_checkpoint()
        if folder is None:
            raise FileNotFoundError("no checkpoints/demo-* run here: train one with `make demo`")
        return _from_checkpoint(folder, f"demo ({_run_name(folder)})", tokenizer)
    path = Path(name)
    if path.suffix == ".bin" and path.is_file():
        return _from_llama2c(path, path.stem, tokenizer)
    if path.exists():
        folder = checkpoint.resolve(path)
        return _from_checkpoint(folder, _run_name(folder), tokenizer)
    raise ValueError(f"unknown model {key!r}: use one of {list(NAMES)} (available here: {available()}), or "
                     "the path of a checkpoint folder, a run folder or a llama2.c .bin")
