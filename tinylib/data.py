"""TinyStories text -> token files -> batches.

What this module does:
- Finds TinyStories text: a local folder (an argument or $TINYSTORIES_DIR) or the official files of the Hugging Face
  dataset `roneneldan/TinyStories`, downloaded with tinylib.download (progress bar, resume across runs, size
  check, written under a temporary name and renamed when complete).
- Parses stories: split on `<|endoftext|>`, strip, and collapse blank lines so that the official .txt files (one
  newline per paragraph break) and the HF export (two) give the same story text.
- Tokenizes in parallel (worker processes, each running tiktoken's batch encoder) and writes `train.bin`,
  `val.bin` and `meta.json`. Nothing half-written remains: files are written under temporary names and renamed
  only when everything succeeded.
- Reads token files back as `np.memmap`, validated against meta.json, and serves batches: `RandomBatches` (random
  windows for training, deterministic per seed/rank/world size/step, resumable) and `sequential_batches` (in-order
  windows for evaluation).

Framing (how stories are laid out in a token file): each story becomes `[bos_id] + tokenizer.encode(story)` and the
stories are concatenated in source order. The boundary token comes first, like GPT-2's `<|endoftext|>` separator
and llama2.c's BOS: a model sees "a new story starts here" and learns to begin stories after it; when generating,
prompting with `[bos_id]` asks for a fresh story. For tiktoken tokenizers bos_id == eos_id == `<|endoftext|>`.

Token ids are stored as uint16 when the vocabulary fits in 65,536 ids, else uint32 (an id above 65,535 written as
uint16 silently wraps; `pack_tokens` refuses to let that happen).

What it leaves to others: models, training loops and losses. It knows files and token ids, not models.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinylib.download import SizeMismatchError, hub_download, hub_offline
from tinylib.paths import DATA_DIR
from tinylib.tokenizer import Tokenizer, get_tokenizer

if TYPE_CHECKING:
    import torch

HF_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {
    "V1": {"train": "TinyStories-train.txt", "valid": "TinyStories-valid.txt"},
    "V2": {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"},
}
EOT = "<|endoftext|>"
META_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------------------
# Finding and downloading the text


def _check_version(version: str) -> str:
    v = str(version).upper()
    if v not in TINYSTORIES_FILES:
        raise ValueError(f"unknown TinyStories version {version!r}: use 'V1' (original) or 'V2' (GPT-4 only)")
    return v


def _find_local(folder: Path, version: str) -> dict[str, Path]:
    """The version's train/valid files in `folder`: the official name, else a file whose name starts like it."""
    found: dict[str, Path] = {}
    for split, official in TINYSTORIES_FILES[version].items():
        if (folder / official).is_file():
            found[split] = folder / official
            continue
        candidates = sorted(p for p in folder.glob(f"{Path(official).stem}*.txt") if p.is_file())
        if len(candidates) > 1:
            raise ValueError(
                f"several {version} {split} files in {folder}: {[p.name for p in candidates]}; pass the file you "
                f"want as the source, or keep only one"
            )
        if candidates:
            found[split] = candidates[0]
    return found


def find_tinystories(source: str | os.PathLike | None = None, version: str = "V1") -> dict[str, Path]:
    """Where the TinyStories text is: {"train": path, "valid": path} ("valid" only when there is one).

    `source` may be a folder (official names like TinyStories-train.txt, or names that start like them, e.g.
    TinyStories-train.first2316.txt) or a single .txt file (used as "train"; a validation split is then held out).
    Without `source`, $TINYSTORIES_DIR is used; without that, the files are downloaded (see download_tinystories).
    """
    version = _check_version(version)
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
        raise FileNotFoundError(
            f"no TinyStories {version} train file in {path} ({origin}): looked for "
            f"{TINYSTORIES_FILES[version]['train']} or {Path(TINYSTORIES_FILES[version]['train']).stem}*.txt; "
            f"the folder holds {names[:10]}. Pass the right folder or version, or "
            f"{'unset TINYSTORIES_DIR' if origin == 'TINYSTORIES_DIR' else 'pass source=None'} to download"
        )
    return found


