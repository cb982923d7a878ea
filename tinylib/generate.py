"""Generation: sample token ids from a model, and turn them into text as they come.

Two layers, as in nanochat's engine:
- `sample_tokens` knows token ids only. It runs the prefill and the KV-cached decode loop, applies the sampling
  rules (greedy, temperature, top-k, top-p, CTRL repetition penalty, seeded per-row generators), stops on stop ids,
  and handles the context limit. It yields one id per row per step.
- `generate` and `stream` add text: they encode the prompt, decode incrementally (never emitting half a UTF-8
  character), stop on stop strings, time the run and return a `GenerationResult`.

Design choices, each documented where it lives:
- Batched prompts: prompts of equal token length run together as one batch; prompts of different lengths run as
  separate batches (one per length). The model has no attention mask or position ids for padding, and left-padding
  would shift learned position embeddings, so grouping is the simplest design that is exactly correct.
- Row i of a seeded call samples from its own `torch.Generator` seeded with `seed + i`, so a row's story does not
  depend on how many other prompts are in the batch.
- Context limit: a prompt longer than `model.cfg.max_seq_len` raises ValueError. When generation fills the
  context, `on_context_full="slide"` (default) keeps the last `max_seq_len // 2` tokens as the new window (a fresh
  cache is prefilled with them) and goes on; `"stop"` ends with stop_reason "context". With and without the
  cache, the model sees exactly the same window at every step, so both paths give the same tokens.

What it leaves to others: the cache itself (`tinylib.model.KVCache`), tokenizers (`tinylib.tokenizer`), loading
checkpoints (`tinylib.checkpoint`) and the UI (`tinylib.notebook.widgets`).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

StopReason = Literal["eos", "max_tokens", "stop_string", "context", "interrupted"]
ContextPolicy = Literal["slide", "stop"]


@dataclass
class GenerationResult:
    """One prompt's continuation.

    `tokens` are the new ids without the final stop id; `text` is their decoded text, cut before a stop string.
    `tokens_per_s` counts every sampled token (a stop id included) over the whole call, prefill included.
    """

    prompt: str
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    n_new: int = 0
    time_to_first_token_s: float = float("nan")
    tokens_per_s: float = 0.0
    elapsed_s: float = 0.0
    stop_reason: StopReason = "max_tokens"
    seed: int | None = None


# --------------------------------------------------------------------------------------------------------------
# The token-level engine


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float,
                    max_new_tokens: int, on_context_full: str) -> None:
    problems = []
    if not temperature >= 0:
        problems.append(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 0:
        problems.append(f"top_k={top_k} must be a positive integer (None or 0 turns it off)")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p={top_p} must be in (0, 1] (None or 1.0 turns it off)")
    if not repetition_penalty > 0:
        problems.append(f"repetition_penalty={repetition_penalty} must be > 0 (1.0 turns it off)")
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens={max_new_tokens} must be >= 0")
    if on_context_full not in ("slide", "stop"):
        problems.append(f"on_context_full={on_context_full!r}, expected 'slide' or 'stop'")
    if problems:
        raise ValueError("invalid sampling settings: " + "; ".join(problems))


def apply_sampling_rules(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, repetition_penalty: float = 1.0,
                         seen: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, V] after the repetition penalty, temperature, top-k and top-p (excluded ids become -inf).

    The penalty is CTRL's (Keskar et al. 2019, as in transformers): a seen token's logit is divided by the
    penalty when positive and multiplied by it when negative. `seen` is a bool mask [B, V] of ids in the
    sequence so far. Temperature 0 is greedy and is handled by the caller (here it leaves logits unscaled).
    """
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _choose(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
            repetition_penalty: float, seen: torch.Tensor | None,
            generators: list[torch.Generator]) -> torch.Tensor:
    """The next id of every row [B] from last-position logits [B, V]."""
    if temperature == 0:
        if repetition_penalty != 1.0:
            logits = apply_sampling_rules(logits, repetition_penalty=repetition_penalty, seen=seen)
        return logits.argmax(dim=-1)
    logits = apply_sampling_rules(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty, seen=seen)
    # Inverse-CDF sampling: one uniform number per row from that row's generator. Same distribution as
    # torch.multinomial, ~15x faster on CPU for a 50k vocabulary. side="right" never picks a zero-probability id.
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
    return torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]), right=True).view(-1).clamp_(max=cdf.size(-1) - 1)


