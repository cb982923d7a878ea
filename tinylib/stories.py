"""TinyStories text: where it is, downloading it, and parsing it into stories.

What this module does:
- Finds TinyStories text: a local folder (an argument or $TINYSTORIES_DIR) or the official files of the
  Hugging Face dataset `roneneldan/TinyStories`, downloaded with tinylib.download (progress bar, resume across
  runs, size check, written under a temporary name and renamed when complete).
- Parses stories: split on `<|endoftext|>`, strip, and collapse blank lines so that the official .txt files
  (one newline per paragraph break) and the HF export (two) give the same story text. `iter_stories` streams a
  file of any size; `read_text` + `parse_stories` is the simple whole-file path.
- Checks text files on the way in: missing, empty or not UTF-8 is a clear error naming the file.

What it leaves to others: tokenizing and token files (tinylib.data), batches (tinylib.batches), tokenizers
(tinylib.tokenizer), the HTTP machinery (tinylib.download). It knows text, not token ids.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tinylib.download import SizeMismatchError, hub_download, hub_download_prefix, hub_offline
from tinylib.paths import DATA_DIR

HF_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {
    "V1": {"train": "TinyStories-train.txt", "valid": "TinyStories-valid.txt"},
    "V2": {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"},
}
EOT = "<|endoftext|>"


# ------------------------------------------------------------------------------------------------------------
# Finding and downloading the text


def check_version(version: str) -> str:
    """`version` as a key of TINYSTORIES_FILES ("v1" -> "V1"); a ValueError for anything else."""
    v = str(version).upper()
    if v not in TINYSTORIES_FILES:
        raise ValueError(f"unknown TinyStories version {version!r}: use 'V1' (original) or 'V2' (GPT-4 only)")
    return v


def _find_local(folder: Path, version: str) -> dict[str, Path]:
    """The version's train/valid files in `folder`: the official name, else a file named like it."""
    found: dict[str, Path] = {}
    for split, official in TINYSTORIES_FILES[version].items():
        if (folder / official).is_file():
            found[split] = folder / official
            continue
        candidates = sorted(p for p in folder.glob(f"{Path(official).stem}*.txt") if p.is_file())
        if len(candidates) > 1:
            raise ValueError(
                f"several {version} {split} files in {folder}: {[p.name for p in candidates]}; pass the file "
                f"you want as the source, or keep only one"
            )
        if candidates:
            found[split] = candidates[0]
    return found


def find_tinystories(source: str | os.PathLike | None = None, version: str = "V1") -> dict[str, Path]:
    """Where the TinyStories text is: {"train": path, "valid": path} ("valid" only when there is one).

    `source` may be a folder (official names like TinyStories-train.txt, or names that start like them, e.g.
    TinyStories-train.first2316.txt) or a single .txt file (used as "train"; a validation split is then held
    out). Without `source`, $TINYSTORIES_DIR is used; without that, the files are downloaded (see
    download_tinystories).
    """
    version = check_version(version)
    if source is None and os.environ.get("TINYSTORIES_DIR"):
        source = os.environ["TINYSTORIES_DIR"]
        origin = "TINYSTORIES_DIR"
    else:
        origin = "source"
    if source is None:
        return download_tinystories(version)
    path = Path(source).expanduser()
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise FileNotFoundError(f"TinyStories {origin} {path} does not exist: pass a folder or a .txt file")
    found = _find_local(path, version)
    if "train" not in found:
        names = sorted(p.name for p in path.iterdir())
        official = TINYSTORIES_FILES[version]["train"]
        raise FileNotFoundError(
            f"no TinyStories {version} train file in {path} ({origin}): looked for "
            f"{official} or {Path(official).stem}*.txt; the folder holds {names[:10]}. Pass the right folder "
            f"or version, or "
            f"{'unset TINYSTORIES_DIR' if origin == 'TINYSTORIES_DIR' else 'pass source=None'} to download"
        )
    return found


def _unavailable(version: str, fname: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"TinyStories {version} file {fname} is not available: {reason}. Either point TINYSTORIES_DIR at a "
        f"folder that holds the TinyStories text (e.g. TINYSTORIES_DIR=../shared/data/tinystories) or pass "
        f"source=..., or go online (unset HF_HUB_OFFLINE) so it can be downloaded from the Hugging Face "
        f"dataset {HF_REPO}"
    )


