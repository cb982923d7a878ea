"""Results of a set of runs: one row per run (the table, in Markdown and CSV) and loss curves against tokens,
FLOPs or wall time (the plots), for any run folders written by `tinylib.train`.

A row: parameters, tokens, FLOPs (tokens x training FLOPs per token, `tinylib.flops`), wall time, tokens/s and
MFU (medians of the logged steps after the first), final validation loss and bits per byte, a sample story.
A curve: the run's metrics records, each with `flops` and (when `tinylib.experiments` ran it) `wall_s` added.
`write_results` saves the table, the plots and the curves into a folder that `read_results` reads back
without the run folders (how notebook 10 shows the shipped CPU study). What it leaves to others: running
(`tinylib.experiments`), the metrics log (`tinylib.metrics`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from pathlib import Path

from tinylib.checkpoint import load_meta
from tinylib.config import ModelConfig, param_counts
from tinylib.flops import flops_per_token
from tinylib.metrics import MetricsLog, read_metrics
from tinylib.paths import write_atomic

COLUMNS = ("name", "preset", "style", "optimizer", "params", "steps", "tokens", "flops", "wall_s",
           "tokens_per_s", "mfu", "mfu_note", "val_loss", "val_bpb", "eval", "eval_lo", "eval_hi", "done",
           "sample")
# the benchmark's report of a run (`python -m tinylib.evals --model <run> --into-run`): its overall centred
# score and 95% interval become the eval columns; read as a file, so this room needs nothing of tinylib.evals
EVALS_FILE = "evals.json"
X_LABELS = {"tokens": "tokens", "flops": "training FLOPs", "wall_s": "wall time (s)"}


def _run_meta(run_dir: Path) -> dict:
    for sub in ("latest", "best"):
        if (run_dir / sub / "config.json").is_file():
            return load_meta(run_dir / sub)
    raise FileNotFoundError(f"{run_dir} has no checkpoint yet (latest/ or best/): nothing to report")


class Clock:
    """Wall time of a run as if it had never stopped: a resumed run continues from the time at its save.

    One line `{"step", "wall_s"}` per metrics record in `<run>/clock.jsonl`, truncated like metrics.jsonl."""

    def __init__(self, run_dir: Path, start_step: int):
        self.log = MetricsLog(run_dir / "clock.jsonl")
        past = read_metrics(self.log.path) if self.log.path.is_file() and start_step else []
        self.offset = max((r["wall_s"] for r in past if r["step"] <= start_step), default=0.0)
        self.log.truncate_after(start_step if start_step else -1)
        self.t0 = time.perf_counter()

    def __call__(self, record: dict) -> None:
        self.log.write({"step": record["step"], "wall_s": self.offset + time.perf_counter() - self.t0})


def last_values(run_dir: str | os.PathLike, upto_step: int | None = None) -> dict:
    """The last logged validation loss and bits per byte, and tokens seen, of a started run ({} if none);
    with `upto_step` (an interrupted run's saved step) only what was logged up to it: the steps after it were
    lost and will be taken again."""
    try:
        records = read_metrics(run_dir)
    except FileNotFoundError:
        return {}
    if upto_step is not None:
        records = [r for r in records if r.get("step", 0) <= upto_step]
    val = [r for r in records if r.get("val_loss") is not None]
    out = {"tokens": max((r.get("tokens", 0) for r in records), default=0)}
    if val:
        out.update(val_loss=val[-1]["val_loss"], val_bpb=val[-1]["val_bpb"])
    return out


def run_curve(run_dir: str | os.PathLike) -> list[dict]:
    """The run's metrics records with `flops` (tokens x FLOPs per token) and, if recorded, `wall_s`."""
    run_dir = Path(run_dir)
    meta = _run_meta(run_dir)
    fpt = flops_per_token(ModelConfig.from_dict(meta["model"]), meta["train"]["seq_len"])
    clock = run_dir / "clock.jsonl"
    walls = [r["wall_s"] for r in read_metrics(clock)] if clock.is_file() else []
    records = read_metrics(run_dir)
    out = []
    for i, r in enumerate(records):
        r = {**r, "flops": r.get("tokens", 0) * fpt}
        if len(walls) == len(records):  # one clock line per record, else the wall times are not this run's
            r["wall_s"] = walls[i]
        out.append(r)
    return out


def summarize(name: str, run_dir: str | os.PathLike) -> dict:
    """One row of the table for a run folder (finished or not: `done` says which)."""
    run_dir = Path(run_dir)
    meta = _run_meta(run_dir)
    model = ModelConfig.from_dict(meta["model"])
    curve = run_curve(run_dir)
    timed = [r for r in curve if r.get("tokens_per_s") and r["step"] > 1] or \
        [r for r in curve if r.get("tokens_per_s")]
    val = [r for r in curve if r.get("val_loss") is not None]
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    tokens = meta["tokens_seen"]
    evals = json.loads((run_dir / EVALS_FILE).read_text())["overall"] if (run_dir / EVALS_FILE).is_file() \
        else {"centred": math.nan, "ci": [math.nan, math.nan]}

    def median(key: str) -> float:
        values = [r[key] for r in timed if r.get(key) is not None]
        return statistics.median(values) if values else math.nan

    last = val[-1] if val else {"val_loss": math.nan, "val_bpb": math.nan}
    wall = result.get("wall_s", max((r.get("wall_s", math.nan) for r in curve), default=math.nan))
    return {"name": name, "preset": meta["train"]["preset"], "style": model.style,
            "optimizer": meta["train"]["optimizer"], "params": param_counts(model).total,
            "steps": meta["step"], "tokens": tokens,
            "flops": tokens * flops_per_token(model, meta["train"]["seq_len"]), "wall_s": wall,
            "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"), "val_loss": last["val_loss"],
            "val_bpb": last["val_bpb"], "eval": evals["centred"], "eval_lo": evals["ci"][0],
            "eval_hi": evals["ci"][1], "done": bool(result), "sample": result.get("sample", "")}


