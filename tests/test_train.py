"""Training: exact resume, DDP == one process, accumulation, schedule, optimizer groups, checkpoints."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinylib import train as train_module
from tinylib.checkpoint import (
    CheckpointError,
    find_reference_checkpoint,
    list_checkpoints,
    load_model,
    load_state,
    save_checkpoint,
)
from tinylib.config import TrainConfig, config_from_args, get_config
from tinylib.data import prepare_dataset
from tinylib.metrics import plot_runs, read_metrics
from tinylib.model import Transformer
from tinylib.optim import TimePlan, configure_optimizer, lr_scale
from tinylib.train import train

SMALL = {"n_layer": 2, "d_model": 64, "n_head": 4, "d_mlp": 128, "max_seq_len": 64}


@pytest.fixture(scope="module")
def data_dir(tinystories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ts512"
    prepare_dataset(tinystories_dir, "tinystories-512", out, max_stories=300, num_proc=1, progress=False)
    return out


def small_config(data_dir, out_dir, **kw) -> TrainConfig:
    base = dict(data=str(data_dir), preset="llama_tiny", model_overrides=dict(SMALL), out_dir=str(out_dir),
                batch_size=4, seq_len=32, max_steps=8, warmup_steps=2, lr=3e-3, eval_every=4, eval_batches=2,
                eval_batch_size=4, sample_prompts=[], log_every=1, progress=False, dtype="fp32",
                compile="off")
    base.update(kw)
    return TrainConfig(**base)


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_training_is_bitwise_identical_to_uninterrupted(data_dir, tmp_path, optimizer):
    overrides = {**SMALL, "dropout": 0.1}  # dropout makes the saved RNG state matter
    kw = dict(model_overrides=overrides, optimizer=optimizer)
    straight = train(small_config(data_dir, tmp_path / "straight", **kw))
    assert straight.step == 8
    train(small_config(data_dir, tmp_path / "split", until_step=4, **kw))
    assert load_state(tmp_path / "split" / "latest")["data"]["step"] == 4
    resumed = train(small_config(data_dir, tmp_path / "split", resume=True, **kw))
    assert resumed.step == 8 and resumed.tokens == straight.tokens
    a, b = weights(tmp_path / "straight" / "latest"), weights(tmp_path / "split" / "latest")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log of the split run reads like one run
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "train_loss" in r]
    assert steps == list(range(1, 9))
    # a new (not resumed) run in the same folder, allowed to overwrite, moves the old run aside and starts a
    # new log instead of appending to the old one
    train(small_config(data_dir, tmp_path / "split", max_steps=2, overwrite=True, **kw))
    assert [r["step"] for r in read_metrics(tmp_path / "split") if "train_loss" in r] == [1, 2]
    [aside] = tmp_path.glob("split.old-*")
    assert [r["step"] for r in read_metrics(aside) if "train_loss" in r] == list(range(1, 9))


def test_gradient_accumulation_reaches_the_token_target(data_dir, tmp_path, capsys):
    acc = train(small_config(data_dir, tmp_path / "acc", batch_size=4, tokens_per_step=4 * 32 * 3,
                             max_steps=3))
    assert "micro-batch 4 x sequence 32 x accumulation 3 x world size 1 = 384" in capsys.readouterr().out
    assert acc.tokens == 3 * 384
    assert [r["tokens"] for r in read_metrics(tmp_path / "acc") if "train_loss" in r] == [384, 768, 1152]


def test_two_gloo_processes_train_the_same_model_as_one(data_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo), micro-batch 2 each, equals 1 process with micro-batch 4."""
    single = small_config(data_dir, tmp_path / "one", batch_size=4, max_steps=4, eval_every=100)
    train(single)
    config = tmp_path / "ddp.json"
    ddp = small_config(data_dir, tmp_path / "two", batch_size=2, max_steps=4, eval_every=100)
    config.write_text(json.dumps(ddp.__dict__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tinylib.train", "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2 = 128" in proc.stdout  # 2 x 32 x 1 x 2 tokens per step
    one = [r["train_loss"] for r in read_metrics(tmp_path / "one") if "train_loss" in r]
    two = [r["train_loss"] for r in read_metrics(tmp_path / "two") if "train_loss" in r]
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-5)
    for k, v in weights(tmp_path / "one" / "latest").items():
        torch.testing.assert_close(weights(tmp_path / "two" / "latest")[k], v, atol=1e-5, rtol=1e-4)


def test_tokens_per_step_counts_world_size():
    cfg = TrainConfig(batch_size=22, seq_len=2048, tokens_per_step=22 * 2048 * 4 * 8)
    assert cfg.grad_accum_steps(world_size=8) == 4
    assert cfg.grad_accum_steps(world_size=1) == 32
    with pytest.raises(ValueError, match="not a multiple of batch_size x seq_len x world_size"):
        TrainConfig(batch_size=3, seq_len=100, tokens_per_step=1000).grad_accum_steps(world_size=1)


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    def lr_at(step: int) -> float:
        return 1e-3 * lr_scale(step, warmup=10, total=110, floor=0.1)

    assert lr_at(0) == pytest.approx(1e-4)
    assert lr_at(9) == pytest.approx(1e-3)
    assert lr_at(60) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110) == pytest.approx(1e-4)
    assert lr_at(500) == pytest.approx(1e-4)


