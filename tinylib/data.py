"""Token files: TinyStories stories -> `train.bin` / `val.bin` / `meta.json`, and back as arrays.

What this module does:
- Tokenizes in parallel (worker processes, each running tiktoken's batch encoder) and writes `train.bin`,
  `val.bin` and `meta.json`. Nothing half-written remains: files are written under temporary names and renamed
  only when everything succeeded.
- Reads token files back as read-only `np.memmap`s, validated against meta.json (and a tokenizer, if given);
  `ensure_dataset` reuses a folder only when its meta.json records the same tokenizer, sources and caps.
- Reports what a folder of token files holds (`data_report`), and is the command line that writes them:
  `python -m tinylib.data --tokenizer tinystories-4096 --out data/tinystories-4096`.

Framing (how stories are laid out in a token file): each story becomes `[bos_id] + tokenizer.encode(story)`
and the stories are concatenated in source order. The boundary token comes first, like GPT-2's `<|endoftext|>`
separator and llama2.c's BOS: a model sees "a new story starts here" and learns to begin stories after it;
when generating, prompting with `[bos_id]` asks for a fresh story. For tiktoken tokenizers bos_id == eos_id ==
`<|endoftext|>`. Ids are stored as uint16 when the vocabulary fits in 65,536 ids, else uint32 (an id above
65,535 written as uint16 silently wraps; `pack_tokens` refuses to let that happen).

What it leaves to others: finding, downloading and parsing the text (tinylib.stories), cutting token arrays
into batches (tinylib.batches), models, training loops and losses. It knows files and token ids, not models.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from tinylib.config import entry_point
from tinylib.paths import DATA_DIR, atomic_writer, write_atomic
from tinylib.stories import EOT, check_text_file, check_version, file_sha256, find_tinystories, iter_stories
from tinylib.tokenizer import Tokenizer, get_tokenizer

META_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------------------
# Tokenizing and writing


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def pack_tokens(id_lists: Iterable[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Concatenate id lists into one `token_dtype(vocab_size)` array, refusing ids outside the vocabulary."""
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(
            f"token ids span {flat.min()}..{flat.max()} but the vocabulary has {vocab_size} ids: the "
            f"tokenizer and vocab_size disagree"
        )
    return flat.astype(token_dtype(vocab_size))


def frame_stories(tok: Tokenizer, stories: Sequence[str], num_threads: int = 1) -> np.ndarray:
    """The framed token array of `stories`: each is `[bos_id] + encode(story)` (see the module docstring)."""
    return pack_tokens(tok.encode_batch(list(stories), bos=True, num_threads=num_threads), tok.vocab_size)


_WORKER_TOK: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _WORKER_TOK
    _WORKER_TOK = tok


def _encode_chunk(
    split: str, stories: list[str], tok: Tokenizer | None = None
) -> tuple[str, np.ndarray, int, int]:
    tok = tok or _WORKER_TOK
    arr = frame_stories(tok, stories)
    return split, arr, len(stories), sum(len(s.encode("utf-8")) for s in stories)