def collect(runs: dict[str, str | os.PathLike]) -> tuple[list[dict], dict[str, list[dict]]]:
    """(rows, curves) of the runs {name: run folder} that have a checkpoint; the others are left out."""
    present = {name: Path(d) for name, d in runs.items() if any((Path(d) / s / "config.json").is_file()
                                                                 for s in ("latest", "best"))}
    return [summarize(n, d) for n, d in present.items()], {n: run_curve(d) for n, d in present.items()}


def mfu_problems(rows: list[dict]) -> dict[str, str]:
    """{run: why its MFU cannot be right}: an MFU above 100%, or one measured against a device peak under half
    the other runs' (a peak probed while the machine was busy reads too low, and every MFU over it too high).
    The peak a run used is its FLOP/s over its MFU: tokens/s x FLOPs per token / MFU. A row read back from a
    table already flagged keeps its reason (`mfu_note`; its MFU is then missing)."""
    problems = {r["name"]: r["mfu_note"] for r in rows if r.get("mfu_note")}
    peaks = {r["name"]: r["tokens_per_s"] * r["flops"] / r["tokens"] / r["mfu"] for r in rows
             if r["name"] not in problems and r["tokens"] and r["mfu"] and r["mfu"] > 0
             and not math.isnan(r["tokens_per_s"])}
    typical = statistics.median(peaks.values()) if peaks else math.nan
    for r in rows:
        name, peak = r["name"], peaks.get(r["name"], math.nan)
        if name in problems:
            continue
        if r["mfu"] > 1:
            problems[name] = (f"MFU {r['mfu']:.0%} is above 100%, which cannot be: the device peak it "
                              f"divides by ({peak:.3g} FLOP/s) was measured too low, on a busy machine")
        elif peak < typical / 2:
            problems[name] = (f"measured against a device peak of {peak:.3g} FLOP/s, under half the "
                              f"other runs' {typical:.3g}: the peak was probed on a busy machine, so this "
                              "MFU reads too high")
    return problems