def test_weight_decay_applies_to_matrices_only():
    model = Transformer(get_config("gpt_tiny", vocab_size=256))
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_attention_implementation_is_chosen_at_run_time_not_saved(tmp_path):
    """Checkpoints written before attn_impl left ModelConfig recorded it ("eager" in the shipped reference
    model, which kept CUDA users off SDPA); they still load, and every loaded model starts on SDPA."""
    model = Transformer(get_config("tiny", vocab_size=300, max_seq_len=32), attn_impl="eager")
    folder = save_checkpoint(tmp_path / "old", model, {"tokenizer": "tinystories-512"})
    config = json.loads((folder / "config.json").read_text())
    assert "attn_impl" not in config["model"]
    config["model"]["attn_impl"] = "eager"  # what older checkpoints hold
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(folder)
    assert loaded.attn_impl == "sdpa" and load_model(find_reference_checkpoint()).attn_impl == "sdpa"
    idx = torch.randint(0, 300, (2, 16))
    sdpa_logits = loaded(idx)[0]
    loaded.attn_impl = "eager"
    torch.testing.assert_close(loaded(idx)[0], sdpa_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attn_impl='flash'; expected 'sdpa'"):
        loaded.attn_impl = "flash"


def test_checkpoints_round_trip_write_atomically_and_refuse_pickled_code(tmp_path):
    model = Transformer(get_config("tiny", vocab_size=300, max_seq_len=32))
    folder = save_checkpoint(tmp_path / "run" / "latest", model, {"step": 1, "tokenizer": "tinystories-512"},
                             state={"step": torch.tensor(1)})
    loaded = load_model(tmp_path / "run")
    idx = torch.randint(0, 300, (1, 16))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], atol=0, rtol=0)
    assert list_checkpoints(tmp_path) == [folder]
    # a failing write leaves the previous checkpoint intact and no temporary folder behind
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(folder, model, {"step": 2}, state={"bad": Unpicklable()})
    assert json.loads((folder / "config.json").read_text())["step"] == 1
    assert sorted(p.name for p in folder.parent.iterdir()) == ["latest"]
    # state.pt with an arbitrary pickled object is refused (weights_only loading)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, folder / "state.pt")
    with pytest.raises(CheckpointError, match=r"holds pickled code \(posix.system\).* nothing in it was run"):
        load_state(folder)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nothing")


def test_cli_reads_a_config_file_and_flags_override_it(tmp_path):
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"preset": "gpt_tiny", "batch_size": 3, "model_overrides": {"dropout": 0.1}}))
    cfg = config_from_args(["--config", str(file), "--batch-size", "5", "--no-progress"])
    assert (cfg.preset, cfg.batch_size, cfg.model_overrides, cfg.progress) == (
        "gpt_tiny", 5, {"dropout": 0.1}, False)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"batchsize": 3})


