"""The assembly checks of notebook 12: the learner's pieces, put together, against tinylib end to end.

`Parts` holds the learner's functions (collected from a notebook's namespace by `collect_parts`). Four checks:
- `check_logits`: the learner's forward with tinylib's weights (the shipped reference checkpoint, and random
  GPT-style and grouped-query models) gives tinylib's logits in fp32 within 1e-4;
- `check_training`: from the same initial weights and batches, the learner's `train_step` five times gives
  the weights of tinylib's `train_step` within `STEP_ATOL`;
- `train_learner_model`: the learner's model and step train on real tokens for a time budget (the notebook
  asserts the validation loss it reaches);
- `check_sampler`: the learner's `generate`, with their KV cache and without, gives exactly tinylib's ids.
A failing check raises `AssemblyFailed` naming the first module (or parameter, or step) whose output differs,
found by running each of the learner's pieces on the inputs tinylib's module saw. What it leaves to others:
the pieces and their unit checks (`tinylib.exercises.nb12_build`), the model itself (`tinylib.model`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from tinylib.config import ModelConfig
from tinylib.engine import SamplingConfig, choose_next
from tinylib.exercises.nb12_build import (
    ADAMW,
    _words_of,
    merge_ids,
    pair_counts,
    small_config,
    sub,
    tinylib_model,
)
from tinylib.generate import generate as tinylib_generate
from tinylib.model import Transformer, apply_rope
from tinylib.train import train_step as tinylib_train_step

LOGIT_ATOL = 1e-4  # fp32: the learner's written-out attention vs tinylib's fused kernel differ by ~1e-6
STEP_ATOL = 1e-4  # max |weight difference| after five AdamW steps (lr 3e-3: each weight moves up to ~1.5e-2)


class AssemblyFailed(AssertionError):
    """The learner's assembled model differs from tinylib's; the message names where first."""


@dataclass
class Parts:
    """The learner's pieces, with the signatures notebook 12 poses (None: not written yet)."""

    layer_norm: Callable | None = None
    rms_norm: Callable | None = None
    rope: Callable | None = None
    embed: Callable | None = None
    attention: Callable | None = None
    mlp_gelu: Callable | None = None
    mlp_swiglu: Callable | None = None
    block: Callable | None = None
    forward: Callable | None = None
    train_step: Callable | None = None
    KVCache: type | None = None
    sample_next: Callable | None = None
    generate: Callable | None = None

    def need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise NameError(f"define {missing} first (the exercises above), then collect the parts again")


MODEL_PARTS = ("layer_norm", "rms_norm", "rope", "embed", "attention", "mlp_gelu", "mlp_swiglu", "block",
               "forward")


def collect_parts(namespace: dict) -> Parts:
    """The pieces defined so far, by name, from a notebook's `globals()` (or a module's `vars()`)."""
    return Parts(**{f.name: namespace.get(f.name) for f in fields(Parts)})


def _supported(cfg: ModelConfig) -> None:
    lab = {"sliding_window": None, "embed_rank": None, "qk_norm": False, "logit_softcap": None}
    odd = [k for k, v in lab.items() if getattr(cfg, k) != v] + (["mlp"] if cfg.mlp == "relu2" else [])
    if odd or not cfg.tie_embeddings:
        raise ValueError(f"the pieces of notebook 12 build GPT- and LLaMA-style models with tied embeddings; "
                         f"this config also sets {odd or ['tie_embeddings=False']}")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max())


def _params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: w.detach() for name, w in model.named_parameters()}  # tied lm_head: named once, as tok_emb


# --- 0. the tokenizer ---------------------------------------------------------------------------------------

def first_merge_difference(mine: list[tuple[int, int]], theirs: list[tuple[int, int]],
                           texts: list[str]) -> str | None:
    """None when the merge lists are equal; else where they part, and whether the two pairs had the same count
    there (a tie, broken another way than rustbpe's rule: the larger count, then the smaller pair)."""

    if mine == theirs:
        return None
    words = _words_of(texts)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            counts = pair_counts(words)
            tie = counts.get(a, 0) == counts.get(b, 0)
            return (f"merge {i} (id {256 + i}): yours {a} (count {counts.get(a, 0)}), tinylib's {b} (count "
                    f"{counts.get(b, 0)})" + ("; a tie: break it towards the smaller pair" if tie else ""))
        words = {merge_ids(ids, a, 256 + i): n for ids, n in words.items()}
    return f"you learned {len(mine)} merges, tinylib {len(theirs)}"


