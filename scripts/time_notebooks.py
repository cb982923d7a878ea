"""Time every notebook in smoke mode and in full mode on this machine; write notebooks/run_times.json.

    python scripts/time_notebooks.py                 # both modes, every notebook (full mode takes a while)
    python scripts/time_notebooks.py --modes smoke   # only the quick runs

Notebook 00 shows the table this writes, with the machine it was measured on (00 runs last: it reads the
file). Notebooks run in notebooks/ with the solutions filled in (TINYLIB_SOLUTIONS=1); the files are not
rewritten, so they keep no outputs. Full mode writes what a learner's full run writes (data/tinystories-4096,
checkpoints/notebook03).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from tinylib.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = NOTEBOOKS / "run_times.json"


def time_notebook(path: Path, smoke: bool) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ["TINYLIB_SMOKE"] = "1" if smoke else "0"
    os.environ["TINYLIB_SOLUTIONS"] = "1"
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["smoke", "full"], choices=["smoke", "full"])
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 04")
    args = parser.parse_args()
    times = json.loads(OUT.read_text())["seconds"] if OUT.is_file() else {}
    # 00 shows this file, so it runs last, after every other notebook's times are written
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), key=lambda p: (p.name.startswith("00"), p.name)):
        if args.only and not any(path.name.startswith(p) for p in args.only):
            continue
        for mode in args.modes:
            seconds = time_notebook(path, mode == "smoke")
            times.setdefault(path.stem, {})[mode] = round(seconds, 1)
            print(f"{path.stem:<28} {mode:<6} {seconds:8.1f} s", flush=True)
            record = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
                      "measured": time.strftime("%Y-%m-%d"), "seconds": times}
            OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
