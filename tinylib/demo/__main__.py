"""`make demo`: TinyStories text -> token files -> a trained model -> stories, in about ten minutes.

    python -m tinylib.demo [--minutes 10] [--preset tiny] [--source DIR]

1. Finds TinyStories (`--source`, $TINYSTORIES_DIR, or a download of only what the run needs: the
   validation file and the first 40 MB of the 1.9 GB train file on a CPU, 400 MB on a GPU) and writes token
   files with our 4096-id BPE under data/ (reused only when they were made from the same text and tokenizer),
   then prints the data report.
2. Trains the `tiny` preset on the CPU (Muon + AdamW, bf16 autocast where the CPU supports it) for at most
   `--minutes`, its periodic evaluations included (data preparation and the full-validation figures below are
   not); on a GPU the same command trains `llama_6L_6H_288D` with bf16 and torch.compile.
3. Prints validation loss before and after, in nats per token and in bits per byte of text (the figure that
   compares across tokenizers; after training also with sliding windows), saves the checkpoint under
   checkpoints/, and prints three sample stories.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tinylib.checkpoint import load_model
from tinylib.config import TrainConfig
from tinylib.data import data_report, ensure_dataset, open_split, read_meta
from tinylib.device import pick_device, pick_dtype
from tinylib.evaluate import bits_per_byte, evaluate_loss
from tinylib.generate import generate
from tinylib.stories import quick_source
from tinylib.tokenizer import get_tokenizer
from tinylib.train import build_model, train

TOKENIZER = "tinystories-4096"
PROMPTS = ["Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because"]


def ensure_data(out_dir: Path, source: str | None, train_bytes: int) -> Path:
    """Token files for the demo: made once, reused only while they match the text and tokenizer asked for.

    Without a local copy (`source`, $TINYSTORIES_DIR), download just the validation file and the first
    `train_bytes` of the train file: a 10-minute run never needs all 1.9 GB.
    """
    ensure_dataset(source or quick_source(train_bytes), TOKENIZER, out_dir)
    return out_dir


def full_val_loss(model, data_dir: Path, seq_len: int, device, dtype, stride: int | None = None
                  ) -> tuple[float, float]:
    """Loss over the whole validation file, in nats/token and bits/byte.

    stride=None: non-overlapping windows (nanoGPT's way; a window's first tokens have little context).
    stride=seq_len // 2: sliding windows, every token but the first window's scored with >= seq_len/2 tokens
    of context (the usual "sliding window perplexity").
    """
    meta = read_meta(data_dir)
    val = open_split(data_dir, "val")
    loss = evaluate_loss(model, val, seq_len=seq_len, batch_size=16, device=device, dtype=dtype,
                         stride=stride)
    split = meta["splits"]["val"]
    return loss, bits_per_byte(loss, split["tokens"], split["text_bytes"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinylib.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time budget (periodic evaluation included, data preparation not)")
    parser.add_argument("--preset", default=None, help="default: tiny on CPU, llama_6L_6H_288D on GPU")
    parser.add_argument("--source", default=None,
                        help="TinyStories folder (default: $TINYSTORIES_DIR or download)")
    parser.add_argument("--data", default=f"data/{TOKENIZER}")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: checkpoints/demo-<preset>)")
    args = parser.parse_args(argv)

    device = pick_device()
    gpu = device.type == "cuda"
    t0 = time.perf_counter()
    data_dir = ensure_data(Path(args.data), args.source, train_bytes=400_000_000 if gpu else 40_000_000)
    t_data = time.perf_counter() - t0
    print(data_report(data_dir) + "\n")

    preset = args.preset or ("llama_6L_6H_288D" if gpu else "tiny")
    # Muon on the block matrices learns more per token than AdamW (tinylib.optim). Offline, ../shared's 2,316
    # training stories are ~0.5M tokens, so a 10-minute CPU run sees them ~15 times: strong weight decay and
    # residual dropout keep the model from memorising them (attention dropout is left off: it halves CPU
    # speed). The tied embedding learns best with a higher AdamW lr (6e-3) than the block matrices' Muon lr;
    # its weight decay also keeps the logits of tokens never seen in training (byte tokens of mis-encoded text
    # in the validation stories) from sinking without bound.
    cfg = TrainConfig(
        data=str(data_dir), preset=preset, out_dir=args.out or f"checkpoints/demo-{preset}",
        model_overrides={"dropout": 0.1, "attn_dropout": 0.0}, optimizer="muon", muon_lr=0.01,
        muon_weight_decay=0.3, weight_decay=1.0,
        batch_size=64 if gpu else 16, seq_len=256, lr=6e-3, warmup_steps=100, min_lr_ratio=0.05,
        max_time_s=args.minutes * 60, eval_every=400 if gpu else 500,
        eval_batches=20, sample_tokens=32,
    )
    dtype = pick_dtype(cfg.dtype, device)
    meta = read_meta(data_dir)
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg, meta["vocab_size"]).to(device)  # train() starts from these same weights
    before = full_val_loss(untrained, data_dir, cfg.seq_len, device, dtype)
    print(f"validation loss before training: {before[0]:.3f} nats/token, {before[1]:.3f} bits/byte\n")

    result = train(cfg)

    model = load_model(result.out_dir / "latest", device=device)
    after = full_val_loss(model, data_dir, cfg.seq_len, device, dtype)
    sliding = full_val_loss(model, data_dir, cfg.seq_len, device, dtype, stride=cfg.seq_len // 2)
    tok = get_tokenizer(TOKENIZER)
    print(f"\nvalidation loss before: {before[0]:.3f} nats/token, {before[1]:.3f} bits/byte")
    print(f"validation loss after:  {after[0]:.3f} nats/token, {after[1]:.3f} bits/byte "
          f"({result.tokens:,} tokens in {result.step} steps, {result.tokens_per_s:,.0f} tokens/s)")
    print(f"  with sliding windows (stride {cfg.seq_len // 2}): {sliding[0]:.3f} nats/token, "
          f"{sliding[1]:.3f} bits/byte")
    print(f"checkpoint: {result.out_dir}/latest (best by sampled val loss: {result.out_dir}/best)\n")
    for i, prompt in enumerate(PROMPTS):
        story = generate(model, tok, prompt, max_new_tokens=200, temperature=0.8, top_k=50, seed=i)
        print(f"--- story {i + 1} ---\n{prompt}{story.text}\n")
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} minutes "
          f"(training {result.time_s / 60:.1f}, data {t_data:.0f} s, the rest evaluation and sampling)")


if __name__ == "__main__":
    main()
