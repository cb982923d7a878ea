"""Budgets before a run, and the check after it: parameters, FLOPs, tokens, steps, hours, cost and MFU.

What this module does:
- FLOPs per token from a `ModelConfig` (closed form, checked against `torch.utils.flop_counter` by the tests),
  and `count_flops` to measure them with PyTorch's own FLOP counter.
- Token targets (Chinchilla-style tokens per parameter, a FLOP budget, or a fixed count), the epochs they imply on
  TinyStories for each shipped tokenizer, tokens per optimizer step and the number of steps.
- Peak FLOP/s per device (a table with a source for every number; a matmul probe for CPUs and unknown devices),
  model FLOPs utilisation (MFU; the trainer logs `mfu(...)` from here), and `plan(...)`: hours and cost on N GPUs.
- `compare_run`: a finished run's measured step time, tokens/s and MFU next to the prediction.

What it leaves to others: parameter counting (`tinylib.config.param_counts`, reused here), the model, the
training loop (`tinylib.train`), reading metrics files (`tinylib.metrics`).

FLOP conventions (the PaLM appendix B / nanoGPT `estimate_mfu` convention, stated once here):
- A matmul of an [m, k] by a [k, n] matrix costs 2mkn FLOPs (one multiply, one add). Per token, each weight
  matrix costs 2 FLOPs per parameter forward and 4 backward (gradients with respect to the input and to the weight),
  so a training step costs 6 N FLOPs per token and a forward pass 2 N.
- N here (`flop_params`) = the non-embedding parameters (attention, MLP, norms, biases: Kaplan's N) plus the LM-head
  matrix vocab x d_model. The LM head is a real matmul even when it is tied to the token embedding, so it counts
  once either way; the embedding lookups (token and learned position) are gathers, not FLOPs, and do not count.
  `include_embedding=False` drops the LM head and gives Kaplan's 6 N_non-embedding. Norm weights and biases are
  counted as if they were matmul weights (they cost ~1 FLOP per token, not 6): under 0.5% for every preset.
- Attention scores and the weighted sum of values: per layer and token, q.k over T keys costs 2 T d_model and the
  pattern times v another 2 T d_model, so 4 L T d_model forward and 12 L T d_model for training. This counts every
  query against all T keys (the PaLM/nanoGPT convention: comparable with published MFU figures), although a causal
  mask makes half of that work unnecessary; `causal=True` halves the term. Grouped-query attention does not change
  it (queries still have n_head heads). `torch.utils.flop_counter` counts the same full T x T work.
- Training FLOPs per token = 6 N + 12 L T d_model; forward (generation) = 2 N + 4 L T d_model, where T is the
  context each token attends to (a KV-cached decode step at context S: seq_len=S).
- MFU = achieved model FLOP/s (tokens/s x training FLOPs per token) / the device's dense peak. Recomputation
  (activation checkpointing, the flash-attention backward re-deriving the scores) is not credited: MFU, not HFU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylib.config import ModelConfig, ParamCounts, get_config, param_counts

__all__ = [
    "ParamCounts", "param_counts", "flop_params", "flops_per_token", "count_flops", "FlopCount",
    "DevicePeak", "PEAKS", "peak_flops", "measure_peak_flops", "mfu",
    "chinchilla_tokens", "token_target", "TOKENS_PER_BYTE", "TINYSTORIES", "tinystories_tokens",
    "measure_tokens_per_byte", "epochs", "tokens_per_step", "steps_for_tokens",
    "Plan", "plan", "plans_table", "measure_train_step", "StepMeasurement", "compare_run", "RunComparison",
    "plot_chinchilla", "plot_time_cost", "budget_widget",
]

_DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
           "fp32": "fp32", "float32": "fp32", "float": "fp32"}


def _dtype_name(dtype: str | torch.dtype) -> str:
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of 'bf16', 'fp16', 'fp32' (or the torch dtypes)")
    return _DTYPES[key]


def _as_config(model: str | ModelConfig, vocab_size: int = 4096) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else get_config(model, vocab_size=vocab_size)


# --- FLOPs ----------------------------------------------------------------------------------------------------

def flop_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """The N in 6 N: non-embedding parameters plus (by default) the LM-head matmul, tied or not."""
    n = param_counts(cfg).non_embedding
    return n + cfg.vocab_size * cfg.d_model if include_embedding else n


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True, include_embedding: bool = True,
                    causal: bool = False) -> float:
    """Model FLOPs per token: 6 N + 12 L T d (training) or 2 N + 4 L T d (forward); see the module docstring."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len}; it must be a positive number of positions")
    n = flop_params(cfg, include_embedding=include_embedding)
    attention = 2 * 2 * cfg.n_layer * seq_len * cfg.d_model  # q.k and pattern.v, forward
    if causal:
        attention /= 2
    passes = 3 if training else 1  # backward = 2 x forward
    return float(passes * (2 * n + attention))


