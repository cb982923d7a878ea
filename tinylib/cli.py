"""The training command line: one flag per `TrainConfig` field, over an optional JSON file of fields.

`python -m tinylib.train --help` lists them. Split from `tinylib.train` (which re-exports `parse_args`) so the
loop file stays short. What it leaves to others: what the fields mean (`tinylib.config`), training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tinylib.config import TrainConfig


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """A TrainConfig from `--config file.json` and one flag per field (flags win over the file)."""
    parser = argparse.ArgumentParser(prog="python -m tinylib.train", description=description)
    parser.add_argument("--config", help="a JSON file of TrainConfig fields; flags given here override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_overrides":
            parser.add_argument(flag, type=json.loads, default=None, help='JSON, e.g. \'{"dropout": 0.1}\'')
        elif f.name in ("sample_prompts", "nan_at_steps"):
            parser.add_argument(flag, nargs="*", default=None, type=int if f.name == "nan_at_steps" else str)
        elif f.type in ("bool",):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "int | None": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None)
    args = vars(parser.parse_args(argv))
    base = json.loads(Path(args.pop("config")).read_text()) if args.get("config") else {}
    base.update({k: v for k, v in args.items() if v is not None})
    return TrainConfig.from_dict(base)