def _as_batch(ids, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Prompt ids as a LongTensor [B, T] on device, and whether the input was a single row."""
    if isinstance(ids, torch.Tensor):
        t = ids.to(device=device, dtype=torch.long)
    else:
        rows = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays too
        rows = [r.tolist() if isinstance(r, torch.Tensor) else r for r in rows]
        if rows and isinstance(rows[0], (list, tuple)):
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise ValueError(f"prompt rows have different lengths {sorted(lengths)}: sample_tokens needs "
                                 "equal-length rows (generate() groups prompts by length for you)")
            t = torch.tensor([[int(i) for i in r] for r in rows], dtype=torch.long, device=device)
        else:
            t = torch.tensor([int(i) for i in rows], dtype=torch.long, device=device)
    single = t.dim() == 1
    if single:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"prompt ids must be [T] or [B, T], got shape {tuple(t.shape)}")
    if t.size(1) == 0:
        raise ValueError("empty prompt: give at least one token id (e.g. the tokenizer's bos_id)")
    return t, single


def _row_seeds(seed: int | Sequence[int] | None, batch: int) -> list[int]:
    if seed is None:  # drawn from torch's global RNG, so torch.manual_seed also makes a run reproducible
        return [int(s) for s in torch.randint(0, 2**31, (batch,))]
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompt rows; give one seed per row or a single int")
    return seeds


@torch.inference_mode()
def sample_tokens(model: torch.nn.Module, ids, *, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                  seed: int | Sequence[int] | None = None, stop_ids: Sequence[int] = (),
                  vocab_limit: int | None = None, use_cache: bool = True,
                  on_context_full: ContextPolicy = "slide") -> Iterator:
    """Yield the next token id(s), one step at a time; knows nothing about text.

    ids: a prompt [T] (yields ints) or equal-length prompts [B, T] (yields a list of B ints per step), as lists
    or a tensor. Stops after `max_new_tokens` steps, or once every row has produced one of `stop_ids` (rows that
    finished earlier keep producing ids, which the caller ignores), or, with `on_context_full="stop"`, when the
    context is full. `vocab_limit` masks ids >= it (the model's vocabulary may be padded past the
    tokenizer's). Temperature 0 is greedy. See the module docstring for the context-limit policy.
    The caller may stop early at any time by leaving the loop (or calling `.close()`).
    """
    _check_sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, on_context_full)
    cfg = model.cfg
    device = next(model.parameters()).device
    prompt, single = _as_batch(ids, device)
    B, T = prompt.shape
    max_len = cfg.max_seq_len
    if T > max_len:
        raise ValueError(f"prompt is {T} tokens but the model's context is {max_len} tokens: shorten the prompt "
                         f"(e.g. keep its last {max_len} tokens)")
    if max_new_tokens == 0:
        return
    V = min(vocab_limit or cfg.vocab_size, cfg.vocab_size)
    stop = {int(s) for s in stop_ids if s is not None}
    generators = []
    for s in _row_seeds(seed, B):
        generators.append(torch.Generator(device=device).manual_seed(s))
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen.scatter_(1, prompt.clamp(max=V - 1), True)
    tokens = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :T] = prompt
    n = T  # tokens filled so far
    start = 0  # first token of the window the model currently sees
    cache = model.make_cache(B, min(max_len, T + max_new_tokens)) if use_cache else None
    done = [False] * B
    was_training = model.training
    model.eval()
    try:
        logits = model(prompt, cache=cache)[0][:, -1, :V]
        for step in range(max_new_tokens):
            nxt = _choose(logits, temperature, top_k, top_p, repetition_penalty, seen, generators)
            tokens[:, n] = nxt
            n += 1
            out = nxt.tolist()
            yield out[0] if single else out
            if stop:
                done = [d or t in stop for d, t in zip(done, out)]
                if all(done):
                    return
            if step == max_new_tokens - 1:
                return
            if seen is not None:
                seen[torch.arange(B, device=device), nxt] = True
            if n - start > max_len:  # the next forward would not fit: slide or stop
                if on_context_full == "stop":
                    return
                start = n - max(1, max_len // 2)
                if cache is not None:
                    cache.reset()
                    logits = model(tokens[:, start:n], cache=cache)[0][:, -1, :V]
                    continue
            if cache is not None:
                logits = model(tokens[:, n - 1:n], cache=cache)[0][:, -1, :V]
            else:
                logits = model(tokens[:, start:n])[0][:, -1, :V]
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------------------
# Text on top of the engine


def stop_ids_of(tokenizer) -> list[int]:
    """Ids that end a story: EOS, and BOS too (llama2.c's models emit BOS=1 where a story ends; for tiktoken
    tokenizers BOS == EOS == <|endoftext|>). A tokenizer may name more in a `stop_ids` attribute."""
    ids = [getattr(tokenizer, "eos_id", None), getattr(tokenizer, "bos_id", None)]
    ids += list(getattr(tokenizer, "stop_ids", ()) or ())
    return sorted({int(i) for i in ids if i is not None and int(i) >= 0})


class TextDecoder:
    """Ids in, printable text out, for one row: an incremental detokenizer that also watches for stop strings.

    `feed(id)` returns the text that is now safe to show ("" while a character is incomplete or a stop string
    may be starting); `finish(reason)` flushes the rest. `text`, `tokens` and `finished` hold the state.

    Each token's bytes are taken as decode_bytes([prev, tok]) minus decode_bytes([prev]), which is exact for
    byte-level BPE and also right for SentencePiece (whose decode drops the leading space of a sequence's first
    piece). Bytes go through an incremental UTF-8 decoder, so a character split across tokens is emitted whole.
    Text that might be the start of a stop string is held back until it is known not to be one.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), stops: Sequence[str] = (),
                 stop_ids: set[int] | frozenset[int] = frozenset()):
        self.tok = tokenizer
        self.prev = int(prompt_ids[-1]) if len(prompt_ids) else None
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [s for s in stops if s]
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.stop_ids = stop_ids
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finished: StopReason | None = None

    def _bytes(self, tok: int) -> bytes:
        if self.prev is None:
            return self.tok.decode_bytes([tok])
        before = self.tok.decode_bytes([self.prev])
        both = self.tok.decode_bytes([self.prev, tok])
        return both[len(before):] if both.startswith(before) else self.tok.decode_bytes([tok])

    def feed(self, tok: int) -> str:
        """Take one new id; return the text that is now safe to show."""
        if tok in self.stop_ids:
            return self.finish("eos")
        self.tokens.append(tok)
        piece = self.utf8.decode(self._bytes(tok))
        self.prev = tok
        if not piece:
            return ""
        old_len = len(self.text)
        self.text += piece
        if self.stops:
            from_ = max(0, old_len - self.longest_stop + 1)
            hits = [i for i in (self.text.find(s, from_) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                return self.finish("stop_string")
        return self._emit(hold=self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for k in range(min(self.longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _emit(self, hold: int = 0) -> str:
        end = len(self.text) - hold
        out = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return out

    def finish(self, reason: StopReason) -> str:
        """End the row; flush what was held back (an unfinished UTF-8 sequence becomes U+FFFD)."""
        if self.finished is None:
            self.finished = reason
            if reason != "stop_string":
                self.text += self.utf8.decode(b"", final=True)
        return self._emit()


def _encode_prompt(tokenizer, prompt: str, bos: bool) -> list[int]:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str (or a list of str for a batch), got {type(prompt).__name__}")
    ids = list(tokenizer.encode(prompt, bos=bos))
    if not ids:
        raise ValueError("empty prompt with bos=False: there is nothing to condition on; write a prompt or "
                         "pass bos=True to start from the beginning-of-story token")
    return ids


def _check_model(model, device) -> None:
    if not hasattr(model, "cfg") or not hasattr(model, "make_cache"):
        raise TypeError(f"model must be a tinylib Transformer, got {type(model).__name__}")
    if device is not None:
        here = next(model.parameters()).device
        if torch.device(device).type != here.type:
            raise ValueError(f"the model is on {here} but device={device!r}; move it first: model.to({device!r})")


class TextStream:
    """Iterator of text pieces from one prompt; `.result` is the GenerationResult (complete once the
    iteration ends; after an early `close()` its stop_reason is "interrupted"). `.n_new` counts sampled ids."""

    def __init__(self, model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, repetition_penalty: float, seed: int | None,
                 stop: str | list[str] | None, use_cache: bool, bos: bool, device, on_context_full: ContextPolicy):
        _check_model(model, device)
        self._t0 = time.perf_counter()
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        ids = _encode_prompt(tokenizer, prompt, bos)
        if seed is None:
            seed = int(torch.randint(0, 2**31, ()))
        stop_ids = stop_ids_of(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.n_new = 0
        self._row = TextDecoder(tokenizer, ids, stops, set(stop_ids))
        self._result = GenerationResult(prompt=prompt, prompt_tokens=ids, seed=seed)
        self._ttft: float | None = None
        self._engine = sample_tokens(
            model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, seed=seed, stop_ids=stop_ids,
            vocab_limit=getattr(tokenizer, "vocab_size", None), use_cache=use_cache,
            on_context_full=on_context_full)
        # Run the engine's argument checks now (a generator body only starts on the first next()).
        self._pending: list[int] = []
        try:
            self._pending.append(next(self._engine))
        except StopIteration:
            pass
        self._mark()

    def _mark(self) -> None:
        if self._pending and self._ttft is None:
            self._ttft = time.perf_counter() - self._t0

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        row = self._row
        while row.finished is None:
            if self._pending:
                tok = self._pending.pop()
            else:
                try:
                    tok = next(self._engine)
                except StopIteration:
                    reason: StopReason = "max_tokens" if self.n_new >= self.max_new_tokens else "context"
                    piece = row.finish(reason)
                    self._finalise()
                    if piece:
                        return piece
                    break
            self.n_new += 1
            piece = row.feed(tok)
            if row.finished is not None:
                self._engine.close()
                self._finalise()
            if piece:
                return piece
        raise StopIteration

    def close(self) -> None:
        """Stop generating (e.g. a Stop button); the result keeps what was produced so far."""
        if self._row.finished is None:
            self._engine.close()
            self._row.finish("interrupted")
            self._finalise()

    def _finalise(self) -> None:
        r, row = self._result, self._row
        elapsed = time.perf_counter() - self._t0
        r.tokens, r.text, r.n_new = list(row.tokens), row.text, len(row.tokens)
        r.stop_reason = row.finished or "interrupted"
        r.elapsed_s = elapsed
        r.time_to_first_token_s = self._ttft if self._ttft is not None else float("nan")
        r.tokens_per_s = self.n_new / elapsed if elapsed > 0 else 0.0

    @property
    def result(self) -> GenerationResult:
        if self._row.finished is None:  # still running: a snapshot
            snap = GenerationResult(prompt=self._result.prompt, prompt_tokens=self._result.prompt_tokens,
                                    seed=self._result.seed)
            elapsed = time.perf_counter() - self._t0
            snap.tokens, snap.text, snap.n_new = list(self._row.tokens), self._row.text, len(self._row.tokens)
            snap.elapsed_s, snap.stop_reason = elapsed, "interrupted"
            snap.tokens_per_s = self.n_new / elapsed if elapsed > 0 else 0.0
            snap.time_to_first_token_s = self._ttft if self._ttft is not None else float("nan")
            return snap
        return self._result


def stream(model, tokenizer, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           seed: int | None = None, stop: str | list[str] | None = None, use_cache: bool = True,
           bos: bool = True, device=None, on_context_full: ContextPolicy = "slide") -> TextStream:
    """Yield the continuation of `prompt` as text pieces while it is generated.

    Pieces never split a UTF-8 character, and text that could begin a stop string is held back until it is
    known not to be one. The returned `TextStream` also carries `.result` (tokens, text, timing, stop reason).
    Same settings as `generate`; the seed (drawn at random when None) is recorded in the result.
    """
    return TextStream(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop,
                      use_cache=use_cache, bos=bos, device=device, on_context_full=on_context_full)


def generate(model, tokenizer, prompt: str | list[str], *, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             seed: int | None = None, stop: str | list[str] | None = None, use_cache: bool = True,
             bos: bool = True, device=None,
             on_context_full: ContextPolicy = "slide") -> GenerationResult | list[GenerationResult]:
    """Continue `prompt` (a str -> one GenerationResult; a list of str -> a list, in the same order).

    temperature 0 is greedy; top_k / top_p of None (or 0 / 1.0) are off; repetition_penalty 1.0 is off.
    A seed makes the call reproducible (prompt i of a list uses seed + i). Stops at the tokenizer's stop ids
    (EOS, and BOS), after max_new_tokens, or at a stop string (the text is cut before it). Prompts of a list are
    batched by token length (see the module docstring). `bos=True` starts the prompt with the BOS id, as every
    training story starts.
    """
    if isinstance(prompt, str):
        s = stream(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop,
                   use_cache=use_cache, bos=bos, device=device, on_context_full=on_context_full)
        for _ in s:
            pass
        return s.result
    prompts = list(prompt)
    if not prompts:
        return []
    _check_model(model, device)
    t0 = time.perf_counter()
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    encoded = [_encode_prompt(tokenizer, p, bos) for p in prompts]
    seeds = _row_seeds(seed, len(prompts))
    stop_ids = stop_ids_of(tokenizer)
    results: list[GenerationResult | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    for rows in groups.values():
        texts = [TextDecoder(tokenizer, encoded[i], stops, set(stop_ids)) for i in rows]
        steps, ttft = 0, float("nan")
        engine = sample_tokens(
            model, [encoded[i] for i in rows], max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=[seeds[i] for i in rows],
            stop_ids=stop_ids, vocab_limit=getattr(tokenizer, "vocab_size", None), use_cache=use_cache,
            on_context_full=on_context_full)
        counts = [0] * len(rows)
        for out in engine:
            if steps == 0:
                ttft = time.perf_counter() - t0
            steps += 1
            for j, tok in enumerate(out):
                if texts[j].finished is None:
                    counts[j] += 1
                    texts[j].feed(tok)
            if all(t.finished is not None for t in texts):
                engine.close()
                break
        elapsed = time.perf_counter() - t0
        for j, i in enumerate(rows):
            row = texts[j]
            if row.finished is None:
                row.finish("max_tokens" if steps >= max_new_tokens else "context")
            results[i] = GenerationResult(
                prompt=prompts[i], prompt_tokens=encoded[i], tokens=row.tokens, text=row.text,
                n_new=len(row.tokens), time_to_first_token_s=ttft,
                tokens_per_s=counts[j] / elapsed if elapsed > 0 else 0.0, elapsed_s=elapsed,
                stop_reason=row.finished, seed=seeds[i])
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Measuring what was generated (for comparing sampling settings)


def distinct_n(tokens: Sequence[int], n: int = 3) -> float:
    """Share of the n-grams of `tokens` that are distinct (Li et al. 2016): 1.0 never repeats, near 0 loops."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@torch.inference_mode()
def continuation_logprob(model: torch.nn.Module, prompt_tokens: Sequence[int], tokens: Sequence[int]) -> float:
    """Mean log-probability (nats per token) the model gives its own continuation: near 0 = predictable text,
    very negative = surprising text. Uses the last max_seq_len tokens when the whole is longer."""
    if not tokens:
        return float("nan")
    seq = list(prompt_tokens) + list(tokens)
    seq = seq[-(model.cfg.max_seq_len + 1):]
    n = min(len(tokens), len(seq) - 1)
    device = next(model.parameters()).device
    x = torch.tensor([seq[:-1]], device=device)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)[0][0, -n:].float()
    finally:
        model.train(was_training)
    target = torch.tensor(seq[-n:], device=device)
    return float(logits.log_softmax(-1).gather(1, target[:, None]).mean())
