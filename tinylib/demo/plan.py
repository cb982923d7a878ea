"""The demo's plan: which model shape and batch spend this machine's minutes best, chosen from measured speed.

The demo trains for a fixed wall time, so what it can afford depends on the machine: a 2-core CPU with bf16
units runs a small model's step several times faster than one without (there bf16 is emulated and fp32 is the
fast path), and a GPU is faster again. A fixed model would leave the slow machine training a model sized for
a fast one for a fraction of the steps. So, as notebook 02 teaches, we measure instead of assuming: every
candidate takes a few training steps here, its seconds per step give the steps that fit the budget, and the
plan takes the largest candidate that gets the steps it needs. Below that, a smaller candidate trained for
more steps ends lower: each `min_steps` was measured as that crossover (see `CANDIDATES`).

The offline sample is small (2,316 stories, ~0.5M tokens), so a 10-minute run sees it many times: what a
larger model gains in capacity it partly loses to memorising, which is why the candidates stay small and carry
strong weight decay, and dropout where the budget makes many passes over the sample.

What it leaves to others: the training loop (`tinylib.train`), the schedule's own re-planning while it runs
(`tinylib.optim.TimePlan`), the command (`tinylib.demo.__main__`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from tinylib.checkpoint import TrainState
from tinylib.config import TrainConfig, param_counts
from tinylib.device import synchronize
from tinylib.model import build_model
from tinylib.optim import configure_optimizer
from tinylib.train import train_step

# What every demo run shares. Muon on the block matrices learns more per token than AdamW (tinylib.optim);
# the tied embedding learns best with a higher AdamW lr (6e-3). Offline the sample is seen many times: strong
# weight decay keeps the model from memorising it, and the embedding's weight decay keeps the logits of tokens
# never seen in training (byte tokens of mis-encoded text in the validation stories) from sinking without
# bound. Residual dropout is the candidate's own (`Candidate.dropout`): it pays only where the run sees the
# sample many times (attention dropout is left off everywhere: it halves CPU speed).
RECIPE = dict(optimizer="muon", muon_lr=0.02, muon_weight_decay=0.3, weight_decay=1.0, lr=6e-3,
              min_lr_ratio=0.05, eval_batches=20, sample_tokens=32)
WARMUP_TOKENS = 409_600  # 100 steps of 16 x 256: warmup is set in tokens, so a smaller batch warms as long


@dataclass(frozen=True)
class Candidate:
    """One shape the demo may train: a preset with overrides, a batch, the steps it needs to be worth it."""

    name: str
    preset: str
    model_overrides: Mapping = field(default_factory=dict)
    batch_size: int = 16
    seq_len: int = 256
    min_steps: int = 0  # with fewer steps in the budget, the next candidate in the list ends lower
    dropout: float = 0.1  # residual dropout: against memorising a sample seen ~16 times, a cost at ~7
    about: str = ""

    def train_config(self, **fields) -> TrainConfig:
        """The run's TrainConfig: the shared recipe, this candidate's shape, then `fields` (data, time...)."""
        overrides = {"dropout": self.dropout, "attn_dropout": 0.0, **self.model_overrides}
        warmup = round(WARMUP_TOKENS / (self.batch_size * self.seq_len))
        return TrainConfig(**{**RECIPE, "preset": self.preset, "model_overrides": overrides,
                              "batch_size": self.batch_size, "seq_len": self.seq_len, "warmup_steps": warmup,
                              **fields})


# Largest first. The thresholds are in steps at the speed `measure` sees (uncompiled; torch.compile makes the
# real run faster on every candidate alike). Measured with the trainer on a 2-core AMD EPYC, one seed each
# (bench/demo_recipe.py runs such comparisons): at equal CPU time the ReLU^2 MLP ended 0.012 bits/byte
# below SwiGLU (fp32, 1.065 vs 1.076 after ~840 CPU-s); at equal tokens and about equal CPU time, batch 8
# ended 0.079 below batch 16 on a short budget (1.2M tokens: 1.217 vs 1.296), but a 10-minute bf16 demo at
# batch 8 (3,501 steps, 7.2M tokens) ended at 1.009, above batch 16's 0.995 at 8.1M tokens: small batches win
# while updates are scarce and lose once they are not. The crossover between those two budgets is set at 1,000
# measured steps of batch 16 (about 4M tokens), not measured more finely.
# Dropout follows the number of passes over the 0.5M-token sample. At batch 16 for 1,928 steps (7.9M tokens,
# ~16 passes: the bf16 demo) it is what keeps the model from memorising: 0.0 ended at 1.072 (2,140 steps, the
# same time), 0.1 at 0.999, 0.2 at 1.009. At batch 8 for 1,555-1,733 steps (3.2-3.5M tokens, ~7 passes: the
# AVX2 demo) it only costs: 0.1 ended at 1.067, 0.0 at 1.053 at 1,555 steps, and a compiled step without it
# is ~10% cheaper (1,733 steps in the same time: 1.046). At that budget the shape is right: 2 layers (2,900
# steps, 1.080), d_model 96 (2,700 steps, 1.049) and batch 4 (3,400 steps, 1.081) did no better.
# Muon's lr 0.02 ended below 0.01 at both budgets by about the same small margin, one seed each (bf16 batch
# 16, 1,928 steps: 0.992 vs the demo's 0.999; AVX2 batch 8, 1,733 steps: 1.040 vs 1.046): the same sign
# twice, each inside one seed's noise. 6 layers at batch 16 (1,340 steps in the same time) ended at 1.020, and
# warmup-stable-decay (20% decay) at batch 8 at 1.058: neither is taken.
# Context 512 instead of 256 at the same tokens a step (batch 8 x 512), measured on an Intel Xeon with AMX
# (bf16, bench/demo_recipe.py --threads 1 --compile on, two seeds each, equal CPU time): 0.9787 and 0.9828
# (2,110 steps, ~1,030 CPU-s) against batch 16 x 256's 0.9986 and 0.9915 (2,513 steps, 1,020-1,062 CPU-s):
# lower by 0.020 and 0.009, paired by seed, where the two seeds of one recipe differ by 0.004-0.007. A story
# is ~220 tokens, so in 256-token windows many tokens lose the start of their story to the window's edge;
# the validation windows are the run's own context, so the model sees as much at evaluation. The step costs
# 1.09x (SDPA: the CPU flash kernel skips the masked half of the square; written out it is 1.40x, see
# `tinylib.device.LONG_CONTEXT` and bench/attention_kernel.py); the 2,110 steps above allowed for 1.19x, an
# earlier, rougher timing. `make demo` on the same Xeon: 0.981 (2,161 steps), was 0.988 at 16 x 256.
# Dropout 0.15 at 16 x 256 ended at 0.9986 against 0.1's 0.9915 (one seed): not taken.
# The smallest fallback follows the compute-optimal rule (a smaller model for a smaller budget, Hoffmann et
# al.) for machines slower than any measured here.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("tiny-relu2-512", "tiny", {"mlp": "relu2", "max_seq_len": 512}, 8, 512, min_steps=1000,
              dropout=0.1, about="4 layers x 128, ReLU^2 MLP 512 (two matrices, SwiGLU has three), context "
                                 "512, batch 8 x 512, dropout 0.1"),
    Candidate("tiny-relu2-b8", "tiny", {"mlp": "relu2"}, 8, 256, min_steps=400, dropout=0.0,
              about="the same model at batch 8 x 256 without dropout: twice the updates for a short budget"),
    Candidate("small-relu2-b8", "tiny", {"mlp": "relu2", "n_layer": 3}, 8, 256, min_steps=0, dropout=0.0,
              about="3 layers x 128, ReLU^2 MLP 512, batch 8 x 256, no dropout"),
)
GPU_CANDIDATE = Candidate("gpu", "llama_6L_6H_288D", {}, 64, 256,
                          about="6 layers x 288 (LLaMA-style), batch 64: a GPU runs it at thousands of steps")
MIN_STEPS = 200  # fewer than this and no candidate learns to write a story: the plan refuses


class PlanError(ValueError):
    """No candidate fits the time: the message says what would."""


@dataclass
class Plan:
    """The chosen candidate and why: what `--plan` takes back to repeat a run."""

    name: str
    budget_s: float
    seconds_per_step: dict[str, float]  # measured here (empty when the plan was given, not measured)
    steps: int  # expected at the measured speed; the run re-plans as it goes
    reason: str

    def candidate(self, candidates: Sequence[Candidate] = CANDIDATES) -> Candidate:
        return candidate_named(self.name, candidates)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise PlanError(f"--plan {text[:60]!r} is not a plan's JSON ({e}); pass a candidate's name or "
                            "Plan.to_json()'s output") from None


def candidate_named(name: str, candidates: Sequence[Candidate] = CANDIDATES) -> Candidate:
    for c in (*candidates, GPU_CANDIDATE):
        if c.name == name:
            return c
    raise PlanError(f"unknown plan {name!r}; the candidates are {[c.name for c in candidates]} "
                    f"(and {GPU_CANDIDATE.name!r} on a GPU)")


def steps_in(budget_s: float, seconds_per_step: float, overhead: float = 0.1) -> int:
    """Steps that fit `budget_s` at `seconds_per_step`, holding `overhead` of the time back for evaluation,
    checkpoints and compiling."""
    if seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        raise ValueError(f"seconds_per_step={seconds_per_step}: expected a positive time")
    return int(budget_s * (1 - overhead) / seconds_per_step)


def choose(seconds_per_step: Mapping[str, float], budget_s: float,
           candidates: Sequence[Candidate] = CANDIDATES) -> Plan:
    """The largest candidate whose measured speed gives it at least its `min_steps` in `budget_s`.

    Raises PlanError when even the last (smallest) candidate gets fewer than MIN_STEPS, naming the budget that
    would do.
    """
    missing = [c.name for c in candidates if c.name not in seconds_per_step]
    if missing:
        raise ValueError(f"no measured step time for {missing}; measured: {sorted(seconds_per_step)}")
    passed = []
    for c in candidates:
        steps = steps_in(budget_s, seconds_per_step[c.name])
        if steps >= max(c.min_steps, MIN_STEPS):
            why = (f"{c.name} ({c.about}) gets ~{steps:,} steps in {budget_s / 60:.1f} min at the "
                   f"{seconds_per_step[c.name] * 1000:.0f} ms/step measured here")
            if passed:
                why += "; " + "; ".join(passed)
            return Plan(c.name, budget_s, dict(seconds_per_step), steps, why)
        passed.append(f"{c.name} would get {steps:,} of the {max(c.min_steps, MIN_STEPS):,} steps it needs")
    smallest = candidates[-1]
    need_s = MIN_STEPS * seconds_per_step[smallest.name] / 0.9
    raise PlanError(f"no candidate fits {budget_s / 60:.1f} minutes on this machine: {'; '.join(passed)}. "
                    f"Give --minutes {math.ceil(need_s / 60)} or more, or pick one with --plan NAME")


def measure(candidates: Sequence[Candidate], vocab_size: int, device: torch.device, dtype: torch.dtype, *,
            steps: int = 3, warmup: int = 1) -> dict[str, float]:
    """Seconds per optimizer step of each candidate here: `warmup` + `steps` real steps (model, optimizer,
    dtype as the run has them; random tokens), uncompiled so that measuring costs seconds, not minutes.
    The global RNG is left as it was."""
    saved = torch.random.get_rng_state()
    out = {}
    try:
        for c in candidates:
            cfg = c.train_config()
            torch.manual_seed(0)
            model = build_model(cfg, vocab_size).to(device)
            state = TrainState(model, configure_optimizer(model, cfg, device))
            x = torch.randint(0, vocab_size, (c.batch_size, c.seq_len + 1), device=device)
            batch = [(x[:, :-1], x[:, 1:])]
            for i in range(warmup + steps):
                if i == warmup:
                    synchronize(device)
                    t0 = time.perf_counter()
                train_step(state, batch, dtype=dtype)
            synchronize(device)
            out[c.name] = (time.perf_counter() - t0) / steps
            del state, model
    finally:
        torch.random.set_rng_state(saved)
    return out


def describe(c: Candidate, vocab_size: int) -> str:
    """One line: the candidate's shape and parameter count."""
    n = param_counts(c.train_config().model_config(vocab_size)).total
    return f"{c.name}: {c.about}; {n / 1e6:.2f}M parameters, batch {c.batch_size} x {c.seq_len}"
