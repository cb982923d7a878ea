"""Tokenization throughput: MB/s of text and tokens/s, 1 process vs all cores, GPT-2 vs our BPE.

    python bench/tokenize_throughput.py [--mb 16] [--tokenizers gpt2 tinystories-4096] [--source DIR]

Two measurements per tokenizer:
- "encode": `Tokenizer.encode_batch` in this process (1 thread, then one thread per core; tiktoken releases
  the GIL);
- "prepare": the whole `prepare_dataset` pipeline (read, parse, tokenize, write train.bin) with 1 worker
  process, then one per core; this includes starting the workers.
The text is the TinyStories train sample ($TINYSTORIES_DIR) repeated to about --mb megabytes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

from tinylib.data import default_num_proc, prepare_dataset, read_meta
from tinylib.stories import find_tinystories, parse_stories, read_text
from tinylib.tokenizer import get_tokenizer


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=16.0, help="megabytes of text to tokenize per measurement")
    ap.add_argument("--tokenizers", nargs="+", default=["gpt2", "tinystories-4096"])
    ap.add_argument("--source", default=None, help="TinyStories folder (default $TINYSTORIES_DIR)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = ap.parse_args(argv)

    train = find_tinystories(args.source, "V1")["train"]
    stories = parse_stories(read_text(train))
    sample_bytes = sum(len(s.encode()) for s in stories)
    stories = stories * max(1, round(args.mb * 1e6 / sample_bytes))
    n_bytes = sum(len(s.encode()) for s in stories)
    cores = default_num_proc()
    print(f"{len(stories):,} stories, {n_bytes / 1e6:.1f} MB of text, {cores} cores, source {train.name}\n")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "TinyStories-train.bench.txt"
        text_file.write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
        for name in args.tokenizers:
            tok = get_tokenizer(name)
            head = stories[:2000]
            n_tokens = sum(map(len, tok.encode_batch(head))) * len(stories) / len(head)
            for workers in sorted({1, cores}):
                t = _best_of(partial(tok.encode_batch, stories, num_threads=workers), args.repeats)
                rows.append((name, "encode (threads)", workers, n_bytes / t / 1e6, n_tokens / t))
            for workers in sorted({1, cores}):
                run = partial(prepare_dataset, text_file, tok, Path(tmp) / "out", num_proc=workers,
                              progress=False)
                t = _best_of(run, args.repeats)
                tokens = sum(s["tokens"] for s in read_meta(Path(tmp) / "out")["splits"].values())
                rows.append((name, "prepare (processes)", workers, n_bytes / t / 1e6, tokens / t))

    print(f"| {'tokenizer':<17} | {'path':<20} | {'workers':>7} | {'MB/s':>7} | {'tokens/s':>12} |")
    print(f"| {'-' * 17} | {'-' * 20} | {'-' * 7:>7} | {'-' * 7:>7} | {'-' * 12:>12} |")
    for name, path, workers, mbs, tps in rows:
        print(f"| {name:<17} | {path:<20} | {workers:>7} | {mbs:>7.2f} | {tps:>12,.0f} |")
    print(f"\n(os.cpu_count()={os.cpu_count()}; best of {args.repeats} runs each)")


if __name__ == "__main__":
    main()
