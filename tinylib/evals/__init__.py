"""Evaluation beyond loss: an offline TinyStories benchmark scored by continuation loss, as nanochat's CORE.

Families of items (`families`): grammar minimal pairs, character and pronoun consistency, object and state
tracking, everyday knowledge and cause and effect (with schema items), story endings of held-out validation
stories. Each item is scored by loss (`scoring`): multiple choice by the mean loss of each continuation,
schema by the mean loss of the shared continuation under each context, minimal pairs by total loss; ties
count as wrong. Scores are centred, (acc - chance) / (1 - chance), with bootstrap 95% intervals, next to a
unigram and a bigram floor fitted on the training text (`floors`). Generation statistics (`genstats`) cover
what loss cannot see, and so does the instruction family (`requests`), scored only for instruction-tuned
checkpoints: the share of held-out requests whose story uses every required word (inflected forms count),
has dialogue and a sad ending when asked, against chance from requests swapped across stories.

    from tinylib.evals import evaluate
    report = evaluate("reference")         # or "stories260K", "induction", "demo", "bigram", a path
    print(report.summary_line())

CLI: `python -m tinylib.evals --model reference --model bigram --out evals/`.
Modules: items (the item type and files), words and families (the items), data (the TinyStories text it
reads), scoring (and intervals: bootstrap, Wilson), floors, models (names -> loss models, checked), genstats,
requests (the instruction family), report.
"""

from tinylib.evals.families import Benchmark, build_benchmark
from tinylib.evals.items import Item, ItemFileError, read_items, write_items
from tinylib.evals.models import VocabMismatchError, available, load_loss_model
from tinylib.evals.report import ModelReport, comparison_markdown, evaluate, write_reports
from tinylib.evals.scoring import centred, is_correct, score_items, summarize

__all__ = ["Benchmark", "Item", "ItemFileError", "ModelReport", "VocabMismatchError", "available",
           "build_benchmark", "centred", "comparison_markdown", "evaluate", "is_correct", "load_loss_model",
           "read_items", "score_items", "summarize", "write_items", "write_reports"]
