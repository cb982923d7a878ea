"""Compare variants of the demo's recipe at a fixed number of steps: bits per byte, CPU seconds, tokens.

    python bench/demo_recipe.py --steps 300 --variants tiny-relu2 'tiny-relu2:batch_size=16,warmup_steps=100'
    python bench/demo_recipe.py --steps 850 --variants tiny 'tiny:mlp=relu2' --threads 1 --compile on

A variant is a candidate of `tinylib.demo.plan` (by name), optionally followed by `:field=value,...`: fields
of TrainConfig (batch_size, warmup_steps, muon_lr...) or of ModelConfig (mlp, n_layer, dropout...). Each runs
the demo's recipe for `--steps` optimizer steps from the same seed, then scores the whole validation file in
non-overlapping windows as the demo does. Runs are sequential; CPU seconds (this process, training only) are
the figure that stays fair on a busy machine: compare variants at equal CPU time by giving the cheaper one
proportionally more steps (`name@steps`). One seed per run: repeat with --seed to see the noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from tinylib.checkpoint import load_model
from tinylib.config import ModelConfig
from tinylib.demo.__main__ import full_val_loss
from tinylib.demo.plan import candidate_named
from tinylib.device import describe_machine, dtype_name, pick_device, pick_dtype
from tinylib.train import train

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def parse_variant(text: str, default_steps: int) -> tuple[str, dict, dict, int]:
    """'name[@steps][:field=value,...]' -> (candidate name, TrainConfig fields, model overrides, steps)."""
    head, _, tail = text.partition(":")
    name, _, steps = head.partition("@")
    train_fields, model_fields = {}, {}
    for item in filter(None, tail.split(",")):
        key, _, raw = item.partition("=")
        value = json.loads(raw) if raw[:1] in "0123456789-[{tfn" else raw
        (model_fields if key in MODEL_FIELDS else train_fields)[key] = value
    return name, train_fields, model_fields, int(steps) if steps else default_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", required=True, help="name[@steps][:field=value,...]")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per variant (default 300)")
    parser.add_argument("--data", default="data/tinystories-4096", help="token files folder")
    parser.add_argument("--dtype", default="auto", help="auto (what the demo picks here), bf16 or fp32")
    parser.add_argument("--compile", default="off", help="off (default: no compile time) or on")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    dtype = pick_dtype(args.dtype, device)
    print(f"{describe_machine(device)}; {dtype_name(dtype)}, compile {args.compile}, seed {args.seed}")
    print(f"{'variant':<48} {'steps':>6} {'tokens':>10} {'cpu s':>8} {'wall s':>8} {'bits/byte':>10}")
    for text in args.variants:
        name, train_fields, model_fields, steps = parse_variant(text, args.steps)
        base = candidate_named(name).train_config()
        with tempfile.TemporaryDirectory() as out:
            cfg = dataclasses.replace(
                base, data=args.data, out_dir=out, max_steps=steps, dtype=dtype_name(dtype),
                compile=args.compile, seed=args.seed, eval_every=10**9, sample_tokens=0, progress=False,
                keep_previous=0,
                model_overrides={**base.model_overrides, **model_fields}, **train_fields)
            wall, cpu = time.perf_counter(), time.process_time()
            result = train(cfg)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            model = load_model(Path(out) / "latest", device=device)
            _, bpb = full_val_loss(model, Path(args.data), cfg.seq_len, device, dtype)
        print(f"{text:<48} {steps:>6} {result.tokens:>10,} {cpu:>8.0f} {wall:>8.0f} {bpb:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
