"""Generation as text: encode a prompt, run the engine, decode its ids as they come, and say why it stopped.

`generate` and `stream` are what notebooks, training and the demo call. They take the sampling settings either
as one `SamplingConfig` or as keywords (`generate(model, tok, "Once", max_new_tokens=40, temperature=0.8)`),
and pass exactly one frozen `SamplingConfig` down to the engine. On top of the engine's ids they add:
- the prompt: encoded with a BOS id first (`bos=True`), as every training story starts;
- incremental decoding (`TextDecoder`) that never emits half a UTF-8 character, and stop strings;
- stop ids from the tokenizer (`stop_ids_of`), timing, and the stop reason, in a `GenerationResult`;
- batching: prompts of a list that encode to the same length run as one batch (see `tinylib.engine`).
`distinct_n` and `continuation_logprob` measure what was generated, to compare sampling settings.

What it leaves to others: picking ids and the decode loop (`tinylib.engine`), tokenizers
(`tinylib.tokenizer`), loading checkpoints (`tinylib.checkpoint`) and the UI (`tinylib.widgets.story`).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch

from tinylib.engine import SamplingConfig, row_seeds, sample_tokens

StopReason = Literal["eos", "max_tokens", "stop_string", "context", "interrupted"]
_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingConfig))


@dataclass
class GenerationResult:
    """One prompt's continuation.

    `tokens` are the new ids without the final stop id; `text` is their decoded text, cut before a stop
    string. `tokens_per_s` counts every sampled token (a stop id included) over the whole call, prefill
    included.
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


def _resolve_sampling(sampling: SamplingConfig | None, overrides: dict[str, Any],
                      caller: str) -> SamplingConfig:
    """The one SamplingConfig a call runs with: `sampling` (default `SamplingConfig()`) with the keyword
    overrides replaced in. An unknown keyword is refused here, so a typo never silently does nothing."""
    unknown = sorted(set(overrides) - set(_SAMPLING_FIELDS))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {names}; the sampling settings are "
                        f"{', '.join(_SAMPLING_FIELDS)} (and the call also takes seed, stop, bos, device)")
    if sampling is None:
        sampling = SamplingConfig()
    elif not isinstance(sampling, SamplingConfig):
        raise TypeError(f"{caller}(): sampling must be a SamplingConfig or None, got "
                        f"{type(sampling).__name__}; pass settings by name, e.g. max_new_tokens=50")
    return replace(sampling, **overrides) if overrides else sampling


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
    byte-level BPE and also right for SentencePiece (whose decode drops the leading space of a sequence's
    first piece). Bytes go through an incremental UTF-8 decoder, so a character split across tokens is
    emitted whole. Text that might be the start of a stop string is held back until it is known not to be one.
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
            raise ValueError(f"the model is on {here} but device={device!r}; "
                             f"move it first: model.to({device!r})")


