"""FLOPs per token, peak FLOP/s per device, and model FLOPs utilisation (MFU).

What this module does:
- FLOPs per token from a `ModelConfig` in closed form (`flops_per_token`, checked against
  `torch.utils.flop_counter` by the tests), and `count_flops` to measure them with PyTorch's own FLOP counter.
- Peak FLOP/s per device: a table (`PEAKS`) with a source for every number, and a matmul probe
  (`measure_peak_flops`) for CPUs and devices missing from the table.
- `mfu(...)`: achieved model FLOP/s over the peak (the trainer logs it from here).

What it leaves to others: parameter counting (`tinylib.config.param_counts`, reused here), dtype names and
device synchronisation (`tinylib.device`), token targets, plans and comparing a run with its plan
(`tinylib.budget`).

FLOP conventions (the PaLM appendix B / nanoGPT `estimate_mfu` convention, stated once here):
- A matmul of an [m, k] by a [k, n] matrix costs 2mkn FLOPs (one multiply, one add). Per token, each weight
  matrix costs 2 FLOPs per parameter forward and 4 backward (gradients with respect to the input and to the
  weight), so a training step costs 6 N FLOPs per token and a forward pass 2 N.
- N here (`flop_params`) = the non-embedding parameters (attention, MLP, norms, biases: Kaplan's N) plus the
  LM-head matrix vocab x d_model. The LM head is a real matmul even when it is tied to the token embedding, so
  it counts once either way; the embedding lookups (token and learned position) are gathers, not FLOPs, and do
  not count. `include_embedding=False` drops the LM head and gives Kaplan's 6 N_non-embedding. Norm weights
  and biases are counted as if they were matmul weights (they cost ~1 FLOP per token, not 6): under 0.5% for
  every preset.
- Attention scores and the weighted sum of values: per layer and token, q.k over T keys costs 2 T d_model and
  the pattern times v another 2 T d_model, so 4 L T d_model forward and 12 L T d_model for training. This
  counts every query against all T keys (the PaLM/nanoGPT convention: comparable with published MFU figures),
  although a causal mask makes half of that work unnecessary; `causal=True` halves the term. Grouped-query
  attention does not change it (queries still have n_head heads). `torch.utils.flop_counter` counts the same
  full T x T work.
- Training FLOPs per token = 6 N + 12 L T d_model; forward (generation) = 2 N + 4 L T d_model, where T is the
  context each token attends to (a KV-cached decode step at context S: seq_len=S).
- The architecture-lab variants (`tinylib.config.ModelConfig`): a sliding window W attends to min(T, W) keys,
  so the attention term uses min(T, W) for T. These are model FLOPs: SDPA with a banded mask still computes
  the full T x T scores, and FlopCounterMode counts 12 L (T - W) d_model more per token. Factorized embeddings
  (rank r) replace the vocab x d head matmul by d x r then r x vocab, and add the r x d input projection (a
  real matmul, unlike the lookup before it): N gets vocab r + 2 r d instead of vocab d. QK-norm adds its
  2 d_head weights per layer to the norms; ReLU squared costs what GELU costs; the soft-cap (a tanh per logit)
  and zero initialisation cost no matmul FLOPs.
- MFU = achieved model FLOP/s (tokens/s x training FLOPs per token) / the device's dense peak. Recomputation
  (activation checkpointing, the flash-attention backward re-deriving the scores) is not credited: MFU, not
  HFU.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tinylib.config import ModelConfig, param_counts
from tinylib.device import DTYPES, dtype_name, synchronize
from tinylib.model import Transformer

# --- FLOPs --------------------------------------------------------------------------------------------------


def flop_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """The N in 6 N: non-embedding parameters plus (by default) the LM-head matmul, tied or not (with
    factorized embeddings: both factors of the head, and the input projection)."""
    n = param_counts(cfg).non_embedding
    r = cfg.embed_rank
    head = cfg.vocab_size * cfg.d_model if r is None else cfg.vocab_size * r + 2 * r * cfg.d_model
    return n + head if include_embedding else n


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True, include_embedding: bool = True,
                    causal: bool = False) -> float:
    """Model FLOPs per token: 6 N + 12 L T d (training) or 2 N + 4 L T d (forward); see the module doc."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len}; it must be a positive number of positions")
    n = flop_params(cfg, include_embedding=include_embedding)
    keys = seq_len if cfg.sliding_window is None else min(seq_len, cfg.sliding_window)
    attention = 2 * 2 * cfg.n_layer * keys * cfg.d_model  # q.k and pattern.v, forward
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


_Shape = tuple[int, ...]