def _unavailable(version: str, fname: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"TinyStories {version} file {fname} is not available: {reason}. Either point TINYSTORIES_DIR at a folder "
        f"that holds the TinyStories text (e.g. TINYSTORIES_DIR=../shared/data/tinystories) or pass source=..., "
        f"or go online (unset HF_HUB_OFFLINE) so it can be downloaded from the Hugging Face dataset {HF_REPO}"
    )


def download_tinystories(
    version: str = "V1",
    dest: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "valid"),
    *,
    source: str | os.PathLike | None = None,
    revision: str = "main",
    endpoint: str | None = None,
) -> dict[str, Path]:
    """The official TinyStories files of `version`, as {split: path}.

    A local folder (`source`, else $TINYSTORIES_DIR) that holds them is used instead of the network. Otherwise each
    file is fetched with `tinylib.download.hub_download` into `dest` (default data/tinystories): it streams with a
    progress bar into `<name>.part`, resumes with a Range request after a dropped connection or a killed process
    (while the Hub's file is unchanged), checks the size against the Hub's and renames the file into place only
    when it is complete; a file already there is not fetched again. `endpoint` defaults to $HF_ENDPOINT read at
    call time. Offline ($HF_HUB_OFFLINE) or unreachable with no local copy: one FileNotFoundError that names
    TINYSTORIES_DIR; a size mismatch is a SizeMismatchError (a ValueError).
    """
    version = _check_version(version)
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
        target = dest / fname
        if hub_offline():
            # hub_download renames a file into place only once complete, so an existing one is whole.
            if target.is_file():
                out[split] = target
                continue
            raise _unavailable(version, fname, f"HF_HUB_OFFLINE is set and {target} does not exist")
        out[split] = _hub_download(fname, dest, revision, endpoint, version)
    return out


def _hub_download(fname: str, dest: Path, revision: str, endpoint: str | None, version: str) -> Path:
    try:
        return hub_download(HF_REPO, fname, dest, repo_type="dataset", revision=revision, endpoint=endpoint)
    except SizeMismatchError:
        raise
    except Exception as e:  # network, HTTP and offline errors all mean the same thing to the user
        raise _unavailable(version, fname, f"download from {endpoint or 'huggingface.co'} failed ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------------------------
# Parsing stories

_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


def normalize_story(raw: str) -> str:
    """Strip a story and keep exactly one newline per paragraph break (the HF export doubles them)."""
    return _BLANK_LINES.sub("\n", raw.replace("\r\n", "\n").strip())


def parse_stories(text: str) -> list[str]:
    """Stories of a TinyStories text: split on `<|endoftext|>`, normalized, empty ones dropped."""
    return [s for raw in text.split(EOT) if (s := normalize_story(raw))]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"TinyStories text file {path} not found: check the path or TINYSTORIES_DIR")
    if path.stat().st_size == 0:
        raise ValueError(f"TinyStories text file {path} is empty: re-download it or point at the right file")


