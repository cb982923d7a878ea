"""Where a training step's time goes on this CPU: forward and loss, backward, clipping, the optimizer.

    python bench/step_profile.py                           # the demo's model and optimizer, its batch
    python bench/step_profile.py --preset gpt_6L_6H_288D --optimizer adamw

Each part is timed on its own (wall and CPU seconds, median over rounds) on the model, batch and optimizer the
demo trains, compiled as the trainer compiles it. The optimizer row is split: Muon's Newton-Schulz
orthogonalisation in fp32 (what tinylib runs on CPUs) and in bf16 (what GPU recipes run, and what tinylib ran
on every device before: on a CPU without bf16 units it is emulated and costs more than the whole rest of the
step). The header names the CPU, the capability torch dispatches to and the dtype tinylib picks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinylib.config import TrainConfig
from tinylib.device import compile_plan, describe_machine, pick_device, pick_dtype
from tinylib.model import build_model
from tinylib.optim import configure_optimizer, orthogonalize


def timed(fn, rounds: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) of `fn()` over `rounds` calls."""
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--optimizer", default="muon", choices=("muon", "adamw"))
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device()
    cfg = TrainConfig(preset=args.preset, optimizer=args.optimizer, batch_size=args.batch_size,
                      seq_len=args.seq_len, model_overrides={"dropout": 0.1, "attn_dropout": 0.0})
    dtype = pick_dtype(cfg.dtype, device)
    use_compile, attn = compile_plan(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg, args.vocab, attn).to(device)
    module = torch.compile(model) if use_compile else model
    opt = configure_optimizer(model, cfg, device)
    x = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device)
    y = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device.type, enabled=False))

    def forward():
        with autocast:
            return module(x, y, return_logits=False)[1]

    def whole_step():
        loss = forward()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # compile and warm up
        whole_step()
    rows = [("whole step", timed(whole_step, args.rounds))]
    rows.append(("forward + loss", timed(forward, args.rounds)))
    loss_holder = []
    backward_times = []
    for _ in range(args.rounds):
        loss_holder.append(forward())
        backward_times.append(timed(lambda: loss_holder[-1].backward(), 1))
    rows.append(("backward", tuple(statistics.median(t[i] for t in backward_times) for i in range(2))))
    rows.append(("clip grad norm", timed(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
                                         args.rounds)))
    rows.append((f"optimizer step ({args.optimizer})", timed(opt.step, args.rounds)))
    opt.zero_grad(set_to_none=True)
    if args.optimizer == "muon":
        mats: dict[tuple, list[torch.Tensor]] = {}
        for n, p in model.named_parameters():
            if p.dim() == 2 and n.startswith("blocks."):
                mats.setdefault(tuple(p.shape), []).append(torch.randn_like(p))
        stacks = [torch.stack(ps) for ps in mats.values()]
        for ns_dtype in (torch.float32, torch.bfloat16):
            rows.append((f"  of which Newton-Schulz, {str(ns_dtype).removeprefix('torch.')}",
                         timed(lambda d=ns_dtype: [orthogonalize(s, 5, d) for s in stacks], args.rounds)))

    tokens = args.batch_size * args.seq_len
    dtype_str = str(dtype).removeprefix("torch.")
    print(f"{describe_machine(device)}; torch {torch.__version__}; dtype {dtype_str}, compile {use_compile}, "
          f"attention {attn}")
    print(f"{args.preset}, vocab {args.vocab}, batch {args.batch_size} x {args.seq_len}, {args.optimizer}; "
          f"median of {args.rounds}")
    print(f"{'part':34} {'wall ms':>9} {'cpu ms':>9} {'share':>7}")
    total = rows[0][1][0]
    for name, (wall, cpu) in rows:
        print(f"{name:34} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {wall / total:7.1%}")
    print(f"whole step: {tokens / total:,.0f} tokens/s")


if __name__ == "__main__":
    main()
