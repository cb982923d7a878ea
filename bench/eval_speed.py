"""How long scoring one model on the whole evaluation benchmark takes (issue 29's bar: under 2 minutes on a
development CPU for a small model).

    python bench/eval_speed.py                         # the reference checkpoint
    python bench/eval_speed.py --model stories260K --model induction --threads 1

Prints one row per model: items, option sequences and tokens read, the time to load the model, the wall time
and the CPU time (all threads) of scoring every item, and the load average while it ran. On a machine shared
with other work the wall time is inflated by the load and the CPU time is the steadier figure: quote both,
with the CPU (`torch.backends.cpu.get_cpu_capability()` is printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from tinylib.evals.families import build_benchmark
from tinylib.evals.models import load_loss_model
from tinylib.evals.scoring import Encoded, encode_item, score_items, summarize


def time_model(name: str, bench) -> dict:
    t0 = time.perf_counter()
    lm = load_loss_model(name)
    load_s = time.perf_counter() - t0
    encoded = [e for it in bench.items if isinstance(e := encode_item(it, lm.tokenizer, lm.max_len), Encoded)]
    n_seqs = sum(len(e.seqs) for e in encoded)
    n_tokens = sum(len(s) for e in encoded for s in e.seqs)
    load_before = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    scored = score_items(lm, bench.items, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": name, "items": len(scored.results), "sequences": n_seqs, "tokens": n_tokens,
            "load_s": load_s, "score_wall_s": wall, "score_cpu_s": cpu,
            "loadavg": (load_before + os.getloadavg()[0]) / 2, "acc": summarize(scored.results).acc}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="a model name or path (default: reference)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = build_benchmark()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {len(bench.items)} items")
    rows = [time_model(m, bench) for m in (args.model or ["reference"])]
    print("| model | items | sequences | tokens | load s | score wall s | score CPU s | load avg | "
          "under 2 min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['items']} | {r['sequences']:,} | {r['tokens']:,} | {r['load_s']:.1f} | "
              f"{r['score_wall_s']:.1f} | {r['score_cpu_s']:.1f} | {r['loadavg']:.1f} | "
              f"{'yes' if r['load_s'] + r['score_wall_s'] < 120 else 'NO'} |")
    return rows


if __name__ == "__main__":
    main()
