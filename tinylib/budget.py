"""Budgets before a run, and the check after it: tokens, steps, hours and cost, then predicted vs. measured.

What this module does, in this order: token targets (Chinchilla's tokens per parameter, a FLOP budget or a
fixed count) and the epochs they imply on TinyStories; tokens per optimizer step and steps; `plan`: FLOPs,
hours and cost on N devices at an assumed MFU; `compare_run`: a run's measured speed and MFU beside the
prediction.

What it leaves to others: FLOPs per token, device peaks and MFU (`tinylib.flops`), parameter counts
(`tinylib.config`), parsing stories (`tinylib.stories`), the training loop (`tinylib.train`), metrics files
(`tinylib.metrics`), plots and the slider panel (`tinylib.widgets.budget`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylib.config import ModelConfig, get_config, param_counts
from tinylib.device import dtype_name, pick_device
from tinylib.flops import device_name, flop_params, flops_per_token, lookup_peak, peak_flops
from tinylib.metrics import read_metrics
from tinylib.stories import parse_stories
from tinylib.tokenizer import get_tokenizer


def chinchilla_tokens(n_params: float, tokens_per_param: float = 20.0) -> int:
    """Hoffmann et al. (2022): compute-optimal training uses about 20 tokens per parameter."""
    if n_params <= 0 or tokens_per_param <= 0:
        raise ValueError(f"n_params={n_params} and tokens_per_param={tokens_per_param} must be positive")
    return int(round(n_params * tokens_per_param))


def token_target(model: ModelConfig | float, *, tokens_per_param: float = 20.0,
                 flop_budget: float | None = None, tokens: float | None = None,
                 seq_len: int | None = None) -> int:
    """Tokens to train on: a fixed count (`tokens`), what a FLOP budget buys (`flop_budget`, needs a config
    and uses the training FLOPs per token at `seq_len`), or Chinchilla's tokens per parameter (the default, on
    the total parameter count with a tied matrix counted once)."""
    if tokens is not None and flop_budget is not None:
        raise ValueError("give tokens or flop_budget, not both")
    if tokens is not None:
        return int(tokens)
    if flop_budget is not None:
        if not isinstance(model, ModelConfig):
            raise ValueError("a FLOP budget needs a ModelConfig: FLOPs per token depend on the shape, not N")
        return int(flop_budget // flops_per_token(model, seq_len or model.max_seq_len))
    n = param_counts(model).total if isinstance(model, ModelConfig) else model
    return chinchilla_tokens(n, tokens_per_param)


# Official file sizes (../shared/data/tinystories/SOURCES.md); V2 valid_bytes: at V2 train's bytes per story.
TINYSTORIES: dict[str, dict[str, float]] = {
    "v1": {"train_bytes": 1.92e9, "train_stories": 2.12e6, "valid_bytes": 19.4e6, "valid_stories": 22e3},
    "v2": {"train_bytes": 2.23e9, "train_stories": 2_717_699,
           "valid_bytes": 27_630 * 2.23e9 / 2_717_699, "valid_stories": 27_630},
}

# Text tokens per byte of story text (UTF-8, stories as `tinylib.stories.parse_stories` gives them), MEASURED
# with `measure_tokens_per_byte` on the files in ../shared/data/tinystories (SOURCES.md):
#   "v1": TinyStories-valid.first1000.hf.txt (1,000 stories, 789,069 bytes of text). The validation sample:
#     the shipped tinystories-* BPEs were trained on the train sample and compress it 1-2% better than the
#     unseen text of the full train file. "v1_train_sample": TinyStories-train.first2316.txt (2,316 stories,
#     2,059,844 bytes), for comparison. "v2_sample": TinyStoriesV2-GPT4-train.cs336_fixture_sample.txt (5
#     stories, 3,717 bytes): V2 (GPT-4 written) text tokenizes like V1, within 1.5% for every tokenizer.
# Full-file token counts (`tinystories_tokens`) are EXTRAPOLATED: the "v1" figure x the file's bytes of story
# text, plus one BOS per story (the token files frame every story as [bos] + tokens).
TOKENS_PER_BYTE: dict[str, dict[str, float]] = {
    "gpt2": {"v1": 0.24112, "v1_train_sample": 0.24286, "v2_sample": 0.24374},
    "tinystories-512": {"v1": 0.42224, "v1_train_sample": 0.42667, "v2_sample": 0.42077},
    "tinystories-4096": {"v1": 0.24648, "v1_train_sample": 0.24343, "v2_sample": 0.24724},
    "tinystories-8192": {"v1": 0.23666, "v1_train_sample": 0.23303, "v2_sample": 0.23433},
}
# Bytes per story that are not story text (the "\n<|endoftext|>\n" separators and stripped whitespace) in the
# official .txt format, measured on TinyStories-train.first2316.txt: (2,096,346 - 2,059,844) / 2,316.
SEPARATOR_BYTES_PER_STORY = 15.76


def measure_tokens_per_byte(tokenizer, path: str | os.PathLike) -> dict:
    """Text tokens per byte of story text in a TinyStories file (how `TOKENS_PER_BYTE` was measured)."""
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    raw = Path(path).read_bytes()
    stories = parse_stories(raw.decode("utf-8"))
    text_bytes = sum(len(s.encode("utf-8")) for s in stories)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(stories))
    return {"tokenizer": tok.name, "file_bytes": len(raw), "text_bytes": text_bytes, "stories": len(stories),
            "tokens": n_tokens, "tokens_per_byte": n_tokens / text_bytes}


def tinystories_tokens(version: str = "v1", tokenizer: str = "tinystories-4096", split: str = "train") -> int:
    """Tokens (BOS included) in the full official TinyStories `split` for `tokenizer`: extrapolated from the
    measured tokens per byte (`TOKENS_PER_BYTE`) and the official file sizes (`TINYSTORIES`)."""
    if version not in TINYSTORIES:
        raise ValueError(f"version={version!r}; expected one of {sorted(TINYSTORIES)}")
    if tokenizer not in TOKENS_PER_BYTE:
        raise ValueError(f"no measured tokens/byte for {tokenizer!r}; known: {sorted(TOKENS_PER_BYTE)}; "
                         "measure one with measure_tokens_per_byte(tokenizer, path)")
    if split not in ("train", "valid"):
        raise ValueError(f"split={split!r}; expected 'train' or 'valid'")
    sizes = TINYSTORIES[version]
    stories = sizes[f"{split}_stories"]
    text_bytes = sizes[f"{split}_bytes"] - stories * SEPARATOR_BYTES_PER_STORY
    return int(text_bytes * TOKENS_PER_BYTE[tokenizer]["v1"] + stories)


def epochs(tokens: float, dataset_tokens: float) -> float:
    """Passes over the data that `tokens` of training implies (more than ~4 and repeated data loses value)."""
    if dataset_tokens <= 0:
        raise ValueError(f"dataset_tokens={dataset_tokens} must be positive")
    return tokens / dataset_tokens


def tokens_per_step(micro_batch: int, seq_len: int, grad_accum: int = 1, world_size: int = 1) -> int:
    """Tokens per optimizer step = micro-batch x sequence x accumulation x world size: every factor counts."""
    for name, v in (("micro_batch", micro_batch), ("seq_len", seq_len), ("grad_accum", grad_accum),
                    ("world_size", world_size)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name}={v} must be a positive integer")
    return int(micro_batch * seq_len * grad_accum * world_size)


def steps_for_tokens(tokens: float, step_tokens: int) -> int:
    """Optimizer steps to see at least `tokens` tokens at `step_tokens` per step."""
    if step_tokens < 1:
        raise ValueError(f"step_tokens={step_tokens} must be positive")
    return math.ceil(tokens / step_tokens)


@dataclass
class Plan:
    """What a run will cost, before it starts. FLOPs and hours use `flops_per_token` (6 N + 12 L T d)."""

    name: str
    params: int  # total, a tied matrix once
    params_non_embedding: int
    flop_params: int  # the N of 6 N (non-embedding + LM head)
    seq_len: int
    flops_per_token: float
    tokens: int  # the target
    tokens_per_step: int
    steps: int
    total_flops: float  # steps x tokens_per_step x flops_per_token
    device: str
    dtype: str
    peak_flops: float  # per device
    mfu: float
    n_gpus: int
    tokens_per_s: float  # all devices together
    step_time_s: float
    hours: float
    gpu_hours: float
    price_per_gpu_hour: float
    cost: float
    dataset_tokens: int | None = None
    epochs: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("model", self.name),
            ("parameters (total / non-embedding)",
             f"{self.params / 1e6:,.2f}M / {self.params_non_embedding / 1e6:,.2f}M"),
            ("N for FLOPs (non-emb. + LM head)", f"{self.flop_params / 1e6:,.2f}M"),
            (f"FLOPs per token (train, T={self.seq_len})", f"{self.flops_per_token:.3e}"),
            ("tokens", f"{self.tokens:,.0f} ({self.tokens / self.params:.1f} per parameter)"),
            ("tokens per step", f"{self.tokens_per_step:,}"),
            ("optimizer steps", f"{self.steps:,}"),
            ("total FLOPs", f"{self.total_flops:.3e}"),
            ("device",
             f"{self.n_gpus} x {self.device} ({self.peak_flops / 1e12:,.1f} TFLOP/s {self.dtype} peak)"),
            ("assumed MFU", f"{self.mfu:.0%}"),
            ("tokens/s (all devices)", f"{self.tokens_per_s:,.0f}"),
            ("step time", f"{self.step_time_s:.3f} s"),
            ("wall-clock", _fmt_hours(self.hours)),
            ("cost", f"${self.cost:,.2f} ({self.gpu_hours:,.1f} GPU-h x ${self.price_per_gpu_hour:.2f})"),
        ]
        if self.epochs is not None:
            rows.append(("epochs of the dataset", f"{self.epochs:.2f} (of {self.dataset_tokens:,} tokens)"))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td style='text-align:left'>{k}</td><td style='text-align:left'>{v}</td></tr>"
                       for k, v in self.rows())
        return f"<table>{body}</table>"


def _fmt_hours(hours: float) -> str:
    if hours < 1:
        return f"{hours * 3600:.1f} s" if hours < 1 / 60 else f"{hours * 60:.1f} min"
    return f"{hours:.2f} h" if hours < 48 else f"{hours / 24:.1f} days"


def plan(model: str | ModelConfig = "tiny", *, vocab_size: int = 4096, seq_len: int | None = None,
         micro_batch: int = 16, grad_accum: int = 1, n_gpus: int = 1, device: str = "H100 SXM",
         dtype: str = "bf16", mfu: float = 0.35, price_per_gpu_hour: float = 2.0,
         tokens: float | None = None, tokens_per_param: float = 20.0, flop_budget: float | None = None,
         dataset_tokens: int | None = None) -> Plan:
    """Plan a run: tokens (Chinchilla by default), steps, FLOPs, wall-clock and cost on `n_gpus` x `device`.

    `mfu` is an assumption (careful PyTorch GPT-2 124M training reaches 30-45% on H100; shared/PRODUCT.md);
    `price_per_gpu_hour` is whatever your provider charges. `n_gpus` is the world size: it multiplies the
    tokens per step.
    """
    cfg = model if isinstance(model, ModelConfig) else get_config(model, vocab_size=vocab_size)
    name = model if isinstance(model, str) else f"{cfg.style} {cfg.n_layer}L/{cfg.d_model}D"
    seq_len = seq_len or cfg.max_seq_len
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu}; expected a fraction in (0, 1], e.g. 0.35")
    counts = param_counts(cfg)
    target = token_target(cfg, tokens_per_param=tokens_per_param, flop_budget=flop_budget, tokens=tokens,
                          seq_len=seq_len)
    step_tokens = tokens_per_step(micro_batch, seq_len, grad_accum, n_gpus)
    steps = steps_for_tokens(target, step_tokens)
    fpt = flops_per_token(cfg, seq_len)
    total = steps * step_tokens * fpt
    peak = peak_flops(device, dtype)
    tps = n_gpus * peak * mfu / fpt
    seconds = total / (n_gpus * peak * mfu)
    return Plan(name=name, params=counts.total, params_non_embedding=counts.non_embedding,
                flop_params=flop_params(cfg), seq_len=seq_len, flops_per_token=fpt, tokens=target,
                tokens_per_step=step_tokens, steps=steps, total_flops=total, device=str(device), dtype=dtype,
                peak_flops=peak, mfu=mfu, n_gpus=n_gpus, tokens_per_s=tps, step_time_s=step_tokens / tps,
                hours=seconds / 3600, gpu_hours=n_gpus * seconds / 3600, dataset_tokens=dataset_tokens,
                price_per_gpu_hour=price_per_gpu_hour, cost=n_gpus * seconds / 3600 * price_per_gpu_hour,
                epochs=epochs(steps * step_tokens, dataset_tokens) if dataset_tokens else None)


def plans_table(plans: list[Plan]) -> str:
    """One line per plan: the figures people compare across models and devices."""
    head = (f"{'model':<22} {'params':>9} {'tokens':>9} {'steps':>9} {'FLOPs':>9} {'device':>16} "
            f"{'MFU':>4} {'wall-clock':>11} {'cost':>10}")
    lines = [head, "-" * len(head)]
    for p in plans:
        lines.append(f"{p.name:<22} {p.params / 1e6:>8.1f}M {p.tokens / 1e9:>8.2f}B {p.steps:>9,} "
                     f"{p.total_flops:>9.2e} {str(p.n_gpus) + ' x ' + p.device:>16} {p.mfu:>4.0%} "
                     f"{_fmt_hours(p.hours):>11} {'$' + format(p.cost, ',.2f'):>10}")
    return "\n".join(lines)


# The MFU a prediction assumes when none is given, by (device type, dtype). GPUs: careful GPT-2 124M training
# reaches 35-50% on A100 and 30-45% on H100, small models less (shared/PRODUCT.md). CPUs: the tiny preset's
# tokens/s on the project's 2-core Intel AMX machines over their measured peaks (15k tok/s fp32 x 11.0
# MFLOP/token / 350 GFLOP/s ~ 47%; 20k tok/s bf16 / 2 TFLOP/s ~ 11%: bf16 matmuls are fast, the rest is not).
ASSUMED_MFU: dict[tuple[str, str], float] = {
    ("cuda", "bf16"): 0.35, ("cuda", "fp16"): 0.35, ("cuda", "fp32"): 0.35,
    ("mps", "bf16"): 0.25, ("mps", "fp16"): 0.25, ("mps", "fp32"): 0.25,
    ("cpu", "bf16"): 0.10, ("cpu", "fp16"): 0.10, ("cpu", "fp32"): 0.40,
}


@dataclass
class RunComparison:
    """Predicted versus measured speed of a finished run. `rows`: (quantity, predicted, measured)."""

    run: str
    device: str
    dtype: str
    peak_flops: float
    assumed_mfu: float
    tokens_per_step: int
    flops_per_token: float
    steps_measured: int
    rows: list[tuple[str, float, float]]

    def __getitem__(self, quantity: str) -> tuple[float, float]:
        for name, pred, meas in self.rows:
            if name == quantity:
                return pred, meas
        raise KeyError(f"{quantity!r}; rows are {[r[0] for r in self.rows]}")

    def __str__(self) -> str:
        head = f"{'':<24} {'predicted':>14} {'measured':>14} {'measured/predicted':>19}"
        lines = [f"run {self.run}: {self.device} {self.dtype}, peak {self.peak_flops / 1e12:,.2f} TFLOP/s, "
                 f"{self.tokens_per_step:,} tokens/step, prediction at {self.assumed_mfu:.0%} MFU, "
                 f"{self.steps_measured} logged steps", head, "-" * len(head)]
        for name, pred, meas in self.rows:
            fmt = (lambda v: f"{v:.1%}") if "MFU" in name else (lambda v: f"{v:,.4g}")
            ratio = meas / pred if pred else float("nan")
            lines.append(f"{name:<24} {fmt(pred):>14} {fmt(meas):>14} {ratio:>19.2f}")
        return "\n".join(lines)


def compare_run(run: str | os.PathLike, *, device: str | torch.device | None = None,
                dtype: str | None = None, assumed_mfu: float | None = None, model: ModelConfig | None = None,
                step_tokens: int | None = None, seq_len: int | None = None,
                skip_first: int = 1) -> RunComparison:
    """A run's measured step time, tokens/s and MFU (medians from its metrics.jsonl; `run` is the folder or
    the file) beside the prediction at `assumed_mfu` (default `ASSUMED_MFU` for the device type and dtype).
    Model, sequence length and tokens per step come from the run's config.json (in `run`, or its `latest/` or
    `best/` checkpoint) unless given; device and dtype likewise, else this machine's default device and bf16.
    A CPU peak is re-measured now: on a machine busier or quieter than during the run the two MFU rows differ.
    Records up to step `skip_first` are left out (warm-up and compilation make them slow).
    """
    path = Path(run)
    run_dir = path.parent if path.is_file() else path
    records = [r for r in read_metrics(path) if r.get("step_time_s") and r.get("tokens_per_s")]
    found = [f for f in ("config.json", "latest/config.json", "best/config.json") if (run_dir / f).is_file()]
    config = json.loads((run_dir / found[0]).read_text()) if found else {}
    train_cfg = config.get("train", {})
    if model is None:
        if "model" not in config:
            raise ValueError(f"no config.json with a 'model' entry under {run_dir}: pass model=ModelConfig()")
        model = ModelConfig.from_dict(config["model"])
    seq_len = seq_len or train_cfg.get("seq_len") or model.max_seq_len
    world = int(config.get("world_size", 1))
    batch = train_cfg.get("batch_size")
    step_tokens = step_tokens or config.get("tokens_per_step") or train_cfg.get("tokens_per_step") or (
        tokens_per_step(batch, seq_len, 1, world) if batch else None)
    if step_tokens is None:
        raise ValueError("cannot tell the tokens per step: the run's config.json has none; pass step_tokens=")
    if device is None:
        named = config.get("device_name")  # e.g. "NVIDIA H100 80GB HBM3": a table entry works on any machine
        device = named if named and lookup_peak(named) else config.get("device") or train_cfg.get("device")
    if device in (None, "auto"):
        device = pick_device().type
    dtype = dtype or config.get("dtype") or train_cfg.get("dtype") or "auto"
    dtype = dtype_name("bf16" if dtype == "auto" else dtype)
    timed = [r for r in records if r["step"] > skip_first] or records
    if not timed:
        raise ValueError(f"{path} has no records with step_time_s and tokens_per_s: not a training log?")
    dev_type = device.split(":")[0] if isinstance(device, str) else torch.device(device).type
    assumed = assumed_mfu if assumed_mfu is not None else ASSUMED_MFU.get((dev_type, dtype), 0.35)
    fpt = flops_per_token(model, seq_len)
    peak = peak_flops(device, dtype)
    world_peak = world * peak
    pred_tps = world_peak * assumed / fpt
    meas_tps = statistics.median(r["tokens_per_s"] for r in timed)
    rows = [
        ("step time (s)", step_tokens / pred_tps, statistics.median(r["step_time_s"] for r in timed)),
        ("tokens/s", pred_tps, meas_tps),
        ("MFU (from tokens/s)", assumed, meas_tps * fpt / world_peak),
    ]
    logged = [r["mfu"] for r in timed if r.get("mfu") is not None]
    if logged:
        rows.append(("MFU (trainer's log)", assumed, statistics.median(logged)))
    return RunComparison(run=str(run_dir), device=device_name(device), dtype=dtype, peak_flops=peak,
                         assumed_mfu=assumed, tokens_per_step=int(step_tokens), flops_per_token=fpt,
                         steps_measured=len(timed), rows=rows)
