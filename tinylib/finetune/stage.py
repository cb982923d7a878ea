"""The instruction fine-tuning stage: start from a pretrained checkpoint, train on (prompt, response) pairs
with the loss on response tokens only, and measure whether the model now writes the story it is asked for.

    python -m tinylib.finetune --parent checkpoints/reference --max-time-s 600 --max-steps 100000

What this module does:
- The loop: `train_step` of tinylib.train on each batch of windows (tinylib.finetune.batches: targets inside
  the prompt are -1, so the loss is the cross-entropy over the story alone); a batch with no scored token is
  skipped and counted. The warmup + cosine schedule and the optimizer of tinylib.optim; `TrainState`
  checkpoints whose config.json says `"stage": "instruct"` and names the parent checkpoint.
- Evaluation on fixed held-out prompts: the word-inclusion rate of generated stories and the loss on
  responses, before and after; `compare_packing` runs both window layouts for the same number of steps.
- Data: the official TinyStories-Instruct files when present, else the derived set (`instruct.py` here),
  and the label of what was used goes into the checkpoint.

What it leaves to others: the text and the prompt format (tinylib.finetune.instruct), windows
(tinylib.finetune.batches), the step and checkpoint files (tinylib.train, tinylib.checkpoint), sampling
(tinylib.generate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinylib.checkpoint import TrainState, load_meta, load_model, load_tokenizer, resolve
from tinylib.config import TrainConfig
from tinylib.device import autocast_context, dtype_name, pick_device, pick_dtype
from tinylib.finetune import instruct
from tinylib.finetune.batches import LAYOUTS, WindowBatches, Windows, encode_examples, make_windows
from tinylib.finetune.instruct import Example, Parsed
from tinylib.generate import generate
from tinylib.optim import TimePlan, configure_optimizer, lr_scale
from tinylib.paths import CHECKPOINTS_DIR, shared_tinystories
from tinylib.tokenizer import Tokenizer
from tinylib.train import train_step


@dataclass
class FinetuneConfig:
    parent: str = "checkpoints/reference"  # the pretrained checkpoint to start from
    data: str = "auto"  # "official" (TinyStories-Instruct), "derived" (from plain stories), or "auto": either
    out_dir: str | None = None  # default checkpoints/instruct-<parent name>; "" to save nothing
    max_train_examples: int | None = None
    layout: str = "packed"  # "padded" (one example per window), "packed" (whole examples), "stream"
    seq_len: int = 256
    batch_size: int = 16
    max_steps: int = 300
    max_time_s: float | None = None  # the steps that fit this time (re-planned as it goes), at most max_steps
    optimizer: str = "adamw"
    lr: float = 3e-3  # measured: 1e-3 for 800 steps left word inclusion at 14.6%, 3e-3 reached 25%
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    eval_prompts: int = 32  # held-out requests whose stories are generated and checked for the words
    eval_examples: int = 200  # held-out examples for the response loss
    eval_tokens: int = 200  # the longest generated story
    log_every: int = 25
    resume: bool = False  # continue from <out_dir>/latest when it exists, up to max_steps in all
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- one step, and the loss on responses --------------------------------------------------------------------

def finetune_step(state: TrainState, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                  lr_scale: float = 1.0, grad_clip: float | None = 1.0,
                  dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """tinylib.train.train_step on the micro-batches that score at least one token; None (no step taken)
    when none does: a prompt-only batch has no loss to learn from (and 0/0 would be NaN)."""
    kept = [(x, y) for x, y in micro_batches if bool((y != -1).any())]
    if not kept:
        return None
    loss, _ = train_step(state, kept, lr_scale=lr_scale, grad_clip=grad_clip, dtype=dtype)
    return loss


@torch.no_grad()
def response_loss(model: torch.nn.Module, windows: Windows, *, batch_size: int = 16,
                  dtype: torch.dtype | None = None) -> float:
    """Mean nats per scored (response) token over all windows."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for a in range(0, len(windows), batch_size):
            x, y = windows.xy(slice(a, a + batch_size))
            n = int((y != -1).sum())
            if n == 0:
                continue
            with autocast_context(device, dtype):
                _, loss = model(x.to(device), y.to(device), return_logits=False)
            total, count = total + loss.item() * n, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no response tokens to evaluate: every held-out example was skipped")
    return total / count


