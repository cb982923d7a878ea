"""Experiments: named training runs in a YAML file that you list, run one by one, resume, and compare.

    python -m tinylib.experiments list experiments/cpu_study.yaml        # name, status, key results
    python -m tinylib.experiments run-next experiments/cpu_study.yaml    # the first unfinished one (resumes)
    python -m tinylib.experiments run experiments/cpu_study.yaml llama_tiny_adamw
    python -m tinylib.experiments run-all experiments/cpu_study.yaml [--log-to tensorboard]
    python -m tinylib.experiments results experiments/cpu_study.yaml     # table and plots (results.py)

The file (experiments/README.md has the full reference):

    out_dir: runs/experiments/cpu_study     # experiment <name> runs in <out_dir>/<name>/
    sample_prompt: Once upon a time         # the results table shows each model's story from this prompt
    defaults:                               # under every experiment; `train` and `overrides` merge key by key
      data: data/tinystories-4096
      budget: {flops: 1.0e13}               # or tokens, tokens_per_param, steps; time_s alone or as a cap
      train: {batch_size: 16, seq_len: 256}
    experiments:
      - name: gpt_tiny_adamw                # unique; letters, digits, '.', '_', '-'
        preset: gpt_tiny                    # a tinylib.config preset
      - name: llama_tiny_muon
        preset: llama_tiny
        optimizer: muon
        overrides: {n_kv_head: 2}           # ModelConfig fields
        train: {muon_lr: 0.02}              # any other TrainConfig field

Experiment fields: name, description, preset, overrides, optimizer, budget, data, seed, train; or `seeds:
[0, 1, 2]` instead of `seed`, which expands to one run per seed named `<name>_seed<s>` (their group is <name>:
the results show each group's mean +- std and, between groups with the same seeds, paired differences).
Relative paths are relative to the repository root. A FLOP budget gives each run `max_tokens = flops / its
training FLOPs per token` (tinylib.budget.token_target), so runs of different shapes compare at equal compute.

A run's status comes from its folder: not started; running (another process holds `experiment.lock`, an
flock the OS drops when that process dies, even on SIGKILL); interrupted at step N (its `latest/` checkpoint
stops short of the schedule); done. Running an interrupted experiment resumes it exactly. The runner adds
`experiment.json` (the spec it started from: a changed spec is refused), `clock.jsonl` (wall time per metrics
record, as if the run had never stopped) and, when done, `result.json` (figures and a sample story). What it
leaves to others: training (`tinylib.train`), reading a folder's state (`status.py` here), the table and plots
(`results.py` here), external trackers (`tinylib.metrics`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinylib.budget import token_target
from tinylib.checkpoint import load_model, load_tokenizer, step_of
from tinylib.config import PRESETS, ModelConfig, TrainConfig, entry_point, get_config
from tinylib.data import read_meta
from tinylib.experiments.results import Clock, last_values, rewrite_results, write_results
from tinylib.experiments.status import Status, run_status
from tinylib.faults import EXPERIMENT_LOCK, RunLockedError, run_lock
from tinylib.metrics import TRACKERS
from tinylib.paths import ROOT, write_atomic
from tinylib.train import sample_completions, train

TOP_FIELDS = ("out_dir", "sample_prompt", "description", "defaults", "experiments")
BUDGETS = ("flops", "tokens", "tokens_per_param", "steps", "time_s")
# TrainConfig fields an experiment sets through its own fields (or the runner sets), not through `train`
NOT_IN_TRAIN = ("data", "preset", "model_overrides", "optimizer", "seed", "out_dir", "max_steps",
                "max_tokens", "max_time_s", "until_step", "resume")


class ExperimentStopped(RuntimeError):
    """A stop signal ended the run early (it is saved, and resumes on the next run)."""


@dataclass
class Experiment:
    """One named run: what to train, for how long, on what. `run_dir` is where it runs."""

    name: str
    run_dir: Path
    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)  # ModelConfig fields
    optimizer: str = "adamw"
    budget: dict = field(default_factory=lambda: {"steps": 1000})  # see BUDGETS
    data: str = "data/tinystories-4096"
    seed: int = 1337
    train: dict = field(default_factory=dict)  # any other TrainConfig field
    description: str = ""
    group: str = ""  # the entry a `seeds:` list expanded into this run ("" for a run of its own)

    def spec(self) -> dict:
        """What defines the run (a resumed run must have the same)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("run_dir", "description", "group")}


FIELDS = tuple(f.name for f in dataclasses.fields(Experiment) if f.name not in ("run_dir", "group"))


