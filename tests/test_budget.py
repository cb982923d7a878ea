"""tinylib.budget and its notebook panel: token targets and tables re-measured from the shared sample, the
worked example, steps, plans, the slider panel and plots, a timed training step, and predicted-versus-measured
for a written metrics log and a real short run."""

from __future__ import annotations

import json
import math

import pytest

from tinylib.budget import (
    SEPARATOR_BYTES_PER_STORY,
    TOKENS_PER_BYTE,
    compare_run,
    measure_tokens_per_byte,
    plan,
    plans_table,
    steps_for_tokens,
    tinystories_tokens,
    token_target,
    tokens_per_step,
)
from tinylib.config import TrainConfig, get_config, param_counts
from tinylib.flops import flops_per_token, peak_flops
from tinylib.widgets.budget import budget_widget, plot_chinchilla, plot_time_cost

# conftest's one thread: on a shared 2-core machine two spinning threads per process make these small ops ~10x
# slower. Nothing here asserts a speed, so this changes run time only.
pytestmark = pytest.mark.usefixtures("one_thread")


# --- tokens and steps ---------------------------------------------------------------------------------------

def test_worked_example_and_the_world_size_mistake():
    """PRODUCT.md: 500M params x 20 = 10B tokens; 22 x 2048 x 4 = 180,224 tokens/step -> ~55k steps."""
    tokens = token_target(500e6)
    assert tokens == 10_000_000_000
    step = tokens_per_step(22, 2048, grad_accum=4)
    assert step == 180_224
    steps = steps_for_tokens(tokens, step)
    assert steps == 55_487 and round(steps, -3) == 55_000

    # On 8 GPUs every rank runs 22 x 2048 x 4: a step is 8x the tokens, so 10B tokens take 8x fewer steps.
    step8 = tokens_per_step(22, 2048, grad_accum=4, world_size=8)
    assert step8 == 8 * step and steps_for_tokens(tokens, step8) == 6_936
    # Forgetting the world size plans 55,487 steps on 8 GPUs: 8x the compute, 80B tokens instead of 10B.
    assert steps * step8 == pytest.approx(8 * tokens, rel=1e-4)
    # The other way round (the bug PRODUCT.md recounts): accumulation shrinks with the world size to keep the
    # step at 180,224 tokens, a log that counts micro x seq x accum without the world size reports half the
    # data.
    accum_per_rank = 4 // 2
    logged = tokens_per_step(22, 2048, grad_accum=accum_per_rank)
    assert tokens_per_step(22, 2048, accum_per_rank, world_size=2) == step == 2 * logged
    with pytest.raises(ValueError, match="world_size"):
        tokens_per_step(22, 2048, 4, world_size=0)


