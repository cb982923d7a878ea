"""The benchmark's items, generated from templates and the word lists of `tinylib.evals.words`, plus a few
written by hand, and story endings cut from held-out validation stories.

Families (each a list of tasks; every task's items come from one template):
- grammar (minimal pairs, BLiMP-style): subject-verb agreement (was/were, is/are: the stories are told in the
  past tense, where "the dog jump" would only test spelling), agreement across a distractor noun of the other
  number, pronoun case, determiner/noun number, irregular past tense, word order. The two sentences of a pair
  differ in one word (one adjacent swap for word order, one moved word for verb-final order).
- consistency (mc): a named girl is later "she", a boy "he"; with a girl and a boy, who did what.
- tracking (mc): which toy has which colour, what was put where, the state after an event.
- knowledge (mc and schema): cause and effect ("... was very thirsty, so she" + " drank a cup of water." vs
  effects of other causes); schema items where the question is the context ("was hungry," / "was full," +
  " so she ate a big bowl of soup."); a few written by hand.
- endings (mc): the real last sentence of a validation story (held out from training) against the last
  sentences of three other stories.

Every generator is deterministic given its seed, and balanced: each option is the answer as often as it is a
distractor, so a model that only knows word frequencies scores chance. What this module leaves to others: the
item type and files (`items`), scoring (`scoring`).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import tinylib.evals.words as W
from tinylib.evals.data import load_validation_stories
from tinylib.evals.items import Item

N_PER_TASK = 40  # grammar: 6 tasks x 40 = 240 pairs; other template tasks are sized to >= 100 per family


def _people(kind: str) -> Sequence[str]:
    return W.GIRLS if kind == "girl" else W.BOYS


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _take(make: Callable[[int], dict | None], n: int, key: Callable[[dict], object]) -> list[dict]:
    """n distinct results of `make(k)` (by `key`), k = how many are already taken: generators use k for every
    binary choice (k % 2 ...), so each option is the answer exactly as often as the other. Raises when the
    template cannot fill n."""
    out, seen = [], set()
    for _ in range(200 * n):
        item = make(len(out))
        if item is None or key(item) in seen:
            continue
        seen.add(key(item))
        out.append(item)
        if len(out) == n:
            return out
    raise RuntimeError(f"template filled only {len(out)} distinct items of {n}: "
                       "add words to tinylib.evals.words")


def _a(word: str) -> str:
    """The indefinite article and the word: "an orange", "a red"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _number(item_id: str, items: list) -> list[Item]:
    return [Item(**{**it, "id": f"{item_id}/{i:03d}"}) for i, it in enumerate(items)]


def _mc(family: str, task: str, context: str, right: str, wrong: Iterable[str], rng: random.Random,
        **meta) -> dict:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return dict(family=family, task=task, kind="mc", context=context, choices=tuple(choices),
                gold=choices.index(right), meta=meta)


def _pair(task: str, good: str, bad: str, **meta) -> dict:
    return dict(family="grammar", task=task, kind="pair", choices=(good, bad), gold=0, meta=meta)


# --- grammar ------------------------------------------------------------------------------------------------

def _agreement(rng: random.Random, k: int) -> dict:
    """TinyStories tells its stories in the past tense, so agreement is tested where the past shows it:
    was / were (and is / are in what characters say)."""
    (sg, pl), adj, place = rng.choice(W.ANIMALS), rng.choice(W.ADJECTIVES), rng.choice(W.PLACES)
    plural = k % 2 == 1
    good, bad = W.COPULA[rng.randrange(2)][::-1] if plural else W.COPULA[rng.randrange(2)]
    noun = pl if plural else sg
    if k // 2 % 2:
        s = f"The {adj} {noun} {{}} in the {place}."
    else:
        s = f"Look, the {noun} {{}} so {adj}!"
    return _pair("agreement", s.format(good), s.format(bad), plural=plural)


def _agreement_distractor(rng: random.Random, k: int) -> dict:
    """The verb agrees with the head noun, not with the nearer noun of the other number."""
    (sg, pl), (t_sg, t_pl) = rng.choice(W.ANIMALS), rng.choice(W.THINGS)
    plural = k % 2 == 1
    noun, thing = (pl, t_sg) if plural else (sg, t_pl)
    good, bad = W.COPULA[rng.randrange(2)][::-1] if plural else W.COPULA[rng.randrange(2)]
    prep = rng.choice(("near", "by", "behind"))
    if rng.random() < 0.5:
        s = f"The {noun} {prep} the {thing} {{}} very {rng.choice(W.ADJECTIVES)}."
    else:
        s = f"The {rng.choice(W.ADJECTIVES)} {noun} {prep} the {thing} {{}} not there."
    return _pair("agreement_distractor", s.format(good), s.format(bad), plural=plural)