@dataclass
class ExperimentList:
    path: Path
    out_dir: Path
    experiments: list[Experiment]
    sample_prompt: str = "Once upon a time"

    def __getitem__(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(f"no experiment {name!r} in {self.path}; it has {[e.name for e in self.experiments]}")


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def _numbers(d: dict) -> dict:
    """YAML 1.1 reads 2e-3 (no dot) and 2.0e13 (no sign) as strings: read them as the numbers meant."""
    number = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
    return {k: float(v) if isinstance(v, str) and number.fullmatch(v) else v for k, v in d.items()}


def _check_keys(where: str, got: dict, known, what: str) -> None:
    if not isinstance(got, dict):
        raise ValueError(f"{where}: expected a mapping of {what} (key: value lines), got {got!r}")
    unknown = sorted(set(got) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown {what} {unknown}; known: {sorted(known)}")


def _check_budget(where: str, budget: dict) -> None:
    _check_keys(where, budget, BUDGETS, "budget field(s)")
    length = [k for k in budget if k != "time_s"]
    if len(length) > 1 or not budget:
        raise ValueError(f"{where}: budget {budget} must name one of {list(BUDGETS[:4])} (time_s may cap "
                         "it), or time_s alone")
    for k, v in budget.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{where}: budget {k}={v!r} must be a positive number")


def _experiment(where: str, entry: dict, defaults: dict, out_dir: Path) -> Experiment:
    _check_keys(where, entry, FIELDS, "field(s)")
    merged = {**defaults, **entry}
    for key in ("train", "overrides", "budget"):
        for source in (defaults, entry):
            if not isinstance(source.get(key, {}), dict):
                raise ValueError(f"{where}: {key} must be a mapping (key: value), got {source[key]!r}")
        base = {} if key == "budget" and key in entry else defaults.get(key, {})  # a budget is replaced whole
        merged[key] = _numbers({**base, **entry.get(key, {})})
    name = merged["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (it is a folder)")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_IN_TRAIN)
    _check_keys(where, merged["train"], train_fields, "train field(s)")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    _check_keys(where, merged["overrides"], model_fields, "ModelConfig override(s)")
    if merged.get("preset", "tiny") not in PRESETS:
        raise ValueError(f"{where}: unknown preset {merged['preset']!r}; choose one of {sorted(PRESETS)}")
    _check_budget(where, merged["budget"])
    log_to = merged["train"].get("log_to")
    if log_to is not None and log_to not in TRACKERS:
        raise ValueError(f"{where}: log_to={log_to!r}; expected one of {TRACKERS}")
    exp = Experiment(run_dir=out_dir / name, **merged)
    get_config(exp.preset, **exp.overrides)  # a bad override value fails here, naming the field
    return exp


def load_experiments(path: str | os.PathLike) -> ExperimentList:
    """Parse and check an experiments file: every problem names the file, the experiment and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no experiments file at {path} (see experiments/)") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("experiments"), list) or not raw["experiments"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty list under 'experiments:'")
    _check_keys(str(path), raw, TOP_FIELDS, "top-level field(s)")
    defaults = raw.get("defaults") or {}
    _check_keys(f"{path}: defaults", defaults, set(FIELDS) - {"name"} | {"seeds"}, "field(s)")
    out_dir = _resolve(raw.get("out_dir", f"runs/experiments/{path.stem}"))
    experiments = []
    for i, entry in enumerate(raw["experiments"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{path}: experiment #{i + 1} must be a mapping with a 'name'")
        where = f"{path}: experiment {entry['name']!r}"
        seeds = entry.get("seeds", defaults.get("seeds"))
        entry, base = {k: v for k, v in entry.items() if k != "seeds"}, {k: v for k, v in defaults.items()
                                                                        if k != "seeds"}
        if seeds is None:
            experiments.append(_experiment(where, entry, base, out_dir))
            continue
        integers = isinstance(seeds, list) and all(type(s) is int for s in seeds)
        if "seed" in entry or not integers or not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"{where}: seeds={seeds!r} must be a list of distinct integers, e.g. [0, 1, 2], "
                             "and the entry must not also set seed")
        for s in seeds:  # one run per seed; the group is the entry's name
            exp = _experiment(where, {**entry, "name": f"{entry['name']}_seed{s}", "seed": s}, base, out_dir)
            experiments.append(dataclasses.replace(exp, group=entry["name"]))
    names = [e.name for e in experiments]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate experiment names {dupes}; each run needs its own name")
    return ExperimentList(path, out_dir, experiments, str(raw.get("sample_prompt", "Once upon a time")))


def train_config(exp: Experiment, log_to: str | None = None) -> TrainConfig:
    """The TrainConfig that runs `exp` (resuming when its folder has a checkpoint); reads the data's vocab."""
    fields = {**exp.train}
    if log_to:
        fields["log_to"] = log_to
    cfg = TrainConfig(data=str(_resolve(exp.data)), preset=exp.preset, model_overrides=dict(exp.overrides),
                      optimizer=exp.optimizer, seed=exp.seed, out_dir=str(exp.run_dir), resume=True, **fields)
    budget = exp.budget
    cfg.max_time_s = budget.get("time_s")
    if "steps" in budget:
        cfg.max_steps = int(budget["steps"])
    elif "tokens" in budget:
        cfg.max_tokens = int(budget["tokens"])
    elif budget.keys() & {"flops", "tokens_per_param"}:
        vocab = math.ceil(read_meta(cfg.data)["vocab_size"] / cfg.vocab_multiple) * cfg.vocab_multiple
        model = get_config(exp.preset, vocab_size=vocab, **exp.overrides)
        cfg.max_tokens = token_target(model, flop_budget=budget.get("flops"), seq_len=cfg.seq_len,
                                      tokens_per_param=budget.get("tokens_per_param", 20.0))
    return cfg


def check_runnable(experiments: list[Experiment]) -> None:
    """Every data folder exists and every budget resolves, before anything trains (one error lists all)."""
    problems = []
    for exp in experiments:
        try:
            train_config(exp)
            read_meta(_resolve(exp.data))
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"experiment {exp.name!r}: {e}")
    if problems:
        raise ValueError("cannot run:\n  " + "\n  ".join(problems))


