"""Which device and number format a process runs in, and what runs well there: device, dtype, autocast, the
torchrun process group; whether to compile and which attention kernel to use (`compile_plan`), and an early
check that a model and its optimizer state fit (`check_fits`).

One table of dtype names (`DTYPES`) serves the trainer, the budget and the benchmarks. What it leaves to
others: peak FLOP/s of a device and MFU (`tinylib.flops`), the training loop (`tinylib.train`).
"""

from __future__ import annotations

import datetime
import os
import platform
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from tinylib.config import ModelConfig, TrainConfig, param_counts

# The short names used in configs, checkpoints and tables, and the torch dtypes they stand for.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def dtype_name(dtype: str | torch.dtype) -> str:
    """'bf16', 'fp16' or 'fp32' for a torch dtype or any common spelling of one."""
    key = str(dtype).removeprefix("torch.").lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of 'bf16', 'fp16', 'fp32' (or the torch dtypes)")
    return key


def pick_device(preference: str = "auto") -> torch.device:
    """The device to use: `preference`, or with "auto" cuda, then mps, then cpu."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """AVX512-BF16/AMX CPUs run bf16 matmuls several times faster than fp32; others emulate them slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine(device: torch.device) -> str:
    """One line naming what sets the speed: the GPU, or the CPU, the kernels torch dispatches to (AVX2,
    AVX512...), whether bf16 is fast, and the threads. Every speed figure should carry it."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    if device.type == "mps":
        return f"Apple {platform.machine()} GPU (MPS)"
    bf16 = "bf16 units" if cpu_supports_bf16() else "no bf16 units (bf16 emulated)"
    return (f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, {bf16}, "
            f"{torch.get_num_threads()} threads")


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    """The compute dtype: `preference` ("bf16", "fp16", "fp32"), or with "auto" bf16 where it is fast."""
    if preference != "auto":
        if preference not in DTYPES:
            raise ValueError(f"dtype={preference!r}; expected one of {sorted(DTYPES)} or 'auto'")
        return DTYPES[preference]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device | str, dtype: torch.dtype | None):
    """Autocast to `dtype` on the device type when it is bf16/fp16 (weights stay fp32); a no-op for fp32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def setup_distributed(device_pref: str = "auto",
                      timeout_s: float | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process; joins the process group when started by torchrun.
    A collective that waits longer than `timeout_s` (a lost rank) raises instead of hanging."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device_pref)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = pick_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return rank, world, device


# From this many positions on, the CPU flash kernel (which skips the masked half of the causal square) beats
# the written-out attention even under compile: bench/attention_kernel.py on tiny at 4,096 tokens a step, 8 x
# 512 takes 246 ms with SDPA and 316 ms written out (16 x 256: 225 and 226 ms; Intel Xeon with AMX, bf16, 2
# threads, 2026-12-08).
LONG_CONTEXT = 512


def compile_plan(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """(use torch.compile, attention implementation) for training on `device`.

    On CUDA: compile, and SDPA (Flash Attention). On CPU: compile too, with attention written out ("eager")
    below LONG_CONTEXT positions: inductor fuses the mask and softmax into one generated loop, which beats the
    CPU flash kernel at these model sizes (bench/train_throughput.py). Both attention paths give the same
    outputs; only speed differs.
    """
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile={cfg.compile!r}; expected 'auto', 'on' or 'off'")
    use = cfg.compile == "on" or (cfg.compile == "auto" and device.type in ("cuda", "cpu"))
    return use, "eager" if use and device.type == "cpu" and cfg.seq_len < LONG_CONTEXT else "sdpa"


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can take on `device`: free GPU memory, or the host's MemAvailable (None: not
    known here, e.g. MPS or a system without /proc/meminfo)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model_cfg: ModelConfig, device: torch.device, *, training: bool, what: str) -> None:
    """Before a model is allocated: refuse, with numbers, one whose parameters cannot fit the memory
    available (fp32 weights; when training also their gradients and AdamW's two moments: 16 bytes each). A
    config.json or a typo can ask for terabytes; allocating first would take the machine's memory with it."""
    n = param_counts(model_cfg).total
    per = 16 if training else 4
    need, free = n * per, available_memory(device)
    if free is not None and need > free:
        parts = "weights, gradients and AdamW state" if training else "weights"
        raise ValueError(
            f"{what} has {n:,} parameters (d_model {model_cfg.d_model}, {model_cfg.n_layer} layers, vocab "
            f"{model_cfg.vocab_size:,}): its {parts} need {need / 2**30:,.1f} GiB ({per} bytes per "
            f"parameter) but {device} has {free / 2**30:,.1f} GiB available; pick a smaller model")
