"""Experiments: the YAML list is checked before anything trains; run-all, SIGKILL and run-next resume to the
same weights as an uninterrupted run, with the right status at each point; TensorBoard logs read back."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinylib.config import TrainConfig, get_config
from tinylib.data import prepare_dataset
from tinylib.experiments.results import read_results, value_at, write_results
from tinylib.experiments.runner import (
    check_runnable,
    load_experiments,
    run_experiment,
    run_next,
    status,
    train_config,
)
from tinylib.faults import RunLockedError
from tinylib.flops import flops_per_token
from tinylib.metrics import read_metrics
from tinylib.train import train

# one torch thread here and OMP_NUM_THREADS=1 in the subprocesses: tiny models run fastest so, even on a busy
# CPU, and every process then runs the same kernels (the weights are compared bit for bit)
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_layer": 2, "d_model": 64, "n_head": 4, "d_mlp": 128, "max_seq_len": 64}
TRAIN = {"batch_size": 4, "seq_len": 32, "warmup_steps": 2, "eval_every": 4, "eval_batches": 2,
         "eval_batch_size": 4, "sample_prompts": [], "log_every": 1, "dtype": "fp32",
         "compile": "off"}  # resume under compile is not bitwise on CPUs


@pytest.fixture(scope="module")
def data_dir(tinystories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ts512"
    prepare_dataset(tinystories_dir, "tinystories-512", out, max_stories=200, num_proc=1, progress=False)
    return out


def write_list(path: Path, data_dir: Path, experiments: list[dict], **top) -> Path:
    defaults = {"data": str(data_dir), "overrides": SMALL, "train": TRAIN}
    doc = {"out_dir": str(path.parent / "runs"), "sample_prompt": "Once upon a time", "defaults": defaults,
           "experiments": experiments, **top}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "tinylib.experiments", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def states(exps) -> dict[str, str]:
    return {e.name: str(status(e)) for e in exps.experiments}


def saved_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "latest" / "config.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_run_all_killed_then_run_next_resumes_to_the_uninterrupted_weights(data_dir, tmp_path):
    twin = {"preset": "llama_tiny", "optimizer": "muon", "budget": {"steps": 30},
            "train": {"save_every": 2, "muon_lr": 0.02}}
    path = write_list(tmp_path / "study.yaml", data_dir, [
        {"name": "gpt", "preset": "gpt_tiny", "budget": {"steps": 6}},
        {"name": "llama", **twin},
        {"name": "llama_again", **twin},  # the same run, never interrupted
    ])
    exps = load_experiments(path)
    assert set(states(exps).values()) == {"not started"}

    proc = cli("run-all", str(path), "--no-progress", wait=False)
    llama = exps["llama"]
    deadline = time.monotonic() + 120
    while saved_step(llama.run_dir) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        seen = states(exps)
        # the lock keeps a second process (here: this one) from running the same experiment
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            run_experiment(llama)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
    assert seen["gpt"] == "done (6 steps)" and seen["llama"].startswith("running"), (seen, out)
    assert seen["llama_again"] == "not started"
    killed_at = saved_step(llama.run_dir)
    assert 4 <= killed_at < 30, out
    after_kill = states(exps)
    assert after_kill == {"gpt": "done (6 steps)", "llama": f"interrupted at step {killed_at} of 30",
                          "llama_again": "not started"}

    first = cli("run-next", str(path), "--no-progress")  # the OS dropped the dead process's lock
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"experiment llama: interrupted at step {killed_at} of 30" in first.stdout
    assert f"resumed from {llama.run_dir / 'latest'} at step {killed_at}" in first.stdout
    assert states(exps) == {"gpt": "done (6 steps)", "llama": "done (30 steps)", "llama_again": "not started"}
    second = cli("run-next", str(path), "--no-progress")
    assert second.returncode == 0 and "resumed" not in second.stdout, second.stdout + second.stderr
    assert set(states(exps).values()) == {"done (6 steps)", "done (30 steps)"}
    assert run_next(exps) is None  # nothing left to run
    changed = load_experiments(write_list(path, data_dir, [{"name": "llama", **twin, "seed": 7}]))
    with pytest.raises(ValueError, match=r"'llama' changed since its run started \(\['seed'\]\)"):
        run_experiment(changed["llama"])

    resumed = load_file(str(llama.run_dir / "latest" / "model.safetensors"))
    straight = load_file(str(exps["llama_again"].run_dir / "latest" / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    for k in resumed:
        assert torch.equal(resumed[k], straight[k]), k
    # the resumed run's logs read like one run: every step once, one clock line per metrics record
    steps = [r["step"] for r in read_metrics(llama.run_dir) if "train_loss" in r]
    assert steps == list(range(1, 31))
    assert len(read_metrics(llama.run_dir / "clock.jsonl")) == len(read_metrics(llama.run_dir))

    # the results: a table row per run, FLOPs = tokens x FLOPs per token, read back from the written folder
    write_results({e.name: e.run_dir for e in exps.experiments}, tmp_path / "results", prompt="Once upon")
    rows, curves = read_results(tmp_path / "results")
    by_name = {r["name"]: r for r in rows}
    model = get_config("llama_tiny", vocab_size=512, **SMALL)
    assert by_name["llama"]["tokens"] == 30 * 4 * 32
    assert by_name["llama"]["flops"] == pytest.approx(30 * 4 * 32 * flops_per_token(model, 32))
    assert by_name["llama"]["val_loss"] == by_name["llama_again"]["val_loss"]
    assert by_name["gpt"]["style"] == "gpt" and all(r["done"] and r["sample"] for r in rows)
    final = curves["llama"][-1]
    assert value_at(curves["llama"], final["flops"]) == final["val_loss"]
    assert math.isnan(value_at(curves["llama"], 2 * final["flops"]))
    assert {"loss_vs_tokens.png", "loss_vs_flops.png", "loss_vs_wall_s.png"} <= {
        p.name for p in (tmp_path / "results").iterdir()}


def test_bad_lists_are_refused_before_anything_trains(data_dir, tmp_path):
    def refused(experiments, match, **top):
        with pytest.raises(ValueError, match=match):
            load_experiments(write_list(tmp_path / "bad.yaml", data_dir, experiments, **top))

    ok = {"name": "a", "budget": {"steps": 2}}
    refused([{**ok, "optimiser": "muon"}], r"experiment 'a': unknown field\(s\) \['optimiser'\]")
    refused([{**ok, "train": {"lr_max": 1}}], r"experiment 'a': unknown train field\(s\) \['lr_max'\]")
    refused([{**ok, "train": {"max_steps": 9}}], r"experiment 'a': unknown train field\(s\) \['max_steps'\]")
    refused([{**ok, "overrides": {"n_layers": 2}}], r"experiment 'a': unknown ModelConfig override")
    refused([ok, {**ok, "preset": "gpt_tiny"}], r"duplicate experiment names \['a'\]")
    refused([{**ok, "preset": "llama_7B"}], r"experiment 'a': unknown preset 'llama_7B'")
    refused([{**ok, "budget": {"steps": 2, "tokens": 5}}], r"experiment 'a': budget .* must name one of")
    refused([{"name": "a"}], r"experiment 'a': budget \{\} must name one of")
    refused([{**ok, "train": {"log_to": "mlflow"}}], r"experiment 'a': log_to='mlflow'")
    refused([ok], r"unknown top-level field\(s\) \['outdir'\]", outdir="x")

    # YAML 1.1 reads 2e-3 as a string; the list reads it as the number meant
    (tmp_path / "num.yaml").write_text(f"defaults: {{data: {data_dir}, budget: {{flops: 2.0e9}}}}\n"
                                       "experiments:\n  - {name: a, train: {lr: 2e-3, seq_len: 32}}\n")
    cfg = train_config(load_experiments(tmp_path / "num.yaml")["a"])
    assert cfg.lr == 0.002 and cfg.max_tokens == int(2.0e9 // flops_per_token(get_config("tiny", 512), 32))

    # a missing data folder is reported for every experiment that needs it, and nothing is created
    path = write_list(tmp_path / "nodata.yaml", data_dir, [ok, {**ok, "name": "b", "data": "data/nowhere"}])
    with pytest.raises(ValueError, match=r"experiment 'b': .*data/nowhere"):
        check_runnable(load_experiments(path).experiments)
    proc = cli("run-all", str(path))
    assert proc.returncode == 2 and "experiment 'b'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_tensorboard_logs_the_metrics_and_a_resumed_run_continues_them(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # dev extra

    out = tmp_path / "tb_run"
    cfg = TrainConfig(data=str(data_dir), preset="llama_tiny", model_overrides=dict(SMALL), out_dir=str(out),
                      max_steps=6, lr=3e-3, log_to="tensorboard", resume=True, **{**TRAIN, "eval_every": 3})

    def crash_at_5(record):  # an exception after step 5 was logged: the last checkpoint is step 3's
        if record["step"] == 5 and "train_loss" in record:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, on_record=crash_at_5)
    tracker = json.loads((out / "tracker.json").read_text())
    assert tracker == {"kind": "tensorboard", "run_id": str(out / "tensorboard")}
    train(cfg)  # resumes at step 3, into the same TensorBoard run
    assert json.loads((out / "tracker.json").read_text()) == tracker

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train_loss")]
    expected = {r["step"]: r["train_loss"] for r in read_metrics(out) if "train_loss" in r}
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]  # steps 4 and 5 once: the crashed run's copies purged
    assert dict(logged) == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32
    assert [e.step for e in events.Scalars("val_loss")][-1] == 6


def test_results_refuse_an_impossible_mfu():
    """An MFU above 100%, or one over a device peak far below the other runs' (probed on a busy machine), is
    shown as n/a with the reason; the shipped architecture-lab table had 137.2%, 44.8% and 37.2%."""
    from tinylib.experiments.results import mfu_problems, results_markdown

    def row(name, tokens_per_s, mfu):  # 1e7 FLOPs per token
        return {"name": name, "preset": "llama_tiny", "style": "llama", "optimizer": "adamw", "params": 1e6,
                "steps": 10, "tokens": 1e5, "flops": 1e12, "wall_s": 100.0, "tokens_per_s": tokens_per_s,
                "mfu": mfu, "val_loss": 4.0, "val_bpb": 1.5, "done": True, "sample": ""}

    rows = [row("a", 2000, 0.05), row("b", 2200, 0.055), row("c", 900, 0.36), row("d", 3800, 1.37)]
    problems = mfu_problems(rows)  # a and b used a 4e11 FLOP/s peak; c and d one 16x lower
    assert set(problems) == {"c", "d"} and "above 100%" in problems["d"] and "busy machine" in problems["c"]
    table = results_markdown(rows)
    assert table.count("n/a*") == 2 and "137.0%" not in table
    assert "| 5.0% |" in table and "\\* MFU of d: MFU 137% is above 100%" in table
    shipped, _ = read_results(Path(__file__).resolve().parents[1] / "experiments/results/architecture_lab")
    assert set(mfu_problems(shipped)) == {"llama_tiny_seed2", "wsd_seed2", "relu2_seed2"}
    assert all(math.isnan(r["mfu"]) and r["mfu_note"] for r in shipped if r["name"] in mfu_problems(shipped))


def _mfus(value) -> list[float]:
    """Every number under an "mfu" key, at any depth of a JSON value."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in ([v] if k == "mfu" and isinstance(v, (int, float))
                                                       else _mfus(v))]
    return [x for v in value for x in _mfus(v)] if isinstance(value, list) else []