def iter_stories(path: str | os.PathLike, block_size: int = 1 << 22) -> Iterator[str]:
    """Stream the normalized stories of a file without reading it all into memory (the V2 train file is 2.2 GB).

    Raises ValueError on invalid UTF-8 (with the byte offset) and FileNotFoundError/ValueError on a missing or
    empty file.
    """
    path = Path(path)
    _check_file(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buf, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(block_size)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path} is not valid UTF-8 (bad byte near offset {offset + e.start:,}): TinyStories files are "
                    f"UTF-8 text; re-download the file or fix its encoding"
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
    _check_file(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start:,}): re-download the file or fix its encoding"
        ) from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Tokenizing and writing


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def pack_tokens(id_lists: Iterable[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Concatenate id lists into one array of `token_dtype(vocab_size)`, refusing ids outside the vocabulary."""
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(
            f"token ids span {flat.min()}..{flat.max()} but the vocabulary has {vocab_size} ids: the tokenizer and "
            f"vocab_size disagree"
        )
    return flat.astype(token_dtype(vocab_size))


def frame_stories(tok: Tokenizer, stories: Sequence[str], num_threads: int = 1) -> np.ndarray:
    """The framed token array of `stories`: each is `[bos_id] + encode(story)` (see the module docstring)."""
    return pack_tokens(tok.encode_batch(list(stories), bos=True, num_threads=num_threads), tok.vocab_size)


_WORKER_TOK: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _WORKER_TOK
    _WORKER_TOK = tok


def _encode_chunk(split: str, stories: list[str], tok: Tokenizer | None = None) -> tuple[str, np.ndarray, int, int]:
    tok = tok or _WORKER_TOK
    arr = frame_stories(tok, stories)
    return split, arr, len(stories), sum(len(s.encode("utf-8")) for s in stories)


def _encoded_in_order(chunks: Iterable[tuple[str, list[str]]], tok: Tokenizer, num_proc: int) -> Iterator[tuple]:
    """Encode chunks in worker processes, yielding results in input order with a bounded number in flight."""
    if num_proc <= 1:
        for split, stories in chunks:
            yield _encode_chunk(split, stories, tok)
        return
    # spawn, not fork: the parent may hold threads (torch, tiktoken) that a forked child would inherit half-locked.
    ctx = mp.get_context("spawn")
    ex = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(tok,))
    try:
        pending: deque = deque()
        for split, stories in chunks:
            pending.append(ex.submit(_encode_chunk, split, stories))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _chunked(stories: Iterable[tuple[str, str]], max_bytes: int = 1 << 20) -> Iterator[tuple[str, list[str]]]:
    """Group (split, story) pairs into per-split chunks of about `max_bytes` of text, keeping order per split."""
    bufs: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for split, story in stories:
        bufs.setdefault(split, []).append(story)
        sizes[split] = sizes.get(split, 0) + len(story)
        if sizes[split] >= max_bytes:
            yield split, bufs.pop(split)
            sizes[split] = 0
    for split, buf in bufs.items():
        if buf:
            yield split, buf


def _holdout(stories: Iterable[str], val_fraction: float) -> Iterator[tuple[str, str]]:
    """Deterministic held-out split: story i is "val" when ceil((i+1)f) > ceil(i f), i.e. story 0 and then every
    1/f-th story; exactly ceil(n f) of n stories, spread evenly over the file, no randomness to seed."""
    f = Fraction(val_fraction).limit_denominator(1_000_000)
    for i, story in enumerate(stories):
        yield ("val" if -((-(i + 1) * f) // 1) > -((-i * f) // 1) else "train"), story


def default_num_proc() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def prepare_dataset(
    source: str | os.PathLike | None,
    tokenizer: str | os.PathLike | Tokenizer,
    out_dir: str | os.PathLike,
    *,
    version: str = "V1",
    val_fraction: float = 0.01,
    num_proc: int | None = None,
    max_stories: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize TinyStories into `out_dir`/{train.bin, val.bin, meta.json}; returns the meta dict.

    source: folder or file (see find_tinystories); None uses $TINYSTORIES_DIR or downloads.
    The train file feeds "train" and the valid file "val"; with no valid file, `val_fraction` of the stories is held
    out deterministically. `max_stories` caps the stories read from each source file (quick runs, tests).
    `num_proc` worker processes (default: all cores) tokenize ~1 MB chunks with tiktoken's batch encoder.
    """
    from tqdm.auto import tqdm

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
    version = _check_version(version)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.01)")
    if max_stories is not None and max_stories < 1:
        raise ValueError(f"max_stories={max_stories} must be a positive number of stories (or None for all)")
    files = find_tinystories(source, version)
    for p in files.values():
        _check_file(p)
    plan = [(files["train"], "train"), (files["valid"], "val")] if "valid" in files else [(files["train"], "holdout")]
    num_proc = default_num_proc() if num_proc is None else max(1, int(num_proc))
    dtype = token_dtype(tok.vocab_size)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = {"train": out_dir / "train.bin", "val": out_dir / "val.bin"}
    tmp = {k: out_dir / f".{v.name}.{os.getpid()}.tmp" for k, v in final.items()}
    stats = {k: {"tokens": 0, "stories": 0, "text_bytes": 0} for k in final}
    sources = []
    handles = {}
    try:
        handles = {k: open(p, "wb") for k, p in tmp.items()}
        for path, role in plan:
            counts = {"train": 0, "val": 0}
            stories = itertools.islice(iter_stories(path), max_stories)
            tagged = _holdout(stories, val_fraction) if role == "holdout" else ((role, s) for s in stories)
            bar = tqdm(
                total=None if max_stories else path.stat().st_size, unit="B", unit_scale=True,
                desc=f"tokenize {path.name}", disable=not progress,
            )
            for split, arr, n_stories, n_bytes in _encoded_in_order(_chunked(tagged), tok, num_proc):
                handles[split].write(arr.tobytes())
                stats[split]["tokens"] += int(arr.size)
                stats[split]["stories"] += n_stories
                stats[split]["text_bytes"] += n_bytes
                counts[split] += n_stories
                bar.update(n_bytes)
            if bar.total:
                bar.update(bar.total - bar.n)  # separators and blank lines are counted in the file, not the stories
            bar.close()
            if sum(counts.values()) == 0:
                raise ValueError(f"no stories found in {path}: expected text separated by {EOT}")
            sources.append({
                "file": path.name, "path": str(path.resolve()), "role": role, "bytes": path.stat().st_size,
                "sha256": file_sha256(path), "stories_used": counts,
            })
        for h in handles.values():
            h.close()
        for split, s in stats.items():
            if s["stories"] == 0:
                hint = (f"raise val_fraction (now {val_fraction}) or max_stories" if split == "val"
                        else "give more stories")
                raise ValueError(f"the {split} split would be empty: {hint}")
        meta = {
            "format_version": META_FORMAT_VERSION,
            "tokenizer": {"name": tok.name, "hash": tok.hash, "vocab_size": tok.vocab_size,
                          "bos_id": tok.bos_id, "eos_id": tok.eos_id},
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "framing": "each story is [bos_id] + encode(story); stories concatenated in source order",
            "splits": {k: {"file": final[k].name, **stats[k], "file_bytes": stats[k]["tokens"] * dtype.itemsize}
                       for k in final},
            "text_bytes_note": "UTF-8 bytes of the normalized story texts (no separators): for bits per byte",
            "version": version,
            "val_fraction": val_fraction if plan[0][1] == "holdout" else None,
            "max_stories": max_stories,
            "sources": sources,
        }
        # Remove the old meta first: a crash between the renames leaves token files without meta (a clear error
        # in open_split), never new tokens described by an old meta.
        (out_dir / "meta.json").unlink(missing_ok=True)
        for k in final:
            os.replace(tmp[k], final[k])
        meta_tmp = out_dir / f".meta.json.{os.getpid()}.tmp"
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(meta_tmp, out_dir / "meta.json")
        return meta
    finally:
        for h in handles.values():
            h.close()
        for p in [*tmp.values(), out_dir / f".meta.json.{os.getpid()}.tmp"]:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------------
# Reading token files


def _prepare_hint(data_dir: Path) -> str:
    return f"re-run `python -m tinylib.data --tokenizer NAME --out {data_dir}`"


def read_meta(data_dir: str | os.PathLike) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"no meta.json in {data_dir}: the token files are missing or incomplete; "
                                f"{_prepare_hint(data_dir)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {_prepare_hint(data_dir)}") from None
    missing = [k for k in ("tokenizer", "vocab_size", "dtype", "splits") if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {missing}: not a tinylib meta.json; {_prepare_hint(data_dir)}")
    return meta


def open_split(
    data_dir: str | os.PathLike, split: str = "train", tokenizer: Tokenizer | str | None = None
) -> np.memmap:
    """Memory-map `split` ("train" or "val") read-only, after checking it against meta.json (and `tokenizer`)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise ValueError(f"unknown split {split!r} in {data_dir}: meta.json has {sorted(meta['splits'])}")
    info = meta["splits"][split]
    expected = token_dtype(meta["vocab_size"])
    if meta["dtype"] != expected.name:
        raise ValueError(
            f"{data_dir}/meta.json says dtype {meta['dtype']} but a vocabulary of {meta['vocab_size']} ids needs "
            f"{expected.name} (uint16 wraps ids above 65,535); {_prepare_hint(data_dir)}"
        )
    if tokenizer is not None:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
        rec = meta["tokenizer"]
        if tok.hash != rec["hash"] or tok.vocab_size != meta["vocab_size"]:
            raise ValueError(
                f"{data_dir} was tokenized with {rec['name']!r} (vocab {meta['vocab_size']}, hash {rec['hash'][:12]}) "
                f"but you passed {tok.name!r} (vocab {tok.vocab_size}, hash {tok.hash[:12]}): use that tokenizer, "
                f"or re-run `python -m tinylib.data --tokenizer {tok.name} --out {data_dir}`"
            )
    path = data_dir / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing though meta.json lists it; {_prepare_hint(data_dir)}")
    size, n = path.stat().st_size, int(info["tokens"])
    if size != n * expected.itemsize:
        other = np.dtype(np.uint32 if expected == np.uint16 else np.uint16)
        why = (f"it looks like {other.name} data" if size == n * other.itemsize
               else "it was truncated, appended to or replaced")
        raise ValueError(
            f"{path} has {size:,} bytes but meta.json says {n:,} {expected.name} tokens = {n * expected.itemsize:,} "
            f"bytes ({why}); {_prepare_hint(data_dir)}"
        )
    if n == 0:
        raise ValueError(f"{path} holds no tokens; {_prepare_hint(data_dir)}")
    return np.memmap(path, dtype=expected, mode="r", shape=(n,))


def _to_torch(buf: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    t = torch.from_numpy(buf.astype(np.int64))
    x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class RandomBatches:
    """Random windows of seq_len + 1 tokens: x = window[:-1], y = window[1:], both int64 [batch_size, seq_len].

    Batch number `step` depends only on (seed, rank, world_size, step): draw `step` picks the window starts of one
    global batch of world_size x batch_size rows from (seed, step), and rank r takes rows [r*B, (r+1)*B). So ranks
    see different data, and the global batch is the same however it is split: 2 processes of batch 8 train on
    exactly what 1 process of batch 16 would. A resumed run continues the exact stream after `load_state_dict`
    (save rank 0's state; every rank loads it).
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"only {len(tokens)} tokens: need at least seq_len + 1 = {seq_len + 1}; lower seq_len")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.step = 0
        self._offsets = np.arange(seq_len + 1)

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.world_size * self.batch_size)
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        buf = self.tokens[self.starts(self.step)[:, None] + self._offsets]
        self.step += 1
        return _to_torch(buf, device)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "world_size": self.world_size, "n_tokens": int(len(self.tokens))}

    def load_state_dict(self, d: dict) -> None:
        for key in ("seed", "batch_size", "seq_len", "n_tokens"):
            mine = int(len(self.tokens)) if key == "n_tokens" else getattr(self, key)
            if key in d and d[key] != mine:
                raise ValueError(
                    f"cannot resume: the saved batch stream has {key}={d[key]} but this one has {mine}; "
                    f"construct RandomBatches with the same data, seed, batch_size and seq_len"
                )
        self.step = int(d["step"])


