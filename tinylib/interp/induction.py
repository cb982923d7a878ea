"""Watch induction heads form: train a 2-layer model, keep log-spaced checkpoints, score each one.

    python -m tinylib.interp.induction --repeat-frac 1   # TinyStories with repeated spans: the head forms
    python -m tinylib.interp.induction --repeat-frac 0   # plain TinyStories: at this budget it does not

An induction head completes "A B ... A -> B": at the second A it attends to the token after the first A and
copies it. It needs two heads in sequence (a previous-token head writes "my predecessor was A" into B's
position, which the induction head's keys read), so it cannot exist in a 1-layer model. Olsson et al. (2022)
showed it appears in a sudden phase change, together with a drop of the loss on late tokens of a context
relative to early ones (in-context learning) and of the loss on the second copy of a repeated sequence.

`train_induction` is the recipe: the one training step of `tinylib.train` in a short loop that saves the
weights at log-spaced steps (the change is fast, early). The defaults (`InductionConfig`) are what formed an
induction head on a 2-core CPU in minutes: 2 attention-only layers with learned positions (a layer-0 head then
sees positions, which a previous-token head needs; with RoPE and 2 layers we saw the previous-token head land
in layer 1, too late), Muon, and `RepeatedSpans`, which writes into a fraction of the training windows one
span twice at random places: data in which copying from the context pays. At equal places every time, a model
learns "attend k back" instead, which fails on any other distance.
`score_checkpoint` measures one model; `score_run` every checkpoint of a run (written to `scores.json`);
`plot_phase_change` draws the three curves. Head scores come from the eager attention patterns
(`forward_with_patterns`), the same numbers `tinylib.interp.attention.head_scores` reads from the
TransformerLens bridge, without building a bridge per checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinylib.batches import RandomBatches, sequential_batches
from tinylib.checkpoint import TrainState, load_model, save_checkpoint
from tinylib.config import TrainConfig, entry_point
from tinylib.data import open_split, read_meta
from tinylib.device import pick_dtype
from tinylib.interp.attention import ordinary_ids, repeated_tokens, scores_from_patterns
from tinylib.model import Transformer, build_model
from tinylib.optim import configure_optimizer, lr_scale, set_lr_factor
from tinylib.paths import CHECKPOINTS_DIR, write_atomic
from tinylib.tokenizer import get_tokenizer
from tinylib.train import train_step

SCORES_FILE = "scores.json"


@dataclass
class InductionConfig:
    """A 2-layer attention-only GPT-style model on TinyStories; the defaults train in about 6 minutes on one
    CPU core (measured with a second run on the other core), and form an induction head with repeat_frac=1."""

    data: str = "data/tinystories-4096"
    out_dir: str | None = None  # default: checkpoints/induction-runs/repeat-<repeat_frac>
    style: str = "gpt"  # "gpt" (LayerNorm, GELU, learned positions) or "llama" (RMSNorm, SwiGLU, RoPE)
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    d_mlp: int = 0  # 0: attention only, the model of Elhage et al. (its circuits read off the weights)
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 128
    optimizer: str = "muon"  # Muon for the block matrices, AdamW at `lr` for the rest; or "adamw"
    lr: float = 6e-3
    muon_lr: float = 0.02
    warmup_steps: int = 100
    repeat_frac: float = 1.0  # fraction of windows in which a span appears twice (see RepeatedSpans)
    repeat_source: str = "random"  # the span: "text" (the window's own) or "random" (random tokens)
    n_checkpoints: int = 40  # log-spaced, step 0 and the last step included
    seed: int = 0
    dtype: str = "auto"
    progress: bool = True

    def train_config(self) -> TrainConfig:
        shape = dict(n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model, d_mlp=self.d_mlp,
                     max_seq_len=self.seq_len, dropout=0.0)
        if self.style not in ("gpt", "llama"):
            raise ValueError(f"style={self.style!r}: expected 'gpt' or 'llama'")
        return TrainConfig(data=self.data, preset=f"{self.style}_tiny", model_overrides=shape,
                           out_dir=self.out_dir,
                           batch_size=self.batch_size, seq_len=self.seq_len, max_steps=self.steps, lr=self.lr,
                           optimizer=self.optimizer, muon_lr=self.muon_lr,
                           warmup_steps=self.warmup_steps, seed=self.seed, dtype=self.dtype, compile="off")


def checkpoint_steps(total: int, n: int) -> list[int]:
    """About n log-spaced steps in [0, total], 0 and total included (early steps are closer together)."""
    if total < 1 or n < 2:
        raise ValueError(f"need total >= 1 step and n >= 2 checkpoints, got total={total}, n={n}")
    steps = np.unique(np.round(np.geomspace(1, total + 1, n - 1)).astype(int) - 1)
    return sorted({0, total, *steps.tolist()})


class RepeatedSpans:
    """Wraps a batch sampler: each row, with probability `frac`, gets a span of its own text copied further
    on (`window[b:b+n] = window[a:a+n]`), with the length n, the source a and the copy b drawn at random.

    Random places matter: with the copy always half a window back, a model learns "attend 128 positions
    back" (a positional shortcut that fails on any other distance) instead of an induction head, which finds
    the earlier copy by content. Rows and places depend only on (seed, batch number): reproducible."""

    def __init__(self, batches: RandomBatches, frac: float, seed: int = 0, min_len: int = 8,
                 source: str = "text", vocab_size: int | None = None):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"repeat_frac={frac} must be a fraction in [0, 1]")
        if source not in ("text", "random") or (source == "random" and not vocab_size):
            raise ValueError(f"source={source!r}: expected 'text' (copy a span of the row's own text) or "
                             "'random' (write random tokens twice; needs vocab_size)")
        self.batches, self.frac, self.seed, self.min_len = batches, frac, seed, min_len
        self.source, self.vocab_size = source, vocab_size

    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        step = self.batches.step
        x, y = self.batches.next_batch(device)
        if self.frac == 0.0:
            return x, y
        window = torch.cat([x, y[:, -1:]], dim=1)  # the seq_len + 1 tokens x and y were cut from
        rng = np.random.default_rng([self.seed, step, 1])
        W = window.shape[1]
        for row in np.flatnonzero(rng.random(window.shape[0]) < self.frac):
            n = int(rng.integers(min(self.min_len, W // 2), W // 2 + 1))
            a = int(rng.integers(0, W - 2 * n + 1))
            b = int(rng.integers(a + n, W - n + 1))
            if self.source == "random":
                window[row, a:a + n] = torch.from_numpy(rng.integers(0, self.vocab_size, n))
            window[row, b:b + n] = window[row, a:a + n].clone()
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return self.batches.state_dict()


@torch.enable_grad()  # a notebook studying models may have turned gradients off
def train_induction(cfg: InductionConfig) -> Path:
    """Train as `cfg` says, saving `out_dir/step_NNNNNN/` at log-spaced steps; returns out_dir."""
    tcfg = cfg.train_config()
    meta = read_meta(cfg.data)
    tokenizer = get_tokenizer(meta["tokenizer"]["name"])
    out = Path(cfg.out_dir or CHECKPOINTS_DIR / "induction-runs" / f"repeat-{cfg.repeat_frac:g}")
    device = torch.device("cpu")
    dtype = pick_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    model = build_model(tcfg, meta["vocab_size"])
    batches = RandomBatches(open_split(cfg.data, "train", tokenizer), cfg.batch_size, cfg.seq_len,
                            seed=cfg.seed)
    stream = RepeatedSpans(batches, cfg.repeat_frac, cfg.seed, source=cfg.repeat_source,
                           vocab_size=tokenizer.vocab_size)
    state = TrainState(model, configure_optimizer(model, tcfg, device), batches, total_steps=cfg.steps)
    record = {"tokenizer": tokenizer.name, "recipe": dataclasses.asdict(cfg), "train_config": tcfg.to_dict()}
    save_at = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    bar = tqdm(total=cfg.steps, desc=f"induction (repeat {cfg.repeat_frac:.0%})", disable=not cfg.progress)
    while True:
        if state.step in save_at:
            save_checkpoint(out / f"step_{state.step:06d}", model, {**record, **state.progress()})
        if state.step >= cfg.steps:
            break
        set_lr_factor(state.optimizer, lr_scale(state.step, warmup=cfg.warmup_steps, total=cfg.steps,
                                                floor=tcfg.min_lr_ratio))
        loss, _ = train_step(state, [stream.next_batch(device)], grad_clip=tcfg.grad_clip, dtype=dtype)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
    bar.close()
    return out


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    """The run's `step_NNNNNN` checkpoint folders, in step order."""
    found = sorted(Path(run_dir).glob("step_*/model.safetensors"))
    if not found:
        raise FileNotFoundError(f"no step_*/ checkpoints in {run_dir}: train them with train_induction "
                                "(python -m tinylib.interp.induction)")
    return [f.parent for f in found]