def _encoded_in_order(
    chunks: Iterable[tuple[str, list[str]]], tok: Tokenizer, num_proc: int
) -> Iterator[tuple[str, np.ndarray, int, int]]:
    """Encode chunks in worker processes, yielding results in input order with a bounded number in flight."""
    if num_proc <= 1:
        for split, stories in chunks:
            yield _encode_chunk(split, stories, tok)
        return
    # spawn, not fork: the parent may hold threads (torch, tiktoken) that a forked child would inherit
    # half-locked.
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
    """Group (split, story) pairs into per-split chunks of about `max_bytes` of text, in order per split."""
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
    """Deterministic held-out split: story i is "val" when ceil((i+1)f) > ceil(i f), i.e. story 0 and then
    every 1/f-th story; exactly ceil(n f) of n stories, spread evenly over the file, no randomness to seed."""
    f = Fraction(val_fraction).limit_denominator(1_000_000)
    for i, story in enumerate(stories):
        yield ("val" if -((-(i + 1) * f) // 1) > -((-i * f) // 1) else "train"), story


def default_num_proc() -> int:
    """Worker processes for prepare_dataset: the cores this process may run on."""
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

    source: folder or file (see find_tinystories); None uses $TINYSTORIES_DIR or downloads. The train file
    feeds "train" and the valid file "val"; with no valid file, `val_fraction` of the stories is held out
    deterministically. `max_stories` caps the stories read from each source file (quick runs, tests).
    `num_proc` worker processes (default: all cores) tokenize ~1 MB chunks with tiktoken's batch encoder.
    The steps: which file feeds which split (`source_plan`), tokenizing into the two token files
    (`tokenize_sources`), then meta.json (`dataset_meta`).
    """
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
    plan = source_plan(source, version, val_fraction, max_stories)
    num_proc = default_num_proc() if num_proc is None else max(1, int(num_proc))
    out_dir = Path(out_dir)
    final = {"train": out_dir / "train.bin", "val": out_dir / "val.bin"}
    with atomic_writer(final["train"]) as train, atomic_writer(final["val"]) as val:
        stats, sources = tokenize_sources(plan, tok, {"train": train, "val": val}, val_fraction=val_fraction,
                                          max_stories=max_stories, num_proc=num_proc, progress=progress)
        meta = dataset_meta(tok, stats, sources, version=version, max_stories=max_stories,
                            val_fraction=val_fraction if plan[0][1] == "holdout" else None)
        # Remove the old meta before the token files are renamed into place: a crash between the renames
        # leaves token files without meta (a clear error in open_split), never new tokens with an old meta.
        (out_dir / "meta.json").unlink(missing_ok=True)
    write_atomic(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def source_plan(source: str | os.PathLike | None, version: str, val_fraction: float,
                max_stories: int | None) -> list[tuple[Path, str]]:
    """(file, role) in reading order: role "train" or "val" when the source has both files, else "holdout"
    (the train file's stories split by `val_fraction`). Checks the request and the files first."""
    version = check_version(version)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.01)")
    if max_stories is not None and max_stories < 1:
        raise ValueError(f"max_stories={max_stories} must be a positive number of stories (or None for all)")
    files = find_tinystories(source, version)
    for p in files.values():
        check_text_file(p)
    if "valid" in files:
        return [(files["train"], "train"), (files["valid"], "val")]
    return [(files["train"], "holdout")]


def tokenize_sources(plan: Sequence[tuple[Path, str]], tok: Tokenizer, out: dict, *, val_fraction: float,
                     max_stories: int | None, num_proc: int, progress: bool) -> tuple[dict, list[dict]]:
    """Tokenize each planned file into the open token files `out` ("train", "val"): per-split counts
    (tokens, stories, text bytes) and a record of each source file. Refuses a file without stories and an
    empty split."""
    # tqdm.auto probes for Jupyter widgets: imported here, not by every spawned worker importing this module
    from tqdm.auto import tqdm

    stats = {k: {"tokens": 0, "stories": 0, "text_bytes": 0} for k in out}
    sources = []
    for path, role in plan:
        counts = {"train": 0, "val": 0}
        stories = itertools.islice(iter_stories(path), max_stories)
        tagged = _holdout(stories, val_fraction) if role == "holdout" else ((role, s) for s in stories)
        bar = tqdm(total=None if max_stories else path.stat().st_size, unit="B", unit_scale=True,
                   desc=f"tokenize {path.name}", disable=not progress)
        for split, arr, n_stories, n_bytes in _encoded_in_order(_chunked(tagged), tok, num_proc):
            out[split].write(arr.tobytes())
            stats[split]["tokens"] += int(arr.size)
            stats[split]["stories"] += n_stories
            stats[split]["text_bytes"] += n_bytes
            counts[split] += n_stories
            bar.update(n_bytes)
        if bar.total:  # separators and blank lines are counted in the file, not in the stories
            bar.update(bar.total - bar.n)
        bar.close()
        if sum(counts.values()) == 0:
            raise ValueError(f"no stories found in {path}: expected text separated by {EOT}")
        sources.append({"file": path.name, "path": str(path.resolve()), "role": role,
                        "bytes": path.stat().st_size, "sha256": file_sha256(path), "stories_used": counts})
    for split, s in stats.items():
        if s["stories"] == 0:
            hint = (f"raise val_fraction (now {val_fraction}) or max_stories" if split == "val"
                    else "give more stories")
            raise ValueError(f"the {split} split would be empty: {hint}")
    return stats, sources


def dataset_meta(tok: Tokenizer, stats: dict, sources: list[dict], *, version: str,
                 val_fraction: float | None, max_stories: int | None) -> dict:
    """What meta.json records: the tokenizer, the framing, each split's counts, where the text came from."""
    dtype = token_dtype(tok.vocab_size)
    return {
        "format_version": META_FORMAT_VERSION,
        "tokenizer": {"name": tok.name, "hash": tok.hash, "vocab_size": tok.vocab_size,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "framing": "each story is [bos_id] + encode(story); stories concatenated in source order",
        "splits": {k: {"file": f"{k}.bin", **stats[k], "file_bytes": stats[k]["tokens"] * dtype.itemsize}
                   for k in ("train", "val")},
        "text_bytes_note": "UTF-8 bytes of the normalized story texts (no separators): for bits per byte",
        "version": check_version(version),
        "val_fraction": val_fraction,
        "max_stories": max_stories,
        "sources": sources,
    }


def ensure_dataset(source: str | os.PathLike | None, tokenizer: str | os.PathLike | Tokenizer,
                   out_dir: str | os.PathLike, *, version: str = "V1", max_stories: int | None = None,
                   **kwargs) -> dict:
    """The token files in `out_dir` if they were made from exactly this request, else made anew (saying why):
    what keeps a quick run's 400-story files from being reused, unnoticed, by a 10-minute one. Sources compare
    by file name and size (hashing 2 GB would cost seconds on every run)."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
    try:
        meta = read_meta(out_dir)
        files = find_tinystories(source, version).values()
        asked = {"tokenizer": tok.hash, "version": version, "max_stories": max_stories,
                 "sources": sorted((p.name, p.stat().st_size) for p in files)}
        made = {"tokenizer": meta["tokenizer"]["hash"], "version": meta.get("version"),
                "max_stories": meta.get("max_stories"),
                "sources": sorted((s["file"], s["bytes"]) for s in meta.get("sources", []))}
        reasons = [f"{k} was {made[k]!r}, now {asked[k]!r}" for k in asked if made[k] != asked[k]]
    except (FileNotFoundError, ValueError, KeyError) as e:
        reasons = [f"no usable token files ({e})"]
    if not reasons:
        return meta
    print(f"preparing {out_dir}: " + "; ".join(reasons))
    return prepare_dataset(source, tok, out_dir, version=version, max_stories=max_stories, **kwargs)


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
    """Memory-map `split` ("train" or "val") read-only, checked against meta.json (and `tokenizer`)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise ValueError(f"unknown split {split!r} in {data_dir}: meta.json has {sorted(meta['splits'])}")
    info = meta["splits"][split]
    expected = token_dtype(meta["vocab_size"])
    if meta["dtype"] != expected.name:
        raise ValueError(
            f"{data_dir}/meta.json says dtype {meta['dtype']} but a vocabulary of {meta['vocab_size']} ids "
            f"needs {expected.name} (uint16 wraps ids above 65,535); {_prepare_hint(data_dir)}"
        )
    if tokenizer is not None:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
        rec = meta["tokenizer"]
        if tok.hash != rec["hash"] or tok.vocab_size != meta["vocab_size"]:
            raise ValueError(
                f"{data_dir} was tokenized with {rec['name']!r} (vocab {meta['vocab_size']}, hash "
                f"{rec['hash'][:12]}) but you passed {tok.name!r} (vocab {tok.vocab_size}, hash "
                f"{tok.hash[:12]}): use that tokenizer, "
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
            f"{path} has {size:,} bytes but meta.json says {n:,} {expected.name} tokens = "
            f"{n * expected.itemsize:,} bytes ({why}); {_prepare_hint(data_dir)}"
        )
    if n == 0:
        raise ValueError(f"{path} holds no tokens; {_prepare_hint(data_dir)}")
    tokens = np.memmap(path, dtype=expected, mode="r", shape=(n,))
    check_ids(tokens, meta["vocab_size"], path, data_dir)
    return tokens


ID_SAMPLE = 1 << 20  # tokens read at each of the start, the middle and the end of a split


def check_ids(tokens: np.ndarray, vocab_size: int, path: Path, data_dir: Path) -> None:
    """Refuse a token file whose ids do not fit meta.json's vocabulary (a meta.json copied from another
    folder, a file written by another tokenizer): the model would fail deep inside its embedding. Reads
    3 x ID_SAMPLE tokens, so a large split opens at once; a lying meta.json shows within them."""
    n = len(tokens)
    spots = sorted({0, max(0, n // 2 - ID_SAMPLE // 2), max(0, n - ID_SAMPLE)})
    top = max(int(tokens[s: s + ID_SAMPLE].max()) for s in spots)
    if top >= vocab_size:
        raise ValueError(f"{path} holds token id {top:,} but meta.json's vocabulary has {vocab_size:,} ids "
                         f"(tokenizer {read_meta(data_dir)['tokenizer'].get('name')!r}): the tokens were "
                         f"written by another tokenizer, or meta.json belongs to another folder; "
                         f"{_prepare_hint(data_dir)}")


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
        f"tokenizer {tk['name']} (vocab {meta['vocab_size']:,}, hash {tk['hash'][:12]}), "
        f"dtype {meta['dtype']}, each story framed as [bos={tk['bos_id']}] + tokens",
        f"{'split':<6} {'stories':>10} {'tokens':>14} {'text':>11} {'bytes/token':>12} {'tokens/story':>13} "
        f"{'file':>11}",
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
        lines.append(
            f"source {src['file']} ({_mb(src['bytes'])}, sha256 {src['sha256'][:12]}) -> {src['role']}"
        )
    return "\n".join(lines)


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tinylib.data", description="Tokenize TinyStories into train.bin/val.bin/meta.json."
    )
    ap.add_argument("--tokenizer", default="tinystories-4096",
                    help="gpt2, tinystories-512/4096/8192, or a path")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default data/tinystories-<tokenizer>)")
    ap.add_argument("--source", default=None,
                    help="folder or .txt file (default $TINYSTORIES_DIR, else download)")
    ap.add_argument("--version", default="V1", choices=["V1", "V2"])
    ap.add_argument("--val-fraction", type=float, default=0.01, help="held out when there is no valid file")
    ap.add_argument("--num-proc", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--max-stories", type=int, default=None, help="cap per source file, for quick runs")
    args = ap.parse_args(argv)
    tok = get_tokenizer(args.tokenizer)
    default_name = tok.name if tok.name.startswith("tinystories") else f"tinystories-{tok.name}"
    out = args.out or DATA_DIR / default_name
    prepare_dataset(args.source, tok, out, version=args.version, val_fraction=args.val_fraction,
                    num_proc=args.num_proc, max_stories=args.max_stories)
    print(data_report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
