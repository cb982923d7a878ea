"""Sparse autoencoders (dictionary learning) on one layer of our own models, trained on a CPU.

An autoencoder maps an activation x [d_in] (an MLP's hidden units, or the residual stream after a block) to
many more features f [n_features], few of them nonzero, and back:

    f = act((x - b_dec) W_enc + b_enc)        x_hat = f W_dec + b_dec

with every row of W_dec (a feature's direction in activation space: a "decoder column" in the papers' x = W f
convention) kept at unit norm, so a feature's size lives in f alone and sparsity cannot be bought by
shrinking f and growing W_dec. Two kinds:
- "relu": act = ReLU, loss = mean ||x - x_hat||^2 + l1 * mean sum_i f_i (Bricken et al. 2023); features that
  have not fired for `dead_tokens` tokens are resampled towards inputs the autoencoder reconstructs worst;
- "topk": act keeps the k largest pre-activations (ReLU'd), zeroes the rest (Gao et al. 2024): L0 <= k by
  construction, no L1 to tune; the auxiliary loss AuxK makes the `aux_k` largest *dead* features reconstruct
  the remaining error, which gives dead features a gradient again.
Activations are scaled by one constant (measured on the first batch, saved with the autoencoder) so that their
mean squared norm is d_in: the same l1 and learning rate then suit any layer and model.

- `ActivationStream(model, tokens, site, layer, ...)`: activations from random windows of a token array, a
  buffer at a time (memory bounded by `buffer_windows x seq_len` rows), shuffled; batch b is a function of
  (seed, b) only, which makes a resumed run equal an uninterrupted one;
- `SparseAutoencoder`, `SAEConfig`; `train_sae(...)` -> `SAERun` (resumable checkpoints: `save_sae`,
  `load_sae`); `evaluate_sae(model, sae, windows)` -> `SAEMetrics` (explained variance, L0, dead and dense
  features, the loss with the autoencoder spliced in and the share of the zero-ablation gap it recovers);
- `splice(model, sae)` / `zero_ablate(model, site, layer)`: context managers that replace the layer's
  activation by its reconstruction (or by zeros) in every forward pass of a tinylib `Transformer`;
- `python -m tinylib.interp.sae --model checkpoints/reference --data data/tinystories-4096 ...`.

Sites are read with hooks on tinylib's own modules: "mlp" is the input of `blocks[L].mlp.down_proj` (what
TransformerLens calls `blocks.L.mlp.hook_post`), "resid" the output of `blocks[L]` (`hook_resid_post`).
What it leaves to others: what features mean (`tinylib.interp.features`), steering (`steering`), training the
models themselves (`tinylib.train`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tinylib.checkpoint import load_model, load_tokenizer
from tinylib.data import open_split, read_meta
from tinylib.model import Transformer

Site = Literal["mlp", "resid"]


# --- reading and replacing a layer's activation ----------------------------------------------------------
def site_width(model: Transformer, site: str) -> int:
    if site == "mlp":
        return model.cfg.d_mlp
    if site == "resid":
        return model.cfg.d_model
    raise ValueError(f"site={site!r}: expected 'mlp' (the MLP's hidden units) or 'resid' (the residual "
                     "stream after the block)")


def _check(model: Transformer, site: str, layer: int) -> None:
    site_width(model, site)
    if not 0 <= layer < model.cfg.n_layer:
        raise ValueError(f"layer={layer}, but the model has {model.cfg.n_layer} blocks: pick 0 to "
                         f"{model.cfg.n_layer - 1}")
    if site == "mlp" and model.cfg.d_mlp == 0:
        raise ValueError("this model has no MLP (d_mlp=0): use site='resid'")


@contextmanager
def edit_site(model: Transformer, site: Site, layer: int, fn) -> Iterator[None]:
    """Inside the block, `fn(act [B, T, d_in]) -> act` replaces the site's activation in every forward."""
    _check(model, site, layer)
    if site == "mlp":
        handle = model.blocks[layer].mlp.down_proj.register_forward_pre_hook(lambda _m, args: (fn(args[0]),))
    else:
        handle = model.blocks[layer].register_forward_hook(lambda _m, _i, out: (fn(out[0]), *out[1:]))
    try:
        yield
    finally:
        handle.remove()


class _Stop(Exception):
    """Raised by a hook once the activation is read: the rest of the model need not run."""


