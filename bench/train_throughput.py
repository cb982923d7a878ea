"""Training throughput: tinylib's default training step versus a plain fp32 nanoGPT-style step, in one
process.

    python bench/train_throughput.py                       # tiny and 6L/288D, vocab 4096, batch 16 x 256
    python bench/train_throughput.py --presets gpt2_124M --seq-len 1024 --batch-size 16 --vocab 50304  # GPU

The baseline is written out here on purpose (nanoGPT's model for GPT-style presets, llama2.c's for LLaMA-style
ones; SDPA, fp32, plain AdamW, no autocast, no compile) so the speedup is measured against something anyone
would write, for the same model (tests/test_bench.py checks parameter counts and, for LLaMA, the loss), on the
same inputs, interleaved in rounds so that load from other processes hits both alike; a second baseline row
compiles it with torch.compile (the best plain PyTorch path). tinylib's step is
`tinylib.train.train_step`, the function the trainer runs: its model, bf16 autocast where the device supports
it, fused AdamW, torch.compile where the trainer enables it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylib.checkpoint import TrainState
from tinylib.config import TrainConfig, get_config
from tinylib.device import compile_plan, describe_machine, dtype_name, pick_device, pick_dtype
from tinylib.flops import flops_per_token, peak_flops
from tinylib.model import Transformer
from tinylib.optim import configure_optimizer
from tinylib.train import train_step


class BaselineBlock(nn.Module):
    def __init__(self, d: int, n_head: int, d_mlp: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class BaselineGPT(nn.Module):
    """nanoGPT's model, condensed: learned positions, tied head."""

    def __init__(self, vocab: int, seq: int, n_layer: int, n_head: int, d: int, d_mlp: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.h = nn.ModuleList(BaselineBlock(d, n_head, d_mlp) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class BaselineLlamaBlock(nn.Module):
    """llama2.c's model.py, condensed: RMSNorm, rotary embeddings (rotate-half), SwiGLU."""

    def __init__(self, d: int, n_head: int, d_mlp: int):
        super().__init__()
        self.n_head, self.d_mlp = n_head, d_mlp
        self.norm_1, self.norm_2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.wqkv, self.wo = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.w13, self.w2 = nn.Linear(d, 2 * d_mlp, bias=False), nn.Linear(d_mlp, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.wqkv(self.norm_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        half = C // self.n_head // 2
        q, k = (t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin for t in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.wo(y)
        gate, up = self.w13(self.norm_2(x)).split(self.d_mlp, dim=2)
        return x + self.w2(F.silu(gate) * up)


class BaselineLlama(nn.Module):
    """The LLaMA-style baseline: the same FLOPs as tinylib's llama presets, written the plain way."""

    def __init__(self, vocab: int, seq: int, n_layer: int, n_head: int, d: int, d_mlp: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.h = nn.ModuleList(BaselineLlamaBlock(d, n_head, d_mlp) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        d_head = d // n_head
        inv_freq = 1.0 / 10000 ** (torch.arange(0, d_head, 2).float() / d_head)
        angles = torch.outer(torch.arange(seq).float(), inv_freq)
        self.register_buffer("cos", angles.cos().repeat(1, 2), persistent=False)
        self.register_buffer("sin", angles.sin().repeat(1, 2), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx)
        for block in self.h:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def make_steps(preset: str, vocab: int, batch: int, seq: int, device: torch.device):
    """(name, step function) pairs: the baseline, and tinylib as the trainer would run it."""
    tcfg = TrainConfig(preset=preset)
    dtype = pick_dtype(tcfg.dtype, device)
    use_compile, attn_impl = compile_plan(tcfg, device)
    cfg = get_config(preset, vocab_size=vocab, max_seq_len=max(seq, get_config(preset).max_seq_len))
    # The baseline computes the same model family (same FLOPs), so the speedup is the step's, not the
    # architecture's.
    Baseline = BaselineLlama if cfg.mlp == "swiglu" else BaselineGPT
    base = Baseline(vocab, cfg.max_seq_len, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_mlp).to(device)
    base_opt = torch.optim.AdamW(base.parameters(), lr=1e-4, weight_decay=0.1)
    base_compiled = torch.compile(base)
    model = Transformer(cfg, attn_impl).to(device)
    state = TrainState(model, configure_optimizer(model, tcfg, device), batches=None,
                       module=torch.compile(model) if use_compile else model)
    x, y = torch.randint(0, vocab, (2, batch, seq), device=device)

    def baseline_step(module=base):
        loss = module(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base.parameters(), 1.0)
        base_opt.step()
        base_opt.zero_grad(set_to_none=True)
        return loss

    # The demo's step: the same model with Muon for the block matrices (tinylib.demo.plan's recipe).
    demo_model = Transformer(cfg, attn_impl).to(device)
    demo_model.load_state_dict(model.state_dict())
    demo_cfg = dataclasses.replace(tcfg, optimizer="muon")
    demo_state = TrainState(demo_model, configure_optimizer(demo_model, demo_cfg, device), batches=None,
                            module=torch.compile(demo_model) if use_compile else demo_model)

    def tinylib_step():
        return train_step(state, [(x, y)], grad_clip=1.0, dtype=dtype)[0]  # the trainer's own step

    def demo_step():
        return train_step(demo_state, [(x, y)], grad_clip=1.0, dtype=dtype)[0]

    label = f"tinylib ({str(dtype).removeprefix('torch.')}{', compile' if use_compile else ''}, {attn_impl})"
    return cfg, dtype, [("baseline fp32", baseline_step),
                        ("baseline fp32 + compile", partial(baseline_step, base_compiled)),
                        (label, tinylib_step), (label.replace("tinylib (", "tinylib muon ("), demo_step)]


def time_steps(step, n: int, device: torch.device) -> float:
    step().item()  # the first call of a compiled step compiles it
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+",
                        default=["tiny", "gpt_tiny", "llama_6L_6H_288D", "gpt_6L_6H_288D"])
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    tokens = args.batch_size * args.seq_len
    print(f"{describe_machine(device)}; torch {torch.__version__}; batch {args.batch_size} x {args.seq_len}, "
          f"vocab {args.vocab}; dtype tinylib picks: {dtype_name(pick_dtype('auto', device))}")
    header = f"{'preset':<18} {'path':<36} {'ms/step':>9} {'tokens/s':>10} {'MFU':>7} {'speedup':>8}"
    print(header + "\n" + "-" * len(header))
    for preset in args.presets:
        cfg, dtype, steps = make_steps(preset, args.vocab, args.batch_size, args.seq_len, device)
        times = {name: [] for name, _ in steps}
        for _ in range(args.rounds):
            for name, step in steps:
                times[name].append(time_steps(step, args.steps, device))
        base_t = statistics.median(times[steps[0][0]])
        for name, _ in steps:
            t = statistics.median(times[name])
            run_dtype = "fp32" if name.startswith("baseline") else dtype_name(dtype)
            mfu = tokens / t * flops_per_token(cfg, args.seq_len) / peak_flops(device, run_dtype)
            print(f"{preset:<18} {name:<36} {t * 1000:>9.1f} {tokens / t:>10,.0f} {mfu:>7.1%} "
                  f"{base_t / t:>7.2f}x")
    if math.isfinite(base_t):
        print("MFU is against this device's peak for the dtype each path runs in (tinylib.flops.peak_flops).")


if __name__ == "__main__":
    main()