def request_samples(model: torch.nn.Module, tok: Tokenizer, examples: Sequence[Example], *,
                    max_new_tokens: int = 200, seed: int = 0) -> list[dict]:
    """A story for each example's request (its prompt), generated with fixed settings and seed, and how many
    of the requested words it uses."""
    if not examples:
        return []
    results = generate(model, tok, [ex.prompt for ex in examples], max_new_tokens=max_new_tokens,
                       temperature=0.7, top_k=50, seed=seed)
    return [{"where": ex.where(), "words": list(ex.words), "features": list(ex.features), "story": r.text,
             "included": instruct.included_words(r.text, ex.words)} for ex, r in zip(examples, results)]


def inclusion_rate(samples: Sequence[dict]) -> float:
    """Requested words used over requested words, across all samples."""
    asked = sum(len(s["included"]) for s in samples)
    return sum(sum(s["included"]) for s in samples) / asked if asked else float("nan")


def evaluate_requests(model: torch.nn.Module, tok: Tokenizer, held_out: Sequence[Example], windows: Windows,
                      cfg: FinetuneConfig, dtype: torch.dtype | None = None) -> dict:
    """Response loss on the held-out windows and word inclusion on the first cfg.eval_prompts requests."""
    samples = request_samples(model, tok, held_out[: cfg.eval_prompts], max_new_tokens=cfg.eval_tokens,
                              seed=cfg.seed)
    return {"response_loss": response_loss(model, windows, batch_size=cfg.batch_size, dtype=dtype),
            "word_inclusion": inclusion_rate(samples), "samples": samples}


# --- data ---------------------------------------------------------------------------------------------------

def load_examples(data: str = "auto", max_train_examples: int | None = None) -> tuple[Parsed, Parsed, str]:
    """(train, held-out, label): the official TinyStories-Instruct files when `data` is "official" (downloaded
    if missing) or "auto" and they are on this machine; else the derived set from ../shared's plain stories,
    whose label says so."""
    if data not in ("auto", "official", "derived"):
        raise ValueError(f"data={data!r}: use 'official', 'derived' or 'auto'")
    found = instruct.find_instruct() if data == "auto" else {}
    if data == "official" or {"train", "valid"} <= set(found):
        files = found if {"train", "valid"} <= set(found) else instruct.download_instruct(
            train_bytes=40_000_000)
        return (instruct.read_instruct(files["train"], max_train_examples),
                instruct.read_instruct(files["valid"]),
                f"TinyStories-Instruct ({files['train'].name}, {files['valid'].name})")
    folder = shared_tinystories()
    train_file, valid_file = (folder / "TinyStories-train.first2316.txt",
                              folder / "TinyStories-valid.first1000.hf.txt")
    train = instruct.derived_examples(train_file, max_examples=max_train_examples)
    held_out = instruct.derived_examples(valid_file, seed=1)
    return train, held_out, (f"DERIVED set (not TinyStories-Instruct): words drawn from plain stories, "
                             f"features detected from the text; train {train_file.name}, held out "
                             f"{valid_file.name}")


# --- the stage ----------------------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    out_dir: Path | None
    data: str  # what was trained on (says DERIVED when it is the offline stand-in)
    steps: int
    skipped_batches: int  # batches with no scored token: no step taken
    problems: list[str]  # examples skipped or refused, with their file:line
    before: dict  # response_loss, word_inclusion, samples on the held-out prompts
    after: dict
    train_loss: float
    tokens_per_s: float  # window tokens (padding included) per second of training steps
    scored_tokens_per_s: float  # response tokens per second: what the loss learns from
    cpu_s_per_step: float  # process CPU seconds per step (wall time on a shared CPU depends on the others)
    scored_per_step: float  # response tokens per step, on average
    windows: int
    examples_per_window: float
    fill: float  # fraction of window tokens that are not padding
    time_s: float = 0.0
    log: list[dict] = field(default_factory=list)