@torch.no_grad()
def site_activations(model: Transformer, idx: torch.Tensor, site: Site, layer: int) -> torch.Tensor:
    """The site's activation [B, T, d_in] for token ids [B, T] (fp32); the layers after it are not run."""
    seen = []

    def grab(act):
        seen.append(act.float())
        raise _Stop

    with edit_site(model, site, layer, grab):
        try:
            model(idx)
        except _Stop:
            pass
    return seen[0]


# --- the autoencoder ---------------------------------------------------------------------------------------
@dataclass
class SAEConfig:
    """What the autoencoder is, and how it is trained (defaults: a TopK autoencoder, 4x the MLP's width)."""

    d_in: int = 512
    n_features: int = 2048
    kind: Literal["topk", "relu"] = "topk"
    k: int = 32  # topk: features kept per token
    l1: float = 5.0  # relu: weight of the sparsity penalty (on activations scaled to mean squared norm d_in)
    aux_k: int = 256  # topk: dead features that reconstruct the error in the auxiliary loss
    aux_coeff: float = 1 / 32
    dead_tokens: int = 200_000  # a feature silent for this many training tokens counts as dead
    resample_every: int = 500  # relu: resample dead features every this many steps (0: never)
    site: Site = "mlp"
    layer: int = 1
    # training
    steps: int = 2000
    batch_size: int = 1024  # activations (tokens) per step
    lr: float = 1e-3
    seed: int = 0
    seq_len: int = 128  # windows the model reads
    buffer_windows: int = 64  # windows per refill: a buffer holds buffer_windows x (seq_len - 1) rows
    save_every: int = 500

    def __post_init__(self):
        if self.kind not in ("topk", "relu"):
            raise ValueError(f"kind={self.kind!r}: expected 'topk' or 'relu'")
        if self.kind == "topk" and not 0 < self.k <= self.n_features:
            raise ValueError(f"k={self.k} must be in 1..n_features={self.n_features}")
        if self.buffer_windows * (self.seq_len - 1) < self.batch_size:
            raise ValueError(f"a buffer of {self.buffer_windows} x {self.seq_len - 1} activations is smaller "
                             f"than one batch of {self.batch_size}: raise buffer_windows")

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class SAEOutput:
    features: torch.Tensor  # [N, n_features]
    recon: torch.Tensor  # [N, d_in], in the input's units
    mse: torch.Tensor  # mean over rows of ||x - x_hat||^2 / d_in, on scaled activations
    sparsity: torch.Tensor  # relu: mean L1 of the features; topk: 0
    aux: torch.Tensor  # topk: AuxK loss; relu: 0
    loss: torch.Tensor


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(cfg.n_features, cfg.d_in, generator=g)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))  # [n, d_in]: one unit row per feature
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())  # tied at the start (Gao et al.)
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_features))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("scale", torch.tensor(1.0))  # input x scale has mean squared norm d_in

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.kind == "relu":
            return F.relu(pre)
        return topk_relu(pre, self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., n_features] of activations x [..., d_in] (in the model's units)."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the model's units."""
        return (f @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> SAEOutput:
        """Features, reconstruction and loss for x [N, d_in]; `dead` [n_features] bool enables AuxK (topk)."""
        xs = x * self.scale
        pre = (xs - self.b_dec) @ self.W_enc + self.b_enc
        f = self.activate(pre)
        recon_s = f @ self.W_dec + self.b_dec
        err = xs - recon_s
        mse = err.pow(2).sum(-1).mean() / self.cfg.d_in
        zero = torch.zeros((), device=x.device)
        sparsity, aux = zero, zero
        if self.cfg.kind == "relu":
            sparsity = f.sum(-1).mean()  # |f| = f after a ReLU; decoder rows have norm 1
            loss = mse + self.cfg.l1 * sparsity / self.cfg.d_in
        else:
            if dead is not None and dead.any():
                aux = self.aux_loss(pre, err, dead)
            loss = mse + self.cfg.aux_coeff * aux
        return SAEOutput(f, recon_s / self.scale, mse, sparsity, aux, loss)

    def aux_loss(self, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: the largest `aux_k` dead features alone reconstruct the error x - x_hat; normalised by the
        error's own size, so it is ~1 when they explain nothing."""
        k = min(self.cfg.aux_k, int(dead.sum()))
        masked = pre.masked_fill(~dead, float("-inf"))
        f_aux = topk_relu(masked, k)
        e_hat = f_aux @ self.W_dec
        target = err.detach()
        return (target - e_hat).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-12)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of each decoder row's gradient along the row: the step then (to first order) moves
        the row around the unit sphere instead of off it."""
        if self.W_dec.grad is not None:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    def direction(self, feature: int) -> torch.Tensor:
        """Feature `feature`'s decoder direction [d_in] in the model's units (what 1 unit of it adds)."""
        return self.W_dec[feature].detach() / self.scale


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row (ReLU'd), zero the rest."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))


# --- activations, a buffer at a time ------------------------------------------------------------------------
class ActivationStream:
    """Batches [batch_size, d_in] of one site's activations over random windows of `tokens`.

    Buffer r holds the activations of `buffer_windows` windows drawn from (seed, r), position 0 dropped (the
    first position of a window is an attention sink: its activations are outliers the model never uses
    elsewhere), shuffled by (seed, r). Batch b is rows [j B, (j+1) B) of buffer b // per_buffer: a function
    of (seed, b) only, so resuming at step b needs nothing saved but b.
    """

    def __init__(self, model: Transformer, tokens: np.ndarray, cfg: SAEConfig):
        _check(model, cfg.site, cfg.layer)
        if len(tokens) < cfg.seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens do not fill one window of {cfg.seq_len}")
        self.model, self.tokens, self.cfg = model, tokens, cfg
        self.per_buffer = cfg.buffer_windows * (cfg.seq_len - 1) // cfg.batch_size
        self._index, self._buffer = -1, None

    def windows(self, r: int) -> torch.Tensor:
        rng = np.random.default_rng([self.cfg.seed, r])
        starts = rng.integers(0, len(self.tokens) - self.cfg.seq_len, size=self.cfg.buffer_windows)
        return torch.from_numpy(np.asarray(self.tokens[starts[:, None] + np.arange(self.cfg.seq_len)])
                                .astype(np.int64))

    def buffer(self, r: int) -> torch.Tensor:
        if r != self._index:
            acts = site_activations(self.model, self.windows(r), self.cfg.site, self.cfg.layer)[:, 1:]
            acts = acts.reshape(-1, acts.shape[-1])
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + r)
            self._buffer, self._index = acts[torch.randperm(len(acts), generator=g)], r
        return self._buffer

    def batch(self, b: int) -> torch.Tensor:
        r, j = divmod(b, self.per_buffer)
        B = self.cfg.batch_size
        return self.buffer(r)[j * B:(j + 1) * B]


# --- training ----------------------------------------------------------------------------------------------
@dataclass
class SAERun:
    sae: SparseAutoencoder
    step: int
    history: list[dict]  # one record per log interval
    wall_s: float  # this call's training time
    cpu_s: float


def lr_at(cfg: SAEConfig, step: int) -> float:
    """Constant after a short warmup, linear decay to 0 over the last 20% (the trick that costs least)."""
    warm = min(1.0, (step + 1) / 50)
    decay_start = int(0.8 * cfg.steps)
    decay = 1.0 if step < decay_start else max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return cfg.lr * warm * decay


def _optimizer(sae: SparseAutoencoder, cfg: SAEConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))


@torch.no_grad()
def _init_from_data(sae: SparseAutoencoder, x: torch.Tensor) -> None:
    """Scale so that the mean squared norm is d_in; b_dec at the data's mean (the reconstruction's offset)."""
    sae.scale.fill_(math.sqrt(sae.cfg.d_in / float(x.pow(2).sum(-1).mean())))
    sae.b_dec.copy_((x * sae.scale).mean(0))


@torch.no_grad()
def resample_dead(sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, dead: torch.Tensor,
                  step: int) -> int:
    """Point each dead feature at an input drawn with probability ~ its squared reconstruction error
    (Bricken et al.'s resampling, simplified): decoder row = that input's direction, encoder column the same
    scaled to 0.2 x the mean alive encoder norm, bias 0; their Adam moments reset. Returns how many."""
    idx = dead.nonzero().squeeze(-1)
    if len(idx) == 0:
        return 0
    out = sae(x)
    err = (x * sae.scale - (out.recon * sae.scale)).pow(2).sum(-1)
    g = torch.Generator().manual_seed(sae.cfg.seed * 7919 + step)
    pick = torch.multinomial(err / err.sum(), len(idx), replacement=len(idx) > len(x), generator=g)
    v = x[pick] * sae.scale - sae.b_dec
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else torch.tensor(1.0)
    sae.W_dec[idx] = v
    sae.W_enc[:, idx] = v.T * 0.2 * alive_norm
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        st = opt.state.get(p)
        if st:
            st["exp_avg"][sl] = 0.0
            st["exp_avg_sq"][sl] = 0.0
    return len(idx)


@torch.enable_grad()  # also inside a notebook that turned gradients off for its analyses
def train_sae(model: Transformer, tokens: np.ndarray, cfg: SAEConfig, *, out_dir: str | Path | None = None,
              resume: bool = False, until_step: int | None = None, progress: bool = True,
              log_every: int = 50, max_time_s: float | None = None) -> SAERun:
    """Train an autoencoder on `model`'s activations at (cfg.site, cfg.layer) over windows of `tokens`.

    With `out_dir`, checkpoints go to out_dir (every `save_every` steps and at the end) and `resume=True`
    continues from there exactly. `until_step` stops early without changing the schedule (to split a run);
    `max_time_s` stops at the first step past that many seconds (and saves).
    """
    if cfg.d_in != site_width(model, cfg.site):
        raise ValueError(f"d_in={cfg.d_in}, but site {cfg.site!r} of this model has width "
                         f"{site_width(model, cfg.site)}: set d_in to it")
    model.eval()
    stream = ActivationStream(model, tokens, cfg)
    sae = SparseAutoencoder(cfg)
    opt = _optimizer(sae, cfg)
    since_fired = torch.zeros(cfg.n_features, dtype=torch.long)  # tokens since each feature last fired
    step, history = 0, []
    sums = {"mse": 0.0, "l0": 0.0, "aux": 0.0, "n": 0}
    if resume and out_dir is not None and (Path(out_dir) / "state.pt").is_file():
        sae, state = load_sae(out_dir, with_state=True)
        opt = _optimizer(sae, cfg)
        opt.load_state_dict(state["optimizer"])
        since_fired, step, history = state["since_fired"], int(state["step"]), list(state["history"])
        sums = dict(state["sums"])  # the log interval in progress continues where it was
        if sae.cfg != cfg:
            changed = {k: (v, getattr(cfg, k)) for k, v in asdict(sae.cfg).items() if getattr(cfg, k) != v}
            raise ValueError(f"{out_dir} was trained with other settings {changed}: resume with the same "
                             "config or pick another out_dir")
    elif step == 0:
        _init_from_data(sae, stream.batch(0))
    stop = min(cfg.steps, until_step) if until_step is not None else cfg.steps
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, initial=step, desc=f"SAE {cfg.kind} L{cfg.layer} {cfg.site}", unit="step")
    t0, c0 = time.perf_counter(), time.process_time()
    while step < stop:
        x = stream.batch(step)
        dead = since_fired >= cfg.dead_tokens
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        out = sae(x, dead if cfg.kind == "topk" else None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.project_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            fired = (out.features > 0).any(0)
            since_fired = torch.where(fired, 0, since_fired + len(x))
            l0 = float((out.features > 0).sum(-1).float().mean())
        sums["mse"] += float(out.mse.detach())
        sums["l0"] += l0
        sums["aux"] += float(out.aux.detach())
        sums["n"] += 1
        step += 1
        resample = cfg.kind == "relu" and cfg.resample_every and step % cfg.resample_every == 0
        if resample and step < 0.8 * cfg.steps:
            n = resample_dead(sae, opt, stream.batch(step), since_fired >= cfg.dead_tokens, step)
            if n:
                since_fired[since_fired >= cfg.dead_tokens] = 0
        if step % log_every == 0 or step == cfg.steps:
            rec = {"step": step, "mse": sums["mse"] / sums["n"], "l0": sums["l0"] / sums["n"],
                   "aux": sums["aux"] / sums["n"],
                   "dead": float((since_fired >= cfg.dead_tokens).float().mean()),
                   "lr": lr_at(cfg, step - 1)}
            history.append(rec)
            sums = {"mse": 0.0, "l0": 0.0, "aux": 0.0, "n": 0}
            if bar is not None:
                bar.set_postfix(mse=f"{rec['mse']:.3f}", l0=f"{rec['l0']:.1f}", dead=f"{rec['dead']:.1%}")
        if bar is not None:
            bar.update(1)
        timed_out = max_time_s is not None and time.perf_counter() - t0 > max_time_s
        if out_dir is not None and (step % cfg.save_every == 0 or step == stop or timed_out):
            save_sae(out_dir, sae, {"optimizer": opt.state_dict(), "since_fired": since_fired, "step": step,
                                    "history": history, "sums": sums})
        if timed_out:
            break
    if bar is not None:
        bar.close()
    return SAERun(sae, step, history, time.perf_counter() - t0, time.process_time() - c0)


# --- checkpoints -------------------------------------------------------------------------------------------
def save_sae(folder: str | Path, sae: SparseAutoencoder, state: dict | None = None,
             extra: dict | None = None) -> Path:
    """`sae.safetensors` (weights and scale), `config.json` (SAEConfig, step, `extra` such as metrics) and,
    for resuming, `state.pt` (optimizer, dead-feature counters, step, history): written in a temporary
    folder, then renamed into place, so a crash never leaves a mixed checkpoint."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        weights = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
        save_file(weights, str(tmp / "sae.safetensors"))
        meta = {"sae": asdict(sae.cfg), "step": (state or {}).get("step"), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        if state is not None:
            torch.save(state, tmp / "state.pt")
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(folder, 0o755)
    return folder


def load_sae(folder: str | Path, *, with_state: bool = False):
    """The autoencoder saved in `folder` (and its training state, with_state=True)."""
    folder = Path(folder)
    if not (folder / "sae.safetensors").is_file():
        raise FileNotFoundError(f"no autoencoder at {folder}: expected sae.safetensors and config.json "
                                "(train one with python -m tinylib.interp.sae)")
    meta = json.loads((folder / "config.json").read_text())
    sae = SparseAutoencoder(SAEConfig.from_dict(meta["sae"]))
    sae.load_state_dict(load_file(str(folder / "sae.safetensors")))
    if not with_state:
        return sae.eval()
    return sae, torch.load(folder / "state.pt", weights_only=True)


# --- splicing and evaluation ------------------------------------------------------------------------------
@contextmanager
def splice(model: Transformer, sae: SparseAutoencoder) -> Iterator[None]:
    """The model runs with the site's activation replaced by the autoencoder's reconstruction (position 0,
    which the autoencoder never saw, kept as it was)."""
    def fn(act):
        rec = sae(act.float().reshape(-1, act.shape[-1])).recon.reshape(act.shape).to(act.dtype)
        return torch.cat([act[:, :1], rec[:, 1:]], dim=1)

    with edit_site(model, sae.cfg.site, sae.cfg.layer, fn):
        yield


@contextmanager
def zero_ablate(model: Transformer, site: Site, layer: int) -> Iterator[None]:
    """The site's activation set to zero (except at position 0, as `splice`): the baseline 'nothing here'."""
    def fn(act):
        return torch.cat([act[:, :1], torch.zeros_like(act[:, 1:])], dim=1)

    with edit_site(model, site, layer, fn):
        yield


@torch.no_grad()
def mean_loss(model: Transformer, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss over windows [N, T]: from positions 1.., those the edits touch."""
    total, n = 0.0, 0
    for chunk in windows.split(batch_size):
        logits, _ = model(chunk)
        loss = F.cross_entropy(logits[:, 1:-1].float().reshape(-1, logits.shape[-1]),
                               chunk[:, 2:].reshape(-1), reduction="sum")
        total, n = total + float(loss), n + chunk[:, 2:].numel()
    return total / n


@dataclass
class SAEMetrics:
    explained_variance: float  # 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2
    l0: float  # mean active features per token
    dead: float  # share of features that never fire on these tokens
    dense: float  # share of features that fire on more than 10% of tokens
    clean_loss: float
    zero_loss: float  # the site zero-ablated
    sae_loss: float  # the autoencoder spliced in
    loss_recovered: float  # (zero - sae) / (zero - clean)
    n_tokens: int

    def row(self) -> str:
        return (f"L0 {self.l0:5.1f}  explained variance {self.explained_variance:6.1%}  loss recovered "
                f"{self.loss_recovered:6.1%}  dead {self.dead:5.1%}  dense {self.dense:5.1%}  (clean "
                f"{self.clean_loss:.3f}, spliced {self.sae_loss:.3f}, zero {self.zero_loss:.3f})")


@torch.no_grad()
def feature_frequencies(model: Transformer, sae: SparseAutoencoder, windows: torch.Tensor,
                        batch_size: int = 16) -> tuple[torch.Tensor, dict]:
    """Share of tokens (positions 1..) on which each feature fires [n_features]; reconstruction sums."""
    fired = torch.zeros(sae.cfg.n_features)
    sq_err, sq_dev, l0, n = 0.0, 0.0, 0.0, 0
    xs = []
    for chunk in windows.split(batch_size):
        x = site_activations(model, chunk, sae.cfg.site, sae.cfg.layer)[:, 1:].reshape(-1, sae.cfg.d_in)
        out = sae(x)
        active = out.features > 0
        fired += active.sum(0)
        l0 += float(active.sum())
        sq_err += float((x - out.recon).pow(2).sum())
        xs.append(x)
        n += len(x)
    x = torch.cat(xs)
    sq_dev = float((x - x.mean(0)).pow(2).sum())
    return fired / n, {"sq_err": sq_err, "sq_dev": sq_dev, "l0": l0 / n, "n": n}


def evaluate_sae(model: Transformer, sae: SparseAutoencoder, windows: torch.Tensor) -> SAEMetrics:
    """All the numbers an autoencoder is judged by, on held-out windows [N, T]."""
    model.eval()
    sae.eval()
    freq, s = feature_frequencies(model, sae, windows)
    clean = mean_loss(model, windows)
    with zero_ablate(model, sae.cfg.site, sae.cfg.layer):
        zero = mean_loss(model, windows)
    with splice(model, sae):
        spliced = mean_loss(model, windows)
    return SAEMetrics(explained_variance=1 - s["sq_err"] / s["sq_dev"], l0=s["l0"],
                      dead=float((freq == 0).float().mean()), dense=float((freq > 0.1).float().mean()),
                      clean_loss=clean, zero_loss=zero, sae_loss=spliced,
                      loss_recovered=(zero - spliced) / (zero - clean), n_tokens=s["n"])


def eval_windows(tokens: np.ndarray, n_windows: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len] windows spread evenly over a token array (validation tokens, not trained on)."""
    if len(tokens) < n_windows * seq_len:
        n_windows = len(tokens) // seq_len
    starts = np.linspace(0, len(tokens) - seq_len, n_windows).astype(np.int64)
    return torch.from_numpy(np.asarray(tokens[starts[:, None] + np.arange(seq_len)]).astype(np.int64))


# --- command line ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m tinylib.interp.sae", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/reference", help="checkpoint folder of a tinylib model")
    p.add_argument("--data", default="data/tinystories-4096", help="token files (python -m tinylib.data)")
    p.add_argument("--out", required=True, help="folder for the autoencoder (resumable with --resume)")
    p.add_argument("--site", default="mlp", choices=["mlp", "resid"])
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--kind", default="topk", choices=["topk", "relu"])
    p.add_argument("--features", type=int, default=None, help="dictionary size (default 4 x the site width)")
    p.add_argument("--k", type=int, default=32, help="topk: features per token")
    p.add_argument("--l1", type=float, default=5.0, help="relu: sparsity penalty")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time-s", type=float, default=None, help="stop (and save) after this many seconds")
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows for the metrics")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    model = load_model(a.model)
    tok = load_tokenizer(a.model)
    if read_meta(a.data)["tokenizer"]["name"] != tok.name:
        raise SystemExit(f"{a.data} was tokenized with {read_meta(a.data)['tokenizer']['name']}, the model "
                         f"with {tok.name}: prepare matching files with "
                         f"python -m tinylib.data --tokenizer {tok.name}")
    d_in = site_width(model, a.site)
    cfg = SAEConfig(d_in=d_in, n_features=a.features or 4 * d_in, kind=a.kind, k=a.k, l1=a.l1, site=a.site,
                    layer=a.layer, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    run = train_sae(model, open_split(a.data, "train", tok), cfg, out_dir=a.out, resume=a.resume,
                    max_time_s=a.max_time_s)
    windows = eval_windows(open_split(a.data, "val", tok), a.eval_windows, cfg.seq_len)
    metrics = evaluate_sae(model, run.sae, windows)
    _, state = load_sae(a.out, with_state=True)
    save_sae(a.out, run.sae, state, {"metrics": asdict(metrics), "model": str(a.model),
                                     "train_wall_s": run.wall_s, "train_cpu_s": run.cpu_s})
    print(f"step {run.step}: {metrics.row()}")
    print(f"trained {run.wall_s:.0f} s wall, {run.cpu_s:.0f} s CPU ({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