def _stop_strings(stop: str | Sequence[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]


def _result_of(prompt: str, prompt_ids: list[int], seed: int, row: TextDecoder, t0: float,
               ttft: float | None, n_sampled: int) -> GenerationResult:
    """A row's GenerationResult as of now (stop reason "interrupted" while it is still running)."""
    elapsed = time.perf_counter() - t0
    return GenerationResult(
        prompt=prompt, prompt_tokens=prompt_ids, tokens=list(row.tokens), text=row.text,
        n_new=len(row.tokens), time_to_first_token_s=float("nan") if ttft is None else ttft,
        tokens_per_s=n_sampled / elapsed if elapsed > 0 else 0.0, elapsed_s=elapsed,
        stop_reason=row.finished or "interrupted", seed=seed)


class TextStream:
    """Iterator of text pieces from one prompt; `.result` is the GenerationResult (complete once the
    iteration ends; after an early `close()` its stop_reason is "interrupted").
    `.n_new` counts sampled ids."""

    def __init__(self, model, tokenizer, prompt: str, sampling: SamplingConfig, *, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, bos: bool = True, device=None):
        _check_model(model, device)
        self._t0 = time.perf_counter()
        self._prompt, self._ids = prompt, _encode_prompt(tokenizer, prompt, bos)
        self._seed = row_seeds(seed, 1)[0]  # drawn now when None, so the result can say which seed it used
        stop_ids = stop_ids_of(tokenizer)
        self.sampling = sampling
        self.n_new = 0
        self._ttft: float | None = None
        self._row = TextDecoder(tokenizer, self._ids, _stop_strings(stop), set(stop_ids))
        self._final: GenerationResult | None = None
        self._engine = sample_tokens(model, self._ids, sampling, seed=self._seed, stop_ids=stop_ids,
                                     vocab_limit=getattr(tokenizer, "vocab_size", None))

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        row = self._row
        while row.finished is None:
            try:
                tok = next(self._engine)
            except StopIteration:
                full = self.n_new >= self.sampling.max_new_tokens
                piece = row.finish("max_tokens" if full else "context")
                self._final = self._snapshot()
                if piece:
                    return piece
                break
            if self._ttft is None:
                self._ttft = time.perf_counter() - self._t0
            self.n_new += 1
            piece = row.feed(tok)
            if row.finished is not None:
                self._engine.close()
                self._final = self._snapshot()
            if piece:
                return piece
        raise StopIteration

    def close(self) -> None:
        """Stop generating (e.g. a Stop button); the result keeps what was produced so far."""
        if self._row.finished is None:
            self._engine.close()
            self._row.finish("interrupted")
            self._final = self._snapshot()

    def _snapshot(self) -> GenerationResult:
        return _result_of(self._prompt, self._ids, self._seed, self._row, self._t0, self._ttft, self.n_new)

    @property
    def result(self) -> GenerationResult:
        """The final result once the stream has ended; while it runs, a snapshot of the text so far."""
        return self._final if self._final is not None else self._snapshot()


def stream(model, tokenizer, prompt: str, sampling: SamplingConfig | None = None, *, seed: int | None = None,
           stop: str | Sequence[str] | None = None, bos: bool = True, device=None,
           **overrides: Any) -> TextStream:
    """Yield the continuation of `prompt` as text pieces while it is generated.

    Pieces never split a UTF-8 character, and text that could begin a stop string is held back until it is
    known not to be one. The returned `TextStream` also carries `.result` (tokens, text, timing, stop reason).
    Same settings as `generate`; the seed (drawn at random when None) is recorded in the result.
    """
    return TextStream(model, tokenizer, prompt, _resolve_sampling(sampling, overrides, "stream"), seed=seed,
                      stop=stop, bos=bos, device=device)


def generate(model, tokenizer, prompt: str | list[str], sampling: SamplingConfig | None = None, *,
             seed: int | None = None, stop: str | Sequence[str] | None = None, bos: bool = True, device=None,
             **overrides: Any) -> GenerationResult | list[GenerationResult]:
    """Continue `prompt` (a str -> one GenerationResult; a list of str -> a list, in the same order).

    Settings: a `SamplingConfig`, and/or its fields as keywords (max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, on_context_full, use_cache), which override it. temperature 0 is greedy; top_k /
    top_p of None (or 0 / 1.0) are off; repetition_penalty 1.0 is off. A seed makes the call reproducible
    (prompt i of a list uses seed + i). Stops at the tokenizer's stop ids (EOS, and BOS), after
    max_new_tokens, or at a stop string (the text is cut before it). `bos=True` starts the prompt with the BOS
    id, as every training story starts.
    """
    sampling = _resolve_sampling(sampling, overrides, "generate")
    if isinstance(prompt, str):
        s = TextStream(model, tokenizer, prompt, sampling, seed=seed, stop=stop, bos=bos, device=device)
        for _ in s:
            pass
        return s.result
    prompts = list(prompt)
    if not prompts:
        return []
    _check_model(model, device)
    t0 = time.perf_counter()
    stops = _stop_strings(stop)
    encoded = [_encode_prompt(tokenizer, p, bos) for p in prompts]
    seeds = row_seeds(seed, len(prompts))
    stop_ids = stop_ids_of(tokenizer)
    results: dict[int, GenerationResult] = {}
    groups: dict[int, list[int]] = {}  # prompt length -> indices: each group is one batch
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    for rows in groups.values():
        texts = [TextDecoder(tokenizer, encoded[i], stops, set(stop_ids)) for i in rows]
        engine = sample_tokens(model, [encoded[i] for i in rows], sampling, seed=[seeds[i] for i in rows],
                               stop_ids=stop_ids, vocab_limit=getattr(tokenizer, "vocab_size", None))
        steps, ttft, counts = 0, None, [0] * len(rows)
        for out in engine:
            ttft = time.perf_counter() - t0 if ttft is None else ttft
            steps += 1
            for j, tok in enumerate(out):
                if texts[j].finished is None:
                    counts[j] += 1
                    texts[j].feed(tok)
            if all(t.finished is not None for t in texts):
                engine.close()
                break
        for j, i in enumerate(rows):
            if texts[j].finished is None:
                texts[j].finish("max_tokens" if steps >= sampling.max_new_tokens else "context")
            results[i] = _result_of(prompts[i], encoded[i], seeds[i], texts[j], t0, ttft, counts[j])
    return [results[i] for i in range(len(prompts))]


# ------------------------------------------------------------------------------------------------------------
# Measuring what was generated (for comparing sampling settings)


def distinct_n(tokens: Sequence[int], n: int = 3) -> float:
    """Share of the n-grams of `tokens` that are distinct (Li et al. 2016): 1.0 never repeats, near 0
    loops."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@torch.inference_mode()
def continuation_logprob(model: torch.nn.Module, prompt_tokens: Sequence[int],
                         tokens: Sequence[int]) -> float:
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
