"""A model's evaluation as data (`ModelReport`), JSON, Markdown and one line; and tables across models.

`evaluate(name)` is the one call the CLI, the notebooks and the tracker make: load the model, build (or take)
the benchmark, score it, summarise each family and task with its bootstrap interval, optionally sample stories
for the generation statistics. What it leaves to others: everything it calls.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinylib.evals.families import Benchmark, build_benchmark
from tinylib.evals.genstats import generation_stats
from tinylib.evals.models import load_loss_model
from tinylib.evals.requests import N_REQUESTS, instruction_family
from tinylib.evals.scoring import (
    LossModel,
    Scored,
    by_group,
    overall,
    paired_difference,
    score_items,
    summarize,
)
from tinylib.finetune.instruct import is_instruct_checkpoint
from tinylib.paths import write_atomic


@dataclass
class ModelReport:
    model: str
    source: str
    tokenizer: str
    families: dict[str, dict]  # family -> Summary.to_dict()
    tasks: dict[str, dict]  # family/task -> Summary.to_dict()
    overall: dict  # {"centred": x, "ci": [lo, hi]}: the mean of the families' centred scores
    unscorable: list[dict]  # {"id", "reason"} for every item the model could not score
    generation: dict | None = None  # genstats.generation_stats, when stories were sampled
    seconds: float = 0.0  # scoring time (wall clock)
    notes: list[str] = field(default_factory=list)
    scored: Scored | None = field(default=None, repr=False)  # per-item results (not written to JSON)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "scored"}
        if self.scored is not None:
            d["items"] = [{"id": r.item.id, "scores": [round(s, 5) for s in r.scores], "correct": r.correct}
                          for r in self.scored.results]
        return d

    def summary_line(self) -> str:
        fams = ", ".join(f"{f} {s['centred']:+.2f}" for f, s in self.families.items())
        lo, hi = self.overall["ci"]
        return (f"{self.model}: overall {self.overall['centred']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({fams}); "
                f"{sum(s['n'] for s in self.families.values())} items scored, {len(self.unscorable)} not")

    def markdown(self) -> str:
        lines = [f"### {self.model}", "", f"{self.source}; tokenizer {self.tokenizer}; scored in "
                 f"{self.seconds:.1f} s.", "",
                 "| family / task | items | accuracy | chance | centred [95% CI] |",
                 "| --- | ---: | ---: | ---: | --- |"]
        for fam, s in self.families.items():
            lines.append(f"| **{fam}** | {s['n']} | {s['acc']:.3f} | {s['chance']:.3f} | {_ci(s)} |")
            for task, t in self.tasks.items():
                if task.split("/")[0] == fam and len([k for k in self.tasks if k.startswith(fam + "/")]) > 1:
                    lines.append(f"| &nbsp; {task} | {t['n']} | {t['acc']:.3f} | {t['chance']:.3f} | "
                                 f"{_ci(t)} |")
        lo, hi = self.overall["ci"]
        lines.append(f"| **overall** (mean of families) | | | | {self.overall['centred']:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}] |")
        if self.unscorable:
            lines += ["", f"{len(self.unscorable)} items could not be scored:"]
            lines += [f"- {u['id']}: {u['reason']}" for u in self.unscorable[:20]]
        if self.generation:
            g = self.generation
            lines += ["", f"Generation ({g['n']} stories, temperature {g['temperature']}, at most "
                      f"{g['max_new_tokens']} tokens): distinct-1/2/3 {g['distinct_1']:.3f} / "
                      f"{g['distinct_2']:.3f} / {g['distinct_3']:.3f}, repeated 4-gram rate "
                      f"{g['repeated_4gram_rate']:.3f}, mean "
                      f"{g['mean_words']:.0f} words, {g['ended_share']:.0%} ended with end-of-story."]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _ci(s: dict) -> str:
    return f"{s['centred']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]"


def report_of(scored: Scored, source: str, tokenizer: str, *, seconds: float = 0.0,
              notes: Sequence[str] = ()) -> ModelReport:
    fams = {f: summarize(rs).to_dict() for f, rs in by_group(scored.results).items()}
    tasks = {t: summarize(rs).to_dict() for t, rs in by_group(scored.results, "task").items()}
    point, ci = overall(scored.results)
    return ModelReport(scored.model, source, tokenizer, fams, tasks, {"centred": point, "ci": list(ci)},
                       [{"id": u.item.id, "reason": u.reason} for u in scored.unscorable],
                       seconds=seconds, notes=list(notes), scored=scored)


def is_instruction_tuned(lm: LossModel) -> bool:
    """Whether a loaded model is an instruction-tuned checkpoint (its config.json says stage "instruct")."""
    return is_instruct_checkpoint(getattr(lm, "meta", None))


def evaluate(model: str | os.PathLike | LossModel, *, benchmark: Benchmark | None = None,
             samples: int = 0, progress: bool = True, instruction: bool | None = None,
             requests: int = N_REQUESTS) -> ModelReport:
    """Score `model` (a name or path, see `tinylib.evals.models`, or a loaded LossModel) on the benchmark;
    `samples` > 0 also samples that many stories for the generation statistics (networks only). The
    instruction family (`requests` held-out requests, see `tinylib.evals.requests`) is added for an
    instruction-tuned checkpoint (`instruction=None`: detected from its config.json; True or False forces it)
    and kept out of the overall score, which only the loss-scored families make."""
    lm = load_loss_model(model) if isinstance(model, (str, os.PathLike)) else model
    benchmark = benchmark or build_benchmark()
    t0 = time.perf_counter()
    scored = score_items(lm, benchmark.items, progress=progress)
    seconds = time.perf_counter() - t0
    rep = report_of(scored, getattr(lm, "source", lm.name), lm.tokenizer.name, seconds=seconds,
                    notes=benchmark.notes)
    if samples and hasattr(lm, "model"):
        rep.generation = generation_stats(lm.model, lm.tokenizer, n=samples)
    if instruction is None:
        instruction = is_instruction_tuned(lm)
    if instruction:
        if not hasattr(lm, "model"):
            raise ValueError(f"{lm.name} is not a network: the instruction family needs stories written on "
                             "request")
        t0 = time.perf_counter()
        tasks, _ = instruction_family(lm.model, lm.tokenizer, n=requests)
        rep.families["instruction"] = tasks["requests"]
        rep.tasks.update({f"instruction/{t}": s for t, s in tasks.items()})
        rep.notes.append(f"instruction: {requests} held-out requests, a story each (temperature 0.7, top-k "
                         f"50, seed 0); satisfied = every required word used (inflected forms count), "
                         f"dialogue and a sad ending when asked; chance = the same requests judged on the "
                         f"stories written for other requests; not in the overall "
                         f"({time.perf_counter() - t0:.0f} s)")
    return rep


def comparison_markdown(reports: Sequence[ModelReport], floors: Sequence[str] = ("unigram", "bigram")) -> str:
    """One row per model, one column per family: centred score [95% CI]; then, for each network, its paired
    difference to each floor on every family (CI above 0: it beats that floor by more than the noise)."""
    fams = list(dict.fromkeys(f for r in reports for f in r.families))
    lines = ["| model | " + " | ".join(fams) + " | overall |", "| --- |" + " --- |" * (len(fams) + 1)]
    for r in reports:
        cells = [_ci(r.families[f]) if f in r.families else "n/a" for f in fams]
        lo, hi = r.overall["ci"]
        lines.append(f"| {r.model} | " + " | ".join(cells) + f" | {r.overall['centred']:+.3f} [{lo:+.3f}, "
                     f"{hi:+.3f}] |")
    floor_reports = [r for r in reports if r.model in floors and r.scored is not None]
    nets = [r for r in reports if r.model not in floors and r.scored is not None]
    if floor_reports and nets:
        lines += ["", "Paired differences (model - floor, centred, 95% paired-bootstrap CI; * = CI above 0):",
                  "",
                  "| model - floor | " + " | ".join(fams) + " |", "| --- |" + " --- |" * len(fams)]
        for r in nets:
            for fl in floor_reports:
                cells = []
                for f in fams:
                    a = by_group(r.scored.results).get(f)
                    b = by_group(fl.scored.results).get(f)
                    if not a or not b:
                        cells.append("n/a")
                        continue
                    d, (lo, hi) = paired_difference(a, b)
                    cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{'*' if lo > 0 else ''}")
                lines.append(f"| {r.model} - {fl.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(reports: Sequence[ModelReport], out_dir: str | os.PathLike) -> list[Path]:
    """<out_dir>/<model>.json and .md per model, and comparison.md; each written atomically."""
    out_dir = Path(out_dir)
    written = []
    for r in reports:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.model)
        text = json.dumps(r.to_dict(), indent=1) + "\n"
        written.append(write_atomic(out_dir / f"{stem}.json", text.encode()))
        written.append(write_atomic(out_dir / f"{stem}.md", r.markdown().encode()))
    if len(reports) > 1:
        written.append(write_atomic(out_dir / "comparison.md", comparison_markdown(reports).encode()))
    return written