def test_token_targets():
    cfg = get_config("llama_8L_8H_768D", vocab_size=4096)
    assert token_target(cfg) == 20 * param_counts(cfg).total
    assert token_target(cfg, tokens_per_param=10) == 10 * param_counts(cfg).total
    assert token_target(cfg, tokens=1e9) == 10**9
    budget_flops = 1e18
    assert token_target(cfg, flop_budget=budget_flops, seq_len=512) == int(
        budget_flops // flops_per_token(cfg, 512))
    with pytest.raises(ValueError, match="not both"):
        token_target(cfg, tokens=1, flop_budget=1)
    with pytest.raises(ValueError, match="ModelConfig"):
        token_target(1e6, flop_budget=1e18)


def test_tokens_per_byte_table_is_reproducible(tinystories_dir, gpt2_available):
    """The table's numbers are measurements: re-measure each tokenizer on the V1 validation sample."""
    for name, row in TOKENS_PER_BYTE.items():
        got = measure_tokens_per_byte(name, tinystories_dir / "TinyStories-valid.first1000.hf.txt")
        assert got["stories"] == 1000
        assert got["tokens_per_byte"] == pytest.approx(row["v1"], abs=1e-5)
    got = measure_tokens_per_byte("tinystories-4096", tinystories_dir / "TinyStories-train.first2316.txt")
    assert got["tokens_per_byte"] == pytest.approx(TOKENS_PER_BYTE["tinystories-4096"]["v1_train_sample"],
                                                   abs=1e-5)
    assert (got["file_bytes"] - got["text_bytes"]) / got["stories"] == pytest.approx(
        SEPARATOR_BYTES_PER_STORY, abs=0.01)


def test_dataset_tokens_and_epochs():
    v1 = tinystories_tokens("v1", "tinystories-4096")
    assert 4.5e8 < v1 < 4.9e8  # 1.92 GB at ~4 bytes/token
    assert tinystories_tokens("v1", "tinystories-512") > 1.6 * v1  # a 512-id vocabulary compresses less
    assert tinystories_tokens("v2", "tinystories-4096") > v1
    p = plan("llama_12L_8H_1024D", dataset_tokens=v1)
    assert p.epochs == pytest.approx(p.steps * p.tokens_per_step / v1)
    with pytest.raises(ValueError, match="tokenizer"):
        tinystories_tokens("v1", "llama2")


# --- plans --------------------------------------------------------------------------------------------------

def test_plan_is_consistent():
    one = plan("gpt2_124M", vocab_size=50304, micro_batch=16, seq_len=1024, grad_accum=4, n_gpus=1,
               device="H100 SXM", mfu=0.4, price_per_gpu_hour=3.0)
    assert one.tokens == 20 * one.params
    assert one.tokens_per_step == 16 * 1024 * 4
    assert one.steps == math.ceil(one.tokens / one.tokens_per_step)
    assert one.total_flops == pytest.approx(one.steps * one.tokens_per_step * one.flops_per_token)
    assert one.hours * 3600 * one.peak_flops * one.mfu == pytest.approx(one.total_flops)
    assert one.cost == pytest.approx(one.gpu_hours * 3.0)
    eight = plan("gpt2_124M", vocab_size=50304, micro_batch=16, seq_len=1024, grad_accum=4, n_gpus=8,
                 device="H100 SXM", mfu=0.4, price_per_gpu_hour=3.0)
    assert eight.tokens_per_step == 8 * one.tokens_per_step and eight.steps == math.ceil(one.steps / 8)
    assert eight.hours == pytest.approx(one.hours / 8, rel=1e-3)
    assert eight.cost == pytest.approx(one.cost, rel=1e-3)  # more GPUs: sooner, not cheaper
    text = str(one)
    assert "optimizer steps" in text and "H100 SXM" in text and "$" in text
    table = plans_table([one, eight])
    assert table.count("gpt2_124M") == 2
    with pytest.raises(ValueError, match="mfu"):
        plan("tiny", mfu=35)


# --- the notebook panel: sliders and plots (tinylib.widgets.budget) ----------------------------------------

def test_budget_widget_follows_its_controls():
    box = budget_widget(preset="llama_6L_6H_288D", vocab_size=4096, micro_batch=8, seq_len=256, n_gpus=1)
    first = box.current()
    assert first.tokens_per_step == 8 * 256 * 4 and first.n_gpus == 1
    box.controls["n_gpus"].value = 4
    box.controls["device"].value = "A100 SXM"
    now = box.current()
    assert now.tokens_per_step == 4 * first.tokens_per_step and now.peak_flops == 312e12
    assert now.hours < first.hours


def test_plots_take_plans():
    import matplotlib.pyplot as plt  # pyplot only for the plot tests

    plans = [plan("tiny"), plan("llama_6L_6H_288D", n_gpus=8)]
    ax = plot_chinchilla(plans)
    assert len(ax.collections) == 2 and ax.get_xscale() == "log"
    axes = plot_time_cost(plans)
    assert [len(a.patches) for a in axes] == [2, 2]
    assert axes[0].patches[1].get_width() == pytest.approx(plans[1].hours)
    plt.close("all")


# --- prediction versus measurement --------------------------------------------------------------------------

def _write_run(folder, cfg, records, train, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "latest").mkdir()
    (folder / "latest" / "config.json").write_text(json.dumps(
        {"model": cfg.to_dict(), "train": train, "world_size": 1,
         "tokens_per_step": train["batch_size"] * 256, **extra}))


def test_compare_run_on_a_written_metrics_log(tmp_path):
    cfg = get_config("tiny", vocab_size=4096)
    fpt = flops_per_token(cfg, 256)
    peak = peak_flops("H100 SXM")
    tps = 0.2 * peak / fpt  # a run at 20% MFU
    step_tokens = 16 * 256
    records = [{"step": 0, "tokens": 0, "val_loss": 8.3}]
    records += [{"step": s, "tokens": s * step_tokens, "train_loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
                 "tokens_per_s": tps * (0.5 if s == 1 else 1.0),
                 "step_time_s": step_tokens / tps * (2 if s == 1 else 1),
                 "mfu": 0.2, "peak_mem_mb": None} for s in range(1, 11)]
    run = tmp_path / "run"
    _write_run(run, cfg, records, {"batch_size": 16, "seq_len": 256, "device": "auto", "dtype": "auto"})

    result = compare_run(run, device="H100 SXM", dtype="bf16", assumed_mfu=0.4)
    pred, meas = result["MFU (from tokens/s)"]
    assert (pred, meas) == (0.4, pytest.approx(0.2))
    assert result["MFU (trainer's log)"][1] == pytest.approx(0.2)
    pred_tps, meas_tps = result["tokens/s"]
    assert meas_tps == pytest.approx(tps) and pred_tps == pytest.approx(2 * tps)  # step 1 (warm-up) left out
    assert result["step time (s)"][1] == pytest.approx(step_tokens / tps)
    assert result.tokens_per_step == step_tokens
    assert "predicted" in str(result) and "measured" in str(result)
    # A recorded device name is looked up in the table, so a GPU run can be analysed on a laptop.
    named = tmp_path / "named"
    _write_run(named, cfg, records, {"batch_size": 16, "seq_len": 256}, device_name="NVIDIA H100 80GB HBM3",
               dtype="bf16")
    assert compare_run(named, assumed_mfu=0.4)["MFU (from tokens/s)"][1] == pytest.approx(0.2)
    # The metrics file alone works when the model and step size are given.
    alone = compare_run(run / "metrics.jsonl", device="H100 SXM", model=cfg, step_tokens=step_tokens)
    assert alone["tokens/s"][1] == pytest.approx(tps)
    with pytest.raises(ValueError, match="model="):
        (tmp_path / "bare").mkdir()
        (tmp_path / "bare" / "metrics.jsonl").write_text(json.dumps(records[2]) + "\n")
        compare_run(tmp_path / "bare", device="H100 SXM")


@pytest.fixture(scope="module")
def short_run(tinystories_dir, tmp_path_factory):
    """A real 6-step tiny run with tinylib.train on 200 stories (tinystories-512), logged every step."""
    # Imported here: only this fixture needs the data pipeline and the trainer.
    from tinylib.data import prepare_dataset
    from tinylib.train import train

    root = tmp_path_factory.mktemp("budget_run")
    prepare_dataset(tinystories_dir, "tinystories-512", root / "data", max_stories=200, num_proc=1,
                    progress=False)
    cfg = TrainConfig(data=str(root / "data"), preset="tiny", out_dir=str(root / "run"), batch_size=8,
                      seq_len=128, max_steps=6, warmup_steps=2, eval_every=1000, eval_batches=1,
                      eval_batch_size=4, sample_prompts=[], log_every=1, progress=False, device="cpu",
                      compile="off")
    result = train(cfg)
    return result, root / "run"


def test_compare_run_on_a_real_short_run(short_run):
    result, run = short_run
    cmp = compare_run(run, device="cpu")
    assert cmp.tokens_per_step == 8 * 128 and cmp.steps_measured == 5
    meas_tps = cmp["tokens/s"][1]
    assert 0 < meas_tps < 1e6
    # The trainer's MFU comes from this module with the same peak: both MFU rows agree.
    assert cmp["MFU (trainer's log)"][1] == pytest.approx(cmp["MFU (from tokens/s)"][1], rel=1e-6)
    assert 0 < cmp["MFU (from tokens/s)"][1] < 1.5
