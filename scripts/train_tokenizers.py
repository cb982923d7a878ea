"""Reproduce the shipped TinyStories tokenizers in data/tokenizers/ (512, 4096 and 8192 ids).

    python scripts/train_tokenizers.py [--source DIR_OR_FILE] [--out data/tokenizers] [--sizes 512 4096 8192]

They are trained on the first 2,316 stories of TinyStories V1 train (TinyStories-train.first2316.txt, 2 MB, in
../shared/data/tinystories or $TINYSTORIES_DIR). Training is deterministic: rerunning writes byte-identical
files, and tests/test_tokenizer.py checks that the shipped hashes are what this script produces.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tinylib.bpe import tokenizer_report, train_bpe
from tinylib.stories import parse_stories, read_text
from tinylib.tokenizer import TOKENIZER_DIR, save_tokenizer

TRAIN_FILE = "TinyStories-train.first2316.txt"


def default_source() -> Path:
    env = os.environ.get("TINYSTORIES_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
    return folder / TRAIN_FILE


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help=f"the {TRAIN_FILE} file or its folder")
    ap.add_argument("--out", type=Path, default=TOKENIZER_DIR)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 4096, 8192])
    args = ap.parse_args(argv)

    source = args.source or default_source()
    if source.is_dir():
        source = source / TRAIN_FILE
    stories = parse_stories(read_text(source))
    print(f"training on {len(stories)} stories from {source}")
    for size in args.sizes:
        tok = train_bpe(stories, size, name=f"tinystories-{size}")
        path = save_tokenizer(tok, args.out / f"tinystories-{size}")
        rep = tokenizer_report(tok, stories)
        print(f"{path}: vocab {tok.vocab_size}, hash {tok.hash[:12]}, "
              f"{rep['bytes_per_token']:.2f} bytes/token")


if __name__ == "__main__":
    main()
