"""TinyStories-Instruct: the prompt format, the official files, parsing them into (prompt, response) pairs,
and an offline stand-in derived from plain stories.

What this module does:
- `request_prompt(words, features, summary)`: the text a fine-tuned model is prompted with; it ends where the
  story begins. Training prompts are built by the same function, so a request looks exactly like training.
- Downloads `TinyStories-Instruct-{train,valid}.txt` from the Hugging Face dataset
  `roneneldan/TinyStoriesInstruct` with tinylib.download (resume, size check, renamed when whole).
- Parses the files: each example is some of "Features:", "Words:", "Summary:", "Random sentence:" lines and
  "Story:" with the story, then `<|endoftext|>`. Fields are read by header in any order (a "Summary:" after
  the story is the summary); prompts write them in one order. An unknown header is reported with its
  file:line and left out; an example without a "Story:" part, or with an empty story, is reported and skipped.
- `derived_examples`: when the official files are out of reach, a clearly labelled derived set built from
  plain stories (../shared): words drawn from the story, features detected from its text (dialogue by quotes).
  It teaches the format and word inclusion, not the real constraints: summaries are left out.

What it leaves to others: tokens, batches and the fine-tuning loop (tinylib.finetune), the HTTP machinery
(tinylib.download), plain-story parsing (tinylib.stories).
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinylib.download import SizeMismatchError, hub_download, hub_download_prefix, hub_offline
from tinylib.paths import DATA_DIR
from tinylib.stories import EOT, check_text_file, normalize_story

HF_REPO = "roneneldan/TinyStoriesInstruct"
INSTRUCT_FILES = {"train": "TinyStories-Instruct-train.txt", "valid": "TinyStories-Instruct-valid.txt"}
FEATURES = ("Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")
STORY = "Story:"
# The prompt's fields, in the one order a prompt is written in (the official files shuffle them).
FIELDS = ("Words:", "Features:", "Summary:", "Random sentence:")
INSTRUCT_STAGE = "instruct"


# ------------------------------------------------------------------------------------------------------------
# The prompt format (what the story widget's "story on request" mode sends)


def format_prompt(words: Sequence[str] = (), features: Sequence[str] = (), summary: str = "",
                  sentence: str = "") -> str:
    """The prompt text: one line per non-empty field in FIELDS order, then "Story:" and a newline."""
    values = (", ".join(w.strip() for w in words if w.strip()),
              ", ".join(f.strip() for f in features if f.strip()), summary.strip(), sentence.strip())
    lines = [f"{name} {value}" for name, value in zip(FIELDS, values) if value]
    return "".join(line + "\n" for line in lines) + STORY + "\n"


def request_prompt(words: Sequence[str] = (), features: Sequence[str] = (), summary: str = "") -> str:
    """The text a fine-tuned model is prompted with for a story with these words/features/summary.

    It ends where the story begins ("Story:\\n"); generate from it and the continuation is the story.
    """
    return format_prompt(words, features, summary)


def is_instruct_checkpoint(meta: dict) -> bool:
    """True for a checkpoint written by the instruction fine-tuning stage (its config.json says so)."""
    return isinstance(meta, dict) and meta.get("stage") == INSTRUCT_STAGE


# ------------------------------------------------------------------------------------------------------------
# Examples and their problems


@dataclass(frozen=True)
class Example:
    """One (prompt, response) pair: the prompt's fields, the story, and where it came from (for errors)."""

    story: str
    words: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    summary: str = ""
    sentence: str = ""
    line: int = 0  # 1-based line of the example's first line in its file
    source: str = ""  # the file, or "derived from <file>" for the offline stand-in

    @property
    def prompt(self) -> str:
        return format_prompt(self.words, self.features, self.summary, self.sentence)

    @property
    def response(self) -> str:
        return self.story

    def where(self) -> str:
        return f"{self.source or '<text>'}:{self.line}"


@dataclass
class Parsed:
    """Examples that can be trained on, and one message per example that was skipped (with its line)."""

    examples: list[Example] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------
# Parsing the official files


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


HEADER = re.compile(r"([A-Z][A-Za-z ]{0,29}):(?=\s|$)")  # what a field's header looks like: "Moral: ..."