# --- status -------------------------------------------------------------------------------------------------

def status(exp: Experiment, *, holding: bool = False) -> Status:
    """The experiment's state from its folder (`tinylib.experiments.status`). A run trained to its last step
    but killed before its sample and result.json were written is interrupted, so run-next finishes it."""
    found = run_status(exp.run_dir, holding=holding)
    if found.state == "done" and not (exp.run_dir / "result.json").is_file():
        return Status("interrupted", found.step, found.total_steps)
    return found


def list_table(exps: ExperimentList) -> str:
    head = f"{'name':<24} {'preset':<20} {'optimizer':<9} {'budget':<18} {'status':<30} {'val loss':>8} " \
           f"{'bpb':>6} {'tokens':>11}"
    title = f"{exps.path}: {len(exps.experiments)} experiments, runs in {exps.out_dir}"
    lines = [title, head, "-" * len(head)]
    for exp in exps.experiments:
        state = status(exp)
        res = last_values(exp.run_dir, (state.step or 0) if state.state == "interrupted" else None)
        budget = ", ".join(f"{k} {v:.3g}" for k, v in exp.budget.items())
        val = f"{res['val_loss']:>8.3f} {res['val_bpb']:>6.3f}" if "val_loss" in res else f"{'-':>8} {'-':>6}"
        lines.append(f"{exp.name:<24} {exp.preset:<20} {exp.optimizer:<9} {budget:<18} {state!s:<30} "
                     f"{val} {res.get('tokens', 0):>11,}")
    return "\n".join(lines)


# --- running ------------------------------------------------------------------------------------------------

def run_experiment(exp: Experiment, *, log_to: str | None = None, sample_prompt: str = "Once upon a time",
                   progress: bool = True) -> dict:
    """Run (or resume) one experiment under its lock; returns its result.json figures. A done one is skipped.

    Raises `RunLockedError` when another process runs it, ValueError when its spec changed since it started.
    """
    with run_lock(exp.run_dir, EXPERIMENT_LOCK):
        spec_file = exp.run_dir / "experiment.json"
        if spec_file.is_file():
            old = json.loads(spec_file.read_text())
            changed = sorted(k for k in set(old) | set(exp.spec()) if old.get(k) != exp.spec().get(k))
            if changed and (exp.run_dir / "latest").is_dir():
                raise ValueError(f"experiment {exp.name!r} changed since its run started ({changed}); rename "
                                 f"it, or delete {exp.run_dir} to start it again")
        done = exp.run_dir / "result.json"
        if status(exp, holding=True).state == "done" and done.is_file():
            return json.loads(done.read_text())
        write_atomic(spec_file, json.dumps(exp.spec(), indent=2).encode())
        cfg = train_config(exp, log_to)
        cfg.progress = cfg.progress and progress
        latest = exp.run_dir / "latest"
        # step_of is None for a damaged config.json: the trainer then resumes from previous/
        start = (step_of(latest) or 0) if (latest / "state.pt").is_file() else 0
        clock = Clock(exp.run_dir, start)
        result = train(cfg, on_record=clock)
        if getattr(result, "stopped_by", None):  # SIGINT/SIGTERM: the trainer saved latest/ and returned
            raise ExperimentStopped(f"experiment {exp.name!r} stopped by {result.stopped_by} at step "
                                    f"{result.step}; run it again to resume")
        model = load_model(latest)
        sample = sample_completions(model, load_tokenizer(latest), [sample_prompt], 96)[0]
        figures = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
        figures.update(name=exp.name, wall_s=clock.offset + time.perf_counter() - clock.t0, sample=sample)
        write_atomic(done, json.dumps(figures, indent=2).encode())
        return figures


