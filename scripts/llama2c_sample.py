"""Sample a story from a llama2.c model (like llama2.c's `./run`), through tinylib's model and generation
engine.

    python scripts/llama2c_sample.py ../shared/models/llama2c/stories260K.bin -t 0   # greedy, as run.c -t 0.0
    python scripts/llama2c_sample.py stories15M --tokenizer path/to/tokenizer.model -t 1.0 -p 0.9 -s 42

The model is a .bin (legacy or version 1), a ckpt.pt, or a name from karpathy/tinyllamas to download. The
tokenizer defaults to a SentencePiece `.model` beside the model file (tok512.model, tokenizer.model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinylib.engine import SamplingConfig
from tinylib.generate import stream
from tinylib.interop.llama2c import load_llama2c
from tinylib.interop.sentencepiece import SentencePieceTokenizer
from tinylib.interop.tinyllamas import find_llama2c_tokenizer, resolve_llama2c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="llama2.c .bin / ckpt.pt, or stories260K|stories15M|stories42M|stories110M")
    ap.add_argument("--tokenizer", type=Path, default=None, help="SentencePiece .model file")
    ap.add_argument("-i", "--prompt", default="", help="prompt (BOS is always prepended)")
    ap.add_argument("-n", "--steps", type=int, default=256, help="new tokens at most")
    ap.add_argument("-t", "--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("-p", "--top-p", type=float, default=0.9)
    ap.add_argument("-s", "--seed", type=int, default=None)
    args = ap.parse_args(argv)

    path = resolve_llama2c(args.model)  # a model name is downloaded from karpathy/tinyllamas
    model = load_llama2c(path)
    tok = SentencePieceTokenizer(args.tokenizer or find_llama2c_tokenizer(path))
    sampling = SamplingConfig(max_new_tokens=args.steps, temperature=args.temperature,
                              top_p=args.top_p if args.temperature > 0 else None)
    s = stream(model, tok, args.prompt, sampling, seed=args.seed)
    sys.stdout.write(args.prompt)
    for piece in s:
        sys.stdout.write(piece)
        sys.stdout.flush()
    r = s.result
    print(f"\n[{r.n_new} tokens, {r.tokens_per_s:.1f} tok/s, stop: {r.stop_reason}, seed {r.seed}]",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
