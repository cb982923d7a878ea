"""The instruction family: does an instruction-tuned model write the story it is asked for?

A request (`tinylib.finetune.instruct`: required words, and features such as Dialogue or BadEnding) is
judged on the story the model writes for it (`judge`):
- words: each required word is used, whole and in any case, or as a regular inflected form ("smiled",
  "boxes", "jumping": `instruct.included_words`);
- dialogue, when the request asks for it: the story has a quotation mark;
- a sad ending, when asked (BadEnding, a feature of the official TinyStories-Instruct; the derived offline
  set never asks for it): a sad word in the last two sentences, a heuristic.
A request is satisfied when all of its parts are. Chance is the same judge on requests swapped across
stories (`swapped`: each story against the next request), so it counts what a story meets without being
asked: common words, the dialogue most stories have anyway. Each task is summarised as the other families
are (`scoring`): accuracy, chance, the centred score (acc - chance) / (1 - chance) and a bootstrap interval
over requests, plus Wilson intervals of the raw rates. `instruction_family` generates and judges the stories
for the held-out requests; `tinylib.evals.report.evaluate` adds the family to the report of an
instruction-tuned checkpoint (its config.json says `"stage": "instruct"`), and only to those.

What it leaves to others: the request format and word forms (`tinylib.finetune.instruct`), generating the
stories (`tinylib.finetune.stage.request_samples`), intervals (`scoring`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinylib import checkpoint
from tinylib.evals.scoring import bootstrap_centred, centred, wilson
from tinylib.finetune.instruct import Example, included_words, is_instruct_checkpoint
from tinylib.finetune.stage import load_examples, request_samples
from tinylib.paths import ROOT, write_atomic

TASKS = ("requests", "words", "dialogue", "sad_ending")
N_REQUESTS = 200  # held-out requests per model: a rate near 20% to about +-3 points over 600 words
_SAD = re.compile(r"\b(sad|sadly|cried|cry|crying|tears|hurt|lost|broke|broken|died|dead|alone|lonely|upset|"
                  r"missed|gone forever)\b", re.I)


def has_dialogue(story: str) -> bool:
    """Dialogue as the derived set detects it (`instruct.detect_features`): a quotation mark."""
    return bool(re.search(r"[\"“”]", story))


def sad_ending(story: str) -> bool:
    """A sad word (sad, cried, lost, alone, ...) in the story's last two sentences: a heuristic, used only on
    requests that ask for a bad ending."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", story.strip()) if s]
    return bool(_SAD.search(" ".join(sentences[-2:])))


def judge(story: str, words: Sequence[str], features: Sequence[str]) -> dict:
    """{"words": [used?] per required word, "dialogue": bool or None (not asked), "sad_ending": likewise,
    "satisfied": every part met}."""
    out = {"words": included_words(story, words),
           "dialogue": has_dialogue(story) if "Dialogue" in features else None,
           "sad_ending": sad_ending(story) if "BadEnding" in features else None}
    out["satisfied"] = all(out["words"]) and out["dialogue"] is not False and out["sad_ending"] is not False
    return out


def swapped(samples: Sequence[dict], shift: int = 1) -> list[dict]:
    """Each request with the story written for the request `shift` places on (cyclically): the chance
    baseline, what a story meets of a request it was not written for."""
    n = len(samples)
    if n < 2 or shift % n == 0:
        raise ValueError(f"swapping needs at least 2 requests and a shift that moves them (n={n}, "
                         f"shift={shift})")
    return [{**s, "story": samples[(i + shift) % n]["story"]} for i, s in enumerate(samples)]


def words_used(samples: Sequence[dict]) -> tuple[int, int]:
    """(required words used, required words) over the samples: the pooled word-inclusion rate's k and n."""
    hits = [judge(s["story"], s["words"], ())["words"] for s in samples]
    return sum(sum(h) for h in hits), sum(len(h) for h in hits)