def _cpu_sdpa_flops(query_shape: _Shape, key_shape: _Shape, value_shape: _Shape, *args: object,
                    out_shape: _Shape | None = None, **kwargs: object) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape: _Shape, query_shape: _Shape, key_shape: _Shape,
                             value_shape: _Shape, *args: object, out_shape: _Shape | None = None,
                             **kwargs: object) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_sdpa_mapping() -> dict[object, Callable[..., int]]:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel (it would count 0 FLOPs
    for attention on CPU); register the same formulas for it. Like torch's CUDA formulas, the backward
    includes the recomputation of the scores: 14 L T d per token for attention instead of the model-FLOP
    12 L T d."""
    aten = torch.ops.aten
    mapping: dict[object, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return mapping


def count_flops(cfg: ModelConfig, batch_size: int = 1, seq_len: int | None = None, *, training: bool = True,
                device: str | torch.device = "meta", attn_impl: str = "sdpa") -> FlopCount:
    """Run one forward (+ backward) of a freshly built model under FlopCounterMode and count its FLOPs.

    On the meta device nothing is computed (shapes only), so even gpt2_124M at 1,024 positions takes a second;
    there SDPA decomposes into plain matmuls. On CPU the fused attention kernel is counted through
    `_cpu_sdpa_mapping` (including its backward recomputation). `attn_impl` ("sdpa" or "eager") picks the
    model's attention path.
    """
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


# --- device peaks -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePeak:
    """Dense (no structured sparsity) peak FLOP/s of one device, and where the numbers come from."""

    name: str
    bf16: float  # tensor-core bf16 (fp16 the same) with fp32 accumulation, dense
    fp32: float  # plain fp32 (no TF32)
    source: str
    pattern: str  # regex matched against the lower-cased torch.cuda.get_device_name() or Apple chip name

    def flops(self, dtype: str | torch.dtype = "bf16") -> float:
        return self.fp32 if dtype_name(dtype) == "fp32" else self.bf16


_H100 = ("NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): BF16 Tensor Core 1,979 "
         "(SXM) / 1,513 (PCIe) / 1,671 (NVL) TFLOPS *with sparsity*, so dense is half; FP32 67 / 51 / 60 "
         "TFLOPS")
_H200 = ("NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): BF16 Tensor Core 1,979 "
         "(SXM) / 1,671 (NVL) TFLOPS with sparsity, dense is half; FP32 67 / 60 TFLOPS")
_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): BF16 Tensor Core 312 "
         "TFLOPS dense (624 sparse), FP32 19.5 TFLOPS, the same for SXM4 and PCIe (PCIe sustains less under "
         "its power cap)")
_APPLE = ("Apple newsroom announcement of the chip (GPU TFLOPS, fp32, top GPU-core configuration); Apple "
          "publishes no bf16 figure and these GPUs have no faster bf16 matrix path, so the fp32 figure is "
          "the bf16 ceiling too")

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
    DevicePeak("L4", 121e12, 30.3e12, "NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4): BF16 Tensor "
               "Core 242 TFLOPS with sparsity (121 dense), FP32 30.3 TFLOPS", r"\bl4\b"),
    DevicePeak("RTX 4090", 165.2e12, 82.6e12, "NVIDIA Ada Lovelace GPU architecture whitepaper, appendix "
               "table: RTX 4090 peak BF16 Tensor TFLOPS with FP32 accumulate 165.2 (330.4 sparse); FP32 82.6 "
               "TFLOPS. GeForce cards run fp32-accumulate at half the fp16-accumulate rate, and PyTorch "
               "accumulates in fp32", r"rtx 4090"),
    DevicePeak("RTX 5090", 209.5e12, 104.8e12, "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix "
               "table: RTX 5090 peak FP16/BF16 Tensor TFLOPS with FP16 accumulate 419 dense (838 sparse), "
               "half that with FP32 accumulate; FP32 104.8 TFLOPS. Consistent with PRODUCT.md: 162M params "
               "x 6 x 116k tok/s = 113 TFLOP/s = 54% of 209.5", r"rtx 5090"),
    DevicePeak("Apple M1 Ultra", 21e12, 21e12, _APPLE + " (Mar 2022: 21 TFLOPS)", r"m1 ultra"),
    DevicePeak("Apple M1 Max", 10.4e12, 10.4e12, _APPLE + " (Oct 2021: 10.4 TFLOPS)", r"m1 max"),
    DevicePeak("Apple M1 Pro", 5.2e12, 5.2e12, _APPLE + " (Oct 2021: 5.2 TFLOPS)", r"m1 pro"),
    DevicePeak("Apple M1", 2.6e12, 2.6e12, _APPLE + " (Nov 2020: 2.6 TFLOPS)", r"\bm1\b"),
    DevicePeak("Apple M2 Ultra", 27.2e12, 27.2e12, _APPLE + " (Jun 2023: 27.2 TFLOPS)", r"m2 ultra"),
    DevicePeak("Apple M2 Max", 13.6e12, 13.6e12, _APPLE + " (Jan 2023: 13.6 TFLOPS)", r"m2 max"),
    DevicePeak("Apple M2 Pro", 6.8e12, 6.8e12, _APPLE + " (Jan 2023: 6.8 TFLOPS)", r"m2 pro"),
    DevicePeak("Apple M2", 3.6e12, 3.6e12, _APPLE + " (Jun 2022: 3.6 TFLOPS)", r"\bm2\b"),
    DevicePeak("CPU dev box (2 cores)", 2.0e12, 0.35e12, "measured, not published: a 2048^2 matmul on this "
               "project's 2-core Intel development machines, which have AMX. Its 2-core AMD EPYC machines "
               "(AVX-512 and AVX512-BF16, no AMX) measure ~0.17 TFLOP/s fp32 and 0.73-0.83 bf16 "
               "(shared/PRODUCT.md). For planning only: peak_flops('cpu') always measures the CPU it "
               "runs on", r"^cpu dev box"),
)

_PROBED: dict[tuple[str, str, int], float] = {}


def lookup_peak(name: str) -> DevicePeak | None:
    """The `PEAKS` entry for a table name ("H100 SXM") or a device name ("NVIDIA H100 80GB HBM3"), or None."""
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


def _is_table_name(device: str | torch.device) -> bool:
    """A string that is not a torch device ("H100 SXM", "NVIDIA H100 80GB HBM3"): looked up in `PEAKS`."""
    return isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps")


def device_name(device: str | torch.device) -> str:
    """A human name for a device: the CUDA name, the Apple chip, or 'cpu' (a table name is returned as is)."""
    if _is_table_name(device):
        return str(device)
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return _apple_chip() or "mps"
    return "cpu"


def measure_peak_flops(device: str | torch.device = "cpu", dtype: str | torch.dtype = "bf16", *,
                       size: int = 2048, seconds: float = 0.3) -> float:
    """Best FLOP/s of repeated size^3 matmuls over about `seconds` (cached per process and arguments).

    The best, not the mean: on a shared machine other processes only ever slow a probe down. The CPU's matrix
    units set the result: on 2 cores, AMD EPYC with AVX512-BF16 and no AMX measures ~1.7e11 in fp32 and
    7-8e11 in bf16; Intel with AMX ~3.5e11 and ~2e12 (the "CPU dev box" entry of `PEAKS`).
    """
    dev = torch.device(device)
    name = dtype_name(dtype)
    key = (str(dev), name, size)
    if key in _PROBED:
        return _PROBED[key]
    a = torch.randn(size, size, device=dev, dtype=DTYPES[name])
    b = torch.randn(size, size, device=dev, dtype=DTYPES[name])
    a @ b  # warm-up: allocation, kernel selection
    synchronize(dev)
    best, start = float("inf"), time.perf_counter()
    for i in range(1000):
        t0 = time.perf_counter()
        a @ b
        synchronize(dev)
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > seconds:
            break
    _PROBED[key] = 2 * size**3 / best
    return _PROBED[key]


def peak_flops(device: str | torch.device, dtype: str | torch.dtype = "bf16") -> float:
    """Dense peak FLOP/s of `device` for `dtype`.

    `device` is a torch device ("cuda", "cuda:1", "mps", "cpu") or a table name ("H100 SXM", "A100",
    "RTX 4090"). CUDA and Apple devices are looked up by name in `PEAKS`; CPUs and devices missing from the
    table are measured with `measure_peak_flops` (the measured rate is an achievable peak, somewhat below a
    spec sheet's).
    """
    name = dtype_name(dtype)
    if _is_table_name(device):
        entry = lookup_peak(str(device))
        if entry is None:
            raise ValueError(f"unknown device {device!r}; known: {[p.name for p in PEAKS]}, or pass a torch "
                             "device ('cuda', 'mps', 'cpu') to look it up or measure it")
        return entry.flops(name)
    dev = torch.device(device)
    if dev.type in ("cuda", "mps"):
        entry = lookup_peak(device_name(dev))
        if entry is not None:
            return entry.flops(name)
    return measure_peak_flops(dev, name)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, device: str | torch.device,
        dtype: str | torch.dtype = "bf16", *, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: tokens_per_s x training FLOPs per token / (n_devices x peak). tokens_per_s is
    the throughput of those n_devices together (the trainer passes per-process tokens/s with n_devices=1)."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / (n_devices * peak_flops(device, dtype))
