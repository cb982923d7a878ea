"""Which attention kernel a compiled CPU training step should use: written out ("eager") or SDPA, by context.

    python bench/attention_kernel.py                          # tiny (ReLU^2), 4096 tokens a step, 256 and 512
    python bench/attention_kernel.py --seq-lens 128 256 512 1024

At a fixed number of tokens per step (batch x seq_len), the trainer's step (`tinylib.train.train_step`, the
model compiled, bf16 autocast where the CPU has bf16 units) is timed with each kernel; the table shows ms per
step and the ratio to the written-out kernel at the shortest context. `tinylib.device.compile_plan` picks the
written-out kernel below `LONG_CONTEXT` positions and SDPA from there on: this script set that line.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinylib.checkpoint import TrainState
from tinylib.demo.plan import Candidate
from tinylib.device import LONG_CONTEXT, describe_machine, dtype_name, pick_dtype
from tinylib.model import build_model
from tinylib.optim import configure_optimizer
from tinylib.train import train_step


def step_ms(seq_len: int, tokens: int, impl: str, dtype: torch.dtype, *, steps: int, rounds: int) -> float:
    """Best of `rounds` means of `steps` compiled training steps (after 3 warm-up steps that compile)."""
    cand = Candidate("bench", "tiny", {"mlp": "relu2", "max_seq_len": max(seq_len, 256)}, tokens // seq_len,
                     seq_len, dropout=0.1)
    cfg = cand.train_config()
    torch.manual_seed(0)
    model = build_model(cfg, 4096, impl)
    state = TrainState(torch.compile(model), configure_optimizer(model, cfg, torch.device("cpu")))
    x = torch.randint(0, 4096, (cand.batch_size, seq_len + 1))
    batch = [(x[:, :-1], x[:, 1:])]
    for _ in range(3):
        train_step(state, batch, dtype=dtype)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(state, batch, dtype=dtype)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch = tokens / seq_len)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    uneven = [t for t in args.seq_lens if t <= 0 or args.tokens % t]
    if uneven:
        parser.error(f"--seq-lens {uneven} do not divide --tokens {args.tokens}: every context needs a whole "
                     "batch of the same tokens a step (try powers of two up to --tokens)")
    dtype = pick_dtype("auto", torch.device("cpu"))
    print(f"{describe_machine(torch.device('cpu'))}; {dtype_name(dtype)}; tiny (ReLU^2), {args.tokens} "
          f"tokens a step; compile_plan switches to sdpa at {LONG_CONTEXT}")
    print(f"{'seq_len':>8} {'batch':>6} {'eager ms':>9} {'sdpa ms':>8} {'eager x':>8} {'sdpa x':>7}")
    base = None
    for t in sorted(args.seq_lens):
        eager = step_ms(t, args.tokens, "eager", dtype, steps=args.steps, rounds=args.rounds)
        sdpa = step_ms(t, args.tokens, "sdpa", dtype, steps=args.steps, rounds=args.rounds)
        base = base or eager
        ratios = f"{eager / base:>8.2f} {sdpa / base:>7.2f}"
        print(f"{t:>8} {args.tokens // t:>6} {eager:>9.0f} {sdpa:>8.0f} {ratios}", flush=True)


if __name__ == "__main__":
    main()