def unfinished(exps: ExperimentList) -> list[Experiment]:
    return [e for e in exps.experiments if status(e).state in ("not started", "interrupted")]


def run_all(exps: ExperimentList, *, log_to: str | None = None, progress: bool = True,
            limit: int | None = None) -> list[dict]:
    """Run every unfinished experiment in order (or the first `limit`), resuming interrupted ones and skipping
    those running elsewhere; every data folder is checked first."""
    todo = unfinished(exps)
    check_runnable(todo)
    results: list[dict] = []
    for exp in todo:
        if limit is not None and len(results) >= limit:
            break
        try:
            print(f"experiment {exp.name}: {status(exp)}", flush=True)
            results.append(run_experiment(exp, log_to=log_to, sample_prompt=exps.sample_prompt,
                                          progress=progress))
        except RunLockedError as e:  # another process runs it (or took it since the list was made)
            print(f"skipping {exp.name}: {e}")
    return results


def run_next(exps: ExperimentList, *, log_to: str | None = None, progress: bool = True) -> dict | None:
    """Run the first experiment that is neither done nor running elsewhere; None when there is none."""
    results = run_all(exps, log_to=log_to, progress=progress, limit=1)
    return results[0] if results else None


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinylib.experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"list": "each experiment's status, last val loss, bpb and tokens",
                "run-next": "run (or resume) the first experiment that is neither done nor running elsewhere",
                "run": "run (or resume) one experiment by name",
                "run-all": "run (or resume) every experiment not done, one after another",
                "results": "write the results table, curves and plots of the finished runs"}
    for name, what in commands.items():
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument("file", help="an experiments YAML file, e.g. experiments/cpu_study.yaml")
        if name == "run":
            p.add_argument("name", help="the experiment to run (or resume)")
        if name.startswith("run"):
            p.add_argument("--log-to", choices=TRACKERS, default=None, help="also log to this tracker")
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "results":
            p.add_argument("--out", default=None, help="folder for the table and plots (default: "
                           "experiments/results/<file name>)")
            p.add_argument("--only", nargs="+", default=None, help="these experiments only")
            p.add_argument("--from-table", action="store_true", help="re-derive results.md, results.csv and "
                           "the curves from the folder's own results.csv (when the run folders are gone)")
    args = parser.parse_args(argv)
    try:
        exps = load_experiments(args.file)
        if args.command == "results":
            out = _resolve(args.out) if args.out else ROOT / "experiments" / "results" / exps.path.stem
            chosen = [e for e in exps.experiments
                      if not args.only or e.name in args.only or e.group in args.only]
            groups = {e.name: e.group for e in chosen if e.group}
            if args.from_table:
                print(rewrite_results(out, prompt=exps.sample_prompt, groups=groups))
                return 0
            print(write_results({e.name: e.run_dir for e in chosen}, out, prompt=exps.sample_prompt,
                                groups=groups))
            return 0
        kw = dict(log_to=args.log_to, progress=not args.no_progress) if args.command != "list" else {}
        if args.command == "run":
            check_runnable([exps[args.name]])
            run_experiment(exps[args.name], sample_prompt=exps.sample_prompt, **kw)
        elif args.command == "run-next" and run_next(exps, **kw) is None:
            print("nothing to run: every experiment is done or running elsewhere")
        elif args.command == "run-all":
            run_all(exps, **kw)
        print(list_table(exps))
        return 0
    except ExperimentStopped as e:  # saved at a step boundary, as the trainer does on SIGTERM: not an error
        print(e, file=sys.stderr)
        return 0
    except (ValueError, KeyError, FileNotFoundError, RunLockedError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