def test_no_shipped_results_file_shows_an_mfu_above_100_percent():
    """Every table, curve and JSON under experiments/results: MFU <= 1 or missing (the shipped
    architecture-lab csv and curves had 1.37 and 2.19 while its results.md already said n/a)."""
    results = Path(__file__).resolve().parents[1] / "experiments/results"
    for md in results.glob("**/*.md"):
        cells = [c.strip() for line in md.read_text().splitlines() if line.startswith("| ")
                 for c in line.split("|")]
        assert not [c for c in cells if c.endswith("%") and float(c[:-1]) > 100], md
    for path in results.glob("**/results.csv"):
        mfus = [r["mfu"] for r in csv.DictReader(io.StringIO(path.read_text()))]
        assert all(m == "" or 0 <= float(m) <= 1 for m in mfus), (path, mfus)
    for path in [*results.glob("**/*.jsonl"), *results.glob("**/*.json")]:
        text = path.read_text()
        values = [json.loads(line) for line in text.splitlines() if line] if path.suffix == ".jsonl" \
            else [json.loads(text)]
        assert all(0 <= m <= 1 for m in _mfus(values)), path


def test_shipped_tables_are_what_the_results_code_derives_from_them(tmp_path):
    """results.md and results.csv agree: re-deriving a shipped folder from its own csv (`--from-table`)
    changes nothing, so the Markdown is the csv's rendering and an impossible MFU is missing in both."""
    import shutil

    from tinylib.experiments.results import rewrite_results

    for name in ("architecture_lab", "cpu_study"):
        shipped = Path(__file__).resolve().parents[1] / "experiments/results" / name
        copy = shutil.copytree(shipped, tmp_path / name)
        rewrite_results(copy, prompt="Once upon a time")
        for path in (Path("results.md"), Path("results.csv"), *(p.relative_to(shipped) for p in
                                                                 (shipped / "curves").glob("*.jsonl"))):
            assert (copy / path).read_text() == (shipped / path).read_text(), (name, path)