def _pronoun_case(rng: random.Random, k: int) -> dict:
    kind = ("girl", "boy")[k % 2]
    name = rng.choice(_people(kind))
    subj, obj, _ = W.PRONOUNS[kind]
    if k // 2 % 2:  # subject position: "so she went home", not "so her went home"
        s = f"{name} was very {rng.choice(W.MOODS)}, so {{}} went home."
        good, bad = subj, obj
    else:  # object position: "gave him a kite", not "gave he a kite"
        other = rng.choice(W.GIRLS + W.BOYS)
        if other == name:
            return None
        s = f"{other} saw {name} and gave {{}} {_a(rng.choice(W.COLORS))} {rng.choice(W.TOYS)}."
        good, bad = obj, subj
    return _pair("pronoun_case", s.format(good), s.format(bad), kind=kind)


def _det_number(rng: random.Random, k: int) -> dict:
    (sg, pl), adj, place = rng.choice(W.ANIMALS), rng.choice(W.ADJECTIVES), rng.choice(W.PLACES)
    name = rng.choice(W.GIRLS + W.BOYS)
    if k % 2:
        s, good, bad = f"{name} saw {_a(adj)} {{}} in the {place}.", sg, pl
    else:
        s, good, bad = f"{name} saw two {adj} {{}} in the {place}.", pl, sg
    return _pair("det_number", s.format(good), s.format(bad))


def _irregular_past(rng: random.Random, k: int) -> dict:
    past, wrong, rest = rng.choice(W.IRREGULAR_PAST)
    name = rng.choice(W.GIRLS + W.BOYS)
    when = rng.choice(("Yesterday", "Last week", "This morning", "After lunch"))
    s = f"{when}, {name} {{}} {rest}."
    return _pair("irregular_past", s.format(past), s.format(wrong), verb=past)


def _word_order(rng: random.Random, k: int) -> dict:
    (sg, _), adj, place = rng.choice(W.ANIMALS), rng.choice(W.ADJECTIVES), rng.choice(W.PLACES)
    name = rng.choice(W.GIRLS + W.BOYS)
    if k % 2:  # adjective after its noun: one adjacent swap
        good = f"{name} saw the {adj} {sg} in the {place}."
        bad = f"{name} saw the {sg} {adj} in the {place}."
        how = "adjacent_swap"
    else:  # the verb moved to the end: same words, another order
        good = f"{name} saw the {adj} {sg} in the {place}."
        bad = f"{name} the {adj} {sg} in the {place} saw."
        how = "verb_final"
    return _pair("word_order", good, bad, how=how)


GRAMMAR_TASKS = {"agreement": _agreement, "agreement_distractor": _agreement_distractor,
                 "pronoun_case": _pronoun_case, "det_number": _det_number, "irregular_past": _irregular_past,
                 "word_order": _word_order}


def grammar_items(seed: int = 0, n_per_task: int = N_PER_TASK) -> list[Item]:
    out = []
    for i, (task, make) in enumerate(GRAMMAR_TASKS.items()):
        rng = random.Random(f"{seed}/grammar/{i}")
        out += _number(f"grammar/{task}", _take(lambda k, m=make, r=rng: m(r, k), n_per_task,
                                                lambda d: d["choices"]))
    return out


# --- consistency --------------------------------------------------------------------------------------------

def _pronoun_after_name(rng: random.Random, k: int) -> dict:
    kind = ("girl", "boy")[k % 2]
    name = rng.choice(_people(kind))
    template = k // 2 % 3
    if template == 0:
        context = f"{name} loved to {rng.choice(W.ACTIVITIES)}. Every morning,"
    elif template == 1:
        context = f"{name} {rng.choice(W.FRIENDLY)} {rng.choice(W.PLACES)}. After a while,"
    else:
        context = (f"One day, {name} found {_a(rng.choice(W.COLORS))} {rng.choice(W.TOYS)}. "
                   "It was very pretty, so")
    right, wrong = (" she", " he") if kind == "girl" else (" he", " she")
    return _mc("consistency", "pronoun_after_name", context, right, [wrong], rng, kind=kind)


def _who_did_what(rng: random.Random, k: int) -> dict:
    girl, boy = rng.choice(W.GIRLS), rng.choice(W.BOYS)
    a, b = (girl, boy) if k // 4 % 2 else (boy, girl)
    if k % 2:  # who fell is who is helped: the pronoun of X
        x, y = (a, b) if k // 2 % 2 else (b, a)
        kx = "girl" if x == girl else "boy"
        subj, obj, poss = W.PRONOUNS[kx]
        context = (f"{a} and {b} {rng.choice(W.FRIENDLY)} {rng.choice(W.PLACES)}. {x} fell down and hurt "
                   f"{poss} knee. {y} helped")
        right, wrong = f" {obj}", f" {W.PRONOUNS['boy' if kx == 'girl' else 'girl'][1]}"
        return _mc("consistency", "who_did_what", context, right, [wrong], rng, who=x)
    toy = f"{_a(rng.choice(W.COLORS))} {rng.choice(W.TOYS)}"
    if k // 2 % 2:  # the giver is thanked, named first ...
        context = f"{a} gave {b} {toy}. {b} said thank you to"
    else:  # ... or named last
        context = f"{b} got {toy} from {a}. {b} said thank you to"
    return _mc("consistency", "who_did_what", context, f" {a}", [f" {b}"], rng, who=a)


