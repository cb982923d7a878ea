"""tinylib.flops: the FLOP formula against hand counts and PyTorch's FLOP counter (meta device and real CPU
tensors), the device peak table and its lookup, the CPU probe, and MFU."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinylib.config import PRESETS, get_config, param_counts
from tinylib.flops import (
    PEAKS,
    count_flops,
    device_name,
    flop_params,
    flops_per_token,
    lookup_peak,
    measure_peak_flops,
    mfu,
    peak_flops,
)
from tinylib.model import Transformer

# conftest's one thread: on a shared 2-core machine two spinning threads per process make these small ops ~10x
# slower. Nothing here asserts a speed, so this changes run time only.
pytestmark = pytest.mark.usefixtures("one_thread")


def _vocab(preset: str) -> int:
    return 50257 if preset == "gpt2_124M" else 4096


# --- FLOPs --------------------------------------------------------------------------------------------------

def test_flops_per_token_by_hand():
    cfg = get_config("tiny", vocab_size=4096)  # 4 layers, d=128, MLP 512 (SwiGLU), tied
    L, d, T, V = 4, 128, 256, 4096
    per_layer = 4 * d * d + 3 * d * 512 + 2 * d  # q, k, v, o; gate, up, down; two RMSNorm weights
    n = L * per_layer + d + V * d  # + final norm + LM head (tied: still a matmul)
    assert flop_params(cfg) == n
    assert flop_params(cfg, include_embedding=False) == param_counts(cfg).non_embedding == n - V * d
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * T * d
    assert flops_per_token(cfg, T, training=False) == 2 * n + 4 * L * T * d
    assert flops_per_token(cfg, T, causal=True) == 6 * n + 6 * L * T * d
    assert flops_per_token(cfg, T, include_embedding=False) == 6 * (n - V * d) + 12 * L * T * d
    # Tying changes the stored parameters, not the compute.
    untied = get_config("tiny", vocab_size=4096, tie_embeddings=False)
    assert param_counts(untied).total == param_counts(cfg).total + V * d
    assert flops_per_token(untied, T) == flops_per_token(cfg, T)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(cfg, 0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_formula_matches_flop_counter_on_every_preset(preset):
    """A real forward+backward of each preset at its full context, on the meta device (shapes only, so
    gpt2_124M at 1,024 positions costs a second). There SDPA runs its math decomposition, whose matmuls the
    counter sees. The formula counts norms and biases as matmul weights: the gap stays under 0.5%."""
    cfg = get_config(preset, vocab_size=_vocab(preset))
    T = cfg.max_seq_len
    counted = count_flops(cfg, batch_size=1, seq_len=T, training=True)
    predicted = flops_per_token(cfg, T) * T
    assert counted.total == pytest.approx(predicted, rel=0.02)
    assert abs(counted.total / predicted - 1) < 0.005


def test_forward_only_and_gqa_match_flop_counter():
    cfg = get_config("llama_6L_6H_288D", vocab_size=4096, n_kv_head=2)
    counted = count_flops(cfg, batch_size=2, seq_len=128, training=False)
    assert counted.per_token == pytest.approx(flops_per_token(cfg, 128, training=False), rel=0.005)
    counted = count_flops(cfg, batch_size=2, seq_len=128, training=True)
    assert counted.per_token == pytest.approx(flops_per_token(cfg, 128), rel=0.005)


def test_flop_counter_on_real_cpu_tensors():
    """On real CPU tensors: the eager attention path counts exactly what the meta device counts; SDPA's fused
    CPU kernel is invisible to a plain FlopCounterMode (it only knows the CUDA attention ops) and count_flops
    adds it, with torch's backward formula that includes recomputing the scores (+2 L T d per token over the
    model FLOPs)."""
    B, T = 2, 64
    sdpa = get_config("tiny", vocab_size=512)
    torch.manual_seed(0)
    meta = count_flops(sdpa, B, T, device="meta", attn_impl="eager")
    assert count_flops(sdpa, B, T, device="cpu", attn_impl="eager").total == meta.total

    L, d = sdpa.n_layer, sdpa.d_model
    counted = count_flops(sdpa, B, T, device="cpu")
    assert counted.total == meta.total + 2 * L * T * d * B * T
    assert counted.per_token == pytest.approx(flops_per_token(sdpa, T) + 2 * L * T * d, rel=0.005)

    model, idx = Transformer(sdpa), torch.randint(0, 512, (B, T))
    plain = FlopCounterMode(display=False)
    with plain:
        _, loss = model(idx, idx)
        loss.backward()
    matmul_only = 6 * (flop_params(sdpa) - param_counts(sdpa).norms) * B * T
    assert plain.get_total_flops() == matmul_only  # no attention at all: why count_flops registers the CPU op


# --- peaks and MFU ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cuda_name, entry", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100 SXM"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe"), ("NVIDIA A100 80GB PCIe", "A100 PCIe"), ("NVIDIA L4", "L4"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 5090", "RTX 5090"),
    ("Apple M2 Max", "Apple M2 Max"), ("Apple M1", "Apple M1"),
])
def test_peak_table_lookup_by_device_name(cuda_name, entry):
    assert lookup_peak(cuda_name).name == entry
    assert peak_flops(cuda_name) == lookup_peak(entry).bf16
    assert device_name(cuda_name) == cuda_name  # a name that is not a torch device stays as it is


def test_peak_table_entries_are_sourced_and_dense():
    assert {"H100 SXM", "H100 PCIe", "H200", "A100 SXM", "A100 PCIe", "L4", "RTX 4090", "RTX 5090"} <= {
        p.name for p in PEAKS}
    for p in PEAKS:
        assert len(p.source) > 40 and p.bf16 >= p.fp32 > 0
    assert peak_flops("H100 SXM") == pytest.approx(1979e12 / 2, rel=1e-3)  # datasheet 1,979 is with sparsity
    assert peak_flops("A100", "fp32") == 19.5e12
    assert lookup_peak("TPU v9") is None
    with pytest.raises(ValueError, match="unknown device"):
        peak_flops("TPU v9")
    with pytest.raises(ValueError, match="dtype"):
        peak_flops("H100 SXM", "int4")


def test_cpu_peak_is_measured_once_per_process():
    first = measure_peak_flops("cpu", "fp32", size=256, seconds=0.05)
    assert 1e8 < first < 1e14
    assert measure_peak_flops("cpu", "fp32", size=256, seconds=0.05) == first  # cached
    assert peak_flops("cpu", torch.bfloat16) == measure_peak_flops("cpu", "bf16")  # probed, then cached
    assert device_name("cpu") == "cpu"


def test_mfu_is_model_flops_over_peak():
    cfg = get_config("gpt2_124M", vocab_size=50304)
    fpt = flops_per_token(cfg, 1024)
    tps = 0.4 * 989.5e12 / fpt
    assert mfu(tps, cfg, 1024, "H100 SXM") == pytest.approx(0.4)
    assert mfu(8 * tps, cfg, 1024, "H100 SXM", n_devices=8) == pytest.approx(0.4)
    # PRODUCT.md: 162M params at 116k tok/s on an RTX 5090 (6N only: seq 128 makes attention small) ~ 54%
    assert 116e3 * 6 * 162e6 / peak_flops("RTX 5090") == pytest.approx(0.54, abs=0.01)
