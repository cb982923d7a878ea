"""Writes notebooks/03_training.ipynb (kept as a script so the notebook's source is reviewable as code)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("""# 03 · Training a TinyStories model

**Learning objectives**
- Train a small model with `tinylib.train` and watch its loss live.
- Read the numbers the trainer prints: tokens per step, tokens/s, MFU, validation loss in nats/token and bits/byte.
- Interrupt a run and resume it *exactly* from its checkpoint.
- Compare a GPT-style and a LLaMA-style model of the same size on one plot.
- Compare AdamW with Muon, the optimizer the demo uses.
- Know the commands for one GPU, several GPUs (`torchrun`) and cloud machines without NVLink/InfiniBand.

All the training code lives in `tinylib/train.py` (one file, read it!); this notebook only calls it.
`SMOKE` mode (set by the tests) shrinks every run to a few steps."""),
    new_code_cell("""import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from tinylib.data import data_report, prepare_dataset, read_meta
from tinylib.metrics import LivePlot, plot_runs, read_metrics
from tinylib.train import TrainConfig, train

SMOKE = os.environ.get("TINYLIB_SMOKE") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
# smoke runs (the tests) go to a temporary folder so they never show up among your checkpoints
RUNS = Path(tempfile.mkdtemp(prefix="notebook03-")) if SMOKE else ROOT / "checkpoints" / "notebook03"
print("smoke mode" if SMOKE else "full mode", "- runs go to", RUNS)"""),
    new_markdown_cell("""## 1. Token files