@dataclass(frozen=True)
class FlopCount:
    """FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` for one forward (+ backward) pass."""

    total: int
    tokens: int
    by_op: dict[str, int]

    @property
    def per_token(self) -> float:
        return self.total / self.tokens


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_sdpa_mapping() -> dict:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel (it would count 0 FLOPs for
    attention on CPU); register the same formulas for it. Like torch's CUDA formulas, the backward includes the
    recomputation of the scores: 14 L T d per token for attention instead of the model-FLOP 12 L T d."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return mapping


def count_flops(cfg: ModelConfig, batch_size: int = 1, seq_len: int | None = None, *, training: bool = True,
                device: str | torch.device = "meta", attn_impl: str = "sdpa") -> FlopCount:
    """Run one forward (+ backward) of a freshly built model under FlopCounterMode and count its FLOPs.

    On the meta device nothing is computed (shapes only), so even gpt2_124M at 1,024 positions takes a second;
    there SDPA decomposes into plain matmuls. On CPU the fused attention kernel is counted through
    `_cpu_sdpa_mapping` (including its backward recomputation).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from tinylib.model import Transformer

    seq_len = seq_len or cfg.max_seq_len
    with torch.device(device):
        model = Transformer(cfg, attn_impl)
        idx = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping())
    with counter:
        if training:
            _, loss = model(idx, idx)
            loss.backward()
        else:
            with torch.no_grad():
                model(idx)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(total=int(counter.get_total_flops()), tokens=batch_size * seq_len, by_op=by_op)


# --- device peaks ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePeak:
    """Dense (no structured sparsity) peak FLOP/s of one device, and where the numbers come from."""

    name: str
    bf16: float  # tensor-core bf16 (fp16 the same) with fp32 accumulation, dense
    fp32: float  # plain fp32 (no TF32)
    source: str
    pattern: str  # regex matched against the lower-cased torch.cuda.get_device_name() or Apple chip name

    def flops(self, dtype: str | torch.dtype = "bf16") -> float:
        return self.fp32 if _dtype_name(dtype) == "fp32" else self.bf16


_H100 = ("NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): BF16 Tensor Core 1,979 (SXM) / "
         "1,513 (PCIe) / 1,671 (NVL) TFLOPS *with sparsity*, so dense is half; FP32 67 / 51 / 60 TFLOPS")
_H200 = ("NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): BF16 Tensor Core 1,979 (SXM) / "
         "1,671 (NVL) TFLOPS with sparsity, dense is half; FP32 67 / 60 TFLOPS")
_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): BF16 Tensor Core 312 TFLOPS "
         "dense (624 sparse), FP32 19.5 TFLOPS, the same for SXM4 and PCIe (PCIe sustains less under its power cap)")
_APPLE = ("Apple newsroom announcement of the chip (GPU TFLOPS, fp32, top GPU-core configuration); Apple publishes "
          "no bf16 figure and these GPUs have no faster bf16 matrix path, so the fp32 figure is the bf16 ceiling too")

# Order matters: the first pattern that matches wins (PCIe/NVL before the plain H100, which is the SXM part).
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H100 PCIe", 756.5e12, 51.2e12, _H100, r"h100.*pcie"),
    DevicePeak("H100 NVL", 835.5e12, 60.0e12, _H100, r"h100.*nvl"),
    DevicePeak("H100 SXM", 989.5e12, 66.9e12, _H100 + " (torch name e.g. 'NVIDIA H100 80GB HBM3'; GH200 too)",
               r"h100|gh200"),
    DevicePeak("H200 NVL", 835.5e12, 60.0e12, _H200, r"h200.*nvl"),
    DevicePeak("H200", 989.5e12, 66.9e12, _H200 + " (SXM)", r"h200"),
    DevicePeak("A100 PCIe", 312e12, 19.5e12, _A100, r"a100.*pcie"),
    DevicePeak("A100 SXM", 312e12, 19.5e12, _A100, r"a100"),
    DevicePeak("L4", 121e12, 30.3e12, "NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4): BF16 Tensor Core "
               "242 TFLOPS with sparsity (121 dense), FP32 30.3 TFLOPS", r"\bl4\b"),
    DevicePeak("RTX 4090", 165.2e12, 82.6e12, "NVIDIA Ada Lovelace GPU architecture whitepaper, appendix table: RTX "
               "4090 peak BF16 Tensor TFLOPS with FP32 accumulate 165.2 (330.4 sparse); FP32 82.6 TFLOPS. GeForce "
               "cards run fp32-accumulate at half the fp16-accumulate rate, and PyTorch accumulates in fp32",
               r"rtx 4090"),
    DevicePeak("RTX 5090", 209.5e12, 104.8e12, "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix table: "
               "RTX 5090 peak FP16/BF16 Tensor TFLOPS with FP16 accumulate 419 dense (838 sparse), half that with "
               "FP32 accumulate; FP32 104.8 TFLOPS. Consistent with PRODUCT.md: 162M params x 6 x 116k tok/s = "
               "113 TFLOP/s = 54% of 209.5", r"rtx 5090"),
    DevicePeak("Apple M1 Ultra", 21e12, 21e12, _APPLE + " (Mar 2022: 21 TFLOPS)", r"m1 ultra"),
    DevicePeak("Apple M1 Max", 10.4e12, 10.4e12, _APPLE + " (Oct 2021: 10.4 TFLOPS)", r"m1 max"),
    DevicePeak("Apple M1 Pro", 5.2e12, 5.2e12, _APPLE + " (Oct 2021: 5.2 TFLOPS)", r"m1 pro"),
    DevicePeak("Apple M1", 2.6e12, 2.6e12, _APPLE + " (Nov 2020: 2.6 TFLOPS)", r"\bm1\b"),
    DevicePeak("Apple M2 Ultra", 27.2e12, 27.2e12, _APPLE + " (Jun 2023: 27.2 TFLOPS)", r"m2 ultra"),
    DevicePeak("Apple M2 Max", 13.6e12, 13.6e12, _APPLE + " (Jan 2023: 13.6 TFLOPS)", r"m2 max"),
    DevicePeak("Apple M2 Pro", 6.8e12, 6.8e12, _APPLE + " (Jan 2023: 6.8 TFLOPS)", r"m2 pro"),
    DevicePeak("Apple M2", 3.6e12, 3.6e12, _APPLE + " (Jun 2022: 3.6 TFLOPS)", r"\bm2\b"),
    DevicePeak("CPU dev box (2 cores)", 2.0e12, 0.35e12, "measured, not published: the 2-core AVX-512/AMX CI "
               "machines of this project, a 2048^2 matmul (shared/PRODUCT.md). For planning only: peak_flops('cpu') "
               "always measures the CPU it runs on", r"^cpu dev box"),
)

_PROBED: dict[tuple[str, str, int], float] = {}


def _lookup_peak(name: str) -> DevicePeak | None:
    low = name.lower().strip()
    for entry in PEAKS:
        if entry.name.lower() == low:
            return entry
    for entry in PEAKS:
        if re.search(entry.pattern, low):
            return entry
    return None


def _apple_chip() -> str:
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: str | torch.device) -> str:
    """A human name for a device: the CUDA name, the Apple chip, or 'cpu'."""
    if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps"):
        return device
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return _apple_chip() or "mps"
    return "cpu"


def measure_peak_flops(device: str | torch.device = "cpu", dtype: str | torch.dtype = "bf16", *, size: int = 2048,
                       seconds: float = 0.3) -> float:
    """Best FLOP/s of repeated size^3 matmuls over about `seconds` (cached per process and arguments).

    The best, not the mean: on a shared machine other processes only ever slow a probe down. On this project's
    2-core CPUs expect ~2e12 for bf16 and ~3.5e11 for fp32 (shared/PRODUCT.md).
    """
    dev = torch.device(device)
    name = _dtype_name(dtype)
    key = (str(dev), name, size)
    if key in _PROBED:
        return _PROBED[key]
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    a = torch.randn(size, size, device=dev, dtype=torch_dtype)
    b = torch.randn(size, size, device=dev, dtype=torch_dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    a @ b  # warm-up: allocation, kernel selection
    sync()
    best, start = float("inf"), time.perf_counter()
    for i in range(1000):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > seconds:
            break
    _PROBED[key] = 2 * size**3 / best
    return _PROBED[key]


def peak_flops(device: str | torch.device, dtype: str | torch.dtype = "bf16") -> float:
    """Dense peak FLOP/s of `device` for `dtype`.

    `device` is a torch device ("cuda", "cuda:1", "mps", "cpu") or a table name ("H100 SXM", "A100", "RTX 4090").
    CUDA and Apple devices are looked up by name in `PEAKS`; CPUs and devices missing from the table are measured
    with `measure_peak_flops` (the measured rate is an achievable peak, somewhat below a spec sheet's).
    """
    name = _dtype_name(dtype)
    if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps"):
        entry = _lookup_peak(device)
        if entry is None:
            raise ValueError(f"unknown device {device!r}; known: {[p.name for p in PEAKS]}, or pass a torch device "
                             "('cuda', 'mps', 'cpu') to look it up or measure it")
        return entry.flops(name)
    dev = torch.device(device)
    if dev.type in ("cuda", "mps"):
        entry = _lookup_peak(device_name(dev))
        if entry is not None:
            return entry.flops(name)
    return measure_peak_flops(dev, name)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, device: str | torch.device,
        dtype: str | torch.dtype = "bf16", *, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: tokens_per_s x training FLOPs per token / (n_devices x peak). tokens_per_s is
    the throughput of those n_devices together (the trainer passes per-process tokens/s with n_devices=1)."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / (n_devices * peak_flops(device, dtype))


# --- tokens ---------------------------------------------------------------------------------------------------

def chinchilla_tokens(n_params: float, tokens_per_param: float = 20.0) -> int:
    """Hoffmann et al. (2022): compute-optimal training uses about 20 tokens per parameter."""
    if n_params <= 0 or tokens_per_param <= 0:
        raise ValueError(f"n_params={n_params} and tokens_per_param={tokens_per_param} must be positive")
    return int(round(n_params * tokens_per_param))


def token_target(model: ModelConfig | float, *, tokens_per_param: float = 20.0, flop_budget: float | None = None,
                 tokens: float | None = None, seq_len: int | None = None) -> int:
    """Tokens to train on: a fixed count (`tokens`), what a FLOP budget buys (`flop_budget`, needs a config and
    uses the training FLOPs per token at `seq_len`), or Chinchilla's tokens per parameter (the default, on the
    total parameter count with a tied matrix counted once)."""
    if tokens is not None and flop_budget is not None:
        raise ValueError("give tokens or flop_budget, not both")
    if tokens is not None:
        return int(tokens)
    if flop_budget is not None:
        if not isinstance(model, ModelConfig):
            raise ValueError("a FLOP budget needs a ModelConfig (FLOPs per token depend on the shape, not only N)")
        return int(flop_budget // flops_per_token(model, seq_len or model.max_seq_len))
    n = param_counts(model).total if isinstance(model, ModelConfig) else model
    return chinchilla_tokens(n, tokens_per_param)


# Sizes of the full official TinyStories files (../shared/data/tinystories/SOURCES.md). The V2 validation file's
# size is not recorded there; it is estimated from its story count at the V2 train file's bytes per story.
TINYSTORIES: dict[str, dict[str, float]] = {
    "v1": {"train_bytes": 1.92e9, "train_stories": 2.12e6, "valid_bytes": 19.4e6, "valid_stories": 22e3},
    "v2": {"train_bytes": 2.23e9, "train_stories": 2_717_699,
           "valid_bytes": 27_630 * 2.23e9 / 2_717_699, "valid_stories": 27_630},
}

# Text tokens per byte of story text (UTF-8, stories as `tinylib.data.parse_stories` normalizes them), MEASURED
# with `measure_tokens_per_byte` on the files in ../shared/data/tinystories (SOURCES.md):
#   "v1": TinyStories-valid.first1000.hf.txt (1,000 stories, 789,069 bytes of text). The validation sample,
#         because the shipped tinystories-* BPEs were trained on the train sample and compress it 1-2% better
#         than unseen text; the full train file is unseen text for them except its first 2 MB.
#   "v1_train_sample": TinyStories-train.first2316.txt (2,316 stories, 2,059,844 bytes), for comparison.
#   "v2_sample": TinyStoriesV2-GPT4-train.cs336_fixture_sample.txt (5 stories, 3,717 bytes): a rough check that
#         V2 (GPT-4 written) text tokenizes like V1 (within 1.5% for every tokenizer).
# Token counts of the full files (`tinystories_tokens`) are EXTRAPOLATED: the "v1" figure x the file's bytes of
# story text, plus one BOS per story (the token files frame every story as [bos] + tokens).
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
    from tinylib.data import parse_stories
    from tinylib.tokenizer import get_tokenizer

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
        raise ValueError(f"no measured tokens/byte for tokenizer {tokenizer!r}; known: {sorted(TOKENS_PER_BYTE)}. "
                         "Measure one with measure_tokens_per_byte(tokenizer, path)")
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


# --- steps ----------------------------------------------------------------------------------------------------

def tokens_per_step(micro_batch: int, seq_len: int, grad_accum: int = 1, world_size: int = 1) -> int:
    """Tokens per optimizer step = micro-batch x sequence x accumulation x world size (every factor counts)."""
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


# --- plans ----------------------------------------------------------------------------------------------------

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

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("model", self.name),
            ("parameters (total / non-embedding)", f"{self.params / 1e6:,.2f}M / {self.params_non_embedding / 1e6:,.2f}M"),
            ("N for FLOPs (non-emb. + LM head)", f"{self.flop_params / 1e6:,.2f}M"),
            (f"FLOPs per token (train, T={self.seq_len})", f"{self.flops_per_token:.3e}"),
            ("tokens", f"{self.tokens:,.0f} ({self.tokens / self.params:.1f} per parameter)"),
            ("tokens per step", f"{self.tokens_per_step:,}"),
            ("optimizer steps", f"{self.steps:,}"),
            ("total FLOPs", f"{self.total_flops:.3e}"),
            ("device", f"{self.n_gpus} x {self.device} ({self.peak_flops / 1e12:,.1f} TFLOP/s {self.dtype} peak)"),
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
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.2f} h"
    return f"{hours / 24:.1f} days"


def plan(model: str | ModelConfig = "tiny", *, vocab_size: int = 4096, seq_len: int | None = None,
         micro_batch: int = 16, grad_accum: int = 1, n_gpus: int = 1, device: str = "H100 SXM",
         dtype: str = "bf16", mfu: float = 0.35, price_per_gpu_hour: float = 2.0,
         tokens: float | None = None, tokens_per_param: float = 20.0, flop_budget: float | None = None,
         dataset_tokens: int | None = None) -> Plan:
    """Plan a run: tokens (Chinchilla by default), steps, FLOPs, wall-clock and cost on `n_gpus` x `device`.

    `mfu` is an assumption (PRODUCT.md: careful GPT-2 124M training reaches 30-45% on H100); `price_per_gpu_hour`
    is whatever your provider charges. `n_gpus` is the world size: it multiplies the tokens per step.
    """
    cfg = _as_config(model, vocab_size)
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
                hours=seconds / 3600, gpu_hours=n_gpus * seconds / 3600, price_per_gpu_hour=price_per_gpu_hour,
                cost=n_gpus * seconds / 3600 * price_per_gpu_hour, dataset_tokens=dataset_tokens,
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


# --- measuring ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepMeasurement:
    """Timed training steps (forward, backward, AdamW) of a freshly built model on this machine."""

    batch_size: int
    seq_len: int
    device: str
    dtype: str
    step_time_s: float  # median over the timed steps
    tokens_per_s: float
    flops_per_token: float
    peak_flops: float
    mfu: float


def measure_train_step(cfg: ModelConfig, batch_size: int = 8, seq_len: int | None = None,
                       device: str | torch.device = "cpu", dtype: str = "bf16", *, steps: int = 3,
                       warmup: int = 1, seed: int = 0) -> StepMeasurement:
    """Time `steps` full training steps on random tokens (after `warmup` untimed ones) and compute the MFU.

    A probe for planning, not a trainer: no data loading, no evaluation, fp32 weights with autocast as the
    trainer does. Random tokens cost the same FLOPs as real ones.
    """
    from tinylib.model import Transformer

    name = _dtype_name(dtype)
    seq_len = seq_len or cfg.max_seq_len
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=gen).to(dev)
    x, y = idx[:, :-1], idx[:, 1:]
    autocast = torch.autocast(dev.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[name],
                              enabled=True) if name != "fp32" else torch.autocast(dev.type, enabled=False)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tps = batch_size * seq_len / dt
    fpt = flops_per_token(cfg, seq_len)
    peak = peak_flops(dev, name)
    return StepMeasurement(batch_size=batch_size, seq_len=seq_len, device=device_name(dev), dtype=name,
                           step_time_s=dt, tokens_per_s=tps, flops_per_token=fpt, peak_flops=peak,
                           mfu=tps * fpt / peak)


# --- prediction versus measurement ----------------------------------------------------------------------------

# The MFU a prediction assumes when none is given, by (device type, dtype). GPUs: PRODUCT.md (careful GPT-2 124M
# training reaches 30-45% on A100/H100; small models less). CPUs: PRODUCT.md's measured tokens/s for the tiny
# preset on this project's 2-core machines through `flops_per_token` and their measured peaks (15k tok/s fp32 x
# 11.0 MFLOP/token / 350 GFLOP/s ~ 47%; 20k tok/s bf16 / 2 TFLOP/s ~ 11%: bf16 matmuls are fast, the rest is not).
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


def _find_run_config(run: Path) -> dict | None:
    for candidate in (run / "config.json", run / "latest" / "config.json", run / "best" / "config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def compare_run(run: str | os.PathLike, *, device: str | torch.device | None = None, dtype: str | None = None,
                assumed_mfu: float | None = None, model: ModelConfig | None = None,
                step_tokens: int | None = None, seq_len: int | None = None, skip_first: int = 1) -> RunComparison:
    """Read a run's metrics.jsonl (a run folder or the file) and set measured step time, tokens/s and MFU beside
    the prediction at `assumed_mfu` (default `ASSUMED_MFU` for the device type and dtype).

    The model, sequence length and tokens per step come from the run's config.json (`<run>/config.json` or its
    `latest/`/`best/` checkpoint) unless given. Device and dtype: given, else the config's when it names them,
    else this machine's default device (cuda, mps, cpu) and bf16. A CPU peak is re-measured now, so on a machine
    busier or quieter than during the run the two MFU rows differ (the trainer's row used the peak it measured).
    Records up to step `skip_first` are left out (warm-up and compilation make them slow); the measured figures
    are medians over the rest.
    """
    from tinylib.metrics import read_metrics

    path = Path(run)
    run_dir = path.parent if path.is_file() else path
    records = [r for r in read_metrics(path) if r.get("step_time_s") and r.get("tokens_per_s")]
    config = _find_run_config(run_dir) or {}
    train_cfg = config.get("train", {})
    if model is None:
        if "model" not in config:
            raise ValueError(f"no config.json with a 'model' entry under {run_dir}: pass model=ModelConfig(...)")
        model = ModelConfig.from_dict(config["model"])
    seq_len = seq_len or train_cfg.get("seq_len") or model.max_seq_len
    world = int(config.get("world_size", 1))
    if step_tokens is None:
        step_tokens = config.get("tokens_per_step") or train_cfg.get("tokens_per_step") or (
            tokens_per_step(train_cfg["batch_size"], seq_len, 1, world) if "batch_size" in train_cfg else None)
    if step_tokens is None:
        raise ValueError("cannot tell the tokens per step: the run's config.json has none; pass step_tokens=")
    if device is None:
        named = config.get("device_name")  # e.g. "NVIDIA H100 80GB HBM3": a table entry works on any machine
        device = named if named and _lookup_peak(named) else (config.get("device") or train_cfg.get("device")
                                                             or "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else (
                "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    if dtype is None:
        dtype = config.get("dtype") or train_cfg.get("dtype") or "auto"
        dtype = "bf16" if dtype == "auto" else dtype
    dtype = _dtype_name(dtype)
    timed = [r for r in records if r["step"] > skip_first] or records
    if not timed:
        raise ValueError(f"{path} has no records with step_time_s and tokens_per_s; is it a training metrics log?")
    dev_type = device.split(":")[0] if isinstance(device, str) else torch.device(device).type
    assumed = assumed_mfu if assumed_mfu is not None else ASSUMED_MFU.get((dev_type, dtype), 0.35)
    fpt = flops_per_token(model, seq_len)
    peak = peak_flops(device, dtype)
    world_peak = world * peak
    pred_tps = world_peak * assumed / fpt
    meas_step = statistics.median(r["step_time_s"] for r in timed)
    meas_tps = statistics.median(r["tokens_per_s"] for r in timed)
    rows = [
        ("step time (s)", step_tokens / pred_tps, meas_step),
        ("tokens/s", pred_tps, meas_tps),
        ("MFU (from tokens/s)", assumed, meas_tps * fpt / world_peak),
    ]
    logged = [r["mfu"] for r in timed if r.get("mfu") is not None]
    if logged:
        rows.append(("MFU (trainer's log)", assumed, statistics.median(logged)))
    name = device if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps") else (
        device_name(device))
    return RunComparison(run=str(run_dir), device=name, dtype=dtype, peak_flops=peak, assumed_mfu=assumed,
                         tokens_per_step=int(step_tokens), flops_per_token=fpt, steps_measured=len(timed),
                         rows=rows)


# --- plots and widgets ----------------------------------------------------------------------------------------

def plot_chinchilla(plans: list[Plan], ax=None):
    """Parameters versus Chinchilla-optimal tokens, one point per plan (log-log)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for p in plans:
        ax.scatter(p.params, p.tokens)
        ax.annotate(p.name, (p.params, p.tokens), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("training tokens")
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_time_cost(plans: list[Plan], axes=None):
    """Bar charts of wall-clock hours and cost, one bar per plan (label: model on devices)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{p.name}\n{p.n_gpus}x {p.device}" for p in plans]
    axes[0].barh(labels, [p.hours for p in plans])
    axes[0].set_xlabel("wall-clock hours")
    axes[0].set_xscale("log")
    axes[1].barh(labels, [p.cost for p in plans])
    axes[1].set_xlabel("cost ($)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    return axes


def budget_widget(preset: str = "llama_8L_8H_768D", vocab_size: int = 4096, micro_batch: int = 32,
                  seq_len: int = 512, grad_accum: int = 4, n_gpus: int = 1, device: str = "H100 SXM",
                  mfu: float = 0.35, price_per_gpu_hour: float = 2.0):
    """Sliders (preset, vocabulary, batch, sequence, accumulation, GPUs, device, MFU, price) over a live `plan`.

    Returns the ipywidgets box; `box.plan_output` is the Output widget showing the current plan and
    `box.current()` returns the current Plan (for checks).
    """
    import ipywidgets as w
    from IPython.display import display

    from tinylib.config import PRESETS

    style = {"description_width": "110px"}
    controls = {
        "model": w.Dropdown(options=sorted(PRESETS), value=preset, description="preset", style=style),
        "vocab_size": w.IntSlider(value=vocab_size, min=256, max=65536, step=256, description="vocab",
                                  style=style, continuous_update=False),
        "micro_batch": w.IntSlider(value=micro_batch, min=1, max=256, description="micro-batch", style=style,
                                   continuous_update=False),
        "seq_len": w.IntSlider(value=seq_len, min=64, max=2048, step=64, description="sequence", style=style,
                               continuous_update=False),
        "grad_accum": w.IntSlider(value=grad_accum, min=1, max=64, description="accumulation", style=style,
                                  continuous_update=False),
        "n_gpus": w.IntSlider(value=n_gpus, min=1, max=64, description="GPUs", style=style,
                              continuous_update=False),
        "device": w.Dropdown(options=[p.name for p in PEAKS], value=device, description="device", style=style),
        "mfu": w.FloatSlider(value=mfu, min=0.05, max=0.7, step=0.01, description="MFU", style=style,
                             readout_format=".0%", continuous_update=False),
        "price_per_gpu_hour": w.FloatSlider(value=price_per_gpu_hour, min=0.1, max=10.0, step=0.05,
                                            description="$ / GPU-hour", style=style, continuous_update=False),
    }
    out = w.Output()

    def current() -> Plan:
        values = {k: c.value for k, c in controls.items()}
        cfg = get_config(values.pop("model"), vocab_size=values.pop("vocab_size"),
                         max_seq_len=max(values["seq_len"], 1))
        p = plan(cfg, **values)
        p.name = controls["model"].value
        return p

    def update(_change=None) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                display(current())
            except ValueError as e:  # e.g. a shape the preset cannot take: show it, do not break the UI
                print(f"cannot plan this: {e}")

    for c in controls.values():
        c.observe(update, names="value")
    update()
    box = w.VBox([w.HBox([w.VBox(list(controls.values())[:5]), w.VBox(list(controls.values())[5:])]), out])
    box.controls, box.plan_output, box.current = controls, out, current
    return box
