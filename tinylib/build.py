"""Building the model a training run trains: the preset with the run's overrides, its compile and attention
plan for the device, and an early check that it fits there.

Split from `tinylib.train` (which re-exports these names) so that the loop file stays readable; the demo, the
benchmarks and the interpretability code build models the same way. What it leaves to others: the model
itself (`tinylib.model`), presets (`tinylib.config`), the training loop (`tinylib.train`).
"""

from __future__ import annotations

import math

import torch

from tinylib.config import TrainConfig, get_config, param_counts
from tinylib.model import Transformer


def compile_plan(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """(use torch.compile, attention implementation) for training on `device`.

    On CUDA: compile, and SDPA (Flash Attention). On CPU: compile too, with attention written out ("eager"):
    inductor fuses the mask and softmax into one generated loop, which beats the CPU flash kernel at these
    model sizes (bench/train_throughput.py). Both attention paths give the same outputs; only speed differs.
    """
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile={cfg.compile!r}; expected 'auto', 'on' or 'off'")
    use = cfg.compile == "on" or (cfg.compile == "auto" and device.type in ("cuda", "cpu"))
    return use, "eager" if use and device.type == "cpu" else "sdpa"


def build_model(cfg: TrainConfig, vocab_size: int, attn_impl: str = "sdpa") -> Transformer:
    """The preset with cfg's overrides, its vocabulary rounded up to `vocab_multiple` (faster matmuls)."""
    vocab = math.ceil(vocab_size / cfg.vocab_multiple) * cfg.vocab_multiple
    model_cfg = get_config(cfg.preset, vocab_size=vocab, **cfg.model_overrides)
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds preset {cfg.preset!r}'s context of "
                         f"{model_cfg.max_seq_len}; lower seq_len or pass "
                         f"model_overrides={{'max_seq_len': {cfg.seq_len}}}")
    return Transformer(model_cfg, attn_impl)


def check_fits(model: Transformer, device: torch.device, cfg: TrainConfig) -> None:
    """Fail early, with numbers, when weights + AdamW state clearly cannot fit on the device."""
    if device.type != "cuda":
        return
    need = param_counts(model.cfg).total * 16  # fp32 weights + grads + two Adam moments
    free, _ = torch.cuda.mem_get_info(device)
    if need > free:
        raise RuntimeError(f"preset {cfg.preset!r} needs ~{need / 2**30:.1f} GiB for weights, gradients and "
                           f"AdamW state but {device} has {free / 2**30:.1f} GiB free; pick a smaller preset")