Training reads memory-mapped token files written by `tinylib.data` (notebook 01 explains them). We reuse the
demo's files when they exist, else write them now (a few seconds for the sample in `$TINYSTORIES_DIR`)."""),
    new_code_cell("""DATA = ROOT / "data" / "tinystories-4096"
try:
    read_meta(DATA)
except (FileNotFoundError, ValueError):
    prepare_dataset(os.environ.get("TINYSTORIES_DIR"), "tinystories-4096", DATA, max_stories=400 if SMOKE else None)
print(data_report(DATA))"""),
    new_markdown_cell("""## 2. A first run, with a live loss plot

`TrainConfig` has defaults that work; we set the preset, how long to train and where to save. Things to read in the
printout:
- **tokens per step** = micro-batch x sequence x accumulation x world size. Set `tokens_per_step` and the trainer
  derives the accumulation; forgetting the world size in this product is a classic way to train on half the data.
- **dtype**: bf16 autocast where the hardware supports it (these CPUs do), fp32 master weights.
- **val loss** in nats per token, and in **bits per byte** of text, which compares across tokenizers."""),
    new_code_cell("""steps = 6 if SMOKE else 600
cfg = TrainConfig(data=str(DATA), preset="tiny", out_dir=str(RUNS / "llama_tiny"), max_steps=steps,
                  warmup_steps=2 if SMOKE else 100, lr=2e-3, eval_every=3 if SMOKE else 100,
                  eval_batches=2 if SMOKE else 10, batch_size=8 if SMOKE else 16, seq_len=64 if SMOKE else 256,
                  sample_tokens=8 if SMOKE else 32, log_every=1 if SMOKE else 10,
                  compile="off" if SMOKE else "auto")  # compiling pays off only for longer runs
live = LivePlot(every=1 if SMOKE else 5, title="llama-style tiny")
result = train(cfg, on_record=live)
print(result)"""),
    new_markdown_cell("""**Check:** the loss must fall below its starting value, which is about ln(vocab) = ln(4096) ≈ 8.3 for a
model that knows nothing."""),
    new_code_cell("""records = read_metrics(cfg.out_dir)
val = [r["val_loss"] for r in records if "val_loss" in r]
assert val[-1] < val[0], val
print(f"val loss {val[0]:.3f} -> {val[-1]:.3f} nats/token; last bits/byte {records[-1].get('val_bpb', float('nan')):.3f}")
print("loss went down ✓")"""),
    new_markdown_cell("""## 3. Interrupt and resume, exactly

A checkpoint is a folder: `model.safetensors` (weights), `config.json` (model and train config, step, tokens seen)
and `state.pt` (optimizer moments, RNG state and the data stream's position). Resuming restores all of it, so a
resumed run follows *bit for bit* the path the uninterrupted run would have taken (a test checks this).

Here we stop a run halfway with `until_step` (which leaves the learning-rate schedule unchanged), then resume it."""),
    new_code_cell("""import dataclasses

from safetensors.torch import load_file

half = dataclasses.replace(cfg, out_dir=str(RUNS / "resumed"), until_step=steps // 2, sample_prompts=[])
train(half)
print("... interrupted; now resuming ...")
train(dataclasses.replace(half, until_step=None, resume=True))

a = load_file(str(Path(cfg.out_dir) / "latest" / "model.safetensors"))
b = load_file(str(RUNS / "resumed" / "latest" / "model.safetensors"))
assert all((a[k] == b[k]).all() for k in a), "resumed weights differ"
print("resumed run == uninterrupted run, bit for bit ✓")"""),
    new_markdown_cell("""## 4. GPT-style versus LLaMA-style

Same depth, width and data; the differences are the ones the architecture diagrams show: LayerNorm → RMSNorm,
GELU MLP → SwiGLU, learned positions → rotary embeddings, biases → none. (SwiGLU's third matrix makes the LLaMA
MLP 1.5x larger at the same hidden size: see `tinylib.config.param_counts`.)"""),
    new_code_cell("""from tinylib.config import get_config, param_counts

for preset in ("gpt_tiny", "llama_tiny"):
    n = param_counts(get_config(preset, vocab_size=4096))
    print(f"{preset:<11} {n.total:>10,} parameters ({n.non_embedding:,} non-embedding)")

gpt_cfg = dataclasses.replace(cfg, preset="gpt_tiny", out_dir=str(RUNS / "gpt_tiny"), sample_prompts=[])
train(gpt_cfg)
ax = plot_runs([RUNS / "gpt_tiny", RUNS / "llama_tiny"], metrics=("val_loss",), labels=["GPT-style", "LLaMA-style"])
ax.set_title("validation loss, same size and data")
plt.show()"""),
    new_markdown_cell("""**What to notice:** at this size the two families are close; differences of a few hundredths of a nat are
within run-to-run noise unless you train longer. Try a different `seed` to see the noise for yourself.

## 5. AdamW versus Muon

AdamW scales every weight's step by that weight's own gradient history. Muon (`tinylib/optim.py`, about 100
lines) treats each weight *matrix* as a whole: it takes the momentum matrix M = U S V^T and steps along U V^T, so
every direction the layer can move in moves by the same amount, instead of a few large directions drowning the
rest. Embeddings and norm gains stay on AdamW. On TinyStories with this model it reaches a given loss in fewer
steps (the demo uses it: see `tinylib/demo.py`). Muon's learning rate lives on another scale (`muon_lr`, ~0.01)."""),
    new_code_cell("""muon_cfg = dataclasses.replace(cfg, optimizer="muon", muon_lr=0.01, out_dir=str(RUNS / "llama_tiny_muon"),
                               sample_prompts=[])
train(muon_cfg)
ax = plot_runs([RUNS / "llama_tiny", RUNS / "llama_tiny_muon"], metrics=("val_loss",), labels=["AdamW", "Muon"])
ax.set_title("validation loss, same model and data")
plt.show()"""),
    new_markdown_cell("""## 6. The same trainer on GPUs

One GPU: the trainer picks CUDA, bf16 and `torch.compile` by itself.
```bash
python -m tinylib.train --preset llama_6L_6H_288D --data data/tinystories-4096 --batch-size 64 \\
    --tokens-per-step 131072 --max-tokens 500_000_000
```
Several GPUs on one machine (DDP; every rank reads its own slice of each global batch, rank 0 logs and saves):
```bash
torchrun --standalone --nproc_per_node=8 -m tinylib.train --preset gpt2_124M --data data/tinystories-gpt2 \\
    --seq-len 1024 --batch-size 16 --tokens-per-step 524288 --max-tokens 2_000_000_000
```
Cloud machines without NVLink/InfiniBand: NCCL can hang at the first all-reduce unless peer-to-peer and InfiniBand
transports are off:
```bash
NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1 torchrun --standalone --nproc_per_node=4 -m tinylib.train ...
```
Several nodes: `torchrun --nnodes=2 --node_rank=0|1 --nproc_per_node=8 --rdzv_backend=c10d
--rdzv_endpoint=HOST:29500 -m tinylib.train ...`. A resumed DDP run restores each rank's data position, so no
rank revisits data it already trained on."""),
]

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "03_training.ipynb"
nbformat.write(nb, out)
print("wrote", out)