def test_metrics_plot_draws_each_run(data_dir, tmp_path):
    train(small_config(data_dir, tmp_path / "r", max_steps=4))
    records = read_metrics(tmp_path / "r")
    last_train = [r for r in records if "train_loss" in r][-1]
    logged = {"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb"}
    assert logged <= last_train.keys()
    assert records[-1]["val_loss"] > 0 and records[-1]["step"] == 4
    ax = plot_runs([tmp_path / "r"])
    assert len(ax.lines) == 2


def test_time_budget_plans_in_closed_form():
    b = TimePlan(seconds=100.0, t_start=0.0)
    # the first plan adds 5% for evaluation; later ones use the wall time since the first plan
    assert b.plan(step=6, timed_steps=5, timed_s=5.0, now=10.0) == (6 + int(90 / 1.05), 1.05)
    assert b.plan(step=16, timed_steps=15, timed_s=15.0, now=30.0) == (16 + 35, 2.0)
    b.eval_s = 10.0  # the final evaluation is held back
    assert b.plan(step=16, timed_steps=15, timed_s=15.0, now=30.0)[0] == 16 + 30
    assert b.plan(step=40, timed_steps=39, timed_s=39.0, now=90.0)[0] == 40  # spent: stop here
    capped = TimePlan(seconds=100.0, t_start=0.0, cap=20)
    assert capped.plan(step=6, timed_steps=5, timed_s=5.0, now=10.0)[0] == 20


def test_a_time_budget_must_be_positive(data_dir, tmp_path):
    with pytest.raises(ValueError, match="max_time_s=0 must be a positive number of seconds"):
        train(small_config(data_dir, tmp_path / "zero", max_steps=None, max_time_s=0))


class Clock:
    """Stands in for `time` in tinylib.train: each reading 0.01 s after the last, plus what `sleep` adds. The
    time-budget tests then plan the same steps however busy the machine is (a shared CPU made real-time
    budgets of 3 s end before their first plan)."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 0.01
        return self.t

    def process_time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_time_budget_holds_when_the_machine_slows_down(data_dir, tmp_path, capsys, monkeypatch):
    """Steps that get 10x slower after the first plan: re-planning at each evaluation still ends on time,
    annealed."""
    clock = Clock()
    monkeypatch.setattr(train_module, "time", clock)

    def slow_down(record):
        if record["step"] > 8 and "train_loss" in record:
            clock.sleep(0.2)  # a step of ~0.02 s becomes 10x slower

    cfg = small_config(data_dir, tmp_path / "slow", max_steps=None, max_time_s=3.0, eval_every=5,
                       eval_batches=1)
    result = train(cfg, on_record=slow_down)
    plans = [int(line.split()[3]) for line in capsys.readouterr().out.splitlines() if "steps fit in" in line]
    assert len(plans) >= 2 and plans[-1] < plans[0]  # the first plan was revised down
    assert result.time_s < 3.0 + 0.3  # the final evaluation is planned into the budget; a step may overrun
    records = [r for r in read_metrics(tmp_path / "slow") if "lr" in r]
    assert records[-1]["lr"] < cfg.lr * 0.2  # the schedule still annealed (floor: 0.1 x lr)


def test_time_budget_caps_a_token_target(data_dir, tmp_path, capsys, monkeypatch):
    """max_time_s with max_steps: the steps that fit the time win, and the schedule ends there."""
    monkeypatch.setattr(train_module, "time", Clock())
    result = train(small_config(data_dir, tmp_path / "timed", max_steps=100_000, max_time_s=3.0,
                                eval_every=10**6))
    assert "steps fit in 3 s" in capsys.readouterr().out
    assert 6 <= result.step < 100_000
    records = [r for r in read_metrics(tmp_path / "timed") if "lr" in r]
    # annealed to the floor
    assert records[-1]["lr"] == pytest.approx(small_config(data_dir, "").lr * 0.1, rel=0.05)
