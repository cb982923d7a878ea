"""The training loop: one CPU, one GPU, or many GPUs under torchrun, resumable to the bit.

    python -m tinylib.train --preset tiny --data data/tinystories-4096 --max-tokens 5_000_000
    torchrun --standalone --nproc_per_node=8 -m tinylib.train --preset llama_6L_6H_288D --data ...

Read it top to bottom: `train_step` is one optimizer step (forward and backward on each micro-batch, clip,
update); the trainer, fine-tuning, the induction recipe and the benchmark all run this one function. `Run`
is what a run knows besides its `TrainState`; `setup` builds it for pretraining (fine-tuning builds its own
with a different batch source and evaluation: `tinylib.finetune.stage`). `run_loop` reads as "what is due
now" (`what_is_due`: evaluate, save, or stop), then `take_step` (the lr for this step, a step the divergence
guard accepts, or a rollback), then logging. Gradient accumulation is derived from a target number of tokens
per optimizer step; bf16 autocast where the device supports it (fp32 master weights); optional
torch.compile; DDP. Rank 0 evaluates on fixed validation windows, prints fixed-prompt samples, logs metrics
and saves `latest/` and `best/`; `TrainState` (tinylib.checkpoint) holds what a resumed run needs to continue
exactly. What it leaves to others: the optimizers, the schedule and the lr (`tinylib.optim`), checkpoint
files, evaluation, the metrics log, FLOPs and MFU (`tinylib.flops`), the divergence guard, stop signals and
the DDP watchdog (`tinylib.faults`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from tinylib.batches import RandomBatches
from tinylib.checkpoint import (
    TrainState,
    load_meta,
    rng_state,
    set_rng_state,
)
from tinylib.config import TrainConfig, config_from_args, entry_point, param_counts
from tinylib.data import open_split, read_meta
from tinylib.device import (
    autocast_context,
    check_fits,
    compile_plan,
    dtype_name,
    pick_dtype,
    setup_distributed,
)
from tinylib.evaluate import bits_per_byte, evaluate_loss
from tinylib.faults import (
    DivergenceGuard,
    StopSignals,
    Watchdog,
    claim_run_folder,
    free_run_folder,
    lost_rank,
    run_lock,
)
from tinylib.flops import flops_per_token, peak_flops
from tinylib.fp8 import to_float8_training
from tinylib.generate import generate
from tinylib.metrics import MetricsLog, tracking_hook
from tinylib.model import Transformer, build_model
from tinylib.optim import TimePlan, configure_optimizer, current_lr, lr_scale, peak_lrs, set_lr_factor
from tinylib.paths import CHECKPOINTS_DIR
from tinylib.tokenizer import Tokenizer, get_tokenizer


@dataclass
class TrainResult:
    out_dir: Path | None
    step: int
    tokens: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    val_bpb: float | None
    tokens_per_s: float  # mean over the timed training steps (evaluation excluded)
    time_s: float = 0.0  # wall time of the training loop, evaluation and checkpoints included
    stopped_by: str | None = None  # "SIGTERM"/"SIGINT": saved at a step boundary before the end


# --- one step -----------------------------------------------------------------------------------------------

def train_step(state: TrainState, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
               grad_clip: float | None = 1.0, dtype: torch.dtype | None = None,
               accept: Callable[[torch.Tensor, torch.Tensor | None], bool] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over `micro_batches` (their gradients accumulate): (mean loss, gradient norm).

    The loss is computed in chunks without ever holding the full logits (`linear_cross_entropy`); targets of
    -1 are not scored (fine-tuning masks the prompt this way). Under DDP the gradients are all-reduced once,
    on the last micro-batch. Both results stay on the device (no sync) unless `accept(loss, grad_norm)` is
    given: when it says no, the step is not applied (divergence guard). The lr is whatever the optimizer
    holds: the loop sets it before the step (`tinylib.optim.set_lr_factor`).
    """
    device = next(state.model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        no_sync = state.module.no_sync() if isinstance(state.module, DDP) and not last else nullcontext()
        with no_sync, autocast_context(device, dtype):
            _, loss = state.module(x, y, return_logits=False)
        (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip) if grad_clip else None
    if accept is not None and not accept(loss_sum / len(micro_batches), grad_norm):
        state.optimizer.zero_grad(set_to_none=True)
        return loss_sum / len(micro_batches), grad_norm
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += sum(x.numel() for x, _ in micro_batches) * (dist.get_world_size() if
                                                                      dist.is_initialized() else 1)
    return loss_sum / len(micro_batches), grad_norm


# --- the pieces of a run ------------------------------------------------------------------------------------

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def next_micro_batches(run: Run, state: TrainState) -> Batches:
    """The micro-batches of the next step: `accum` draws from the run's data stream."""
    return [state.batches.next_batch(run.device) for _ in range(run.accum)]


@dataclass
class Run:
    """What a run knows besides its TrainState: where it runs, what it reads, where it writes, how fast it
    goes. Pretraining and fine-tuning differ only in `draw` (the batches of a step; an empty list is a step
    not taken, counted in `skipped`), `evaluate` and `meta` (what checkpoints record besides the config)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    out_dir: Path | None  # None: save nothing
    tokenizer: Tokenizer
    accum: int  # micro-batches per optimizer step
    evaluate: Callable[[Run, TrainState], dict]  # rank 0: {"val_loss": ..., other figures}
    log: MetricsLog | None = None  # rank 0 only
    on_record: Callable[[dict], None] | None = None
    draw: Callable[[Run, TrainState], Batches] = next_micro_batches
    meta: dict = field(default_factory=dict)
    save_best: bool = True  # best/ beside latest/ when the validation loss improves
    peak_flops: float = math.nan  # for MFU; NaN: not measured, no MFU
    budget: TimePlan | None = None
    bar: tqdm | None = None
    timed_steps: int = 0
    timed_s: float = 0.0
    timed_cpu_s: float = 0.0  # this process's CPU seconds in the timed steps (a busy machine distorts less)
    skipped: int = 0  # draws that gave no batch to learn from: no step taken
    last_eval: dict = field(default_factory=dict)
    train_loss: float = float("nan")
    guard: DivergenceGuard | None = None  # it holds the run's StopSignals
    watchdog: Watchdog | None = None  # DDP only
    done_at: int = -1  # the step last evaluated or saved: a step that was not applied does not redo it

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.accum * self.world

    def say(self, msg: str) -> None:
        if self.master:
            (self.bar.write if self.bar else print)(msg)

    def emit(self, record: dict) -> None:
        if self.log:
            self.log.write(record)
        if self.on_record:
            self.on_record(record)

    def checkpoint_meta(self) -> dict:
        dev = self.device
        return {"train": self.cfg.to_dict(), "tokenizer": self.tokenizer.name, "data": str(self.cfg.data),
                "world_size": self.world, "tokens_per_step": self.tokens_per_step, "device": str(dev),
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
                "dtype": dtype_name(self.dtype), **self.meta,
                **({"skipped_batches": self.skipped} if self.skipped else {})}


def validation_loss(val_tokens: np.ndarray, data_meta: dict) -> Callable[[Run, TrainState], dict]:
    """Pretraining's evaluation: loss on fixed windows of the validation split, and bits per byte."""
    split = data_meta["splits"]["val"]

    def evaluate(run: Run, state: TrainState) -> dict:
        cfg = run.cfg
        loss = evaluate_loss(state.model, val_tokens, seq_len=cfg.seq_len, batch_size=cfg.eval_batch_size,
                             max_batches=cfg.eval_batches, device=run.device, dtype=run.dtype)
        return {"val_loss": loss, "val_bpb": bits_per_byte(loss, split["tokens"], split["text_bytes"])}

    return evaluate


def run_folder(cfg: TrainConfig) -> Path:
    """cfg.out_dir, else checkpoints/<preset>-<data>: -2, -3, ... when taken (with resume: the newest)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return free_run_folder(CHECKPOINTS_DIR / f"{cfg.preset}-{Path(cfg.data).name}", cfg.resume)


def setup(cfg: TrainConfig, on_record: Callable[[dict], None] | None,
          stack: ExitStack) -> tuple[Run, TrainState]:
    """Devices, data, model, optimizer and data stream; the saved state when resuming. `stack` holds the
    run's lock on its folder (rank 0), the signal handlers and the DDP watchdog until the run ends."""
    rank, world, device = setup_distributed(cfg.device, cfg.dist_timeout_s)
    dtype = pick_dtype(cfg.dtype, device)
    use_compile, attn_impl = compile_plan(cfg, device)
    meta = read_meta(cfg.data)
    tokenizer = get_tokenizer(meta["tokenizer"]["name"])
    train_tokens = open_split(cfg.data, "train", tokenizer)
    # a bad preset or override, or a model too large for the memory, is refused before out_dir is made
    check_fits(cfg.model_config(meta["vocab_size"]), device, training=True, what=f"preset {cfg.preset!r}")
    out_dir = run_folder(cfg)
    if rank == 0:  # before anything in out_dir is touched: one run per folder, and never over another
        stack.enter_context(run_lock(out_dir))
        moved = claim_run_folder(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        if moved:
            print(moved)
    run = Run(cfg, rank, world, device, dtype, out_dir, tokenizer, accum=cfg.grad_accum_steps(world),
              evaluate=validation_loss(open_split(cfg.data, "val", tokenizer), meta),
              peak_flops=peak_flops(device, dtype_name(dtype)),  # before seeding: a CPU peak is measured
              log=MetricsLog(out_dir / "metrics.jsonl") if rank == 0 else None, on_record=on_record,
              guard=DivergenceGuard(cfg, world, stack.enter_context(StopSignals())),
              watchdog=stack.enter_context(Watchdog(2 * cfg.dist_timeout_s, f"rank {rank}")) if world > 1
              else None)  # the collectives' own timeout normally ends it first, with their error
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, meta["vocab_size"], attn_impl).to(device)
    if cfg.fp8:  # torchao float8 for the block matmuls; refuses on hardware without FP8 units
        to_float8_training(model)
    batches = RandomBatches(train_tokens, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=rank,
                            world_size=world)
    state = TrainState(model, configure_optimizer(model, cfg, device), batches,
                       total_steps=cfg.planned_steps(run.tokens_per_step))
    resume(run, state)
    if cfg.resume and state.step and state.total_steps is not None and state.step >= state.total_steps:
        run.say(f"the run in {out_dir} is finished: step {state.step} of the {state.total_steps} it planned, "
                "so there is nothing left to train (a resumed run keeps the schedule it began with; "
                "--max-steps does not extend it). To train further, start a new run in another --out-dir")
    module = torch.compile(model) if use_compile else model
    if world > 1:
        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    state.module = module
    if run.master:
        n = param_counts(model.cfg)
        print(f"model {cfg.preset}: {n.total:,} parameters ({n.non_embedding:,} non-embedding), "
              f"vocab {model.cfg.vocab_size} (tokenizer {tokenizer.name}: {tokenizer.vocab_size})")
        print(f"tokens per step = micro-batch {cfg.batch_size} x sequence {cfg.seq_len} x accumulation "
              f"{run.accum} x world size {world} = {run.tokens_per_step:,}")
        print(f"device {device}, dtype {dtype_name(dtype)}, compile {use_compile}, out {out_dir}")
    return run, state


def resume(run: Run, state: TrainState) -> None:
    """Plan the time budget, restore the newest intact checkpoint when cfg.resume says so, and open the
    metrics log and the tracker at the step the run continues from."""
    cfg = run.cfg
    if cfg.max_time_s is not None:
        run.budget = TimePlan(cfg.max_time_s, time.perf_counter(), cap=state.total_steps)
    resumed, passed_over = (state.resume(run.out_dir, run.tokenizer.name) if cfg.resume and run.out_dir
                            else (None, []))
    if resumed:
        run.budget = None  # a resumed run keeps the schedule it was given
        run.done_at = state.step  # evaluated and saved before the interruption
        rollbacks = load_meta(resumed).get("guard_rollbacks", 0)
        if run.guard and rollbacks:  # the guard's lowered lr is in the optimizer state restored above
            run.guard.rollbacks = run.meta["guard_rollbacks"] = rollbacks
        run.say("".join(f"skipped damaged checkpoint {note}\n" for note in passed_over)
                + f"resumed from {resumed} at step {state.step} ({state.tokens_seen:,} tokens)"
                + (f"; the divergence guard rolled back {rollbacks} time(s): peak lr "
                   f"{', '.join(f'{lr:.3g}' for lr in dict.fromkeys(peak_lrs(state.optimizer)))}"
                   if rollbacks else ""))
    if run.master and run.log:  # a resumed run redoes the steps logged after its save; a new run starts anew
        run.log.truncate_after(state.step if state.step else -1)
    if run.master and cfg.log_to:  # the same records to TensorBoard/trackio/W&B; a resumed run continues
        run.on_record = tracking_hook(cfg.log_to, run.out_dir, cfg.to_dict(), state.step, then=run.on_record)


def replan(run: Run, state: TrainState) -> None:
    """Fit the run into max_time_s: a first plan after 5 timed steps, then a new one at every log step."""
    budget, cfg = run.budget, run.cfg
    first = budget.mark is None
    if (first and run.timed_steps < 5) or (not first and state.step % cfg.log_every):
        return
    planned, per_step = budget.plan(state.step, run.timed_steps, run.timed_s, time.perf_counter())
    if run.world > 1:  # rank 0 decides for all, so that every rank stops at the same step
        t = torch.tensor([planned], device=run.device)
        dist.broadcast(t, 0)
        planned = int(t)
    at_eval = bool(cfg.eval_every) and state.step % cfg.eval_every == 0
    if planned != state.total_steps and (first or planned == state.step or at_eval):
        run.say(f"time budget reached at step {state.step}" if planned == state.step else
                f"{per_step * 1000:.0f} ms/step measured: {planned} steps fit in {cfg.max_time_s:.0f} s")
    if run.bar and planned != state.total_steps:
        run.bar.total = planned
        run.bar.refresh()
    state.total_steps = planned


def sample_completions(model: Transformer, tokenizer: Tokenizer, prompts: list[str],
                       n_tokens: int) -> list[str]:
    """Fixed-prompt, fixed-seed completions: progress the loss alone hides. The global RNG is untouched."""
    saved = rng_state()
    try:
        return [p + generate(model, tokenizer, p, max_new_tokens=n_tokens, temperature=0.8, top_k=50,
                             seed=0).text for p in prompts]
    finally:
        set_rng_state(saved)


def describe(record: dict) -> str:
    """'val loss 1.2345 nats/token, 1.0123 bits/byte' and any other figures of an evaluation record."""
    parts = [f"val loss {record['val_loss']:.4f} nats/token"]
    if "val_bpb" in record:
        parts.append(f"{record['val_bpb']:.4f} bits/byte")
    parts += [f"{k.replace('_', ' ')} {v:.4g}" for k, v in record.items() if k not in ("val_loss", "val_bpb")]
    return ", ".join(parts)


def evaluate_and_save(run: Run, state: TrainState) -> None:
    """Rank 0 evaluates, logs and shows samples; the best model goes to best/, resumable state to latest/."""
    cfg, t0 = run.cfg, time.perf_counter()
    if run.master:
        run.last_eval = run.evaluate(run, state)
        val = run.last_eval["val_loss"]
        run.emit({"step": state.step, "tokens": state.tokens_seen, **run.last_eval})
        msg = f"step {state.step}: {describe(run.last_eval)}"
        improved = math.isfinite(val) and (state.best_val_loss is None or val < state.best_val_loss)
        if improved:
            state.best_val_loss = val
        if cfg.sample_prompts and cfg.sample_tokens:
            samples = sample_completions(state.model, run.tokenizer, cfg.sample_prompts, cfg.sample_tokens)
            msg += "".join(f"\n  > {s!r}" for s in samples)
        run.say(msg)
        if improved and state.step > 0 and run.save_best and run.out_dir:
            state.save(run.out_dir / "best", run.checkpoint_meta(), resumable=False)
    save_latest(run, state)
    if run.budget:
        run.budget.eval_s = time.perf_counter() - t0


def save_latest(run: Run, state: TrainState) -> None:
    if state.step > 0 and run.out_dir:
        state.save(run.out_dir / "latest", run.checkpoint_meta(), keep_previous=run.cfg.keep_previous)


def log_step(run: Run, state: TrainState, grad_norm: torch.Tensor | None, dt: float) -> None:
    """Rank 0 logs the loss, lr, gradient norm, tokens/s, MFU and peak memory of the step just taken."""
    if not run.master:
        return
    cfg = run.cfg
    tps = run.tokens_per_step / dt
    mfu = tps / run.world * flops_per_token(state.model.cfg, cfg.seq_len) / run.peak_flops
    mem = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.device.type == "cuda" else None
    run.emit({"step": state.step, "tokens": state.tokens_seen, "train_loss": run.train_loss,
              "lr": current_lr(state.optimizer), "grad_norm": None if grad_norm is None else grad_norm.item(),
              "tokens_per_s": tps, "step_time_s": dt, "mfu": mfu, "peak_mem_mb": mem})
    if run.bar:
        run.bar.set_postfix(loss=f"{run.train_loss:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{mfu:.1%}")


# --- the loop -----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, on_record: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a model as `cfg` says; returns the final figures. Works the same under torchrun.

    `on_record(record)` is called on rank 0 with every metrics record (e.g. `tinylib.widgets.live.LivePlot`).
    SIGINT/SIGTERM save `latest/` at the next step boundary and return (`stopped_by` says which).
    """
    with ExitStack() as stack:
        run, state = setup(cfg, on_record, stack)
        try:
            return run_loop(run, state)
        except RuntimeError as e:  # under DDP a collective fails when another rank is gone
            lost = lost_rank(e, run.rank, state.step, run.out_dir) if run.world > 1 else None
            if lost is None:
                raise
            raise lost from e


def what_is_due(run: Run, state: TrainState) -> tuple[str | None, bool]:
    """What is due before the next step ("evaluate", "save" or None), and whether the run ends here: the
    schedule is done, `until_step` is reached, or a stop signal came. Nothing is done twice for one step
    (a step the guard did not apply leaves the step count where it was)."""
    cfg, step = run.cfg, state.step
    end = state.total_steps is not None and step >= state.total_steps
    end = end or (cfg.until_step is not None and step >= cfg.until_step)
    stop = run.guard.stop_requested
    if run.done_at == step:
        return None, end or stop
    run.done_at = step
    if end or (cfg.eval_every and step % cfg.eval_every == 0):
        return "evaluate", True if end else stop
    if stop or (cfg.save_every and step % cfg.save_every == 0):
        return "save", stop
    return None, False


def take_step(run: Run, state: TrainState) -> tuple[bool, torch.Tensor | None]:
    """One optimizer step on the next batches, if the guard accepts it: (applied, gradient norm). Not applied:
    a draw with nothing to learn from (counted), or a step the guard refused (it rolls back when due)."""
    cfg, step = run.cfg, state.step + 1
    micro = run.draw(run, state)
    if not micro:
        run.skipped += 1
        if run.skipped > max(100, state.total_steps or 0):
            raise ValueError(f"{run.skipped} draws had no target to score: the batches hold masked (-1) "
                             "targets only; check the data")
        return False, None
    set_lr_factor(state.optimizer, lr_scale(
        state.step, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio, schedule=cfg.schedule,
        total=state.total_steps if state.total_steps is not None else 10**9))
    if run.guard.pending is None:  # the weights the first step (or the first after a rollback) starts from
        run.guard.watch(state.model)
    _, grad_norm = train_step(state, micro, grad_clip=cfg.grad_clip, dtype=run.dtype,
                              accept=partial(run.guard.accept, step))
    run.train_loss = run.guard.loss  # the guard's verdict waited for the device: honest timing
    if run.watchdog:
        run.watchdog.beat()
    if state.step == step:
        run.guard.watch(state.model)  # judged with the next step's verdict
        return True, grad_norm
    if run.guard.must_roll_back():
        run.say(run.guard.roll_back(state, run.out_dir, run.tokenizer.name, run.log))
        run.meta["guard_rollbacks"] = run.guard.rollbacks  # with the lowered peak lrs, in every checkpoint
        run.done_at = state.step
    return False, grad_norm


def run_loop(run: Run, state: TrainState) -> TrainResult:
    """Evaluate and save when due, step, log; until the schedule ends, until_step, or a stop signal."""
    cfg, t_start = run.cfg, time.perf_counter()
    if run.budget:
        run.budget.t_start = t_start
    while True:
        if run.budget:
            replan(run, state)
        if run.master and run.bar is None and state.total_steps is not None and cfg.progress:
            run.bar = tqdm(total=state.total_steps, initial=state.step, desc="train", unit="step",
                           dynamic_ncols=True)
        task, end = what_is_due(run, state)
        if task == "evaluate":
            evaluate_and_save(run, state)
        elif task == "save":
            save_latest(run, state)
        if end:
            break

        t0, c0 = time.perf_counter(), time.process_time()
        applied, grad_norm = take_step(run, state)
        if not applied:
            continue
        dt = time.perf_counter() - t0
        if state.step > 1:  # the first step includes warm-up costs (allocation, compilation)
            run.timed_steps, run.timed_s = run.timed_steps + 1, run.timed_s + dt
            run.timed_cpu_s += time.process_time() - c0
        if state.step % cfg.log_every == 0 or state.step == state.total_steps:
            log_step(run, state, grad_norm, dt)
        if run.bar:
            run.bar.update(1)

    if run.bar:
        run.bar.close()
    if run.world > 1:
        dist.barrier()
    tokens_per_s = run.timed_steps * run.tokens_per_step / run.timed_s if run.timed_s else math.nan
    return TrainResult(out_dir=run.out_dir, step=state.step, tokens=state.tokens_seen,
                       train_loss=run.train_loss, val_loss=run.last_eval.get("val_loss"),
                       best_val_loss=state.best_val_loss, val_bpb=run.last_eval.get("val_bpb"),
                       tokens_per_s=tokens_per_s, time_s=time.perf_counter() - t_start,
                       stopped_by=run.guard.signals.received if run.guard.stop_requested else None)


# --- command line -------------------------------------------------------------------------------------------

@entry_point  # a user's mistake or a fault they can act on: `error: ...`, exit status 2, no traceback
def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(argv, description=__doc__.split("\n\n")[0])
    if cfg.resume and not run_folder(cfg).is_dir():
        raise FileNotFoundError(f"--resume: {run_folder(cfg)} does not exist, so there is no run to "
                                "continue; check --out-dir, or leave out --resume to start a new run")
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        figures = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
        print(json.dumps(figures))
        if result.stopped_by:
            given = sys.argv[1:] if argv is None else argv
            args = [a for a in given if a not in ("--resume", "--overwrite")]
            if not any(a.startswith("--out-dir") for a in args):  # the default folder may have been -2, -3
                args += ["--out-dir", str(result.out_dir)]
            print(f"stopped by {result.stopped_by} at step {result.step}, saved in {result.out_dir}/latest; "
                  f"resume with: python -m tinylib.train {shlex.join(args)} --resume", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