def _task_arrays(own: list[dict], other: list[dict], task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct, chance, weights) per request the task applies to."""
    if task == "words":
        keep = [i for i, j in enumerate(own) if j["words"]]
        weights = np.array([len(own[i]["words"]) for i in keep], float)
        return (np.array([np.mean(own[i]["words"]) for i in keep]),
                np.array([np.mean(other[i]["words"]) for i in keep]), weights)
    key = "satisfied" if task == "requests" else task
    keep = [i for i, j in enumerate(own) if j[key] is not None]
    return (np.array([float(own[i][key]) for i in keep]), np.array([float(other[i][key]) for i in keep]),
            np.ones(len(keep)))


def summarize_requests(samples: Sequence[dict], *, seed: int = 0) -> dict[str, dict]:
    """{task: summary} for the tasks that apply ("requests": all parts met; "words", "dialogue",
    "sad_ending"), each as `scoring.Summary.to_dict` (n = requests; acc and chance pooled over words for
    "words"; ci: the bootstrap interval of the centred score over requests) plus `trials` (words or
    requests), Wilson intervals `acc_ci` and `chance_ci` of the two rates."""
    own = [judge(s["story"], s["words"], s["features"]) for s in samples]
    other = [judge(s["story"], s["words"], s["features"]) for s in swapped(samples)]
    out: dict[str, dict] = {}
    for task in TASKS:
        correct, chance, w = _task_arrays(own, other, task)
        if not len(correct):
            continue
        trials = int(w.sum())
        k, k_chance = round(float(correct @ w)), round(float(chance @ w))
        acc, ch = k / trials, k_chance / trials
        out[task] = {"n": len(correct), "acc": acc, "chance": ch,
                     "centred": centred(acc, ch) if ch < 1 else float("nan"),
                     "ci": list(bootstrap_centred(correct, chance, seed=seed, weights=w)) if ch < 1
                     else [float("nan")] * 2,
                     "trials": trials, "acc_ci": list(wilson(k, trials)),
                     "chance_ci": list(wilson(k_chance, trials))}
    return out


def held_out_requests(n: int = N_REQUESTS, data: str = "auto") -> list[Example]:
    """The first `n` held-out requests (validation stories: the official file, else the derived set), the
    ones notebook 09's fine-tuning evaluates."""
    held = load_examples(data, max_train_examples=1)[1].examples
    if len(held) < n:
        raise ValueError(f"{n} requests asked for but the held-out set has {len(held)}")
    return held[:n]


def instruction_family(model, tokenizer, *, n: int = N_REQUESTS, max_new_tokens: int = 200, seed: int = 0,
                       data: str = "auto") -> tuple[dict[str, dict], list[dict]]:
    """(summaries by task, samples): the stories `model` writes for `n` held-out requests (temperature 0.7,
    top-k 50, `seed`: `request_samples`), judged against their own requests and against swapped ones."""
    samples = request_samples(model, tokenizer, held_out_requests(n, data), max_new_tokens=max_new_tokens,
                              seed=seed)
    return summarize_requests(samples, seed=seed), samples


def fine_tuning_outcome(tuned: str | os.PathLike, *, n: int = N_REQUESTS, max_new_tokens: int = 200,
                        seed: int = 0) -> dict:
    """Before and after fine-tuning on the same `n` held-out requests: the stories the parent checkpoint
    (named in the tuned one's config.json) and the tuned checkpoint write for them, with the same settings
    and seed, as `{"parent", "tuned", "data", "steps", "settings", "before": samples, "after": samples}`;
    `summarize_requests` of either side gives its rates, chance and intervals."""
    folder = checkpoint.resolve(tuned)
    meta = checkpoint.load_meta(folder)
    if not is_instruct_checkpoint(meta):
        raise ValueError(f"{folder} is not an instruction-tuned checkpoint (its config.json has no "
                         '"stage": "instruct"): fine-tune one with `python -m tinylib.finetune`')
    requests = held_out_requests(n)
    out = {"parent": _shown(meta["parent"]), "tuned": _shown(folder), "data": meta.get("data", ""),
           "steps": meta["step"], "settings": {"requests": n, "max_new_tokens": max_new_tokens,
                                               "temperature": 0.7, "top_k": 50, "seed": seed}}
    for when, path in (("before", meta["parent"]), ("after", folder)):
        model, tok = checkpoint.load_model(path), checkpoint.load_tokenizer(path)
        samples = request_samples(model, tok, requests, max_new_tokens=max_new_tokens, seed=seed)
        out[when] = [{k: s[k] for k in ("where", "words", "features", "story")} for s in samples]
    return out


def _shown(path: str | os.PathLike) -> str:
    """A path as a file should record it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_outcome(outcome: dict, path: str | os.PathLike) -> Path:
    return write_atomic(Path(path), (json.dumps(outcome, indent=1) + "\n").encode())


def read_outcome(path: str | os.PathLike) -> dict:
    """An outcome `write_outcome` wrote (the stories of both sides: everything else is recomputed)."""
    return json.loads(Path(path).read_text())
