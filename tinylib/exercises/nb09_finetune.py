"""Exercises of notebook 09 (fine-tuning): which tokens are targets, the masked loss by hand, and whether a
story uses the words it was asked for.

The references are tinylib's own: `tinylib.instruct_batches` builds the targets the fine-tuning loop trains
on, the model's loss ignores targets of -1, and `tinylib.instruct.word_inclusion` is the evaluation's measure.
Each wrong answer is a mistake people make: masking one target too many (the story's first token is then
never learned), averaging per row or over every position, counting "cat" inside "catch", or missing "Lily"
because of its capital.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from tinylib.exercises.checks import Exercise, check, register, solution
from tinylib.finetune.batches import Encoded, make_windows
from tinylib.finetune.instruct import word_inclusion

__all__ = ["check", "solution"]  # what the notebook imports from here; the exercises register themselves

NB = "09_fine_tuning"


# --- targets: which predictions are scored ------------------------------------------------------------------

def _response_targets_by_tinylib(ids: list[int], n_prompt: int) -> torch.Tensor:
    """Targets for x = ids[:-1]: the next token where it belongs to the response (ids[n_prompt:]), else -1."""
    windows = make_windows([Encoded(list(ids), n_prompt, "")], len(ids) - 1, layout="padded", pad_id=0)
    return windows.xy(slice(None))[1][0]


def _targets_mask_one_too_many(ids: list[int], n_prompt: int) -> torch.Tensor:
    y = torch.tensor(ids[1:])
    y[:n_prompt] = -1  # also hides the first story token: the model never learns how a story starts
    return y


def _targets_unshifted(ids: list[int], n_prompt: int) -> torch.Tensor:
    y = torch.tensor(ids[:-1])
    y[:n_prompt] = -1
    return y


def _targets_cases(gen: torch.Generator):
    for length in (5, 9, 17, 30, 41, 64):
        ids = torch.randint(0, 4096, (length,), generator=gen).tolist()
        yield (ids, int(torch.randint(1, length, (1,), generator=gen))), {}


def response_targets(ids: list[int], n_prompt: int) -> torch.Tensor:
    """Targets for x = ids[:-1]: the next token where it belongs to the response (ids[n_prompt:]), else -1."""
    targets = torch.tensor(ids[1:], dtype=torch.long)  # position t predicts ids[t + 1]
    targets[: max(n_prompt - 1, 0)] = -1  # those predictions are of prompt tokens: not scored
    return targets


register(Exercise(
    "response_targets", "Targets on the response only", NB, difficulty=2, importance=5, minutes=10,
    reference=_response_targets_by_tinylib, shown=response_targets,
    cases=_targets_cases, wrong=(_targets_mask_one_too_many, _targets_unshifted)))


# --- the masked loss ----------------------------------------------------------------------------------------

def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not -1 (logits [B, T, V], targets [B, T])."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)


def _loss_mean_of_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = [F.cross_entropy(lg.float(), t, ignore_index=-1) for lg, t in zip(logits, targets)]
    return torch.stack(rows).mean()  # a row with 3 story tokens weighs as much as one with 300


def _loss_over_all_positions(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1, reduction="sum")
    return total / targets.numel()  # divides by the prompt positions too


def _loss_cases(gen: torch.Generator):
    for b, t, v in ((1, 8, 11), (2, 16, 50), (3, 12, 7), (4, 20, 30), (2, 40, 100)):
        logits = torch.randn(b, t, v, generator=gen) * 2
        targets = torch.randint(0, v, (b, t), generator=gen)
        for row in range(b):  # a prompt of a different length in every row, at least one scored target
            targets[row, : int(torch.randint(0, t - 1, (1,), generator=gen))] = -1
        yield (logits, targets), {}


register(Exercise(
    "masked_loss", "The masked loss by hand", NB, difficulty=2, importance=5, minutes=10,
    reference=masked_loss, cases=_loss_cases, wrong=(_loss_mean_of_rows, _loss_over_all_positions)))


# --- word inclusion -----------------------------------------------------------------------------------------

def _story_word_inclusion_by_tinylib(story: str, words: list[str]) -> float:
    """The fraction of `words` the story uses: whole words, any case, plus the regular forms (cat -> cats,
    jump -> jumped/jumping, hurry -> hurried, smile -> smiling, hop -> hopped)."""
    return word_inclusion(story, words)


def _inclusion_substring(story: str, words: list[str]) -> float:
    return sum(w.lower() in story.lower() for w in words) / len(words)


def _inclusion_case_sensitive(story: str, words: list[str]) -> float:
    tokens = set(story.replace(".", " ").replace(",", " ").split())
    return sum(any(t.startswith(w) and len(t) - len(w) <= 3 for t in tokens) for w in words) / len(words)


_VOCAB = (("cat", "cats"), ("jump", "jumped"), ("hurry", "hurried"), ("smile", "smiling"), ("hop", "hopped"),
          ("ball", "balls"), ("sun", "sun"), ("lily", "Lily"), ("tree", "trees"), ("run", "running"))
_TRAPS = ("catch", "sunny", "balloon", "treasure", "hopeful")  # contain a word without being it


def _inclusion_s_ed_only(story: str, words: list[str]) -> float:
    used = set(re.findall(r"[a-z]+", story.lower()))
    return sum(bool({w, w + "s", w + "ed"} & used) for w in (w.lower() for w in words)) / len(words)


def _inclusion_cases(gen: torch.Generator):
    # +d, +es and +ing: "smiled", "boxes", "jumping"
    yield ("She smiled at the boxes while jumping.", ["smile", "box", "jump", "cat"]), {}
    yield ("The dogs barked and hopped.", ["dog", "bark", "hop", "smile"]), {}
    for _ in range(8):
        pick = torch.randperm(len(_VOCAB), generator=gen)[:6].tolist()
        used, asked = pick[:3], pick[1:6]  # two of the asked words are used, three are not
        words = [_VOCAB[i][1] for i in used] + [_TRAPS[int(torch.randint(0, 5, (1,), generator=gen))]]
        story = "Once " + " and ".join(words) + ". The End."
        yield (story, [_VOCAB[i][0] for i in asked]), {}


def story_word_inclusion(story: str, words: list[str]) -> float:
    """The fraction of `words` the story uses: whole words, any case, plus the regular forms."""
    if not words:
        return 1.0
    used = set(re.findall(r"[a-z]+", story.lower()))  # whole words only: "cat" is not in "catch"

    def forms(word: str) -> set[str]:
        w = word.lower().strip()
        out = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing", w + w[-1:] + "ed", w + w[-1:] + "ing"}
        if w.endswith("e"):
            out.add(w[:-1] + "ing")  # smile -> smiling
        if w.endswith("y"):
            out |= {w[:-1] + "ies", w[:-1] + "ied"}  # hurry -> hurried
        return out

    return sum(bool(forms(w) & used) for w in words) / len(words)


register(Exercise(
    "story_word_inclusion", "Does the story use the words?", NB, difficulty=2, importance=3, minutes=10,
    reference=_story_word_inclusion_by_tinylib, shown=story_word_inclusion, cases=_inclusion_cases,
    wrong=(_inclusion_substring, _inclusion_case_sensitive, _inclusion_s_ed_only)))