# --- 1. logits ----------------------------------------------------------------------------------------------

def _trace(model, idx: torch.Tensor) -> dict[str, tuple]:
    """What each of tinylib's modules received and returned on `idx` (forward hooks)."""
    seen: dict[str, tuple] = {}
    names = ["drop", "norm_f"] + [f"blocks.{i}{s}" for i in range(model.cfg.n_layer)
                                  for s in ("", ".attn_norm", ".attn", ".mlp_norm", ".mlp")]
    handles = []
    for name in names:
        def hook(module, args, out, name=name):
            seen[name] = (args, out[0] if isinstance(out, tuple) else out)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(idx)[0]
    finally:
        for h in handles:
            h.remove()
    seen["logits"] = ((idx,), logits)
    return seen


def module_diffs(parts: Parts, model, idx: torch.Tensor) -> list[tuple[str, float]]:
    """(module, max |learner - tinylib|) in the order the forward runs, each learner piece fed the input
    tinylib's module received: the first large one is where the learner's model goes wrong."""
    cfg = model.cfg
    _supported(cfg)
    parts.need(*MODEL_PARTS)
    params, seen = _params_of(model), _trace(model.eval(), idx)

    def norm(x, p):
        if cfg.norm == "layernorm":
            return parts.layer_norm(x, p["weight"], p.get("bias"), cfg.norm_eps)
        return parts.rms_norm(x, p["weight"], cfg.norm_eps)

    checks: list[tuple[str, Callable, torch.Tensor]] = []
    if cfg.pos == "rope":

        probe = torch.randn(1, 2, idx.shape[1], cfg.d_head, generator=torch.Generator().manual_seed(0))
        positions = torch.arange(idx.shape[1])
        want = apply_rope(probe, model.rope_cos[positions], model.rope_sin[positions])
        checks.append(("rope", lambda: parts.rope(probe, positions, cfg.rope_theta), want))
    checks.append(("embedding (tok_emb" + (" + pos_emb)" if cfg.pos == "learned" else ")"),
                   lambda: parts.embed(idx, params, cfg, 0), seen["drop"][1]))
    for i in range(cfg.n_layer):
        b = f"blocks.{i}"
        for name, fn in (
            (f"{b}.attn_norm ({cfg.norm})", lambda i=i, b=b: norm(seen[f"{b}.attn_norm"][0][0],
                                                                 sub(params, f"{b}.attn_norm."))),
            (f"{b}.attn", lambda b=b: parts.attention(seen[f"{b}.attn"][0][0], sub(params, f"{b}.attn."),
                                                      cfg)),
            (f"{b}.mlp_norm ({cfg.norm})", lambda b=b: norm(seen[f"{b}.mlp_norm"][0][0],
                                                            sub(params, f"{b}.mlp_norm."))),
            (f"{b}.mlp ({cfg.mlp})", lambda b=b: (
                parts.mlp_swiglu if cfg.mlp == "swiglu" else parts.mlp_gelu)(seen[f"{b}.mlp"][0][0],
                                                                             sub(params, f"{b}.mlp."))),
            (f"{b} (the block: residual adds around the pieces)",
             lambda b=b, i=i: parts.block(seen[b][0][0], sub(params, f"{b}."), cfg, 0, None, i)),
        ):
            checks.append((name, fn, seen[name.split(" ")[0]][1]))
    checks.append((f"norm_f ({cfg.norm})", lambda: norm(seen["norm_f"][0][0], sub(params, "norm_f.")),
                   seen["norm_f"][1]))
    checks.append(("forward (embedding, blocks, norm_f, tied unembedding)",
                   lambda: parts.forward(params, idx, cfg), seen["logits"][1]))
    out = []
    with torch.no_grad():
        for name, fn, want in checks:
            try:
                got = fn()
            except Exception as e:  # noqa: BLE001  (a crash is a difference too, and says where)
                raise AssemblyFailed(f"{name} raised {type(e).__name__}: {e}") from e
            out.append((name, _diff(got, want)))
    return out


def first_difference(diffs: list[tuple[str, float]], atol: float) -> tuple[str, float] | None:
    return next(((name, d) for name, d in diffs if not d <= atol), None)


