"""Configuration: the model (`ModelConfig`, the named presets, closed-form parameter counts) and a run
(`TrainConfig`, and `config_from_args`: one command-line flag per field, over an optional JSON file).

One `ModelConfig` describes both families: GPT-style (LayerNorm, GELU MLP, learned positions, biases) and
LLaMA-style (RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query attention, no biases). Presets are built
for any vocabulary size because the embedding is a large share of a small model. Parameter counts are computed
here in closed form, so budgets never need to build a model.

The architecture-lab switches (each one field, off by default, in the same model code path): `sliding_window`
(each query sees its last W positions), `embed_rank` (vocab x r then r x d embeddings, the tied output through
the same factors), `qk_norm` (RMSNorm on each head's queries and keys), `mlp="relu2"` (ReLU squared),
`logit_softcap` (cap * tanh(logits / cap)) and `zero_init` (output projections start at zero).

What it leaves to others: building the model from a config (`tinylib.model.build_model`), what the training
fields do (`tinylib.train`, `tinylib.optim`, `tinylib.faults`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (multi-head); fewer = grouped-query attention
    d_model: int = 128
    d_mlp: int | None = None  # MLP hidden size; None = 4 * d_model
    max_seq_len: int = 256  # context length (the RoPE table and the learned position table are this long)
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    mlp: Literal["gelu", "swiglu", "relu2"] = "swiglu"  # relu2: down(relu(up x)^2), as in Primer/nanochat
    pos: Literal["learned", "rope"] = "rope"
    rope_theta: float = 10000.0
    bias: bool = False  # biases in linear layers and LayerNorm
    tie_embeddings: bool = True
    dropout: float = 0.0  # on embeddings and on each residual branch
    # on attention probabilities; None = dropout (costly on CPUs: a B x H x T x T mask)
    attn_dropout: float | None = None
    norm_eps: float = 1e-5
    sliding_window: int | None = None  # each query attends to itself and the W - 1 positions before it
    embed_rank: int | None = None  # factorized embeddings: vocab x r, then r x d (needs tie_embeddings)
    qk_norm: bool = False  # RMSNorm over each head's q and k (before RoPE): bounded attention logits
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap), as in Gemma 2
    zero_init: bool = False  # o_proj and down_proj start at zero: each block starts as the identity

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout
        problems = []
        if self.d_model % self.n_head:
            problems.append(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and (self.d_model // self.n_head) % 2:
            problems.append(f"RoPE needs an even head size, got {self.d_model // self.n_head}")
        if self.vocab_size < 1 or self.n_layer < 1 or self.max_seq_len < 1:
            problems.append("vocab_size, n_layer and max_seq_len must be positive")
        if self.sliding_window is not None and self.sliding_window < 1:
            problems.append(f"sliding_window={self.sliding_window} must be a positive number of positions "
                            "(None: full causal attention)")
        if self.embed_rank is not None and not 1 <= self.embed_rank <= self.d_model:
            problems.append(f"embed_rank={self.embed_rank} must be in 1..d_model={self.d_model} (None: plain "
                            "vocab x d_model embeddings)")
        if self.embed_rank is not None and not self.tie_embeddings:
            problems.append("embed_rank needs tie_embeddings=True (the output goes through the same factors)")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            problems.append(f"logit_softcap={self.logit_softcap} must be > 0 (None: no cap)")
        for name, allowed in (("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "swiglu", "relu2")),
                              ("pos", ("learned", "rope"))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}, expected one of {allowed}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def style(self) -> str:
        """'llama' (RMSNorm, SwiGLU, RoPE) or 'gpt' (LayerNorm, GELU, learned positions), else 'custom'.
        Biases do not change the family: transformers' Llama and GPT-2 both express them."""
        if (self.norm, self.mlp, self.pos) == ("rmsnorm", "swiglu", "rope"):
            return "llama"
        if (self.norm, self.mlp, self.pos) == ("layernorm", "gelu", "learned"):
            return "gpt"
        return "custom"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # Checkpoints written before the attention implementation became a run-time choice recorded it here.
        return config_from_dict(cls, {k: v for k, v in d.items() if k != "attn_impl"})


