"""Benchmark items: what one question is, how it is checked, and how a list of them is read and written.

An `Item` is one of three kinds, the three ways nanochat's CORE (after DCLM) and BLiMP score a model by loss:
- "mc" (multiple choice): one `context`, several `choices`; the answer is the choice whose continuation has
  the lowest mean loss per token. Chance is 1 / len(choices).
- "schema": several contexts (`choices`), one `continuation`; the answer is the context under which the
  continuation has the lowest mean loss (Winograd-style items, where the question is the context).
- "pair" (minimal pair): `choices` = two whole sentences; the answer is the one with the lower total loss.
`gold` is the index of the right choice. Whatever the kind, an item counts as right only when the gold
choice's score is strictly below every other choice's: a tie is wrong, so a model that cannot tell the
options apart (identical logits) scores chance or worse, never perfectly.

Item files are JSON Lines, one item per line; a malformed line raises `ItemFileError` naming file and line.
What this module leaves to others: making items (`tinylib.evals.families`), scoring them (`scoring`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinylib.paths import write_atomic

KINDS = ("mc", "schema", "pair")


class ItemFileError(ValueError):
    """A line of an item file that is not a valid item; the message starts with `file:line:`."""


@dataclass(frozen=True)
class Item:
    id: str  # unique, e.g. "grammar/agreement_distractor/017"
    family: str  # what the family measures: grammar, consistency, tracking, knowledge, endings, ...
    task: str  # the template within the family, e.g. "agreement_distractor"
    kind: str  # "mc", "schema" or "pair" (see the module docstring)
    choices: tuple[str, ...]
    gold: int
    context: str = ""  # kind "mc": shared by every choice
    continuation: str = ""  # kind "schema": shared by every context
    meta: dict = field(default_factory=dict, compare=False)  # what the generator filled in, for readers

    def __post_init__(self) -> None:
        problems = item_problems(self)
        if problems:
            raise ValueError(f"item {self.id!r}: {'; '.join(problems)}")

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)

    def texts(self) -> list[str]:
        """The full text of each option, as the model reads it."""
        if self.kind == "mc":
            return [self.context + c for c in self.choices]
        if self.kind == "schema":
            return [c + self.continuation for c in self.choices]
        return list(self.choices)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Item:
        known = {"id", "family", "task", "kind", "choices", "gold", "context", "continuation", "meta"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown field(s) {extra}; an item has {sorted(known)}")
        missing = sorted({"id", "family", "task", "kind", "choices", "gold"} - set(d))
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        if not isinstance(d["choices"], list) or not all(isinstance(c, str) for c in d["choices"]):
            raise ValueError(f"choices must be a list of strings, got {d['choices']!r:.80}")
        return cls(**{**d, "choices": tuple(d["choices"])})


def item_problems(item: Item) -> list[str]:
    """What is wrong with an item (empty when nothing is): the checks behind every error message here."""
    out = []
    if item.kind not in KINDS:
        out.append(f"kind {item.kind!r} is not one of {KINDS}")
    if len(item.choices) < 2:
        out.append(f"needs at least 2 choices, has {len(item.choices)}")
    if len(set(item.choices)) != len(item.choices):
        out.append("two choices are the same text")
    gold = item.gold
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(item.choices):
        out.append(f"gold {item.gold!r} is not an index into its {len(item.choices)} choices")
    if item.kind == "mc" and not item.context:
        out.append("kind 'mc' needs a context")
    if item.kind == "schema" and not item.continuation:
        out.append("kind 'schema' needs a continuation")
    if item.kind == "pair" and len(item.choices) != 2:
        out.append(f"kind 'pair' needs exactly 2 choices, has {len(item.choices)}")
    return out


def write_items(items: list[Item], path: str | os.PathLike) -> Path:
    """One JSON object per line (atomically: a crash leaves the old file or the new one, never half)."""
    text = "".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n" for it in items)
    return write_atomic(path, text.encode("utf-8"))


def read_items(path: str | os.PathLike) -> list[Item]:
    """Items of a JSON Lines file; blank lines and lines starting with # are skipped.

    Raises ItemFileError "file:line: what is wrong" at the first bad line, and for a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item file {path} not found (write one with tinylib.evals.write_items)")
    items, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ItemFileError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}): "
                                f"{line[:60]!r}") from None
        if not isinstance(d, dict):
            raise ItemFileError(f"{path}:{lineno}: expected a JSON object per line, got {type(d).__name__}")
        try:
            item = Item.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ItemFileError(f"{path}:{lineno}: {e}") from None
        if item.id in seen:
            raise ItemFileError(f"{path}:{lineno}: id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    return items
