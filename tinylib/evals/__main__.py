"""Score models on the benchmark: `python -m tinylib.evals --model reference --model bigram --out evals/`.

Prints one summary line per model and a comparison table; writes <model>.json, <model>.md and comparison.md
under --out. A progress bar counts items per model.
"""

from __future__ import annotations

import argparse
import json
import sys

from tinylib.config import entry_point
from tinylib.evals.families import Benchmark, build_benchmark
from tinylib.evals.items import ItemFileError, read_items
from tinylib.evals.models import NAMES, VocabMismatchError, available, run_folder
from tinylib.evals.report import comparison_markdown, evaluate, write_reports
from tinylib.evals.requests import N_REQUESTS, fine_tuning_outcome, summarize_requests, write_outcome
from tinylib.paths import write_atomic


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinylib.evals", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[],
                   help=f"a name ({', '.join(NAMES)}) or a checkpoint/run folder or llama2.c .bin; "
                        "repeat for several; 'all' scores every model available here")
    p.add_argument("--items", default=None, help="score the items of this JSON Lines file instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated items (default 0)")
    p.add_argument("--samples", type=int, default=0,
                   help="also sample this many stories per network for generation statistics (default 0)")
    p.add_argument("--out", default=None, help="folder for the JSON and Markdown reports")
    p.add_argument("--into-run", action="store_true",
                   help="also write <run folder>/evals.json for each checkpoint path, where the experiments "
                        "tracker's results table (make results) reads its benchmark column")
    p.add_argument("--instruction", choices=("auto", "on", "off"), default="auto",
                   help="the instruction family (requests satisfied): auto = for instruction-tuned "
                        "checkpoints only (config.json stage 'instruct')")
    p.add_argument("--requests", type=int, default=N_REQUESTS,
                   help=f"held-out requests for the instruction family (default {N_REQUESTS})")
    p.add_argument("--fine-tuning-outcome", default=None, metavar="JSON",
                   help="for one instruction-tuned checkpoint: write the stories it and its parent write "
                        "for the held-out requests (--requests) to this file, the before/after that notebook "
                        "09 reads, and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    models = [m for name in (args.model or ["all"]) for m in (available() if name == "all" else [name])]
    if args.fine_tuning_outcome:
        if len(args.model) != 1:
            p.error("--fine-tuning-outcome takes exactly one --model: an instruction-tuned checkpoint")
        try:
            outcome = fine_tuning_outcome(args.model[0], n=args.requests)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {write_outcome(outcome, args.fine_tuning_outcome)}", file=sys.stderr)
        for when in ("before", "after"):
            s = summarize_requests(outcome[when])["words"]
            print(f"{when}: words used {s['acc']:.1%} [{s['acc_ci'][0]:.1%}, {s['acc_ci'][1]:.1%}], "
                  f"chance {s['chance']:.1%} [{s['chance_ci'][0]:.1%}, {s['chance_ci'][1]:.1%}] "
                  f"({s['trials']} words)")
        return 0
    try:
        if args.items:
            bench = Benchmark(read_items(args.items))
        else:
            bench = build_benchmark(args.seed)
        counts = ", ".join(f"{f} {n}" for f, n in bench.families().items())
        print(f"{len(bench.items)} items ({counts})", file=sys.stderr)
        instruction = {"auto": None, "on": True, "off": False}[args.instruction]
        reports = [evaluate(m, benchmark=bench, samples=args.samples, progress=not args.no_progress,
                            instruction=instruction, requests=args.requests) for m in models]
    except (ItemFileError, VocabMismatchError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in reports:
        print(r.summary_line())
    print()
    print(comparison_markdown(reports))
    if args.out:
        for path in write_reports(reports, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.into_run:
        for name, r in zip(models, reports):
            run = run_folder(name)
            if run is not None:
                text = json.dumps(r.to_dict(), indent=1) + "\n"
                print(f"wrote {write_atomic(run / 'evals.json', text.encode())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