def download_tinystories(
    version: str = "V1",
    dest: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "valid"),
    *,
    source: str | os.PathLike | None = None,
    revision: str = "main",
    endpoint: str | None = None,
    train_bytes: int | None = None,
) -> dict[str, Path]:
    """The official TinyStories files of `version`, as {split: path}.

    With `train_bytes`, the train split is only the file's first `train_bytes` (one HTTP Range request, cut at
    the last story boundary in them), saved as `<train stem>.first<N>MB.txt`: what a 10-minute run needs
    instead of 1.9 GB. The full file stays one call away (`train_bytes=None`).

    A local folder (`source`, else $TINYSTORIES_DIR) that holds them is used instead of the network. Otherwise
    each file is fetched with `tinylib.download.hub_download` into `dest` (default data/tinystories): it
    streams with a progress bar into `<name>.part`, resumes with a Range request after a dropped connection or
    a killed process (while the Hub's file is unchanged), checks the size against the Hub's and renames the
    file into place only when it is complete; a file already there is not fetched again. `endpoint` defaults
    to $HF_ENDPOINT read at call time. Offline ($HF_HUB_OFFLINE) or unreachable with no local copy: one
    FileNotFoundError that names TINYSTORIES_DIR; a size mismatch is a SizeMismatchError (a ValueError).
    """
    version = check_version(version)
    if train_bytes is not None and int(train_bytes) < 1:
        raise ValueError(f"train_bytes={train_bytes}: ask for a positive number of bytes (e.g. 40_000_000 "
                         f"for 40 MB), or None for the whole file")
    bad = [s for s in splits if s not in TINYSTORIES_FILES[version]]
    if bad:
        raise ValueError(f"unknown split(s) {bad}: TinyStories files come as 'train' and 'valid'")
    local = source or os.environ.get("TINYSTORIES_DIR")
    if local and Path(local).is_dir():
        found = _find_local(Path(local), version)
        if all(s in found for s in splits):
            return {s: found[s] for s in splits}
    dest = Path(dest) if dest is not None else DATA_DIR / "tinystories"
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    out: dict[str, Path] = {}
    for split in splits:
        fname = TINYSTORIES_FILES[version][split]
        if split == "train" and train_bytes is not None:
            out[split] = _hub_prefix(fname, dest, int(train_bytes), revision, endpoint, version)
            continue
        target = dest / fname
        if hub_offline():
            # hub_download renames a file into place only once complete, so an existing one is whole.
            if target.is_file():
                out[split] = target
                continue
            raise _unavailable(version, fname, f"HF_HUB_OFFLINE is set and {target} does not exist")
        out[split] = _hub_download(fname, dest, revision, endpoint, version)
    return out


def _hub_prefix(fname: str, dest: Path, n_bytes: int, revision: str, endpoint: str | None,
                version: str) -> Path:
    target = dest / f"{Path(fname).stem}.first{n_bytes / 1e6:g}MB.txt"
    return _hub_download(fname, dest, revision, endpoint, version, prefix=(target, n_bytes))


def _hub_download(fname: str, dest: Path, revision: str, endpoint: str | None, version: str,
                  prefix: tuple[Path, int] | None = None) -> Path:
    try:
        if prefix is not None:
            return hub_download_prefix(HF_REPO, fname, prefix[0], prefix[1], cut_after=EOT.encode(),
                                       repo_type="dataset", revision=revision, endpoint=endpoint)
        return hub_download(HF_REPO, fname, dest, repo_type="dataset", revision=revision, endpoint=endpoint)
    except SizeMismatchError:
        raise
    except Exception as e:  # network, HTTP and offline errors all mean the same thing to the user
        where = endpoint or "huggingface.co"
        raise _unavailable(version, fname, f"download from {where} failed ({type(e).__name__}: {e})") from e


def quick_source(train_bytes: int = 40_000_000, version: str = "V1") -> str:
    """Where a quick run (a notebook, `make demo`) reads TinyStories from: $TINYSTORIES_DIR when it is set,
    else a folder with the validation file and the first `train_bytes` of the train file, downloaded once into
    data/tinystories-first<N>MB. Preparing the full 1.9 GB stays `find_tinystories(None)`'s job."""
    if os.environ.get("TINYSTORIES_DIR"):
        return os.environ["TINYSTORIES_DIR"]
    sample = DATA_DIR / f"tinystories-first{train_bytes / 1e6:g}MB"
    return str(download_tinystories(version, sample, train_bytes=train_bytes)["train"].parent)


# ------------------------------------------------------------------------------------------------------------
# Parsing stories

_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


def normalize_story(raw: str) -> str:
    """Strip a story and keep exactly one newline per paragraph break (the HF export doubles them)."""
    return _BLANK_LINES.sub("\n", raw.replace("\r\n", "\n").strip())


def parse_stories(text: str) -> list[str]:
    """Stories of a TinyStories text: split on `<|endoftext|>`, normalized, empty ones dropped."""
    return [s for raw in text.split(EOT) if (s := normalize_story(raw))]


def check_text_file(path: Path) -> None:
    """A FileNotFoundError or ValueError, naming `path`, when it is missing or empty."""
    if not path.is_file():
        raise FileNotFoundError(f"TinyStories text file {path} not found: check the path or TINYSTORIES_DIR")
    if path.stat().st_size == 0:
        raise ValueError(f"TinyStories text file {path} is empty: re-download it or point at the right file")


def iter_stories(path: str | os.PathLike, block_size: int = 1 << 22) -> Iterator[str]:
    """Stream the normalized stories of a file without reading it all (the V2 train file is 2.2 GB).

    Raises ValueError on invalid UTF-8 (with the byte offset) and FileNotFoundError/ValueError on a missing or
    empty file.
    """
    path = Path(path)
    check_text_file(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buf, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(block_size)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path} is not valid UTF-8 (bad byte near offset {offset + e.start:,}): TinyStories "
                    f"files are UTF-8 text; re-download the file or fix its encoding"
                ) from None
            offset += len(block)
            *parts, buf = buf.split(EOT)
            for raw in parts:
                if story := normalize_story(raw):
                    yield story
            if not block:
                break
    if story := normalize_story(buf):
        yield story


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a TinyStories file, with the same clear errors as iter_stories."""
    path = Path(path)
    check_text_file(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start:,}): re-download the file or fix its "
            f"encoding"
        ) from None


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 4 MB blocks (recorded in meta.json to identify the source text)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
