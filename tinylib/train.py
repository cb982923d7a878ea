"""The training loop: one CPU, one GPU, or many GPUs under torchrun, resumable to the bit.

    python -m tinylib.train --preset tiny --data data/tinystories-4096 --max-tokens 5_000_000
    torchrun --standalone --nproc_per_node=8 -m tinylib.train --preset llama_6L_6H_288D --data ...

AdamW (fused where supported) with weight decay on matrices only, or Muon for the block matrices (`optimizer="muon"`,
tinylib.optim: more learned per token; the demo's choice), linear warmup then cosine to a floor, gradient clipping,
gradient accumulation derived from a target number of tokens per optimizer step, bf16 autocast where the device
supports it (fp32 master weights), optional torch.compile, DDP. Rank 0 evaluates on fixed validation windows,
prints fixed-prompt samples, logs metrics and saves `latest/` and `best/` checkpoints; every state that shapes the
next step (weights, optimizer, RNG, data stream, schedule) is saved so a resumed run continues exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from tinylib.checkpoint import load_state, resolve, save_checkpoint
from tinylib.config import config_from_dict, get_config, param_counts
from tinylib.data import RandomBatches, open_split, read_meta
from tinylib.evaluate import autocast_context, bits_per_byte, evaluate_loss
from tinylib.metrics import MetricsLog
from tinylib.model import Transformer


@dataclass
class TrainConfig:
    # what to train on
    data: str = "data/tinystories-4096"  # a folder written by tinylib.data (train.bin, val.bin, meta.json)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # any ModelConfig field, e.g. {"dropout": 0.1}
    vocab_multiple: int = 64  # round the embedding up for faster matmuls; extra ids are never targets
    out_dir: str | None = None  # default: checkpoints/<preset>-<data folder name>
    # batch: tokens per optimizer step = batch_size x seq_len x grad_accum x world_size
    batch_size: int = 16  # micro-batch per process
    seq_len: int = 256
    tokens_per_step: int | None = None  # None: one micro-batch per process per step
    # length of training: max_steps, else max_tokens; max_time_s alone plans the steps that fit the time, and
    # together with either it caps them (planned after 5 timed steps, re-planned as the run goes)
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time_s: float | None = None  # steps planned from the measured speed, re-planned as it changes (TimeBudget)
    until_step: int | None = None  # stop (and save) here without changing the schedule: split a run in parts
    # optimizer and schedule
    optimizer: str = "adamw"  # or "muon": Muon for the matrices inside the blocks, AdamW for the rest
    lr: float = 1e-3  # AdamW's peak lr (with optimizer="muon": embeddings, head and norms)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # numerics and hardware
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bf16 where supported, else fp32
    compile: str = "auto"  # "on", "off", or auto: on for CUDA and CPU (see `compile_plan`)
    seed: int = 1337
    # evaluation, logging, checkpoints
    eval_every: int = 200
    eval_batches: int = 20
    eval_batch_size: int = 16
    sample_prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "Tom and his dog"])
    sample_tokens: int = 48
    log_every: int = 10
    save_every: int | None = None  # latest/ at this interval (and at every eval and at the end)
    resume: bool = False  # continue from <out_dir>/latest when it exists
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return config_from_dict(cls, d)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    tokens: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    val_bpb: float | None
    tokens_per_s: float  # mean over the timed training steps (evaluation excluded)
    time_s: float = 0.0  # wall time of the training loop, evaluation and checkpoints included


@dataclass
class TimeBudget:
    """How many steps fit in `seconds`, re-estimated as the run goes.

    The first plan comes from the timed steps alone (plus 5% for evaluation); later plans from the mean wall time per
    step since the first one (evaluation included), so the schedule still anneals on time when the machine slows
    down or speeds up. `eval_s` (the last evaluation's duration) is held back for the final evaluation; once the
    budget is spent, the plan is the current step: the run stops there.
    """

    seconds: float
    t_start: float
    cap: int | None = None  # max_steps / max_tokens, when given too
    mark: tuple[int, float] | None = None  # (step, time) of the first plan
    eval_s: float = 0.0

    def plan(self, step: int, timed_steps: int, timed_s: float, now: float) -> tuple[int, float]:
        """(total steps, seconds per step)."""
        per_step = (timed_s / timed_steps * 1.05 if self.mark is None
                    else (now - self.mark[1]) / (step - self.mark[0]))
        self.mark = self.mark or (step, now)
        left = self.seconds - self.eval_s - (now - self.t_start)
        if left <= 0:
            return step, per_step
        fit = max(step + 1, int(step + left / per_step))
        return (fit if self.cap is None else min(self.cap, fit)), per_step


# --- hardware -------------------------------------------------------------------------------------------------

def pick_device(preference: str = "auto") -> torch.device:
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


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if preference != "auto":
        if preference not in names:
            raise ValueError(f"dtype={preference!r}; expected one of {sorted(names)} or 'auto'")
        return names[preference]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def compile_plan(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """(use torch.compile, attention implementation) for training on `device`.

    On CUDA: compile, and SDPA (Flash Attention). On CPU: compile too, with attention written out ("eager"):
    inductor fuses the mask and softmax into one generated loop, which beats the CPU flash kernel at these model
    sizes (bench/train_throughput.py). Both attention paths give the same outputs; only speed differs.
    """
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile={cfg.compile!r}; expected 'auto', 'on' or 'off'")
    use = cfg.compile == "on" or (cfg.compile == "auto" and device.type in ("cuda", "cpu"))
    return use, "eager" if use and device.type == "cpu" else "sdpa"


def setup_distributed(device_pref: str) -> tuple[int, int, int, torch.device]:
    """(rank, local_rank, world_size, device); initialises the process group under torchrun."""
    if "RANK" not in os.environ:
        return 0, 0, 1, pick_device(device_pref)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = pick_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, local_rank, world, device


# --- optimizer and schedule -----------------------------------------------------------------------------------

def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2: linear weights, embeddings), none on norms and biases.

    With cfg.optimizer == "muon", the 2-D weights inside the blocks move to Muon (tinylib.optim) instead.
    Every group records its peak lr as "base_lr"; the schedule scales all of them by the same factor.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer={cfg.optimizer!r}; expected 'adamw' or 'muon'")
    use_muon = cfg.optimizer == "muon"
    to_muon = [p for n, p in named if use_muon and p.dim() == 2 and n.startswith("blocks.")]
    muon_ids = {id(p) for p in to_muon}
    rest = [p for _, p in named if id(p) not in muon_ids]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    betas = (cfg.beta1, cfg.beta2)
    if not use_muon:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=device.type in ("cuda", "cpu"))
    from tinylib.optim import MuonAdamW

    groups.append({"params": to_muon, "muon": True, "lr": cfg.muon_lr, "base_lr": cfg.muon_lr,
                   "momentum": cfg.muon_momentum, "weight_decay": cfg.muon_weight_decay})
    return MuonAdamW(groups, lr=cfg.lr, betas=betas)


def lr_scale(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to cfg.min_lr_ratio at total_steps: the factor on every peak lr."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + 0.5 * (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """AdamW's learning rate at `step`: cfg.lr x lr_scale."""
    return cfg.lr * lr_scale(step, cfg, total_steps)


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that B x T x accum x world = tokens_per_step exactly."""
    per_micro = cfg.batch_size * cfg.seq_len * world_size
    if cfg.tokens_per_step is None:
        return 1
    if cfg.tokens_per_step % per_micro:
        raise ValueError(
            f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size x seq_len x world_size = "
            f"{cfg.batch_size} x {cfg.seq_len} x {world_size} = {per_micro}; choose a multiple of {per_micro}")
    return cfg.tokens_per_step // per_micro


# --- RNG state (for exact resume) -----------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the loop -------------------------------------------------------------------------------------------------

def default_out_dir(cfg: TrainConfig) -> Path:
    return Path("checkpoints") / f"{cfg.preset}-{Path(cfg.data).name}"


def build_model(cfg: TrainConfig, vocab_size: int, attn_impl: str = "sdpa") -> Transformer:
    vocab = math.ceil(vocab_size / cfg.vocab_multiple) * cfg.vocab_multiple
    model_cfg = get_config(cfg.preset, vocab_size=vocab, **cfg.model_overrides)
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds preset {cfg.preset!r}'s context of {model_cfg.max_seq_len}; "
                         f"lower seq_len or pass model_overrides={{'max_seq_len': {cfg.seq_len}}}")
    return Transformer(model_cfg, attn_impl)


def check_fits(model: Transformer, device: torch.device, cfg: TrainConfig) -> None:
    """Fail early, with numbers, when weights + AdamW state clearly cannot fit on the device."""
    if device.type != "cuda":
        return
    n = param_counts(model.cfg).total
    need = n * 16  # fp32 weights + grads + two Adam moments
    free, _ = torch.cuda.mem_get_info(device)
    if need > free:
        raise RuntimeError(f"preset {cfg.preset!r} needs ~{need / 2**30:.1f} GiB for weights, gradients and AdamW "
                           f"state but {device} has {free / 2**30:.1f} GiB free; pick a smaller preset")


def sample_completions(model: Transformer, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Fixed-prompt, fixed-seed completions: progress the loss alone hides. Leaves the global RNG untouched."""
    from tinylib.generate import generate

    saved = rng_state()
    try:
        return [p + generate(model, tokenizer, p, max_new_tokens=max_new_tokens, temperature=0.8, top_k=50,
                             seed=0).text for p in prompts]
    finally:
        set_rng_state(saved)


def train(cfg: TrainConfig, on_record=None) -> TrainResult:
    """Train a model as `cfg` says; returns the final figures. Works the same under torchrun.

    `on_record(record)` is called on rank 0 with every metrics record (e.g. `tinylib.metrics.LivePlot`).
    """
    from tinylib.tokenizer import get_tokenizer

    rank, _, world, device = setup_distributed(cfg.device)
    master = rank == 0
    dtype = pick_dtype(cfg.dtype, device)
    use_compile, attn_impl = compile_plan(cfg, device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)

    meta = read_meta(cfg.data)
    tokenizer = get_tokenizer(meta["tokenizer"]["name"])
    train_tokens = open_split(cfg.data, "train", tokenizer)
    val_tokens = open_split(cfg.data, "val", tokenizer)
    accum = grad_accum_steps(cfg, world)
    tokens_per_step = cfg.batch_size * cfg.seq_len * accum * world

    from tinylib.budget import flops_per_token, peak_flops

    peak = peak_flops(device, _dtype_name(dtype))  # before seeding: a CPU peak is measured with random matrices
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, meta["vocab_size"], attn_impl).to(device)
    check_fits(model, device, cfg)
    optimizer = configure_optimizer(model, cfg, device)
    batches = RandomBatches(train_tokens, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=rank, world_size=world)

    step, tokens_seen, best_val, total_steps = 0, 0, None, None
    timed = cfg.max_time_s is not None  # plan (and re-plan) the steps that fit the time: TimeBudget
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    elif cfg.max_tokens is not None:
        total_steps = max(1, cfg.max_tokens // tokens_per_step)
    elif cfg.max_time_s is None:
        raise ValueError("say how long to train: set max_steps, max_tokens or max_time_s")
    if timed and not cfg.max_time_s > 0:
        raise ValueError(f"max_time_s={cfg.max_time_s} must be a positive number of seconds (or None: no time limit)")
    if cfg.resume and (out_dir / "latest" / "state.pt").is_file():
        folder = resolve(out_dir / "latest")
        saved_meta = json.loads((folder / "config.json").read_text())
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=not model.cfg.tie_embeddings)
        state = load_state(folder)
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["data"][rank] if isinstance(state["data"], list) else state["data"])
        set_rng_state(state["rng"])
        step, tokens_seen = saved_meta["step"], saved_meta["tokens_seen"]
        best_val, total_steps = saved_meta["best_val_loss"], saved_meta["total_steps"]
        timed = False  # the resumed run keeps the schedule it was given
        if master:
            print(f"resumed from {folder} at step {step} ({tokens_seen:,} tokens)")

    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = MetricsLog(out_dir / "metrics.jsonl") if master else None
    if master:
        if log and step > 0:
            log.truncate_after(step)
        n = param_counts(raw_model.cfg)
        print(f"model {cfg.preset}: {n.total:,} parameters ({n.non_embedding:,} non-embedding), "
              f"vocab {raw_model.cfg.vocab_size} (tokenizer {tokenizer.name}: {tokenizer.vocab_size})")
        print(f"tokens per step = micro-batch {cfg.batch_size} x sequence {cfg.seq_len} x accumulation {accum} x "
              f"world size {world} = {tokens_per_step:,}")
        print(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, compile {use_compile}, out {out_dir}")

    val_bytes_per_token = meta["splits"]["val"]["text_bytes"] / meta["splits"]["val"]["tokens"]

    def evaluate() -> float:
        return evaluate_loss(raw_model, val_tokens, seq_len=cfg.seq_len, batch_size=cfg.eval_batch_size,
                             max_batches=cfg.eval_batches, device=device, dtype=dtype)

    def save(folder: str, with_state: bool) -> None:
        meta_out = {"train": dataclasses.asdict(cfg), "tokenizer": tokenizer.name, "data": str(cfg.data),
                    "step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val, "total_steps": total_steps,
                    "world_size": world, "tokens_per_step": tokens_per_step, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
                    "dtype": _dtype_name(dtype)}
        state = None
        if with_state:
            data_states = [batches.state_dict()]
            if world > 1:  # each rank's stream position, gathered so the saved state is complete
                data_states = [None] * world
                dist.all_gather_object(data_states, batches.state_dict())
            state = {"optimizer": optimizer.state_dict(), "rng": rng_state(),
                     "data": data_states if world > 1 else data_states[0]}
        if master:
            save_checkpoint(out_dir / folder, raw_model, meta_out, state)

    bar = None
    t_start = time.perf_counter()
    timed_steps, timed_s = 0, 0.0
    budget = TimeBudget(cfg.max_time_s, t_start, cap=total_steps) if timed else None
    shown_plan = None
    last_val, train_loss = None, float("nan")
    stop_at = cfg.until_step
    while True:
        # Fit the run into max_time_s: a first plan after 5 timed steps, then a new one at every log step.
        first = budget is not None and budget.mark is None and timed_steps >= 5
        if first or (budget and budget.mark and step % cfg.log_every == 0):
            planned, per_step = budget.plan(step, timed_steps, timed_s, time.perf_counter())
            if world > 1:  # rank 0 decides for all, so that every rank stops at the same step
                t = torch.tensor([planned], device=device)
                dist.broadcast(t, 0)
                planned = int(t)
            if master and planned != shown_plan and (first or planned == step or step % cfg.eval_every == 0):
                shown_plan = planned
                (bar.write if bar else print)(
                    f"time budget reached at step {step}" if planned == step else
                    f"{per_step * 1000:.0f} ms/step measured: {planned} steps fit in {cfg.max_time_s:.0f} s")
            if bar and planned != total_steps:
                bar.total = planned
                bar.refresh()
            total_steps = planned
        last = total_steps is not None and step >= total_steps
        paused = stop_at is not None and step >= stop_at
        if master and bar is None and total_steps is not None and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

        if step % cfg.eval_every == 0 or last or paused:
            t_eval = time.perf_counter()
            if master:
                last_val = evaluate()
                bpb = bits_per_byte(last_val, 1, val_bytes_per_token)
                record = {"step": step, "tokens": tokens_seen, "val_loss": last_val, "val_bpb": bpb}
                log.write(record)
                if on_record:
                    on_record(record)
                msg = f"step {step}: val loss {last_val:.4f} nats/token, {bpb:.4f} bits/byte"
                improved = best_val is None or last_val < best_val
                if improved:
                    best_val = last_val
                if cfg.sample_prompts and cfg.sample_tokens:
                    samples = sample_completions(raw_model, tokenizer, cfg.sample_prompts, cfg.sample_tokens)
                    msg += "".join(f"\n  > {s!r}" for s in samples)
                (bar.write if bar else print)(msg)
                if improved and step > 0:
                    save("best", with_state=False)
            if step > 0:
                save("latest", with_state=True)
            if budget:
                budget.eval_s = time.perf_counter() - t_eval
        elif cfg.save_every and step % cfg.save_every == 0:
            save("latest", with_state=True)
        if last or paused:
            break

        t0 = time.perf_counter()
        scale = lr_scale(step, cfg, total_steps if total_steps is not None else 10**9)
        lr = cfg.lr * scale
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = batches.next_batch(device)
            sync = micro == accum - 1
            with (model.no_sync() if world > 1 and not sync else nullcontext()), autocast_context(device, dtype):
                _, loss = model(x, y, return_logits=False)  # chunked loss: the full logits never exist
            (loss / accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step

        if step % cfg.log_every == 0 or step == total_steps or (total_steps is None and step <= 6):
            train_loss = (loss_sum / accum).item()  # the .item() syncs the device, so the timing below is honest
            if world > 1:
                t = torch.tensor([train_loss], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.AVG)
                train_loss = t.item()
        dt = time.perf_counter() - t0
        if step > 1:  # the first step includes warm-up costs (allocation, compilation)
            timed_steps, timed_s = timed_steps + 1, timed_s + dt
        if master and (step % cfg.log_every == 0 or step == total_steps):
            tps = tokens_per_step / dt
            record = {"step": step, "tokens": tokens_seen, "train_loss": train_loss, "lr": lr,
                      "grad_norm": grad_norm.item(), "tokens_per_s": tps, "step_time_s": dt,
                      "mfu": tps / world * flops_per_token(raw_model.cfg, cfg.seq_len) / peak,
                      "peak_mem_mb": _peak_mem_mb(device)}
            log.write(record)
            if on_record:
                on_record(record)
            if bar:
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{record['mfu']:.1%}")
        if bar:
            bar.update(1)

    if bar:
        bar.close()
    tps_mean = timed_steps * tokens_per_step / timed_s if timed_s else float("nan")
    if world > 1:
        dist.barrier()
    return TrainResult(out_dir=out_dir, step=step, tokens=tokens_seen, train_loss=train_loss, val_loss=last_val,
                       best_val_loss=best_val, tokens_per_s=tps_mean, time_s=time.perf_counter() - t_start,
                       val_bpb=bits_per_byte(last_val, 1, val_bytes_per_token) if last_val is not None else None)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _peak_mem_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


# --- command line ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m tinylib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a JSON file of TrainConfig fields; flags given here override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_overrides":
            parser.add_argument(flag, type=json.loads, default=None, help='JSON, e.g. \'{"dropout": 0.1}\'')
        elif f.name == "sample_prompts":
            parser.add_argument(flag, nargs="*", default=None)
        elif f.type in ("bool",):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "int | None": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None)
    args = vars(parser.parse_args(argv))
    base = json.loads(Path(args.pop("config")).read_text()) if args.get("config") else {}
    base.update({k: v for k, v in args.items() if v is not None})
    return TrainConfig.from_dict(base)


def main(argv: list[str] | None = None) -> None:
    result = train(parse_args(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