def sequential_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, *, max_batches: int | None = None, rank: int = 0,
    world_size: int = 1, device: str | torch.device = "cpu", spread: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows in order, for evaluation: window w is tokens[w*T : w*T + T + 1].

    Full batches only; batch j goes to rank j % world_size and every rank gets the same number of batches (so DDP
    all-reduces line up), at most `max_batches` each. With `spread=True` those batches are spaced evenly over the
    whole file instead of taken from its start, so a small evaluation budget still samples every part of it.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    n_batches = ((len(tokens) - 1) // seq_len) // batch_size
    per_rank = n_batches // world_size
    if per_rank == 0:
        raise ValueError(
            f"{len(tokens):,} tokens make fewer than {world_size} batch(es) of {batch_size} x {seq_len}: "
            f"lower batch_size or seq_len"
        )
    chosen = np.arange(per_rank)
    if max_batches is not None and max_batches < per_rank:
        chosen = (np.linspace(0, per_rank - 1, max_batches).round().astype(int) if spread
                  else np.arange(max_batches))
    offsets = np.arange(seq_len + 1)
    for i in chosen:
        j = int(i) * world_size + rank
        starts = (j * batch_size + np.arange(batch_size)) * seq_len
        yield _to_torch(np.asarray(tokens[starts[:, None] + offsets]), device)


# ------------------------------------------------------------------------------------------------------------
# Report and command line


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def data_report(data_dir: str | os.PathLike) -> str:
    """Stories, tokens, bytes per token and file sizes of prepared token files, as text."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    tk = meta["tokenizer"]
    lines = [
        f"TinyStories {meta.get('version', '?')} token files in {data_dir}",
        f"tokenizer {tk['name']} (vocab {meta['vocab_size']:,}, hash {tk['hash'][:12]}), dtype {meta['dtype']}, "
        f"each story framed as [bos={tk['bos_id']}] + tokens",
        f"{'split':<6} {'stories':>10} {'tokens':>14} {'text':>11} {'bytes/token':>12} {'tokens/story':>13} {'file':>11}",
    ]
    for name, s in meta["splits"].items():
        path = data_dir / s["file"]
        size = path.stat().st_size if path.is_file() else 0
        lines.append(
            f"{name:<6} {s['stories']:>10,} {s['tokens']:>14,} {_mb(s['text_bytes']):>11} "
            f"{s['text_bytes'] / max(s['tokens'], 1):>12.2f} {s['tokens'] / max(s['stories'], 1):>13.1f} "
            f"{_mb(size):>11}"
        )
    for src in meta.get("sources", []):
        lines.append(f"source {src['file']} ({_mb(src['bytes'])}, sha256 {src['sha256'][:12]}) -> {src['role']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tinylib.data", description="Tokenize TinyStories into train.bin/val.bin/meta.json."
    )
    ap.add_argument("--tokenizer", default="tinystories-4096", help="gpt2, tinystories-512/4096/8192, or a path")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default data/tinystories-<tokenizer>)")
    ap.add_argument("--source", default=None, help="folder or .txt file (default $TINYSTORIES_DIR, else download)")
    ap.add_argument("--version", default="V1", choices=["V1", "V2"])
    ap.add_argument("--val-fraction", type=float, default=0.01, help="held out when there is no valid file")
    ap.add_argument("--num-proc", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--max-stories", type=int, default=None, help="cap per source file, for quick runs")
    args = ap.parse_args(argv)
    tok = get_tokenizer(args.tokenizer)
    out = args.out or DATA_DIR / (tok.name if tok.name.startswith("tinystories") else f"tinystories-{tok.name}")
    prepare_dataset(args.source, tok, out, version=args.version, val_fraction=args.val_fraction,
                    num_proc=args.num_proc, max_stories=args.max_stories)
    print(data_report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
