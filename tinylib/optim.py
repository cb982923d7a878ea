"""The optimizers and the learning-rate schedule: AdamW, Muon, and warmup + cosine (or warmup-stable-decay).

`configure_optimizer(model, cfg)` builds what a run trains with: AdamW with weight decay on matrices only, or
with `cfg.optimizer == "muon"` Muon for the matrices inside the blocks and AdamW for the rest. Every group
records its peak lr; `lr_scale` is the schedule, one factor on every peak, `set_lr_factor` the one place the
lr is written (the divergence guard lowers the peaks with `set_peak_lrs`), and `TimePlan` plans how many
steps the schedule spans when a run is given a time instead of a step count. What it leaves to others: the
step itself (`tinylib.train`).

Muon: momentum SGD whose update for each weight matrix is orthogonalised (Jordan et al., 2024).

Adam scales every coordinate on its own; Muon instead replaces a matrix's momentum M = U S V^T by U V^T, the
nearest semi-orthogonal matrix, so every direction the layer can move in moves by the same amount. Rare but
useful directions are no longer drowned by the few largest ones, and the model learns more per token: the
modded-nanogpt speedruns and nanochat train their hidden matrices this way. U V^T is computed without an SVD
by a few Newton-Schulz iterations (matmuls only, so cheap next to a training step): in bf16 on GPUs, as the
speedruns do, and in fp32 on CPUs, where these small matrices orthogonalise faster in fp32 even with bf16
units, and ten times faster without them (bf16 is emulated there; bench/step_profile.py measures it).

Muon is only for the 2-D weights inside the blocks. Embeddings, the LM head and norm gains stay on AdamW: an
embedding row is a lookup, not a linear map, and a gain vector has no matrix to orthogonalise. `MuonAdamW`
holds both kinds in one optimizer, so the training loop, the schedule and checkpoints see one object and one
state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinylib.config import TrainConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic chosen to push singular values in (0, 1] towards ~1 fast


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T for each matrix in `g` ([..., m, n]), by Newton-Schulz iteration in `dtype`
    (default: bf16 on GPUs, fp32 elsewhere).

    The iteration maps each singular value s to a s + b s^3 + c s^5; after normalising so that s <= 1, five
    steps bring every singular value into roughly [0.7, 1.2]: not exact, and it need not be (training only
    needs the directions equalised).
    """
    a, b, c = NS_COEFFS
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * A @ A
        x = a * x + B @ x
    return (x if wide else x.mT).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with `muon=True`, AdamW for the rest; lr and weight decay per group.

    Muon group options: lr, momentum (Nesterov), weight_decay (decoupled: p *= 1 - lr * wd), ns_steps. AdamW
    group options: lr, betas, eps, weight_decay. Matrices of one shape are orthogonalised together in one
    batched call, which matters on CPU where a step has many small matrices.
    """

    def __init__(self, groups: list[dict], *, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        for g in groups:
            if g.get("muon") and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only; put embeddings, norms and "
                                 "biases in an AdamW group (muon=False)")
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        by_shape: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        for (rows, cols), ps in by_shape.items():
            grads = []
            for p in ps:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                grads.append(p.grad.lerp(buf, mom))  # Nesterov
            updates = orthogonalize(torch.stack(grads), group["ns_steps"])
            scale = max(1.0, rows / cols) ** 0.5  # tall matrices: keep the per-entry update size comparable
            for p, u in zip(ps, updates, strict=True):
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(u, alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            if wd:
                p.mul_(1 - lr * wd)
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                        device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2: linear weights, embeddings), none on norms and biases.

    With cfg.optimizer == "muon", the 2-D weights inside the blocks move to Muon instead.
    Every group records its peak lr as "base_lr"; the schedule scales all of them by the same factor.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer={cfg.optimizer!r}; expected 'adamw' or 'muon'")
    use_muon = cfg.optimizer == "muon"
    to_muon = [p for n, p in named if use_muon and p.dim() == 2 and p.numel() and n.startswith("blocks.")]
    muon_ids = {id(p) for p in to_muon}
    rest = [p for _, p in named if id(p) not in muon_ids]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    betas = (cfg.beta1, cfg.beta2)
    if not use_muon:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=device.type in ("cuda", "cpu"))
    groups.append({"params": to_muon, "muon": True, "lr": cfg.muon_lr, "base_lr": cfg.muon_lr,
                   "momentum": cfg.muon_momentum, "weight_decay": cfg.muon_weight_decay})
    return MuonAdamW(groups, lr=cfg.lr, betas=betas)


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its peak lr ("base_lr") x factor: the one place a run's lr is written (the loop
    calls it before each step with the schedule's `lr_scale`)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def set_peak_lrs(optimizer: torch.optim.Optimizer, peaks: list[float]) -> None:
    """Set every group's peak lr (the divergence guard, after a rollback has restored the optimizer)."""
    for group, peak in zip(optimizer.param_groups, peaks, strict=True):
        group["base_lr"] = peak


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's lr as last set (what the metrics log records)."""
    return optimizer.param_groups[0]["lr"]


def peak_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["base_lr"] for group in optimizer.param_groups]


SCHEDULES = ("cosine", "wsd")
WSD_DECAY_FRACTION = 0.2  # Hägele et al. 2024: a 20% linear cooldown matches cosine at the same length


def lr_scale(step: int, *, warmup: int, total: int, floor: float, schedule: str = "cosine") -> float:
    """The factor on every peak lr: linear warmup to 1 over `warmup` steps, then to `floor` at `total`.

    "cosine" decays along a half cosine from the end of warmup. "wsd" (warmup-stable-decay, as in MiniCPM and
    nanochat) holds 1 until the last `WSD_DECAY_FRACTION` of the steps and decays linearly there: a run can be
    extended (or branched into a cooldown) from any checkpoint of the stable phase.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = max(warmup, total - round(WSD_DECAY_FRACTION * total))
        progress = min(1.0, max(0, step - decay_start) / max(1, total - decay_start))
        return 1 - (1 - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class TimePlan:
    """How many steps fit in `seconds`, re-estimated as the run goes.

    The first plan comes from the timed steps alone (plus 5% for evaluation); later plans from the mean wall
    time per step since the first one (evaluation included), so the schedule still anneals on time when the
    machine slows down or speeds up. `eval_s` (the last evaluation's duration) is held back for the final
    evaluation; once the budget is spent, the plan is the current step: the run stops there.
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