def config_from_dict(cls, d: dict):
    """Build dataclass `cls` from a dict (a JSON file, a checkpoint), naming any field it does not have."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields are {sorted(known)}")
    return cls(**d)


GPT_STYLE = dict(norm="layernorm", mlp="gelu", pos="learned", bias=True)
LLAMA_STYLE = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)

# (n_layer, n_head, d_model, d_mlp, max_seq_len): the sizes people expect (see shared/PRODUCT.md).
_SIZES = {
    "tiny": (4, 4, 128, 512, 256),
    "6L_6H_288D": (6, 6, 288, 768, 256),
    "8L_8H_768D": (8, 8, 768, 3072, 512),
    "12L_8H_1024D": (12, 8, 1024, 4096, 1024),
}


def _build_presets() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for size, (n_layer, n_head, d_model, d_mlp, seq) in _SIZES.items():
        shape = dict(n_layer=n_layer, n_head=n_head, d_model=d_model, d_mlp=d_mlp, max_seq_len=seq)
        presets[f"gpt_{size}"] = {**shape, **GPT_STYLE}
        presets[f"llama_{size}"] = {**shape, **LLAMA_STYLE}
    presets["gpt2_124M"] = dict(n_layer=12, n_head=12, d_model=768, d_mlp=3072, max_seq_len=1024, **GPT_STYLE)
    presets["tiny"] = presets["llama_tiny"]  # the CPU default
    return presets


PRESETS: dict[str, dict] = _build_presets()


def get_config(preset: str = "tiny", vocab_size: int = 4096, **overrides) -> ModelConfig:
    """A preset built for `vocab_size`, with any field overridden (e.g. n_kv_head=2, dropout=0.1)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[preset], "vocab_size": vocab_size, **overrides})


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by component. `total` counts a tied embedding/LM-head matrix once."""

    embedding: int  # token embedding (the LM head too, when tied); with embed_rank both factors
    position: int  # learned position table (0 with RoPE)
    attention: int  # all layers: q, k, v, o (+ biases)
    mlp: int  # all layers
    norms: int  # all norm weights (+ LayerNorm biases)
    lm_head: int  # 0 when tied

    @property
    def total(self) -> int:
        return self.embedding + self.position + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Kaplan's N: everything but the token/position embeddings and the LM head."""
        return self.attention + self.mlp + self.norms

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total, "non_embedding": self.non_embedding}


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Closed-form parameter counts for `cfg` (a test checks them against a built model)."""
    d, h, L = cfg.d_model, cfg.d_mlp, cfg.n_layer
    kv = cfg.n_kv_head * cfg.d_head
    b = 1 if cfg.bias else 0
    attn = d * d + 2 * d * kv + d * d + b * (d + 2 * kv + d)
    n_mlp_in = 2 if cfg.mlp == "swiglu" else 1
    mlp = n_mlp_in * d * h + h * d + b * (n_mlp_in * h + d)
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    r = cfg.embed_rank
    return ParamCounts(
        embedding=cfg.vocab_size * d if r is None else cfg.vocab_size * r + r * d,
        position=cfg.max_seq_len * d if cfg.pos == "learned" else 0,
        attention=L * attn,
        mlp=L * mlp,
        norms=(2 * L + 1) * norm + (2 * L * cfg.d_head if cfg.qk_norm else 0),
        lm_head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
    )


@dataclass
class TrainConfig:
    # what to train on
    data: str = "data/tinystories-4096"  # a folder written by tinylib.data (train.bin, val.bin, meta.json)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # any ModelConfig field, e.g. {"dropout": 0.1}
    vocab_multiple: int = 64  # round the embedding up for faster matmuls; extra ids are never targets
    out_dir: str | None = None  # default: checkpoints/<preset>-<data folder name>, -2, -3, ... if taken
    # batch: tokens per optimizer step = batch_size x seq_len x grad_accum x world_size
    batch_size: int = 16  # micro-batch per process
    seq_len: int = 256
    tokens_per_step: int | None = None  # None: one micro-batch per process per step
    # length of training: max_steps, else max_tokens; max_time_s alone plans the steps that fit the time, and
    # together with either it caps them (planned after 5 timed steps, re-planned as the run goes)
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time_s: float | None = None  # steps planned from the measured speed, re-planned (optim.TimePlan)
    until_step: int | None = None  # stop (and save) here without changing the schedule: split a run in parts
    # optimizer and schedule
    optimizer: str = "adamw"  # or "muon": Muon for the matrices inside the blocks, AdamW for the rest
    lr: float = 1e-3  # AdamW's peak lr (with optimizer="muon": embeddings, head and norms)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # or "wsd": warmup, constant, linear decay over the last 20% (optim.lr_scale)
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # numerics and hardware
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bf16 where supported, else fp32
    fp8: bool = False  # torchao float8 training of the block matmuls: CUDA GPUs with FP8 units only
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
    overwrite: bool = False  # a new run in a folder holding one moves the old run to <out_dir>.old-<time>
    progress: bool = True
    log_to: str | None = None  # also log to "tensorboard", "trackio" or "wandb" (tinylib.metrics)
    # surviving faults (tinylib.faults): checkpoint history, the divergence guard, a lost DDP rank
    keep_previous: int = 1  # earlier latest/ checkpoints kept in previous/: fallbacks when latest/ is damaged
    guard_spike: float | None = 4.0  # a loss above this x the median of the last 50 is not applied
    guard_bad_steps: int = 3  # this many unapplied (non-finite or spiking) steps in a row: roll back ...
    guard_rollbacks: int = 2  # ... to the last good checkpoint, lr x guard_lr_factor, this often; then stop
    guard_lr_factor: float = 0.5
    guard_weight_growth: float | None = 2.0  # the weights' norm grew more than this x in one step: roll back
    nan_at_steps: list[int] = field(default_factory=list)  # fault injection: these steps' loss is made NaN
    dist_timeout_s: float = 600.0  # DDP: a collective waiting this long (a step: twice) ends the run

    def __post_init__(self) -> None:
        """Refuse values that would fail later, far from the flag that set them (or silently do nothing)."""
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"preset={self.preset!r} is not a preset; choose one of {sorted(PRESETS)}")
        if not isinstance(self.model_overrides, dict):
            problems.append(f"model_overrides={self.model_overrides!r} must be a JSON object of ModelConfig "
                            'fields, e.g. {"dropout": 0.1}')
        else:
            known = {f.name for f in dataclasses.fields(ModelConfig)}
            unknown = sorted(set(self.model_overrides) - known)
            if unknown:
                problems.append(f"model_overrides has unknown ModelConfig fields {unknown}; known fields are "
                                f"{sorted(known)}")
        for name, low in (("max_steps", 1), ("max_tokens", 1), ("save_every", 1), ("until_step", 1),
                          ("batch_size", 1), ("seq_len", 1), ("log_every", 1), ("eval_batches", 1),
                          ("eval_batch_size", 1), ("eval_every", 0), ("warmup_steps", 0),
                          ("keep_previous", 0), ("tokens_per_step", 1)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= low):
                flag = "--" + name.replace("_", "-")
                problems.append(f"{flag} {value!r} must be an integer >= {low}"
                                + (" (0: evaluate at the end only)" if name == "eval_every" else ""))
        if not self.lr > 0:
            problems.append(f"--lr {self.lr!r} must be > 0")
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return config_from_dict(cls, d)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The preset with this run's overrides, its vocabulary rounded up to `vocab_multiple` (faster
        matmuls; the extra ids are never targets)."""
        vocab = math.ceil(vocab_size / self.vocab_multiple) * self.vocab_multiple
        cfg = get_config(self.preset, vocab_size=vocab, **self.model_overrides)
        if self.seq_len > cfg.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len} exceeds preset {self.preset!r}'s context of "
                             f"{cfg.max_seq_len}; lower seq_len or pass "
                             f"model_overrides={{'max_seq_len': {self.seq_len}}}")
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that B x T x accum x world = tokens_per_step exactly."""
        per_micro = self.batch_size * self.seq_len * world_size
        if self.tokens_per_step is None:
            return 1
        if self.tokens_per_step % per_micro:
            raise ValueError(
                f"tokens_per_step={self.tokens_per_step} is not a multiple of batch_size x seq_len x "
                f"world_size = {self.batch_size} x {self.seq_len} x {world_size} = {per_micro}; choose a "
                f"multiple of {per_micro}")
        return self.tokens_per_step // per_micro

    def planned_steps(self, tokens_per_step: int) -> int | None:
        """The schedule's length from max_steps or max_tokens; None when a time budget alone decides it."""
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"max_time_s={self.max_time_s} must be a positive number of seconds "
                             "(or None: no time limit)")
        if self.max_steps is not None:
            return self.max_steps
        if self.max_tokens is not None:
            return max(1, self.max_tokens // tokens_per_step)
        if self.max_time_s is None:
            raise ValueError("say how long to train: set max_steps, max_tokens or max_time_s")
        return None


# --- the command line ---------------------------------------------------------------------------------------

class UserError(Exception):
    """A mistake or a fault the user can act on (a lock held, a run in the way, divergence): an entry point
    prints its message without a traceback. ValueError and OSError are treated the same way."""


def entry_point(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """The error boundary of a `python -m tinylib...` command: a user's mistake (a bad flag, file or value:
    ValueError, OSError, UserError) prints `error: <message>` and exits with status 2, no traceback; any
    other exception is a bug and keeps its traceback. TINYLIB_TRACEBACK=1 shows the traceback of all."""

    @functools.wraps(main)
    def boundary(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, ValueError, OSError) as e:
            if os.environ.get("TINYLIB_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return boundary


def config_parser(cls: type[TrainConfig] = TrainConfig, prog: str = "python -m tinylib.train",
                  description: str | None = None) -> argparse.ArgumentParser:
    """`--config file.json` and one flag per field of `cls` (TrainConfig, or fine-tuning's subclass)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help=f"a JSON file of {cls.__name__} fields; flags here override it")
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{comments.get(f.name, '')} (default: {default!r})".lstrip().replace("%", "%%")
        if f.name == "model_overrides":
            parser.add_argument(flag, type=json.loads, default=None, help='JSON, e.g. \'{"dropout": 0.1}\'; '
                                + text)
        elif f.type.startswith("list["):
            parser.add_argument(flag, nargs="*", default=None, type=int if f.type == "list[int]" else str,
                                help=text)
        elif f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "int | None": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, help=text)
    return parser


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source (`name: type = default  # what it does`): the flags' help,
    written once beside the field. A subclass's comment wins."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            if m := re.match(r"\s+(\w+): [^=#]+=[^#]*#\s*(.+)$", line):
                found[m.group(1)] = m.group(2)
    return found


def read_config_file(path: str | Path) -> dict:
    """The fields in a `--config` JSON file, with a message naming the file and the place that is wrong."""
    path = Path(path)
    try:
        base = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
                         ) from None
    if not isinstance(base, dict):
        raise ValueError(f"--config {path}: expected a JSON object of fields, got {type(base).__name__}")
    return base


def config_from_args(argv: list[str] | argparse.Namespace | None = None, cls: type[TrainConfig] = TrainConfig,
                     description: str | None = None) -> TrainConfig:
    """A `cls` from `--config file.json` and one flag per field (flags win over the file). `argv` may also be
    what `config_parser(cls)` parsed, when the caller added flags of its own to that parser."""
    if not isinstance(argv, argparse.Namespace):
        argv = config_parser(cls, description=description).parse_args(argv)
    fields = {f.name for f in dataclasses.fields(cls)}
    args = {k: v for k, v in vars(argv).items() if k in fields or k == "config"}
    base = read_config_file(args.pop("config")) if args.get("config") else {}
    base.update({k: v for k, v in args.items() if v is not None})
    return cls.from_dict(base)
