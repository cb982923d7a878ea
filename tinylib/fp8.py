"""FP8 training (`TrainConfig.fp8`): the block matmuls in float8 through torchao, on hardware with FP8 units.

`to_float8_training(model)` swaps the `nn.Linear` layers inside the blocks for torchao's `Float8Linear`
(dynamic tensorwise scaling: each matmul casts its inputs to float8 e4m3 with a scale computed on the fly
and accumulates in higher precision; the master weights, the optimizer state and the checkpoints stay as they
were, so a checkpoint loads into a plain model). Embeddings, the LM head and norms keep bf16: the head feeds
the softmax, and small vocabularies gain nothing.

FP8 tensor cores exist on NVIDIA GPUs of compute capability 8.9 and up (Ada: L4, RTX 40xx; Hopper: H100,
H200; Blackwell). Anywhere else the call refuses with a message saying so, before anything is changed: on a
CPU or an older GPU, train in bf16 (`fp8=False`). torchao is the optional extra `pip install 'tinylib[fp8]'`.
What it leaves to others: the training loop (`tinylib.train`), the model (`tinylib.model`, whose fused q/k/v
and gate/up matmuls step aside for swapped-in layers so that theirs run).
"""

from __future__ import annotations

import torch
import torch.nn as nn

MIN_CAPABILITY = (8, 9)  # the first NVIDIA architecture with FP8 tensor cores (Ada)


def fp8_problems(device: torch.device | str) -> list[str]:
    """Why float8 training cannot run on `device` (empty when it can, torchao aside)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return [f"fp8=True needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9: L4, RTX 40xx, "
                f"H100, H200, Blackwell), but this run's device is {dev.type}; train with fp8=False (bf16)"]
    cap = torch.cuda.get_device_capability(dev)
    if cap < MIN_CAPABILITY:
        return [f"fp8=True needs compute capability >= 8.9, but {torch.cuda.get_device_name(dev)} has "
                f"{cap[0]}.{cap[1]} (no FP8 tensor cores); train with fp8=False (bf16)"]
    return []


def _in_blocks(module: nn.Module, fqn: str) -> bool:
    # torchao's float8 matmuls need both dimensions divisible by 16
    return (fqn.startswith("blocks.") and isinstance(module, nn.Linear)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def to_float8_training(model: nn.Module) -> nn.Module:
    """Convert `model`'s block Linear layers to torchao Float8Linear in place (and return it); refuses with
    the reason on hardware without FP8 units or without torchao."""
    problems = fp8_problems(next(model.parameters()).device)
    if problems:
        raise RuntimeError("; ".join(problems))
    try:
        from torchao.float8 import convert_to_float8_training  # optional extra, GPU only: imported on use
    except ImportError as e:
        raise RuntimeError("fp8=True needs torchao: pip install 'tinylib[fp8]' (or torchao>=0.9)") from e
    convert_to_float8_training(model, module_filter_fn=_in_blocks)
    return model