def _example(lines: list[tuple[int, str]], source: str, problems: list[str]) -> Example | None:
    """One example's (line number, text) lines as an Example, or None and a problem naming its first line.

    Fields are read by their headers, in any order, before or after the story: the story runs from "Story:"
    to the next known header (the official files put "Summary:" after the story in some records). A line
    that looks like an unknown header ("Moral: ...") is reported with its line and left out, not glued onto
    the field before it."""
    first = next((n for n, s in lines if s.strip()), None)
    if first is None:
        return None  # blank space between examples
    where = f"{source}:{first}"
    fields_: dict[str, list[str]] = {}
    story: list[str] | None = None
    current: str | None = None  # the part the next line without a header continues ("" : an ignored one)
    for n, text in lines:
        name = next((f for f in (*FIELDS, STORY) if text.startswith(f)), None)
        if name is not None and (name in fields_ or (name == STORY and story is not None)):
            problems.append(f"{source}:{n}: a second {name!r} in the example that starts at line {first}; "
                            "example skipped (is an <|endoftext|> missing before it?)")
            return None
        if name == STORY:
            story, current = [text[len(STORY):]], STORY
        elif name is not None:
            current, fields_[name] = name, [text[len(name):].strip()]
        elif current == STORY:
            story.append(text)
        elif (header := HEADER.match(text)) is not None:
            problems.append(f"{source}:{n}: unknown header {header.group(1) + ':'!r} (known: "
                            f"{', '.join(FIELDS + (STORY,))}); line left out")
            current = ""
        elif current is not None:
            if current:
                fields_[current].append(text.strip())  # a field that runs over several lines
        elif text.strip():
            problems.append(f"{source}:{n}: text before any field ({text.strip()[:40]!r}); expected lines "
                            f"like 'Words: ...' and then 'Story:'; example skipped")
            return None
    if story is None:
        problems.append(f"{where}: example without a 'Story:' part; skipped (there is no response to train "
                        f"on)")
        return None
    text = normalize_story("\n".join(story))
    if not text:
        problems.append(f"{where}: empty story after 'Story:'; skipped (an empty response teaches nothing)")
        return None
    value = {k: " ".join(v).strip() for k, v in fields_.items()}
    return Example(story=text, words=_split_list(value.get("Words:", "")),
                   features=_split_list(value.get("Features:", "")), summary=value.get("Summary:", ""),
                   sentence=value.get("Random sentence:", ""), line=first, source=source)


def iter_instruct(lines: Iterable[str], source: str, problems: list[str]) -> Iterator[Example]:
    """Examples of TinyStories-Instruct text given as lines (each ends at `<|endoftext|>`); every example
    that cannot be trained on is appended to `problems` as "file:line: what is wrong" instead."""
    current: list[tuple[int, str]] = []
    for n, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        while EOT in text:
            before, text = text.split(EOT, 1)
            current.append((n, before))
            if (ex := _example(current, source, problems)) is not None:
                yield ex
            current = []
        current.append((n, text))
    if (ex := _example(current, source, problems)) is not None:
        yield ex


def parse_instruct(text: str, source: str = "<text>") -> Parsed:
    """Parse a whole TinyStories-Instruct text (a file's contents) into examples and problems."""
    out = Parsed()
    out.examples = list(iter_instruct(text.splitlines(), source, out.problems))
    return out


def read_instruct(path: str | os.PathLike, max_examples: int | None = None) -> Parsed:
    """Parse a TinyStories-Instruct file as it streams (the train file is 2.7 GB), up to `max_examples`."""
    path = Path(path)
    check_text_file(path)
    out = Parsed()
    with open(path, encoding="utf-8") as f:
        out.examples = list(itertools.islice(iter_instruct(f, path.name, out.problems), max_examples))
    return out


# ------------------------------------------------------------------------------------------------------------
# The official files: finding and downloading them


def find_instruct(source: str | os.PathLike | None = None) -> dict[str, Path]:
    """The official files present in `source` (default $TINYSTORIES_INSTRUCT_DIR, else
    data/tinystories-instruct) as {split: path}; empty when there are none. Never touches the network."""
    folder = Path(source or os.environ.get("TINYSTORIES_INSTRUCT_DIR") or DATA_DIR / "tinystories-instruct")
    found = {}
    for split, name in INSTRUCT_FILES.items():
        candidates = sorted(folder.glob(f"{Path(name).stem}*.txt")) if folder.is_dir() else []
        if (folder / name).is_file():
            found[split] = folder / name
        elif candidates:
            found[split] = candidates[0]  # e.g. the train prefix a quick download saved
    return found


def download_instruct(dest: str | os.PathLike | None = None, splits: Sequence[str] = ("train", "valid"), *,
                      revision: str = "main", endpoint: str | None = None,
                      train_bytes: int | None = None) -> dict[str, Path]:
    """The official TinyStories-Instruct files as {split: path}, downloaded into `dest` (default
    data/tinystories-instruct) by tinylib.download: resumable, size-checked, renamed into place when whole.

    `train_bytes` fetches only the train file's first bytes (cut at an example boundary), saved as
    `TinyStories-Instruct-train.first<N>MB.txt`: the whole file is 2.7 GB. A file already in `dest` is not
    fetched again. Offline or unreachable: a FileNotFoundError that says how to run without it.
    """
    bad = [s for s in splits if s not in INSTRUCT_FILES]
    if bad:
        raise ValueError(f"unknown split(s) {bad}: TinyStories-Instruct files come as 'train' and 'valid'")
    if train_bytes is not None and int(train_bytes) < 1:
        raise ValueError(f"train_bytes={train_bytes}: ask for a positive number of bytes, or None for all")
    dest = Path(dest) if dest is not None else DATA_DIR / "tinystories-instruct"
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    out: dict[str, Path] = {}
    for split in splits:
        name = INSTRUCT_FILES[split]
        prefix = split == "train" and train_bytes is not None
        target = dest / (f"{Path(name).stem}.first{int(train_bytes) / 1e6:g}MB.txt" if prefix else name)
        if target.is_file():
            out[split] = target  # renamed into place only when complete
            continue
        if hub_offline():
            raise _unavailable(name, f"HF_HUB_OFFLINE is set and {target} does not exist")
        try:
            out[split] = (hub_download_prefix(HF_REPO, name, target, int(train_bytes), cut_after=EOT.encode(),
                                              repo_type="dataset", revision=revision, endpoint=endpoint)
                          if prefix else
                          hub_download(HF_REPO, name, dest, repo_type="dataset", revision=revision,
                                       endpoint=endpoint))
        except SizeMismatchError:
            raise
        except Exception as e:  # network, HTTP and offline errors all mean the same thing to the user
            raise _unavailable(name, f"download from {endpoint or 'huggingface.co'} failed "
                                     f"({type(e).__name__}: {e})") from e
    return out