def consistency_items(seed: int = 0, n_per_task: int = 60) -> list[Item]:
    out = []
    for task, make in (("pronoun_after_name", _pronoun_after_name), ("who_did_what", _who_did_what)):
        rng = random.Random(f"{seed}/consistency/{task}")
        out += _number(f"consistency/{task}", _take(lambda k, m=make, r=rng: m(r, k), n_per_task,
                                                    lambda d: (d["context"], d["choices"])))
    return out


# --- tracking -----------------------------------------------------------------------------------------------

def _mirrored(draw: Callable[[random.Random], tuple]) -> Callable[[random.Random, int], tuple]:
    """Items k = 2i and 2i + 1 share one draw (the same story, the other object asked for), so each object is
    the answer exactly as often as it is the distractor: word frequencies alone score chance."""
    draws: dict[int, tuple] = {}

    def make(rng: random.Random, k: int) -> tuple:
        if k % 2 == 0 or k // 2 not in draws:
            draws[k // 2] = draw(rng)
        return draws[k // 2]
    return make


def _colors_draw(rng: random.Random) -> tuple:
    kind = rng.choice(("girl", "boy"))
    return (rng.choice(_people(kind)), W.PRONOUNS[kind][0], *rng.sample(W.COLORS, 2), *rng.sample(W.TOYS, 2))


def _places_draw(rng: random.Random) -> tuple:
    kind = rng.choice(("girl", "boy"))
    (h1, _), (h2, _) = rng.sample(W.HIDING, 2)
    return (rng.choice(_people(kind)), W.PRONOUNS[kind][0], h1, h2, *rng.sample(W.TOYS, 2))


def _colors(rng: random.Random, k: int, draw=None) -> dict:
    name, subj, c1, c2, o1, o2 = draw(rng, k)
    pick = k % 2
    context = f"{name} had {_a(c1)} {o1} and {_a(c2)} {o2}. {_cap(subj)} played with the {(c1, c2)[pick]}"
    right, wrong = (f" {o1}", f" {o2}") if pick == 0 else (f" {o2}", f" {o1}")
    return _mc("tracking", "colors", context, right, [wrong], rng)


def _places(rng: random.Random, k: int, draw=None) -> dict:
    name, subj, h1, h2, o1, o2 = draw(rng, k)
    pick = k % 2
    context = (f"{name} put the {o1} {h1} and the {o2} {h2}. Later, {subj} looked {(h1, h2)[pick]} "
               "and found the")
    right, wrong = (f" {o1}", f" {o2}") if pick == 0 else (f" {o2}", f" {o1}")
    return _mc("tracking", "places", context, right, [wrong], rng)


def _states(rng: random.Random, k: int) -> dict:
    before, event, right, wrong = W.STATES[k % len(W.STATES)]  # each state the answer as often as not
    name = rng.choice(W.GIRLS + W.BOYS)
    return _mc("tracking", "states", f"{before} {event.format(name=name)}", right + ".", [wrong + "."], rng)


def tracking_items(seed: int = 0, n_per_task: int = 40) -> list[Item]:
    out = []
    makers = (("colors", partial(_colors, draw=_mirrored(_colors_draw))),
              ("places", partial(_places, draw=_mirrored(_places_draw))), ("states", _states))
    for task, make in makers:
        rng = random.Random(f"{seed}/tracking/{task}")
        out += _number(f"tracking/{task}", _take(lambda k, m=make, r=rng: m(r, k), n_per_task,
                                                 lambda d: (d["context"], d["choices"])))
    return out


# --- knowledge ----------------------------------------------------------------------------------------------

def _fill(template: str, name: str, kind: str) -> str:
    subj, _, poss = W.PRONOUNS[kind]
    return template.format(name=name, subj=subj, poss=poss)


def _cause_effect(rng: random.Random, k: int) -> dict:
    i = k % len(W.CAUSES)
    kind = ("girl", "boy")[k // len(W.CAUSES) % 2]
    name = rng.choice(_people(kind))
    others = rng.sample([j for j in range(len(W.CAUSES)) if j != i], 2)
    context = _fill(W.CAUSES[i][0], name, kind)
    return _mc("knowledge", "cause_effect", context, W.CAUSES[i][1], [W.CAUSES[j][1] for j in others], rng)


# Written by hand: one fact each about the stories' world, options of the same kind of word.
HANDWRITTEN = (
    ("Mom put the cookies in the hot oven. After a while, the cookies were", " ready to eat.",
     " cold and wet."),
    ("The baby bird could not fly yet, so it stayed in its", " nest.", " car."),
    ("At night, the sky was dark and full of", " stars.", " apples."),
    ("The fish lived in the", " water.", " sky."),
    ("When it is winter, the ground is covered with", " snow.", " sand."),
    ("Dad gave the thirsty dog a bowl of", " water.", " rocks."),
    ("The cat saw a mouse and ran after", " it.", " the moon."),
    ("In the morning, the sun came", " up.", " down."),
)


def knowledge_items(seed: int = 0, n_cause: int = 80, n_schema_pairs: int = 20) -> list[Item]:
    rng = random.Random(f"{seed}/knowledge/cause_effect")
    out = _number("knowledge/cause_effect", _take(lambda k: _cause_effect(rng, k), n_cause,
                                                  lambda d: (d["context"], d["choices"])))
    rng = random.Random(f"{seed}/knowledge/schema")
    pairs = list(itertools.product(range(len(W.SCHEMAS)), W.GIRLS + W.BOYS))
    schema = []
    for s, name in rng.sample(pairs, n_schema_pairs):
        kind = "girl" if name in W.GIRLS else "boy"
        ctx_a, ctx_b, cont_a, cont_b = (_fill(t, name, kind) for t in W.SCHEMAS[s])
        for cont, gold in ((cont_a, 0), (cont_b, 1)):  # each context is the answer once: balanced
            schema.append(dict(family="knowledge", task="schema", kind="schema", choices=(ctx_a, ctx_b),
                               continuation=cont, gold=gold, meta={"schema": s}))
    out += _number("knowledge/schema", schema)
    rng = random.Random(f"{seed}/knowledge/handwritten")
    out += _number("knowledge/handwritten", [_mc("knowledge", "handwritten", c, r, [w], rng)
                                             for c, r, w in HANDWRITTEN])
    return out


# --- story endings ------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?][\"”']?(\s+)")


def split_ending(story: str) -> tuple[str, str, str] | None:
    """(everything before the last sentence, the whitespace before it, the last sentence), or None when the
    story has fewer than four sentences."""
    story = story.strip()
    ends = list(_SENTENCE_END.finditer(story))
    if len(ends) < 3:
        return None
    last = ends[-1]
    return story[:last.start(1)], last.group(1), story[last.end():]


def ending_items(stories: Sequence[str], seed: int = 0, n: int = 120, n_choices: int = 4,
                 max_chars: int = 900) -> list[Item]:
    """The real ending of a validation story against the endings of `n_choices - 1` other stories.

    Stories of at most `max_chars` (so most fit a 256-token context), whose ending is 4-25 words, in plain
    ASCII (a few validation stories carry mis-decoded quotes such as "â€™", which no option should).
    """
    usable = []
    for story in stories:
        parts = split_ending(story)
        if parts and story.isascii() and len(story) <= max_chars and 4 <= len(parts[2].split()) <= 25:
            usable.append(parts)
    if len(usable) < max(n, n_choices):
        raise ValueError(f"only {len(usable)} usable stories for {n} ending items: pass more validation "
                         "stories (TinyStories-valid)")
    rng = random.Random(f"{seed}/endings")
    chosen = rng.sample(range(len(usable)), n)
    out = []
    for i in chosen:
        context, sep, ending = usable[i]
        endings = {ending}
        others = []
        while len(others) < n_choices - 1:
            other = usable[rng.randrange(len(usable))][2]
            if other not in endings:
                endings.add(other)
                others.append(sep + other)
        out.append(_mc("endings", "endings", context, sep + ending, others, rng, story=i))
    return _number("endings/endings", out)


# --- the whole benchmark ------------------------------------------------------------------------------------

@dataclass
class Benchmark:
    items: list[Item]
    notes: list[str] = field(default_factory=list)  # what is missing and why (e.g. no validation stories)

    def families(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self.items:
            counts[it.family] = counts.get(it.family, 0) + 1
        return counts

    def tasks(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self.items:
            key = f"{it.family}/{it.task}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def build_benchmark(seed: int = 0, validation_stories: Sequence[str] | None = None) -> Benchmark:
    """Every family's items. Story endings need validation stories: by default ../shared's TinyStories
    validation sample; without it the family is left out and `notes` says so."""
    items = grammar_items(seed) + consistency_items(seed) + tracking_items(seed) + knowledge_items(seed)
    notes = []
    if validation_stories is None:
        validation_stories, why = load_validation_stories()
        if why:
            notes.append(why)
    if validation_stories:
        items += ending_items(validation_stories, seed)
    return Benchmark(items, notes)
