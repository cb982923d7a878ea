"""Generation throughput: tinylib with and without the KV cache, and transformers' `generate` on the same
weights.

    python bench/generate_throughput.py                  # 6L/288D and tiny, 64/256/512 new tokens
    python bench/generate_throughput.py --threads 1 --presets llama_6L_6H_288D --lengths 512

Every run decodes greedily from the same 16-token prompt with stopping disabled, so each contender produces
exactly N new tokens; tokens/s = N / wall time of the whole call (prefill included). tinylib is timed through
`tinylib.engine.sample_tokens` (ids in, ids out, like `model.generate`); transformers through
`to_hf(model).generate(..., do_sample=False)` with its cache. "same ids" counts how many leading tokens the
two libraries agree on (random weights have near-ties, so a late divergence is rounding, not a bug).

Bars (issue 5): cache >= 5x no cache at 512 new tokens on 6L/288D; tinylib >= transformers on the same
weights.
Results depend on the machine's load: run it on a quiet machine and say which when you quote numbers.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tinylib.config import get_config
from tinylib.engine import SamplingConfig, sample_tokens
from tinylib.model import Transformer

PROMPT_LEN = 16


def time_tinylib(model: Transformer, prompt: list[int], n: int, use_cache: bool) -> tuple[float, list[int]]:
    greedy = SamplingConfig(max_new_tokens=n, temperature=0, use_cache=use_cache)
    t0 = time.perf_counter()
    out = list(sample_tokens(model, prompt, greedy))
    return time.perf_counter() - t0, out


def time_hf(hf, prompt: list[int], n: int) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=0)
    return time.perf_counter() - t0, out[0, len(prompt):].tolist()


def load_hf(model: Transformer):
    try:
        from tinylib.interop.hf import to_hf
    except ImportError as e:
        return None, f"n/a: tinylib.interop.hf not available ({e})"
    hf = to_hf(model, attn_implementation="sdpa")
    hf.generation_config.eos_token_id = None  # never stop early: every contender makes exactly N tokens
    hf.generation_config.bos_token_id = None
    return hf, ""


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["llama_6L_6H_288D", "tiny"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 512])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    max_len = PROMPT_LEN + max(args.lengths)
    print(f"# generation throughput: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.dtype}, {platform.processor() or platform.machine()}, prompt {PROMPT_LEN} tokens, greedy, "
          f"vocab {args.vocab_size}")
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        cfg = get_config(preset, vocab_size=args.vocab_size, max_seq_len=max(1024, max_len))
        model = Transformer(cfg).to(dtype).eval()
        hf, hf_note = (None, "skipped (--no-hf)") if args.no_hf else load_hf(model)
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, args.vocab_size, (PROMPT_LEN,), generator=g).tolist()
        time_tinylib(model, prompt, 8, True)  # warm-up: first calls pay for allocations and kernel selection
        if hf is not None:
            time_hf(hf, prompt, 8)
        for n in args.lengths:
            t_cache, ids_cache = min((time_tinylib(model, prompt, n, True) for _ in range(2)),
                                     key=lambda r: r[0])
            t_plain, ids_plain = time_tinylib(model, prompt, n, False)
            row = dict(preset=preset, params_m=model.num_params() / 1e6, n=n, cache=n / t_cache,
                       no_cache=n / t_plain, speedup=t_plain / t_cache, same_cache=ids_cache == ids_plain,
                       hf=None, vs_hf=None, same_hf=None, note=hf_note)
            if hf is not None:
                t_hf, ids_hf = min((time_hf(hf, prompt, n) for _ in range(2)), key=lambda r: r[0])
                agree = next((i for i, (a, b) in enumerate(zip(ids_cache, ids_hf)) if a != b), n)
                row.update(hf=n / t_hf, vs_hf=t_hf / t_cache, same_hf=agree)
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    return rows


def print_row(r: dict, header: bool = False) -> None:
    if header:
        print(f"| {'preset':<18} | {'params':>7} | {'new':>4} | {'cache tok/s':>11} | "
              f"{'no cache tok/s':>14} | {'cache speedup':>13} | {'HF generate tok/s':>17} | "
              f"{'tinylib / HF':>12} | {'same ids (HF)':>13} |")
        print("|" + "|".join("-" * w for w in (20, 9, 6, 13, 16, 15, 19, 14, 15)) + "|")
    hf = f"{r['hf']:.0f}" if r["hf"] is not None else r["note"]
    vs = f"{r['vs_hf']:.2f}x" if r["vs_hf"] is not None else "n/a"
    same = f"{r['same_hf']}/{r['n']}" if r["same_hf"] is not None else "n/a"
    mark = "" if r["same_cache"] else " (!)"
    print(f"| {r['preset']:<18} | {r['params_m']:>6.2f}M | {r['n']:>4} | {r['cache']:>11.0f} | "
          f"{r['no_cache']:>14.0f} | {r['speedup']:>12.1f}x{mark} | {hf:>17} | {vs:>12} | {same:>13} |",
          flush=True)


if __name__ == "__main__":
    main()