def _unavailable(name: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"TinyStories-Instruct file {name} is not available: {reason}. Put the official files in a folder "
        f"and set TINYSTORIES_INSTRUCT_DIR, go online (unset HF_HUB_OFFLINE) to download them from "
        f"the Hugging Face dataset {HF_REPO}, or fine-tune on the derived set "
        f"(data='derived'), built from plain stories")


# ------------------------------------------------------------------------------------------------------------
# The offline stand-in: a derived set built from plain stories

DERIVED = "derived"  # the label every derived example's source starts with
# Words too common to be a request (the real set asks for one verb, one noun and one adjective).
_COMMON = frozenset("""about after again also always back because before being came come could didn does
doing down each even ever every from gave getting give going gone good have having here into just know like
little look made make many more much must never once only other over said says some soon still such than
that their them then there these they thing things this those time told took upon very want wanted went were
what when where which while will with would your though knew liked loved felt thought""".split())
_DETECTORS = {  # heuristics on the text, not the real labels: good enough to teach the format
    "Dialogue": re.compile(r"[\"“”]"),
    "MoralValue": re.compile(r"\b(learned|lesson)\b", re.I),
    "Twist": re.compile(r"\b(suddenly|surprise[d]?)\b", re.I),
}


def detect_features(story: str) -> tuple[str, ...]:
    """Features visible in the text: Dialogue (quotes), MoralValue ("learned", "lesson"), Twist ("suddenly",
    "surprise"). Heuristics for the derived set, not the labels of the real TinyStories-Instruct."""
    return tuple(name for name, pattern in _DETECTORS.items() if pattern.search(story))


def request_words(story: str, n: int, rng: random.Random) -> tuple[str, ...]:
    """`n` distinct words drawn from the story: lower-case in it (so no names), 4+ letters, not common."""
    seen = dict.fromkeys(w for w in re.findall(r"[A-Za-z]+", story)
                         if w.islower() and len(w) >= 4 and w not in _COMMON)
    pool = list(seen)
    return tuple(rng.sample(pool, min(n, len(pool))))


def derived_examples(path: str | os.PathLike, *, n_words: int = 3, seed: int = 0,
                     max_examples: int | None = None) -> Parsed:
    """Examples derived from a plain TinyStories file: the prompt's words are drawn from each story and its
    features detected from the text; no summary. Labelled `derived from <file>` in every example's source:
    this is an offline stand-in for TinyStories-Instruct, not the real set."""
    path = Path(path)
    check_text_file(path)
    text = path.read_text(encoding="utf-8")
    out, line = Parsed(), 1
    source = f"{DERIVED} from {path.name}"
    for i, raw in enumerate(text.split(EOT)):
        first = line + raw[: len(raw) - len(raw.lstrip())].count("\n")
        line += raw.count("\n")
        story = normalize_story(raw)
        if not story:
            continue
        words = request_words(story, n_words, random.Random(f"{seed}/{i}"))
        if not words:
            out.problems.append(f"{source}:{first}: no word to request in this story; skipped")
            continue
        out.examples.append(Example(story=story, words=words, features=detect_features(story), line=first,
                                    source=source))
        if max_examples is not None and len(out.examples) >= max_examples:
            break
    return out


# ------------------------------------------------------------------------------------------------------------
# Does a story obey its request?


def word_forms(word: str) -> set[str]:
    """The forms of `word` a story may use: as is, plural/3rd person, past, -ing (with e-dropping and
    consonant doubling). Irregular forms ("ran" for "run") are not counted."""
    w = word.lower().strip()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing", w + w[-1:] + "ed", w + w[-1:] + "ing"}
    if w.endswith("e"):
        forms.add(w[:-1] + "ing")
    if w.endswith("y"):
        forms |= {w[:-1] + "ies", w[:-1] + "ied"}
    return forms


def included_words(story: str, words: Sequence[str]) -> list[bool]:
    """For each requested word, whether the story uses it (whole words, any case, the forms of word_forms)."""
    tokens = set(re.findall(r"[a-z]+", story.lower()))
    return [bool(word_forms(w) & tokens) for w in words]


def word_inclusion(story: str, words: Sequence[str]) -> float:
    """The fraction of the requested words the story uses (1.0 when none were requested)."""
    hits = included_words(story, words)
    return sum(hits) / len(hits) if hits else 1.0