def _say(cfg: FinetuneConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


@dataclass
class LoopStats:
    skipped: int = 0  # batches with no scored token: drawn, counted, no step taken
    loss: float = float("nan")  # the last logged training loss (on responses)
    timed_s: float = 0.0  # seconds of the steps after the first (which pays for allocation)
    cpu_s: float = 0.0  # this process's CPU seconds in those steps: a speed a busy machine distorts less
    window_tokens: int = 0  # tokens of those steps' windows, padding included
    scored_tokens: int = 0  # response tokens of those steps: what the loss learned from
    time_s: float = 0.0
    log: list[dict] = field(default_factory=list)


def train_loop(state: TrainState, cfg: FinetuneConfig, device: torch.device, dtype: torch.dtype | None,
               on_record: Callable[[dict], None] | None = None) -> LoopStats:
    """Steps until cfg.max_steps, or until cfg.max_time_s is spent (then the schedule is re-planned to end
    there, as tinylib.train does); a batch without a scored token is skipped and counted."""
    stats, t_start = LoopStats(), time.perf_counter()
    budget = TimePlan(cfg.max_time_s, t_start, cap=cfg.max_steps) if cfg.max_time_s else None
    timed_steps, planned_at = 0, -1
    while state.step < state.total_steps:
        due = budget and timed_steps >= 5 and (budget.mark is None or state.step % cfg.log_every == 0)
        if due and state.step != planned_at:
            planned_at = state.step
            state.total_steps, _ = budget.plan(state.step, timed_steps, stats.timed_s, time.perf_counter())
            if state.step >= state.total_steps:
                break
        t0, c0 = time.perf_counter(), time.process_time()
        scale = lr_scale(state.step, warmup=cfg.warmup_steps, total=state.total_steps, floor=cfg.min_lr_ratio)
        x, y = state.batches.next_batch(device)
        loss = finetune_step(state, [(x, y)], lr_scale=scale, grad_clip=cfg.grad_clip, dtype=dtype)
        if loss is None:
            stats.skipped += 1
            if stats.skipped > max(100, state.total_steps):
                raise ValueError(f"{stats.skipped} batches in a row had no response token to score: the "
                                 f"windows hold prompts only; check the examples")
            continue
        log_now = state.step % cfg.log_every == 0 or state.step == state.total_steps
        if log_now:
            stats.loss = loss.item()  # waits for the device: honest timing
        dt = time.perf_counter() - t0
        if state.step > 1:
            timed_steps, stats.timed_s = timed_steps + 1, stats.timed_s + dt
            stats.cpu_s += time.process_time() - c0
            stats.window_tokens += x.numel()
            stats.scored_tokens += int((y != -1).sum())
        if log_now:
            record = {"step": state.step, "train_loss": stats.loss, "lr_scale": scale,
                      "tokens_per_s": x.numel() / dt}
            stats.log.append(record)
            if on_record:
                on_record(record)
            _say(cfg, f"step {state.step}/{state.total_steps}: loss on responses {stats.loss:.4f}, "
                      f"{x.numel() / dt:,.0f} tokens/s")
    stats.time_s = time.perf_counter() - t_start
    return stats


def finetune(cfg: FinetuneConfig, on_record: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Fine-tune cfg.parent on instruction examples; evaluate the held-out requests before and after; save
    `<out_dir>/latest` (resumable, config.json with "stage": "instruct" and "parent")."""
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    parent = resolve(cfg.parent)
    torch.manual_seed(cfg.seed)
    model, tok = load_model(parent, device).train(), load_tokenizer(parent)
    if cfg.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the parent's context of {model.cfg.max_seq_len}")
    train_set, held, label = load_examples(cfg.data, cfg.max_train_examples)
    problems = train_set.problems + held.problems
    encoded = encode_examples(train_set.examples, tok, cfg.seq_len, problems, cut=cfg.layout != "stream")
    windows = make_windows(encoded, cfg.seq_len, layout=cfg.layout, pad_id=tok.eos_id)
    held_ex = held.examples[: max(cfg.eval_examples, cfg.eval_prompts)]
    held_w = make_windows(encode_examples(held_ex[: cfg.eval_examples], tok, cfg.seq_len, problems),
                          cfg.seq_len, layout="padded", pad_id=tok.eos_id)
    _say(cfg, f"data: {label}\n{len(encoded)} examples in {len(windows)} windows "
              f"({cfg.layout}, {windows.fill():.0%} filled); {len(problems)} skipped "
              f"or refused" + "".join(f"\n  {p}" for p in problems[:5]))
    before = evaluate_requests(model, tok, held_ex, held_w, cfg, dtype)
    _say(cfg, f"before: response loss {before['response_loss']:.4f}, word inclusion "
              f"{before['word_inclusion']:.1%}")

    train_cfg = TrainConfig(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = TrainState(model, configure_optimizer(model, train_cfg, device),
                       WindowBatches(windows, cfg.batch_size, seed=cfg.seed), total_steps=cfg.max_steps)
    run_name = parent.parent.name if parent.name in ("best", "latest") else parent.name
    out_dir = Path(cfg.out_dir) if cfg.out_dir else CHECKPOINTS_DIR / f"instruct-{run_name}"
    if cfg.resume and cfg.out_dir != "" and (out_dir / "latest" / "state.pt").is_file():
        state.restore(out_dir / "latest", tokenizer=tok.name)
        state.total_steps = cfg.max_steps
        _say(cfg, f"resumed from {out_dir / 'latest'} at step {state.step}")
    stats = train_loop(state, cfg, device, dtype, on_record)
    after = evaluate_requests(model, tok, held_ex, held_w, cfg, dtype)
    _say(cfg, f"after {state.step} steps: response loss {after['response_loss']:.4f}, word inclusion "
              f"{after['word_inclusion']:.1%}; {stats.skipped} batches skipped (no response token)")
    if cfg.out_dir != "":
        summary = {k: v for k, v in after.items() if k != "samples"}
        meta = {"stage": instruct.INSTRUCT_STAGE, "parent": str(parent.resolve()), "tokenizer": tok.name,
                "data": label,
                "finetune": cfg.to_dict(), "skipped_batches": stats.skipped, "problems": len(problems),
                "before": {k: v for k, v in before.items() if k != "samples"}, "after": summary,
                "device": str(device), "dtype": dtype_name(dtype),
                "parent_step": load_meta(parent).get("step")}
        state.save(out_dir / "latest", meta)
        _say(cfg, f"saved {out_dir / 'latest'}")
    return FinetuneResult(
        out_dir=out_dir if cfg.out_dir != "" else None, data=label, steps=state.step,
        skipped_batches=stats.skipped, problems=problems, before=before, after=after, train_loss=stats.loss,
        tokens_per_s=stats.window_tokens / stats.timed_s if stats.timed_s else float("nan"),
        scored_tokens_per_s=stats.scored_tokens / stats.timed_s if stats.timed_s else float("nan"),
        cpu_s_per_step=stats.cpu_s / max(1, stats.window_tokens // (cfg.batch_size * cfg.seq_len)),
        scored_per_step=stats.scored_tokens / max(1, stats.window_tokens // (cfg.batch_size * cfg.seq_len)),
        windows=len(windows), examples_per_window=len(encoded) / len(windows), fill=windows.fill(),
        time_s=stats.time_s, log=stats.log)


def compare_packing(cfg: FinetuneConfig, steps: int, layouts: Sequence[str] = LAYOUTS) -> list[dict]:
    """The window layouts from the same parent for the same number of steps: speed and held-out loss."""
    rows = []
    for layout in layouts:
        r = finetune(dataclasses.replace(cfg, layout=layout, max_steps=steps, max_time_s=None, out_dir="",
                                         eval_prompts=0))
        rows.append({"layout": layout, "steps": r.steps, "windows": r.windows,
                     "examples_per_window": r.examples_per_window, "fill": r.fill,
                     "tokens_per_s": r.tokens_per_s, "scored_tokens_per_s": r.scored_tokens_per_s,
                     "cpu_s_per_step": r.cpu_s_per_step, "scored_tokens_per_step": r.scored_per_step,
                     "response_loss_before": r.before["response_loss"],
                     "response_loss_after": r.after["response_loss"], "time_s": r.time_s})
    return rows


# --- command line -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinylib.finetune", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "int | None": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--compare-steps", type=int, default=0,
                        help="also compare the window layouts for N steps")
    args = vars(parser.parse_args(argv))
    compare = args.pop("compare_steps")
    cfg = FinetuneConfig(**{k: v for k, v in args.items() if v is not None})
    result = finetune(cfg)
    figures = {"data": result.data, "steps": result.steps, "skipped_batches": result.skipped_batches,
               "problems": len(result.problems), "time_s": result.time_s, "tokens_per_s": result.tokens_per_s,
               "scored_tokens_per_s": result.scored_tokens_per_s, "cpu_s_per_step": result.cpu_s_per_step,
               "fill": result.fill,
               "examples_per_window": result.examples_per_window,
               **{f"{when}_{k}": v for when, d in (("before", result.before), ("after", result.after))
                  for k, v in d.items() if k != "samples"}}
    print(json.dumps(figures))
    for b, a in zip(result.before["samples"][:3], result.after["samples"][:3]):
        print(f"\n{b['where']} words {b['words']} features {b['features']}\n  before: {b['story'][:300]!r}"
              f"\n  after:  {a['story'][:300]!r}")
    if compare:
        print(json.dumps(compare_packing(cfg, compare)))
