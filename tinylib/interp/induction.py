"""Watch induction heads form: train a 2-layer model, keep checkpoints where things change, score each one.

    python -m tinylib.interp.induction --repeat-frac 1   # TinyStories with repeated spans: the head forms
    python -m tinylib.interp.induction --repeat-frac 0   # plain TinyStories: at this budget it does not

An induction head completes "A B ... A -> B": at the second A it attends to the token after the first A and
copies it. It needs two heads in sequence (a previous-token head writes "my predecessor was A" into B's
position, which the induction head's keys read), so it cannot exist in a 1-layer model. Olsson et al. (2022)
showed it appears in a sudden phase change, together with a drop of the loss on late tokens of a context
relative to early ones (in-context learning) and of the loss on the second copy of a repeated sequence.

`train_induction` is the recipe: the one training step of `tinylib.train` in a short loop that saves the
weights at log-spaced steps (the first hundred steps, where the loss falls fastest) and every `dense_every`
steps from `dense_start` to `dense_stop` (in the default recipe the induction head forms near step 1,000 of
2,000, where log spacing alone leaves ~200 steps between checkpoints). The defaults (`InductionConfig`) are
what formed an induction head on a 2-core CPU in minutes: 2 attention-only layers with learned positions (a
layer-0 head then sees positions, which a previous-token head needs; with RoPE and 2 layers we saw the
previous-token head land in layer 1, too late), Muon, and `RepeatedSpans`, which writes into a fraction of the
training windows one span twice at random places (`write_spans`): data in which copying from the context pays.
At equal places every time, a model learns "attend k back" instead, which fails on any other distance. With
random spans the intervention replaces ~56% of every window's tokens: each checkpoint records how many
TinyStories tokens the run has seen (`text_tokens`; `add_text_tokens` replays the count for older scores).
`score_checkpoint` measures one model (the in-context score with a bootstrap interval over windows);
`score_run` every checkpoint of a run (written to `scores.json`); `plot_phase_change` draws the three curves.
Head scores come from the eager attention patterns (`forward_with_patterns`), the same numbers
`tinylib.interp.attention.head_scores` reads from the TransformerLens bridge, without building a bridge per
checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable
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
    n_checkpoints: int = 40  # log-spaced, step 0 and the last step included: the early fall of the loss
    dense_every: int = 25  # and one every dense_every steps from dense_start to dense_stop: the transition
    dense_start: int = 800
    dense_stop: int = 1200
    stop_at: int = 0  # > 0: train only the first stop_at steps of the `steps`-step schedule
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


def checkpoint_steps(total: int, n: int, dense: tuple[int, int, int] | None = None) -> list[int]:
    """About n log-spaced steps in [0, total], 0 and total included, and with `dense=(start, stop, every)`
    every `every`-th step from start to stop as well.

    Log spacing resolves the first hundred steps, where the loss falls fastest; it is coarsest where the
    induction head forms in the default recipe (near step 1,000 of 2,000, ~200 steps between log-spaced
    checkpoints), which is why the recipe adds a dense window there."""
    if total < 1 or n < 2:
        raise ValueError(f"need total >= 1 step and n >= 2 checkpoints, got total={total}, n={n}")
    steps = set(np.unique(np.round(np.geomspace(1, total + 1, n - 1)).astype(int) - 1).tolist())
    if dense is not None:
        start, stop, every = dense
        if every < 1 or start > stop:
            raise ValueError(f"dense={dense}: expected (start, stop, every), start <= stop, every >= 1")
        steps |= {s for s in range(start, stop + 1, every) if s <= total}
    return sorted({0, total, *steps})


def write_spans(x: torch.Tensor, y: torch.Tensor, edits: list[tuple[int, torch.Tensor, int, int]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (x, y) with, for each edit (row, span, a, b), `span` written at positions a and b of that row's
    window: the seq_len + 1 tokens that x (window[:-1]) and y (window[1:]) were cut from. Inputs and targets
    stay next-token pairs. New tensors; x and y are left as they were."""
    window = torch.cat([x, y[:, -1:]], dim=1)
    for row, span, a, b in edits:
        n = len(span)
        if not (0 <= a and a + n <= b and b + n <= window.shape[1]):
            raise ValueError(f"edit (row {row}, a={a}, b={b}, {n} tokens): the two places must not overlap "
                             f"and fit in the window of W={window.shape[1]} tokens (a + n <= b, b + n <= W)")
        window[row, a:a + n] = span
        window[row, b:b + n] = span
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


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
        self.tokens = 0  # predicted tokens (the y of every batch) served so far
        self.written = 0  # of those, the ones this wrapper wrote (the copy; with source="random", both spans)

    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        step = self.batches.step
        x, y = self.batches.next_batch(device)
        self.tokens += y.numel()
        if self.frac == 0.0:
            return x, y
        window = torch.cat([x, y[:, -1:]], dim=1)  # the seq_len + 1 tokens x and y were cut from
        rng = np.random.default_rng([self.seed, step, 1])
        W = window.shape[1]
        edits = []
        for row in np.flatnonzero(rng.random(window.shape[0]) < self.frac):
            n = int(rng.integers(min(self.min_len, W // 2), W // 2 + 1))
            a = int(rng.integers(0, W - 2 * n + 1))
            b = int(rng.integers(a + n, W - n + 1))
            if self.source == "random":
                span = torch.from_numpy(rng.integers(0, self.vocab_size, n)).to(window)
            else:
                span = window[row, a:a + n].clone()
            edits.append((int(row), span, a, b))
            written = range(a, a + n) if self.source == "random" else range(0)
            self.written += sum(1 for t in (*written, *range(b, b + n)) if t >= 1)  # y is window[1:]
        return write_spans(x, y, edits)

    def state_dict(self) -> dict:
        return self.batches.state_dict()


def add_text_tokens(rows: list[dict], cfg: InductionConfig, vocab_size: int) -> list[dict]:
    """`rows` (scores of a run trained with `cfg`, its tokenizer of `vocab_size` ids) with "text_tokens": the
    training targets up to each row's step that the intervention did not write. Replays the sampler's draws,
    which depend on (seed, step) only, not on the text: for scores of runs that predate the count that
    `train_induction` keeps."""
    stand_in = RandomBatches(np.zeros(4 * cfg.seq_len, dtype=np.uint16), cfg.batch_size, cfg.seq_len,
                             seed=cfg.seed)
    stream = RepeatedSpans(stand_in, cfg.repeat_frac, cfg.seed, source=cfg.repeat_source,
                           vocab_size=vocab_size)
    out = []
    for row in sorted(rows, key=lambda r: r["step"]):
        while stream.tokens < row["step"] * cfg.batch_size * cfg.seq_len:
            stream.next_batch()
        out.append({**row, "text_tokens": stream.tokens - stream.written})
    return out


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
    save_at = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints,
                                   (cfg.dense_start, cfg.dense_stop, cfg.dense_every)))
    bar = tqdm(total=cfg.stop_at or cfg.steps, desc=f"induction (repeat {cfg.repeat_frac:.0%})",
               disable=not cfg.progress)
    while True:
        if state.step in save_at:
            text = {"text_tokens": stream.tokens - stream.written, "written_tokens": stream.written}
            save_checkpoint(out / f"step_{state.step:06d}", model, {**record, **state.progress(), **text})
        if state.step >= (cfg.stop_at or cfg.steps):
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


def _icl_span(n: int, early: int | None, late: int | None, width: int) -> tuple[int, int]:
    early = n // 5 if early is None else early
    late = 4 * n // 5 if late is None else late
    if not 0 <= early < early + width <= late < late + width <= n:
        raise ValueError(f"early={early}, late={late}, width={width} do not fit in windows of {n} "
                         "predictions (need early + width <= late and late + width <= n)")
    return early, late


def icl_per_window(losses: torch.Tensor, early: int | None = None, late: int | None = None,
                   width: int = 10) -> torch.Tensor:
    """[N]: each window's late-minus-early loss (see `icl_score`, their mean)."""
    early, late = _icl_span(losses.shape[1], early, late, width)
    return losses[:, late:late + width].float().mean(1) - losses[:, early:early + width].float().mean(1)


def icl_score(losses: torch.Tensor, early: int | None = None, late: int | None = None,
              width: int = 10) -> float:
    """Olsson et al.'s in-context-learning score: loss at late positions minus loss at early ones (negative:
    later tokens, with more context, are easier). Defaults: positions at 1/5 and 4/5 of the window
    (51 and 204 of 255 predictions), each averaged over `width` neighbouring positions."""
    early, late = _icl_span(losses.shape[1], early, late, width)
    return float(losses[:, late:late + width].mean() - losses[:, early:early + width].mean())


def bootstrap_interval(values: torch.Tensor, *, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` [N] (windows resampled with replacement)."""
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"need a 1-D tensor of at least 2 values to resample, got {tuple(values.shape)}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n_boot, len(values)), generator=gen)
    means = values.double()[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def copy_losses(losses: torch.Tensor, half: int) -> tuple[float, float]:
    """Mean loss on the first and the second copy of repeated tokens [BOS, r1..r_half, r1..r_half].

    Predictions at positions 1..half-1 are inside the first copy; those at half+1..2*half-1 predict tokens of
    the second copy from a context that already holds them (the first token of each copy is skipped: it
    cannot be predicted)."""
    return float(losses[:, 1:half].mean()), float(losses[:, half + 1:2 * half].mean())


@torch.no_grad()
def score_checkpoint(model: Transformer, probe: Probe, *, keep_windows: bool = False) -> dict:
    """Validation loss, ICL score with its 95% bootstrap interval over windows, first/second-copy loss, and
    every head's previous-token and induction score; with `keep_windows`, each window's ICL score too
    (`icl_windows`, for paired comparisons of checkpoints scored on the same windows: see `icl_shift`)."""
    model.eval()
    val = per_token_loss(model, probe.windows)
    logits, patterns = model.forward_with_patterns(probe.repeated)
    rep = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), probe.repeated[:, 1:], reduction="none")
    heads = scores_from_patterns(torch.stack(patterns, dim=1), probe.repeated)
    first, second = copy_losses(rep, probe.half)
    per_window = icl_per_window(val)
    lo, hi = bootstrap_interval(per_window)
    row = {"windows": int(probe.windows.shape[0]), "val_loss": float(val.mean()), "icl": icl_score(val),
           "icl_lo": lo, "icl_hi": hi,
           "first_copy_loss": first,
           "second_copy_loss": second, "previous_token": heads["previous_token"].tolist(),
           "induction": heads["induction"].tolist()}
    if keep_windows:
        row["icl_windows"] = [round(x, 4) for x in per_window.tolist()]
    return row


def _shift_per_window(rows: list[dict], at_step: int) -> torch.Tensor:
    before = [r for r in rows if r["step"] < at_step]
    after = [r for r in rows if r["step"] >= at_step]
    if not before or not after:
        raise ValueError(f"at_step={at_step} leaves {len(before)} checkpoints before and {len(after)} "
                         "from it on; pick a step inside the rows' range")
    missing = [r["step"] for r in rows if "icl_windows" not in r]
    if missing:
        raise ValueError(f"rows at steps {missing[:5]} have no icl_windows: score them with "
                         "score_run(run_dir, keep_windows=True)")
    if len({len(r["icl_windows"]) for r in rows}) != 1:
        raise ValueError("the rows were scored on different numbers of windows; score them with one Probe")

    def mean_of(group: list[dict]) -> torch.Tensor:
        return torch.tensor([r["icl_windows"] for r in group], dtype=torch.float64).mean(0)

    return mean_of(before) - mean_of(after)


def icl_shift(rows: list[dict], at_step: int, against: list[dict] | None = None, *, n_boot: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """How much the mean in-context score falls from the checkpoints before `at_step` to those from it on:
    (drop, lo, hi), with a 95% bootstrap interval over windows. Positive: the score fell (the model gained
    more from context). Paired: every row holds `icl_windows` scored on the same windows
    (`score_run(..., keep_windows=True)`), so each window's own difficulty cancels. With `against` (another
    run's rows at the same steps, on the same windows), the drop in excess of that run's drop: training
    lowers the score anyway, and only the excess belongs to what differs between the runs."""
    per_window = _shift_per_window(rows, at_step)
    if against is not None:
        base = _shift_per_window(against, at_step)
        if base.shape != per_window.shape:
            raise ValueError(f"`against` was scored on {len(base)} windows, the rows on {len(per_window)}: "
                             "score both runs with one Probe")
        per_window = per_window - base
    lo, hi = bootstrap_interval(per_window, n_boot=n_boot, seed=seed)
    return float(per_window.mean()), lo, hi


def score_run(run_dir: str | Path, probe: Probe | None = None, *, steps: Iterable[int] | None = None,
              keep_windows: bool = False, progress: bool = True) -> list[dict]:
    """Score every checkpoint of a run (or those at `steps`): step, tokens, text tokens and the
    `score_checkpoint` figures, written to `run_dir/scores.json`."""
    folders = checkpoints_of(run_dir)
    if steps is not None:
        keep = set(steps)
        folders = [f for f in folders if int(f.name.split("_")[1]) in keep]
    rows = []
    for folder in tqdm(folders, desc="scoring checkpoints", disable=not progress):
        meta = json.loads((folder / "config.json").read_text())
        if probe is None:
            probe = Probe.build(meta["recipe"]["data"], seq_len=meta["recipe"]["seq_len"])
        text = meta.get("text_tokens")  # None for runs that predate the count: see add_text_tokens
        rows.append({"step": meta["step"], "tokens": meta["tokens_seen"], "text_tokens": text,
                     **score_checkpoint(load_model(folder), probe, keep_windows=keep_windows)})
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

def plot_phase_change(runs: dict[str, list[dict]], threshold: float = 0.5, *, log_steps: bool = False):
    """Three panels against training step: best induction and previous-token score, the ICL score (with its
    interval where the rows have one), and the loss on the first vs second copy of repeated random tokens.
    One line style per run; a linear step axis by default (the transition is late), `log_steps` for the
    early steps."""
    import matplotlib.pyplot as plt  # plotting is optional for the library; imported when drawing

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (name, rows), style in zip(runs.items(), ("-", "--", ":", "-.")):
        steps = [max(r["step"], 1) if log_steps else r["step"] for r in rows]
        axes[0].plot(steps, [best_head(r)[2] for r in rows], "C0" + style, label=f"{name}: induction")
        axes[0].plot(steps, [best_head(r, "previous_token")[2] for r in rows], "C1" + style,
                     label=f"{name}: previous token")
        axes[1].plot(steps, [r["icl"] for r in rows], "C2" + style, label=name)
        band = [(s, r["icl_lo"], r["icl_hi"]) for s, r in zip(steps, rows) if r.get("icl_lo") is not None]
        if band:
            axes[1].fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color="C2",
                                 alpha=0.2, linewidth=0)
        axes[2].plot(steps, [r["first_copy_loss"] for r in rows], "C3" + style, label=f"{name}: 1st copy")
        axes[2].plot(steps, [r["second_copy_loss"] for r in rows], "C4" + style, label=f"{name}: 2nd copy")
        cross = crossing_step(rows, threshold)
        for ax in axes:
            if cross is not None:
                ax.axvline(max(cross, 1) if log_steps else cross, color="grey", linestyle=style,
                           linewidth=0.8)
    titles = ("best head score", "in-context score (late - early loss, nats; 95% band)",
              "loss on repeated random tokens (nats)")
    for ax, title in zip(axes, titles):
        if log_steps:
            ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=9)
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