def drop_bad_mfu(rows: list[dict], curves: dict[str, list[dict]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """(rows, curves) as files show them: a run's MFU that cannot be right (`mfu_problems`) becomes missing
    (NaN in the row, no `mfu` in its curve's records) with the reason in `mfu_note`, so no written table or
    curve shows an impossible figure."""
    problems = mfu_problems(rows)
    rows = [{**r, "mfu": math.nan, "mfu_note": problems[r["name"]]} if r["name"] in problems
            else {**r, "mfu_note": ""} for r in rows]
    curves = {name: [{k: v for k, v in rec.items() if k != "mfu"} for rec in curve] if name in problems
              else curve for name, curve in curves.items()}
    return rows, curves


# Two-sided 95% quantiles of Student's t by degrees of freedom 1..30 (a paired difference over n seeds has
# n - 1); beyond 30 the normal's 1.96 is within 2%. With 2 seeds the quantile is 12.7: two seeds say little.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (table above; 1.96 past 30)."""
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs at least 2 seeds (1 degree of freedom)")
    return T95[df - 1] if df <= len(T95) else 1.96


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1: the seeds are a sample of all the seeds one could run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_seeds(a: dict[int, float], b: dict[int, float]) -> dict:
    """b minus a over the seeds both ran, paired by seed: {"seeds", "diff" (mean of the per-seed differences),
    "std" (their sample std), "half_width" (of the 95% t interval, t95(n - 1) std / sqrt n), "beyond_noise"
    (the interval excludes 0)}. Pairing removes what a seed does to both runs (the same initial weights and
    batches), so it is tighter than comparing two means with their own spreads."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"seeds {sorted(a)} and {sorted(b)} share {len(seeds)}: a paired difference over "
                         "seeds needs at least 2 in common")
    diff, std = mean_std([b[s] - a[s] for s in seeds])
    half = t95(len(seeds) - 1) * std / math.sqrt(len(seeds))
    return {"seeds": seeds, "diff": diff, "std": std, "half_width": half, "beyond_noise": abs(diff) > half}


def seed_summary(rows: list[dict], groups: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(per group: runs, mean and std of val_loss and val_bpb over its seeds; paired differences: for each
    group with the same seeds as the first group, the mean and std over seeds of its val_bpb minus the first
    group's at the same seed). `groups` maps a run's name (`<group>_seed<s>`) to its group."""
    by_group: dict[str, dict[int, dict]] = {}
    for r in rows:
        group = groups.get(r["name"])
        if group and r["name"].startswith(f"{group}_seed"):
            by_group.setdefault(group, {})[int(r["name"][len(group) + 5:])] = r
    summary = []
    for group, runs in by_group.items():
        loss, bpb = (mean_std([r[k] for r in runs.values()]) for k in ("val_loss", "val_bpb"))
        summary.append({"group": group, "seeds": sorted(runs), "val_loss": loss, "val_bpb": bpb})
    paired = []
    if summary:
        first = by_group[summary[0]["group"]]
        for s in summary[1:]:
            runs = by_group[s["group"]]
            if set(runs) == set(first) and len(runs) > 1:
                p = paired_seeds({k: r["val_bpb"] for k, r in first.items()},
                                 {k: r["val_bpb"] for k, r in runs.items()})
                paired.append({"group": s["group"], "vs": summary[0]["group"], "diff": (p["diff"], p["std"]),
                               "half_width": p["half_width"], "beyond_noise": p["beyond_noise"]})
    return summary, paired


def _seed_markdown(rows: list[dict], groups: dict[str, str]) -> list[str]:
    summary, paired = seed_summary(rows, groups)
    if not summary:
        return []
    lines = ["", "Seeds: mean ± standard deviation over each group's runs (a difference smaller than the "
             "spread is not a result):", "", "| group | seeds | val loss | val bpb |", "|---|---|---|---|"]
    lines += [f"| {s['group']} | {', '.join(map(str, s['seeds']))} | {s['val_loss'][0]:.3f} ± "
              f"{s['val_loss'][1]:.3f} | {s['val_bpb'][0]:.3f} ± {s['val_bpb'][1]:.3f} |" for s in summary]
    if paired:
        lines += ["", "Paired by seed (val bpb, this group minus the first at each seed, mean ± std; the 95% "
                  "t interval's half width; a difference inside it is noise):", ""]
        lines += [f"- {p['group']} - {p['vs']}: {p['diff'][0]:+.3f} ± {p['diff'][1]:.3f} (95%: ± "
                  f"{p['half_width']:.3f}, {'beyond' if p['beyond_noise'] else 'within'} the noise)"
                  for p in paired]
    return lines


def results_markdown(rows: list[dict], prompt: str = "", groups: dict[str, str] | None = None) -> str:
    """The table (Markdown), the seed groups' mean ± std and paired differences (`groups`: run name -> the
    group a `seeds:` list expanded it from), then each run's sample story. An MFU that cannot be right
    (`mfu_problems`) is shown as n/a, with the reason under the table."""
    head = ("| run | preset | style | optimizer | params | tokens | FLOPs | wall time | tokens/s | MFU "
            "| val loss | val bpb | benchmark [95% CI] |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    problems = mfu_problems(rows)
    for r in rows:
        mfu = "n/a*" if r["name"] in problems else "n/a" if math.isnan(r["mfu"]) else f"{r['mfu']:.1%}"
        mark = "" if r["done"] else " (unfinished)"
        lines.append(f"| {r['name']}{mark} | {r['preset']} | {r['style']} | {r['optimizer']} | "
                     f"{r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | {r['flops']:.3g} | "
                     f"{r['wall_s']:.0f} s | {r['tokens_per_s']:,.0f} | {mfu} | "
                     f"{r['val_loss']:.3f} | {r['val_bpb']:.3f} | {_benchmark(r)} |")
    if problems:
        lines += [""] + [f"\\* MFU of {name}: {why}." for name, why in problems.items()]
    lines += _seed_markdown(rows, groups or {})
    samples = [f"- **{r['name']}**: {r['sample']!r}" for r in rows if r["sample"]]
    if samples:
        lines += ["", f"Samples (prompt {prompt!r}, temperature 0.8, top-k 50, seed 0):" if prompt else
                  "Samples:", ""] + samples
    return "\n".join(lines)


def _benchmark(row: dict) -> str:
    """The benchmark's overall centred score and interval, or n/a (not evaluated, or an older results.csv)."""
    value = row.get("eval", math.nan)
    if value is None or value == "" or math.isnan(float(value)):
        return "n/a"
    return f"{float(value):+.3f} [{float(row['eval_lo']):+.3f}, {float(row['eval_hi']):+.3f}]"


def results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    # a missing figure (NaN: not measured, not evaluated, or an MFU that cannot be right) is an empty cell
    writer.writerows([{k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                      for r in rows])
    return buf.getvalue()


def value_at(curve: list[dict], x: float, *, key: str = "flops", metric: str = "val_loss") -> float:
    """`metric` at `x` (tokens, FLOPs or wall_s), linearly interpolated between the two records around it;
    NaN outside the curve."""
    pts = sorted((r[key], r[metric]) for r in curve if r.get(metric) is not None and key in r)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1] if pts and pts[-1][0] == x else math.nan


def plot_curves(curves: dict[str, list[dict]], x: str = "flops", metric: str = "val_loss", ax=None,
                names: list[str] | None = None):
    """`metric` against x = "tokens", "flops" or "wall_s" for each run (or `names` only), on one Axes."""
    import matplotlib.pyplot as plt  # only when plotting: tables and tests run without matplotlib

    if x not in X_LABELS:
        raise ValueError(f"x={x!r}; expected one of {list(X_LABELS)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for name in names or list(curves):
        pts = [(r[x], r[metric]) for r in curves[name]
               if r.get(metric) is not None and x in r and r["step"] > 0]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if metric.startswith("val") else None, ms=3, label=name)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(metric.replace("_", " ") + (" (nats/token)" if metric.endswith("loss") else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def write_results(runs: dict[str, str | os.PathLike], out: str | os.PathLike, *, prompt: str = "",
                  groups: dict[str, str] | None = None) -> str:
    """Write results.md (with `groups`' seed summary: see `results_markdown`), results.csv,
    curves/<name>.jsonl and loss_vs_{tokens,flops,wall_s}.png into `out`;
    returns the Markdown."""
    from matplotlib.figure import Figure  # only when plotting; a bare Figure needs no GUI backend

    out = Path(out)
    rows, curves = collect(runs)
    if not rows:
        raise FileNotFoundError(f"none of {sorted(runs)} has a checkpoint yet: run them first")
    markdown = _write_tables(out, rows, curves, prompt, groups)
    for x in X_LABELS:
        fig = Figure(figsize=(6.5, 4), layout="tight")
        plot_curves(curves, x=x, ax=fig.subplots()).set_title(f"validation loss vs {X_LABELS[x]}")
        fig.savefig(out / f"loss_vs_{x}.png", dpi=110)
    return markdown


def _write_tables(out: Path, rows: list[dict], curves: dict[str, list[dict]], prompt: str,
                  groups: dict[str, str] | None) -> str:
    rows, curves = drop_bad_mfu(rows, curves)
    markdown = results_markdown(rows, prompt, groups)
    write_atomic(out / "results.md", (markdown + "\n").encode())
    write_atomic(out / "results.csv", results_csv(rows).encode())
    for name, curve in curves.items():
        write_atomic(out / "curves" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in curve).encode())
    return markdown


def rewrite_results(folder: str | os.PathLike, *, prompt: str = "",
                    groups: dict[str, str] | None = None) -> str:
    """Re-derive results.md, results.csv and the curves of a folder `write_results` wrote, from that folder
    alone (the run folders may be gone): what a change to the table's rules (a new column, an MFU that cannot
    be right) does to a shipped table. The plots are left as they are. Returns the Markdown."""
    rows, curves = read_results(folder)
    return _write_tables(Path(folder), rows, curves, prompt, groups)


def read_results(folder: str | os.PathLike) -> tuple[list[dict], dict[str, list[dict]]]:
    """(rows, curves) from a folder `write_results` wrote: the table and curves without the run folders."""
    folder = Path(folder)
    if not (folder / "results.csv").is_file():
        raise FileNotFoundError(f"no results.csv in {folder}: write it with "
                                "`python -m tinylib.experiments results <experiments file>`")
    numeric = {"params", "steps", "tokens", "flops", "wall_s", "tokens_per_s", "mfu", "val_loss", "val_bpb",
               "eval", "eval_lo", "eval_hi"}
    rows = []
    for r in csv.DictReader(io.StringIO((folder / "results.csv").read_text())):
        rows.append({k: (float(v) if v else math.nan) if k in numeric else v == "True" if k == "done" else v
                     for k, v in r.items()})
    curves = {r["name"]: read_metrics(folder / "curves" / f"{r['name']}.jsonl") for r in rows}
    return rows, curves