def test_seeds_expand_to_one_run_each_and_results_show_mean_std_and_paired_differences(data_dir, tmp_path,
                                                                                       capsys):
    from tinylib.experiments.runner import main, run_all

    path = write_list(tmp_path / "seeds.yaml", data_dir, [
        {"name": "base", "preset": "llama_tiny", "seeds": [0, 1]},
        {"name": "relu2", "preset": "llama_tiny", "overrides": {**SMALL, "mlp": "relu2"}},
    ])
    doc = yaml.safe_load(path.read_text())
    doc["defaults"]["budget"] = {"steps": 2}
    doc["defaults"]["seeds"] = [0, 1]  # every entry without its own seeds gets these
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    exps = load_experiments(path)
    assert [(e.name, e.seed, e.group) for e in exps.experiments] == [
        ("base_seed0", 0, "base"), ("base_seed1", 1, "base"), ("relu2_seed0", 0, "relu2"),
        ("relu2_seed1", 1, "relu2")]
    run_all(exps, progress=False)
    capsys.readouterr()
    assert main(["results", str(path), "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "| group | seeds | val loss | val bpb |" in out and "| base | 0, 1 |" in out and "±" in out
    assert "- relu2 - base: " in out
    rows, _ = read_results(tmp_path / "results")
    bpb = {r["name"]: r["val_bpb"] for r in rows}
    mean = (bpb["relu2_seed0"] - bpb["base_seed0"] + bpb["relu2_seed1"] - bpb["base_seed1"]) / 2
    assert f"- relu2 - base: {mean:+.3f} ± " in out

    for bad, why in (({"seeds": [0, 0]}, "distinct"), ({"seeds": "0,1"}, "list of distinct integers"),
                     ({"seeds": [0, 1], "seed": 3}, "must not also set seed")):
        write_list(tmp_path / "bad.yaml", data_dir, [{"name": "x", **bad}])
        with pytest.raises(ValueError, match=rf"experiment 'x'.*{why}"):
            load_experiments(tmp_path / "bad.yaml")
    write_list(tmp_path / "dupe.yaml", data_dir, [{"name": "x", "seeds": [1], "budget": {"steps": 2}},
                                                          {"name": "x_seed1", "budget": {"steps": 2}}])
    with pytest.raises(ValueError, match="duplicate experiment names"):
        load_experiments(tmp_path / "dupe.yaml")


def test_list_reads_a_metrics_log_with_a_torn_last_line(tmp_path):
    """A crash or a full disk mid-write leaves a torn last line: list warns and shows the records before it
    (it failed with a JSONDecodeError naming no file)."""
    file = tmp_path / "torn.yaml"
    file.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"),
                                    "experiments": [{"name": "a", "budget": {"steps": 2}}]}))
    run = tmp_path / "runs" / "a"
    (run / "latest").mkdir(parents=True)
    (run / "latest" / "config.json").write_text('{"step": 1, "total_steps": 2}')
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 512, "val_loss": 5.5, "val_bpb": 3.1}\n'
                                       '{"step": 2, "tokens": 1024, "train_lo')
    proc = subprocess.run([sys.executable, "-m", "tinylib.experiments", "list", str(file)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"{run / 'metrics.jsonl'}:2: dropped a torn last line" in proc.stderr
    assert "5.500" in proc.stdout and "interrupted" in proc.stdout


def test_a_run_killed_before_its_result_is_finished_by_run_next(data_dir, tmp_path, capsys):
    """Trained to its last step, killed while sampling (no result.json): interrupted, not done; run-next
    writes its sample and result.json without training again."""
    exps = load_experiments(write_list(tmp_path / "e.yaml", data_dir,
                                       [{"name": "a", "budget": {"steps": 2}}]))
    run_experiment(exps["a"], progress=False)
    (exps["a"].run_dir / "result.json").unlink()
    assert str(status(exps["a"])) == "interrupted at step 2 of 2"
    capsys.readouterr()
    assert run_next(exps, progress=False)["step"] == 2
    assert (exps["a"].run_dir / "result.json").is_file() and str(status(exps["a"])) == "done (2 steps)"
    assert "is finished: step 2 of the 2 it planned" in capsys.readouterr().out


def test_list_survives_a_damaged_config_json_and_counts_only_saved_tokens(tmp_path):
    """One run's latest/config.json is damaged: list still shows every run (it failed for the whole YAML);
    an interrupted run's tokens are those of its saved step, not of the steps logged after it (lost)."""
    file = tmp_path / "two.yaml"
    file.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "experiments": [
        {"name": "bad", "budget": {"steps": 10}}, {"name": "cut", "budget": {"steps": 10}}]}))
    for name in ("bad", "cut"):
        (tmp_path / "runs" / name / "latest").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "latest" / "config.json").write_text('{"step": 4, "tota')
    (tmp_path / "runs" / "cut" / "latest" / "config.json").write_text('{"step": 2, "total_steps": 10}')
    (tmp_path / "runs" / "cut" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "tokens": 512 * s, "val_loss": 6.0 - s / 10, "val_bpb": 3.0}) + "\n"
        for s in (1, 2, 3, 4)))
    proc = subprocess.run([sys.executable, "-m", "tinylib.experiments", "list", str(file)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[3:]}
    assert "interrupted (latest/ damaged)" in rows["bad"]
    assert "interrupted at step 2 of 10" in rows["cut"] and rows["cut"].split()[-1] == "1,024"
    assert "5.800" in rows["cut"]


def test_paired_seeds_pair_by_seed_with_a_t_interval():
    """The paired difference over seeds by hand: a constant per-seed gap is beyond the noise however much the
    seeds move both runs; an uneven one over 3 seeds is inside t(2) = 4.303 standard errors."""
    from tinylib.experiments.results import paired_seeds, t95

    assert (t95(1), t95(2), t95(30), t95(31)) == (12.706, 4.303, 2.042, 1.96)
    a = {0: 1.0, 1: 1.3, 2: 1.2}
    steady = paired_seeds(a, {2: 1.15, 0: 0.95, 1: 1.25})  # b lists its seeds in another order
    assert steady["diff"] == pytest.approx(-0.05) and steady["std"] < 1e-12 and steady["beyond_noise"]
    uneven = paired_seeds(a, {0: 0.9, 1: 1.3, 2: 1.2})
    assert uneven["diff"] == pytest.approx(-0.1 / 3)
    assert uneven["half_width"] == pytest.approx(4.303 * math.sqrt(0.01 / 3) / math.sqrt(3))
    assert not uneven["beyond_noise"] and uneven["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="share 1"):
        paired_seeds({0: 1.0, 1: 1.0}, {1: 1.0, 2: 1.0})
