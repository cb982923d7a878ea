"""karpathy/tinyllamas: Karpathy's llama2.c TinyStories models on the Hugging Face Hub, by name.

What this module does:
- `MODELS` names the four models (stories260K/15M/42M/110M): their files in the repo and published losses.
- `download_llama2c(name)` fetches one (stories260K with its tokenizer) into data/llama2c through
  tinylib.download; offline, an already downloaded copy is used.
- `resolve_llama2c(name_or_path)` turns a model name into a local file, downloading it when needed, and
  leaves an existing path as it is: `load_llama2c(resolve_llama2c("stories15M"))`.
- `find_llama2c_tokenizer(model)` finds the SentencePiece file that goes with a model.

What it leaves to others: the llama2.c file format, reading and writing it (tinylib.interop.llama2c, which
takes paths and never touches the network), SentencePiece tokenizers (tinylib.interop.sentencepiece) and the
HTTP machinery (tinylib.download).
"""

from __future__ import annotations

import os
from pathlib import Path

from tinylib.download import SizeMismatchError, hub_download, hub_offline
from tinylib.interop.llama2c import read_llama2c, read_llama2c_header
from tinylib.interop.sentencepiece import LLAMA2_TOKENIZER_NOTE
from tinylib.paths import DATA_DIR

HF_REPO = "karpathy/tinyllamas"
DOWNLOAD_DIR = DATA_DIR / "llama2c"  # download_llama2c's default dest
# name -> (model file in the repo, tokenizer file in the repo or None, published validation loss)
MODELS: dict[str, tuple[str, str | None, float]] = {
    "stories260K": ("stories260K/stories260K.bin", "stories260K/tok512.model", 1.297),
    "stories15M": ("stories15M.bin", None, 1.072),
    "stories42M": ("stories42M.bin", None, 0.847),
    "stories110M": ("stories110M.bin", None, 0.760),
}


def download_llama2c(name: str, dest: str | os.PathLike | None = None, *, revision: str = "main",
                     endpoint: str | None = None) -> Path:
    """Fetch a llama2.c TinyStories model from the Hugging Face repo karpathy/tinyllamas; return its .bin.

    stories260K also brings its tokenizer (`tok512.model`, beside the .bin); the larger models use the Llama 2
    tokenizer, which that repo does not hold. Files go under `dest` (default data/llama2c, git-ignored),
    keeping the repo's sub-folders, through `tinylib.download.hub_download` (the data module's machinery:
    progress bar, resume across runs, size check, renamed into place when complete). `endpoint` defaults to
    $HF_ENDPOINT read at call time. Offline ($HF_HUB_OFFLINE) an already downloaded copy is returned;
    otherwise the error names the local-path option.
    """
    if name not in MODELS:
        raise ValueError(f"unknown llama2.c model {name!r}; choose one of {sorted(MODELS)}")
    model_file, tok_file, _ = MODELS[name]
    dest = Path(dest) if dest is not None else DOWNLOAD_DIR
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    offline = hub_offline()
    paths = []
    for filename in [model_file] + ([tok_file] if tok_file else []):
        try:
            paths.append(hub_download(HF_REPO, filename, dest, revision=revision, endpoint=endpoint))
        except SizeMismatchError:
            raise
        except Exception as e:  # offline, no network, missing file: all mean the same thing to the user
            reason = ("HF_HUB_OFFLINE is set and there is no downloaded copy" if offline
                      else f"download from {endpoint or 'huggingface.co'} failed")
            raise FileNotFoundError(
                f"llama2.c model file {filename} ({name}) from the Hugging Face repo {HF_REPO} is not "
                f"available: {reason} ({type(e).__name__}: {e}). Load a local copy instead: "
                f"load_llama2c('path/to/{Path(model_file).name}') and SentencePieceTokenizer('path/to/"
                f"{Path(tok_file).name if tok_file else 'tokenizer.model'}') (this workspace has stories260K "
                f"in ../shared/models/llama2c/), or go online (unset HF_HUB_OFFLINE) to download it"
            ) from e
    return paths[0]


def resolve_llama2c(path: str | os.PathLike) -> Path:
    """The local file of `path`, downloading it first when it is a model name from `MODELS` and not a file."""
    p = Path(path)
    if p.exists():
        return p
    if str(path) in MODELS:
        return download_llama2c(str(path))
    raise FileNotFoundError(f"llama2.c model {str(path)!r} not found: give the path of a .bin/.pt file or "
                            f"one of the names {sorted(MODELS)} to download it")


def find_llama2c_tokenizer(model: str | os.PathLike) -> Path:
    """The SentencePiece file that goes with a llama2.c model (a path, or a name from `MODELS`).

    tok512.model for a 512-id vocabulary, the Llama 2 tokenizer.model otherwise, looked for beside the model
    file (or one folder up).
    """
    path = resolve_llama2c(model)
    header, _ = read_llama2c(path) if path.suffix == ".pt" else (read_llama2c_header(path), None)
    name = "tok512.model" if header.vocab_size == 512 else "tokenizer.model"
    for folder in (path.parent, path.parent.parent):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {name} beside {path}: pass the tokenizer's path"
                            + ("" if name == "tok512.model" else f" ({LLAMA2_TOKENIZER_NOTE})"))