# --- measuring one model -------------------------------------------------------------------------------

@dataclass
class Probe:
    """The fixed inputs every checkpoint is scored on: validation stories and repeated random tokens."""

    windows: torch.Tensor  # [N, seq_len]: consecutive validation windows (where a story starts varies)
    repeated: torch.Tensor  # [B, 1 + 2 * half]: BOS, then random tokens repeated once
    half: int

    @classmethod
    def build(cls, data: str, *, windows: int = 512, seq_len: int = 256, half: int = 50, batch: int = 16,
              seed: int = 0) -> Probe:
        """`windows` consecutive validation windows (fewer if the split is smaller): many, because the
        in-context score is a difference of two means of noisy per-token losses."""
        tokenizer = get_tokenizer(read_meta(data)["tokenizer"]["name"])
        val = open_split(data, "val", tokenizer)
        windows = min(windows, (len(val) - 1) // seq_len)
        x, _ = next(iter(sequential_batches(val, windows, seq_len, max_batches=1)))
        ids = ordinary_ids(tokenizer, tokenizer.vocab_size)
        half = min(half, (seq_len - 1) // 2)  # BOS + two copies must fit the context
        rep = repeated_tokens(ids, batch, half, bos_id=tokenizer.bos_id, seed=seed)
        return cls(windows=x, repeated=rep, half=half)


@torch.no_grad()
def per_token_loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [B, T-1] of predicting tokens[:, t+1] at position t."""
    logits, _ = model(tokens)
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")


def icl_score(losses: torch.Tensor, early: int | None = None, late: int | None = None,
              width: int = 10) -> float:
    """Olsson et al.'s in-context-learning score: loss at late positions minus loss at early ones (negative:
    later tokens, with more context, are easier). Defaults: positions at 1/5 and 4/5 of the window
    (51 and 204 of 255 predictions), each averaged over `width` neighbouring positions."""
    n = losses.shape[1]
    early = n // 5 if early is None else early
    late = 4 * n // 5 if late is None else late
    if not 0 <= early < early + width <= late < late + width <= n:
        raise ValueError(f"early={early}, late={late}, width={width} do not fit in windows of {n} "
                         "predictions (need early + width <= late and late + width <= n)")
    return float(losses[:, late:late + width].mean() - losses[:, early:early + width].mean())


def copy_losses(losses: torch.Tensor, half: int) -> tuple[float, float]:
    """Mean loss on the first and the second copy of repeated tokens [BOS, r1..r_half, r1..r_half].

    Predictions at positions 1..half-1 are inside the first copy; those at half+1..2*half-1 predict tokens of
    the second copy from a context that already holds them (the first token of each copy is skipped: it
    cannot be predicted)."""
    return float(losses[:, 1:half].mean()), float(losses[:, half + 1:2 * half].mean())


@torch.no_grad()
def score_checkpoint(model: Transformer, probe: Probe) -> dict:
    """Validation loss, ICL score, first/second-copy loss, and every head's previous-token and
    induction score."""
    model.eval()
    val = per_token_loss(model, probe.windows)
    logits, patterns = model.forward_with_patterns(probe.repeated)
    rep = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), probe.repeated[:, 1:], reduction="none")
    heads = scores_from_patterns(torch.stack(patterns, dim=1), probe.repeated)
    first, second = copy_losses(rep, probe.half)
    return {"val_loss": float(val.mean()), "icl": icl_score(val), "first_copy_loss": first,
            "second_copy_loss": second, "previous_token": heads["previous_token"].tolist(),
            "induction": heads["induction"].tolist()}


def score_run(run_dir: str | Path, probe: Probe | None = None, *, progress: bool = True) -> list[dict]:
    """Score every checkpoint of a run (step, tokens and the `score_checkpoint` figures) and write them to
    `run_dir/scores.json`."""
    folders = checkpoints_of(run_dir)
    rows = []
    for folder in tqdm(folders, desc="scoring checkpoints", disable=not progress):
        meta = json.loads((folder / "config.json").read_text())
        if probe is None:
            probe = Probe.build(meta["recipe"]["data"], seq_len=meta["recipe"]["seq_len"])
        rows.append({"step": meta["step"], "tokens": meta["tokens_seen"],
                     **score_checkpoint(load_model(folder), probe)})
    write_atomic(Path(run_dir) / SCORES_FILE, json.dumps(rows, indent=1).encode())
    return rows


def load_scores(path: str | Path) -> list[dict]:
    """The scores `score_run` wrote: a run folder (its scores.json) or a scores file."""
    path = Path(path)
    file = path / SCORES_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: score the run first with score_run(run_dir)")
    return json.loads(file.read_text())


def best_head(row: dict, kind: str = "induction") -> tuple[int, int, float]:
    """(layer, head, score) of the highest-scoring head of one scored checkpoint."""
    scores = torch.tensor(row[kind])
    i = int(scores.argmax())
    return i // scores.shape[1], i % scores.shape[1], float(scores.max())


def crossing_step(rows: list[dict], threshold: float = 0.5) -> int | None:
    """The first checkpoint step at which the best induction score reaches `threshold` (None: never)."""
    return next((r["step"] for r in rows if best_head(r)[2] >= threshold), None)


# --- the figure ----------------------------------------------------------------------------------------

def plot_phase_change(runs: dict[str, list[dict]], threshold: float = 0.5):
    """Three panels against training step: best induction and previous-token score, the ICL score, and the
    loss on the first vs second copy of repeated random tokens. One line style per run."""
    import matplotlib.pyplot as plt  # plotting is optional for the library; imported when drawing

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (name, rows), style in zip(runs.items(), ("-", "--", ":", "-.")):
        steps = [max(r["step"], 1) for r in rows]
        axes[0].plot(steps, [best_head(r)[2] for r in rows], "C0" + style, label=f"{name}: induction")
        axes[0].plot(steps, [best_head(r, "previous_token")[2] for r in rows], "C1" + style,
                     label=f"{name}: previous token")
        axes[1].plot(steps, [r["icl"] for r in rows], "C2" + style, label=name)
        axes[2].plot(steps, [r["first_copy_loss"] for r in rows], "C3" + style, label=f"{name}: 1st copy")
        axes[2].plot(steps, [r["second_copy_loss"] for r in rows], "C4" + style, label=f"{name}: 2nd copy")
        cross = crossing_step(rows, threshold)
        for ax in axes:
            if cross is not None:
                ax.axvline(max(cross, 1), color="grey", linestyle=style, linewidth=0.8)
    titles = ("best head score", "in-context score (late - early loss, nats)",
              "loss on repeated random tokens (nats)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].axhline(threshold, color="grey", linewidth=0.5)
    fig.tight_layout()
    return fig


# --- command line --------------------------------------------------------------------------------------

@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinylib.interp.induction",
                                     description=__doc__.split("\n")[0])
    kinds = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes")}
    for f in dataclasses.fields(InductionConfig):
        kind = kinds.get(f.type, str)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    cfg = InductionConfig(**vars(parser.parse_args(argv)))
    run = train_induction(cfg)
    rows = score_run(run, progress=cfg.progress)
    layer, head, score = best_head(rows[-1])
    print(json.dumps({"out_dir": str(run), "crossing_step": crossing_step(rows), "best_head": [layer, head],
                      "induction_score": score, "first_copy_loss": rows[-1]["first_copy_loss"],
                      "second_copy_loss": rows[-1]["second_copy_loss"], "val_loss": rows[-1]["val_loss"]}))


if __name__ == "__main__":
    main()