def check_logits(parts: Parts, reference_model, tokens: torch.Tensor | None = None, *,
                 atol: float = LOGIT_ATOL) -> dict[str, float]:
    """The learner's forward with tinylib's weights gives tinylib's logits (fp32, max |diff| <= atol) on the
    reference model and on two random ones (GPT-style: LayerNorm, GELU, learned positions, biases; LLaMA-style
    with 2 KV heads for 4 query heads). Returns each model's max logit difference; raises naming the first
    module whose output differs."""
    gen = torch.Generator().manual_seed(0)
    if tokens is None:
        tokens = torch.randint(0, reference_model.cfg.vocab_size, (2, 64), generator=gen)
    models = {"the reference checkpoint": reference_model.float().eval()}
    for label, style in (("a GPT-style model (random weights)", "gpt"),
                         ("a grouped-query LLaMA-style model (random weights)", "llama")):
        cfg = small_config(style, vocab_size=256, d_model=64, n_layer=2, max_seq_len=64)
        with torch.random.fork_rng():
            torch.manual_seed(1)
            models[label] = tinylib_model(cfg, _perturbed(_params_of(type(reference_model)(cfg)), gen))
    result = {}
    for label, model in models.items():
        idx = (tokens if model is reference_model
               else torch.randint(0, model.cfg.vocab_size, (2, 48), generator=gen))
        try:
            diffs = module_diffs(parts, model, idx)
        except AssemblyFailed as e:
            raise AssemblyFailed(f"on {label}: {e}") from e
        bad = first_difference(diffs, atol)
        if bad is not None:
            raise AssemblyFailed(f"on {label}: {bad[0]} is the first module whose output differs from "
                                 f"tinylib's (max |diff| {bad[1]:.3g} > {atol:g}, its input being tinylib's "
                                 "own); the modules before it agree")
        result[label] = diffs[-1][1]
    return result


def _perturbed(params: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Norm weights off 1 and biases off 0, so a piece that ignores them is caught."""
    out = {}
    for name, w in params.items():
        if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            w = 1 + 0.2 * torch.randn(w.shape, generator=gen)
        elif name.endswith("bias"):
            w = 0.1 * torch.randn(w.shape, generator=gen)
        out[name] = w.clone()
    return out


# --- 2. five training steps ---------------------------------------------------------------------------------

def check_training(parts: Parts, cfg: ModelConfig | None = None, tokens: np.ndarray | None = None, *,
                   steps: int = 5, micro_batches: int = 2, batch_size: int = 4, seq_len: int = 32,
                   grad_clip: float = 1.0, seed: int = 0, atol: float = STEP_ATOL) -> dict[str, float]:
    """Five of the learner's training steps (2 micro-batches each, clipping, AdamW) give the weights tinylib's
    `train_step` gives from the same initial weights and batches. Returns the max weight and loss differences;
    raises naming the first step and parameter that differ."""

    cfg = cfg or small_config("llama", vocab_size=512, d_model=64, max_seq_len=64)
    _supported(cfg)
    parts.need("forward", "train_step")
    gen = torch.Generator().manual_seed(seed)
    if tokens is None:
        tokens = torch.randint(0, cfg.vocab_size, (20_000,), generator=gen).numpy()

    def batch():
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=gen).tolist()
        w = torch.stack([torch.from_numpy(tokens[s:s + seq_len + 1].astype(np.int64)) for s in starts])
        return w[:, :-1], w[:, 1:]

    plan = [[batch() for _ in range(micro_batches)] for _ in range(steps)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Transformer(cfg)
    params = {name: w.detach().clone().requires_grad_() for name, w in model.named_parameters()}
    theirs = torch.optim.AdamW(model.parameters(), **ADAMW)
    state = SimpleNamespace(model=model, module=model, optimizer=theirs, step=0, tokens_seen=0)
    mine = torch.optim.AdamW(list(params.values()), **ADAMW)

    def learner_model(idx):
        return parts.forward(params, idx, cfg)

    initial = {name: w.detach().clone() for name, w in model.named_parameters()}
    worst, worst_loss = 0.0, 0.0
    for step, batches in enumerate(plan, 1):
        want_loss = float(tinylib_train_step(state, batches, grad_clip=grad_clip)[0])
        got_loss = float(parts.train_step(learner_model, mine, batches, grad_clip))
        worst_loss = max(worst_loss, abs(got_loss - want_loss))
        for name, w in model.named_parameters():
            d = _diff(params[name], w)
            if not d <= atol:
                hint = (" The loss agreed, so the forward is right: look at the gradients (zero_grad after "
                        "the step, dividing by the number of micro-batches, clipping all of them together)."
                        if abs(got_loss - want_loss) <= 1e-4 else
                        " The loss differs too: run check_logits first.")
                raise AssemblyFailed(
                    f"after step {step} of {steps}, {name} (module {name.rsplit('.', 1)[0]}) is the first "
                    f"parameter that differs from tinylib's train_step: max |diff| {d:.3g} > {atol:g}; loss "
                    f"{got_loss:.6f} vs {want_loss:.6f}.{hint}")
            worst = max(worst, d)
    moved = max(_diff(w, initial[name]) for name, w in model.named_parameters())
    return {"max_weight_diff": worst, "max_loss_diff": worst_loss, "max_weight_change": moved, "steps": steps}


# --- 3. training the learner's model ------------------------------------------------------------------------

@dataclass
class TrainingRun:
    steps: int
    seconds: float
    train_losses: list[float]
    val_steps: list[int]
    val_losses: list[float]
    params: dict[str, torch.Tensor]
    cfg: ModelConfig


def estimate_loss(parts: Parts, params: dict, cfg: ModelConfig, tokens: np.ndarray, seq_len: int,
                  batches: int = 8, batch_size: int = 16) -> float:
    """Mean next-token loss of the learner's model on fixed windows of `tokens` (the same ones each call)."""
    gen = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=gen).tolist()
            w = torch.stack([torch.from_numpy(tokens[s:s + seq_len + 1].astype(np.int64)) for s in starts])
            logits = parts.forward(params, w[:, :-1], cfg)
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()))
    return total / batches


