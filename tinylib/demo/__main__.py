"""`make demo`: TinyStories text -> token files -> a model planned for this machine -> stories in 10 minutes.

    python -m tinylib.demo [--minutes 10] [--plan NAME | --preset PRESET] [--source DIR]

1. Finds TinyStories (`--source`, $TINYSTORIES_DIR, or a download of only what the run needs: the
   validation file and the first 40 MB of the 1.9 GB train file on a CPU, 400 MB on a GPU) and writes token
   files with our 4096-id BPE under data/ (reused only when they were made from the same text and tokenizer),
   then prints the data report.
2. Names the machine (CPU, the kernels torch uses, bf16 units or not) and plans the run: each candidate shape
   (`tinylib.demo.plan`) takes a few steps here, and the largest that gets the steps it needs in `--minutes`
   is trained (Muon + AdamW, bf16 autocast where the CPU has bf16 units, else fp32); `--plan NAME` repeats a
   plan without measuring, `--preset` trains a preset with the same recipe. On a GPU it trains
   `llama_6L_6H_288D` with bf16 and torch.compile. Training stops at `--minutes`, its periodic evaluations
   included (data preparation, planning and the full-validation figures below are not). Where torch reports
   Apple's MPS it trains there in fp32 (written for, not tested on this project's machines).
3. Prints validation loss before and after, in nats per token and in bits per byte of text (the figure that
   compares across tokenizers; after training also with sliding windows), saves the checkpoint under
   checkpoints/, prints three sample stories and a summary line (machine, dtype, plan, steps, tokens/s, bits
   per byte): `--minutes N` runs the same recipe for any budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tinylib.checkpoint import load_model
from tinylib.data import data_report, ensure_dataset, open_split, read_meta
from tinylib.demo.plan import (
    CANDIDATES,
    GPU_CANDIDATE,
    Candidate,
    Plan,
    PlanError,
    candidate_named,
    choose,
    describe,
    measure,
)
from tinylib.device import describe_machine, dtype_name, pick_device, pick_dtype
from tinylib.evaluate import bits_per_byte, evaluate_loss
from tinylib.generate import generate
from tinylib.model import build_model
from tinylib.stories import quick_source
from tinylib.tokenizer import get_tokenizer
from tinylib.train import train

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


def plan_run(args, device: torch.device, dtype: torch.dtype, vocab_size: int) -> tuple[Candidate, str]:
    """The candidate to train and a line saying why: --preset (today's fixed recipe), --plan, or measured."""
    budget_s = args.minutes * 60
    if args.preset:
        return Candidate(args.preset, args.preset, batch_size=64 if device.type == "cuda" else 16,
                         about="chosen with --preset"), f"--preset {args.preset}: no planning"
    if args.plan:
        plan = Plan.from_json(args.plan) if args.plan.lstrip().startswith("{") else None
        name = plan.name if plan else args.plan
        return candidate_named(name), f"--plan {name}: no planning"
    if device.type == "cuda":
        return GPU_CANDIDATE, f"{GPU_CANDIDATE.name}: on a GPU the demo trains {GPU_CANDIDATE.about}"
    print(f"planning: timing {len(CANDIDATES)} candidate shapes for a few steps each ...")
    timings = measure(CANDIDATES, vocab_size, device, dtype)
    for c in CANDIDATES:
        print(f"  {describe(c, vocab_size)}: {timings[c.name] * 1000:.0f} ms/step")
    plan = choose(timings, budget_s)
    return plan.candidate(), f"plan: {plan.reason}\n  repeat it with --plan {plan.name}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinylib.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time budget (periodic evaluation included, data preparation and "
                             "planning not); default 10")
    parser.add_argument("--plan", default=None,
                        help=f"train this candidate without measuring: one of {[c.name for c in CANDIDATES]} "
                             "(or a plan's JSON)")
    parser.add_argument("--preset", default=None,
                        help="train this preset with the demo's recipe, no planning (the demo before plans "
                             "was --preset tiny)")
    parser.add_argument("--source", default=None,
                        help="TinyStories folder (default: $TINYSTORIES_DIR or download)")
    parser.add_argument("--data", default=f"data/{TOKENIZER}",
                        help="token files folder (default: %(default)s)")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: checkpoints/demo-<plan>)")
    args = parser.parse_args(argv)

    device = pick_device()
    gpu = device.type == "cuda"
    t0 = time.perf_counter()
    data_dir = ensure_data(Path(args.data), args.source, train_bytes=400_000_000 if gpu else 40_000_000)
    t_data = time.perf_counter() - t0
    print(data_report(data_dir) + "\n")

    dtype = pick_dtype("auto", device)
    print(f"machine: {describe_machine(device)}; training in {dtype_name(dtype)}")
    meta = read_meta(data_dir)
    try:
        candidate, why = plan_run(args, device, dtype, meta["vocab_size"])
    except PlanError as e:
        raise SystemExit(f"error: {e}") from None
    print(why + "\n")
    # overwrite: a new demo replaces the last one in the same folder, which is moved aside, not deleted
    cfg = candidate.train_config(data=str(data_dir), out_dir=args.out or f"checkpoints/demo-{candidate.name}",
                                 max_time_s=args.minutes * 60, eval_every=400 if gpu else 500, overwrite=True)
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
          f"(training {result.time_s / 60:.1f}, data {t_data:.0f} s, the rest planning, evaluation and "
          f"sampling)")
    print(f"summary: {describe_machine(device)}, {dtype_name(dtype)}, plan {candidate.name}, "
          f"{result.step} steps, {result.tokens_per_s:,.0f} tokens/s, {after[1]:.3f} bits/byte")


if __name__ == "__main__":
    main()