def train_learner_model(parts: Parts, cfg: ModelConfig, train_tokens: np.ndarray, val_tokens: np.ndarray, *,
                        max_steps: int, seconds: float | None = None, batch_size: int = 16,
                        seq_len: int = 128,
                        lr: float = 3e-3, warmup: int = 20, eval_every: int = 50, eval_batches: int = 8,
                        seed: int = 0, progress: bool = True) -> TrainingRun:
    """Train a fresh model built from the learner's pieces with the learner's `train_step` (AdamW, linear
    warmup then constant lr, clipping at 1) for `max_steps` (a step count, so the loss reached does not depend
    on how busy the machine is; `seconds` can cut it short); validation loss every `eval_every` steps and at
    the end, on the same `eval_batches` x `batch_size` windows of `val_tokens` each time."""


    _supported(cfg)
    parts.need("forward", "train_step")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        params = {n: w.detach().clone().requires_grad_() for n, w in Transformer(cfg).named_parameters()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)

    def model(idx):
        return parts.forward(params, idx, cfg)

    def val_loss() -> float:
        return estimate_loss(parts, params, cfg, val_tokens, seq_len, eval_batches, batch_size)

    run = TrainingRun(0, 0.0, [], [0], [val_loss()], params, cfg)
    t0 = time.perf_counter()
    bar = tqdm(total=max_steps, desc="training your model", unit="step", disable=not progress)
    while run.steps < max_steps and (seconds is None or time.perf_counter() - t0 < seconds):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (run.steps + 1) / warmup)
        starts = torch.randint(0, len(train_tokens) - seq_len - 1, (batch_size,), generator=gen).tolist()
        w = torch.stack([torch.from_numpy(train_tokens[s:s + seq_len + 1].astype(np.int64)) for s in starts])
        run.train_losses.append(float(parts.train_step(model, optimizer, [(w[:, :-1], w[:, 1:])], 1.0)))
        run.steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{run.train_losses[-1]:.3f}")
        if run.steps % eval_every == 0:
            run.val_steps.append(run.steps)
            run.val_losses.append(val_loss())
    bar.close()
    run.seconds = time.perf_counter() - t0
    if run.val_steps[-1] != run.steps:
        run.val_steps.append(run.steps)
        run.val_losses.append(val_loss())
    return run


# --- 4. the sampler -----------------------------------------------------------------------------------------

def _learner_model(parts: Parts, params: dict, cfg: ModelConfig):
    def model(idx, cache):
        return parts.forward(params, idx, cfg, cache)
    return model


def _cache_diagnosis(parts: Parts, params: dict, cfg: ModelConfig, ids: list[int], n_prompt: int,
                     atol: float) -> str:
    """Which layer's attention first reads the learner's cache wrongly: each block run position by position
    with the cache, against the same blocks on the whole sequence without one."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        full, x = [], parts.embed(idx, params, cfg, 0)
        for layer in range(cfg.n_layer):
            x = parts.block(x, sub(params, f"blocks.{layer}."), cfg, 0, None, layer)
            full.append(x)
        cache = parts.KVCache(cfg.n_layer)
        chunks = [(0, n_prompt)] + [(p, 1) for p in range(n_prompt, len(ids))]
        for start, T in chunks:
            x = parts.embed(idx[:, start:start + T], params, cfg, start)
            for layer in range(cfg.n_layer):
                x = parts.block(x, sub(params, f"blocks.{layer}."), cfg, start, cache, layer)
                d = _diff(x, full[layer][:, start:start + T])
                if not d <= atol:
                    return (f"blocks.{layer}.attn reading your KVCache: at position {start + T - 1} "
                            f"(generated token {start + T - n_prompt}) the block's output differs from "
                            f"the uncached run's by {d:.3g}")
            cache.pos += T
    return ("forward's use of the cache (each block agrees when the cache is driven by hand, so look at "
            "start = cache.pos and advancing cache.pos once per forward)")


def check_sampler(parts: Parts, model, tokenizer, prompt: str, *, n_new: int = 60, seed: int = 0,
                  temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.95,
                  atol: float = LOGIT_ATOL) -> dict:
    """The learner's `generate` with their KV cache == without it == tinylib's `generate`, id for id, for a
    fixed seed. Returns the ids and text; raises naming what differs first (the cache's layer, the forward,
    or the sampler at a step)."""

    cfg = model.cfg
    parts.need(*MODEL_PARTS, "KVCache", "sample_next", "generate")
    params = _params_of(model.float().eval())
    want = tinylib_generate(model, tokenizer, prompt, seed=seed, max_new_tokens=n_new,
                            temperature=temperature, top_k=top_k, top_p=top_p)
    prompt_ids = want.prompt_tokens
    learner = _learner_model(parts, params, cfg)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=tokenizer.eos_id)
    uncached = [int(i) for i in parts.generate(learner, prompt_ids, n_new, cache=None, **sampling)]
    cached = [int(i) for i in parts.generate(learner, prompt_ids, n_new, cache=parts.KVCache(cfg.n_layer),
                                             **sampling)]
    if cached != uncached:
        s = next((i for i, (a, b) in enumerate(zip(cached, uncached)) if a != b),
                 min(len(cached), len(uncached)))
        why = _cache_diagnosis(parts, params, cfg, prompt_ids + uncached[:s + 1], len(prompt_ids), atol)
        raise AssemblyFailed(f"with your cache the ids differ from without it at generated token {s} "
                             f"({cached[s:s + 1]} vs {uncached[s:s + 1]}): {why}")
    if uncached != want.tokens:
        s = next((i for i, (a, b) in enumerate(zip(uncached, want.tokens)) if a != b),
                 min(len(uncached), len(want.tokens)))
        ids = torch.tensor([prompt_ids + want.tokens[:s]])
        with torch.no_grad():
            theirs = model(ids)[0][0, -1]
            mine = parts.forward(params, ids, cfg)[0, -1]
        if not _diff(mine, theirs) <= atol:
            why = (f"forward: the logits before that token differ by {_diff(mine, theirs):.3g} "
                   "(run check_logits)")
        else:
            gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            rule = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
            picks_a = [int(choose_next(theirs[None], rule, None, [gen_a])) for _ in range(s + 1)]
            picks_b = [int(parts.sample_next(theirs, temperature, top_k, top_p, gen_b)) for _ in range(s + 1)]
            why = ("sample_next: on the same logits and generator state it picks "
                   f"{picks_b[-1]} where tinylib picks {picks_a[-1]}" if picks_a != picks_b else
                   "the generate loop (the logits and sample_next agree: look at how the generator is seeded "
                   "once, which position's logits are read, and where it stops)")
        raise AssemblyFailed(f"your ids differ from tinylib's generate at generated token {s} "
                             f"({uncached[s:s + 1]} vs {want.tokens[s:s + 1]}): {why}")
    return {"ids": cached, "text": tokenizer.decode(cached), "n": len(cached),
            "stop_reason": want.stop_reason}
