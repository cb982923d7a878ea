"""The interpretability study across architectures and sizes: the same analyses on GPT- and LLaMA-style models
of two sizes, in one table and one plot.

Four models are trained briefly with tinylib's own trainer on the same stories, tokens and seed (`MODELS`:
GPT-style = LayerNorm, GELU, learned positions, biases; LLaMA-style = RMSNorm, SwiGLU, RoPE, no biases;
"small" = 2 layers x 64 wide, "tiny" = the 4 x 128 CPU preset; 4 heads everywhere, so head counts compare).
Each is then measured the same way (`study_model`):
- head scores (`tinylib.interp.attention.head_scores`): previous-token on real text, duplicate-token and
  induction on repeated random tokens;
- the loss cost of zero-ablating each head (`ablation.ablate_each_head`) and each layer's whole attention or
  MLP (this module's `ablate_layers`, hooks on tinylib's own modules);
- what the MLP neurons respond to: the share of neurons whose top contexts are dominated by one token category
  (`tinylib.interp.features.unit_purity`, the same measure the sparse-autoencoder notebook uses).

`python -m tinylib.interp.compare --data DIR --out DIR` trains what is missing (resumable: a finished run is
reused) and writes `compare.json`, `compare.md` and `compare.png`. `differences(rows)` returns each difference
the notebook states, with the numbers it rests on, so that a caller can assert it.

What it leaves to others: training (`tinylib.train`), the analyses themselves (`attention`, `ablation`,
`features`), the experiment tracker's equal-FLOP comparisons (`tinylib.experiments`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinylib.checkpoint import load_model, load_tokenizer
from tinylib.config import TrainConfig
from tinylib.data import open_split
from tinylib.interp.ablation import ablate_each_head, token_losses
from tinylib.interp.attention import head_scores, ordinary_ids, repeated_tokens
from tinylib.interp.bridge import to_lens
from tinylib.interp.features import context_entropy
from tinylib.interp.sae import eval_windows, mean_loss, site_activations
from tinylib.model import Transformer
from tinylib.paths import write_atomic
from tinylib.train import train

# name -> (preset, overrides): two styles x two sizes, everything else equal
SMALL = dict(n_layer=2, n_head=4, d_model=64, d_mlp=256)
MODELS: dict[str, tuple[str, dict]] = {
    "gpt_small": ("gpt_tiny", SMALL),
    "llama_small": ("llama_tiny", SMALL),
    "gpt_tiny": ("gpt_tiny", {}),
    "llama_tiny": ("llama_tiny", {}),
}


@dataclass
class TrainPlan:
    """How each model of the study is trained: the same data, tokens, batch, schedule and seed for all."""

    tokens: int = 524_288  # 256 steps of 8 x 256: about one pass over the 0.5M-token offline sample
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    warmup_steps: int = 20
    seed: int = 1337


def train_config(name: str, data: str | Path, out: str | Path, plan: TrainPlan) -> TrainConfig:
    preset, overrides = MODELS[name]
    return TrainConfig(data=str(data), preset=preset, model_overrides=dict(overrides),
                       out_dir=str(Path(out) / name), batch_size=plan.batch_size, seq_len=plan.seq_len,
                       max_tokens=plan.tokens, lr=plan.lr, warmup_steps=plan.warmup_steps, min_lr_ratio=0.1,
                       eval_every=10**9, eval_batches=8, sample_prompts=[], compile="off", seed=plan.seed,
                       progress=False, log_every=50, resume=(Path(out) / name / "latest").is_dir())


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (load inflates wall time)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def train_models(data: str | Path, out: str | Path, plan: TrainPlan | None = None,
                 names: list[str] | None = None) -> dict[str, dict]:
    """Train every model of the study that has no finished checkpoint under `out` (one after another);
    return {name: {"wall_s", "cpu_s", "val_loss", ...}}, from <out>/<name>/train.json for earlier runs."""

    plan = plan or TrainPlan()
    done = {}
    for name in names or list(MODELS):
        record = Path(out) / name / "train.json"
        if record.is_file():
            done[name] = json.loads(record.read_text())
            continue
        cfg = train_config(name, data, out, plan)
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = train(cfg)
        info = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "val_loss": result.val_loss,
                "tokens": result.tokens, "threads": torch.get_num_threads(), "plan": asdict(plan)}
        write_atomic(record, json.dumps(info, indent=2).encode())
        print(f"{name}: val loss {result.val_loss:.3f}, {info['wall_s']:.0f} s wall, "
              f"{info['cpu_s']:.0f} s CPU")
        done[name] = info
    return done


# --- the analyses, the same for every model -----------------------------------------------------------
@dataclass
class ModelStudy:
    """One model's numbers. Scores are [layer, head] nested lists; costs in nats/token of zero ablation."""

    name: str
    style: str
    size: str
    n_layer: int
    params: int
    val_loss: float
    previous_token: list  # on real text
    duplicate_token: list  # on repeated random tokens
    induction: list  # on repeated random tokens
    head_cost: list  # loss change when each head alone is zero-ablated (real text)
    attn_cost: list  # per layer: the whole attention output zeroed
    mlp_cost: list  # per layer: the whole MLP output zeroed
    neuron_entropy: list  # per layer: mean top-20-context category entropy of the MLP neurons (bits)
    neuron_single: list  # per layer: share of neurons whose top-20 contexts are all one category
    extra: dict = field(default_factory=dict)

    def best(self, key: str) -> tuple[int, int, float]:
        s = torch.tensor(getattr(self, key))
        i = int(s.argmax())
        return i // s.shape[1], i % s.shape[1], float(s.max())


def layer_costs(bridge: Any, tokens: torch.Tensor) -> tuple[list[float], list[float]]:
    """Loss change (nats/token) when one layer's whole attention output, or whole MLP output, is zeroed."""

    def zero(act, hook):
        return torch.zeros_like(act)

    base = float(token_losses(bridge, tokens).mean())
    L = bridge.cfg.n_layers
    attn = [float(token_losses(bridge, tokens, [(f"blocks.{i}.hook_attn_out", zero)]).mean()) - base
            for i in range(L)]
    mlp = [float(token_losses(bridge, tokens, [(f"blocks.{i}.hook_mlp_out", zero)]).mean()) - base
           for i in range(L)]
    return attn, mlp


@torch.no_grad()
def study_model(name: str, model: Transformer, tokenizer: Any, text: torch.Tensor, *, k: int = 20,
                rep_batch: int = 8, rep_half: int = 50) -> ModelStudy:
    """Every analysis of the study on one model: `text` [N, T] are validation windows."""

    model.eval()
    bridge = to_lens(model, tokenizer)
    rep = repeated_tokens(ordinary_ids(tokenizer, model.cfg.vocab_size), rep_batch, rep_half,
                          bos_id=tokenizer.bos_id, seed=0)
    on_rep = head_scores(bridge, rep)
    on_text = head_scores(bridge, text[:16])
    heads = ablate_each_head(bridge, text, "zero")
    attn, mlp = layer_costs(bridge, text)
    ent, single = [], []
    for layer in range(model.cfg.n_layer):
        acts = torch.cat([site_activations(model, c, "mlp", layer) for c in text.split(16)])
        e = context_entropy(tokenizer, text, acts, k)
        e = e[~e.isnan()]
        ent.append(float(e.mean()))
        single.append(float((e == 0).float().mean()))
    cfg = model.cfg
    return ModelStudy(
        name=name, style="GPT" if cfg.pos == "learned" else "LLaMA",
        size="small" if cfg.d_model < 128 else "tiny", n_layer=cfg.n_layer,
        params=model.num_params(), val_loss=mean_loss(model, text),
        previous_token=on_text["previous_token"].tolist(), duplicate_token=on_rep["duplicate_token"].tolist(),
        induction=on_rep["induction"].tolist(), head_cost=heads.delta.tolist(), attn_cost=attn, mlp_cost=mlp,
        neuron_entropy=ent, neuron_single=single)


def study(models_dir: str | Path, data: str | Path, *, n_windows: int = 32, seq_len: int = 128,
          names: list[str] | None = None) -> list[ModelStudy]:
    """`study_model` on every trained model of the study, on the same validation windows."""

    rows = []
    for name in names or list(MODELS):
        folder = Path(models_dir) / name
        model, tok = load_model(folder), load_tokenizer(folder)
        text = eval_windows(open_split(data, "val", tok), n_windows, seq_len)
        rows.append(study_model(name, model, tok, text))
    return rows


def table(rows: list[ModelStudy]) -> str:
    """One Markdown table: a row per model."""
    head = ("| model | params | val loss | best prev-token (text) | best duplicate | best induction | "
            "costliest head | attn cost by layer | MLP cost by layer | neuron category entropy by layer |")
    lines = [head, "|" + " --- |" * 10]
    def cell(r, key):
        la, h, v = r.best(key)
        return f"L{la}H{h} {v:.2f}"

    def numbers(xs):
        return " ".join(f"{x:.2f}" for x in xs)

    for r in rows:
        lines.append(
            f"| {r.name} | {r.params:,} | {r.val_loss:.3f} | {cell(r, 'previous_token')} | "
            f"{cell(r, 'duplicate_token')} | {cell(r, 'induction')} | {cell(r, 'head_cost')} | "
            f"{numbers(r.attn_cost)} | {numbers(r.mlp_cost)} | {numbers(r.neuron_entropy)} |")
    return "\n".join(lines)


def differences(rows: list[ModelStudy], *, score_margin: float = 0.1,
                loss_margin: float = 0.05) -> list[dict]:
    """The comparisons the study states, each with the numbers it rests on and its verdict here.

    Each compares two models that differ in one thing (style at equal size, or size at equal style). With one
    seed per model, a difference counts only beyond a margin (head scores: `score_margin`; losses and
    ablation costs: `loss_margin` nats/token); `verdict` is "holds", "the opposite holds" or "no clear
    difference" (a: the side the claim says is larger, b: the other)."""
    by = {r.name: r for r in rows}
    out = []

    def claim(text, a, b, margin, **numbers):
        verdict = ("holds" if a > b + margin else "the opposite holds" if b > a + margin
                   else "no clear difference")
        out.append({"claim": text, "verdict": verdict, "holds": verdict == "holds", "a": a, "b": b,
                    "margin": margin, **numbers})

    for style in ("gpt", "llama"):
        s, t = by.get(f"{style}_small"), by.get(f"{style}_tiny")
        if s and t:
            claim(f"{style}: the 4x128 model reaches a lower loss than the 2x64 one", s.val_loss, t.val_loss,
                  loss_margin)
            claim(f"{style}, 4x128: zeroing the MLPs (one layer at a time, summed) costs more than zeroing "
                  "the attention layers", sum(t.mlp_cost), sum(t.attn_cost), loss_margin)
            claim(f"{style}: the 4x128 model has a stronger previous-token head than the 2x64 one",
                  t.best("previous_token")[2], s.best("previous_token")[2], score_margin)
    for size in ("small", "tiny"):
        g, ll = by.get(f"gpt_{size}"), by.get(f"llama_{size}")
        if g and ll:
            for key, what in (("previous_token", "previous-token"), ("induction", "induction")):
                claim(f"{size}: the best {what} head is stronger in the LLaMA-style (RoPE) model than in the "
                      "GPT-style (learned positions) one", ll.best(key)[2], g.best(key)[2], score_margin,
                      gpt=g.best(key), llama=ll.best(key))
            claim(f"{size}: the LLaMA-style model reaches a lower loss than the GPT-style one", g.val_loss,
                  ll.val_loss, loss_margin)
    return out


def plot(rows: list[ModelStudy]):
    """Four panels: best head scores per model, loss cost of zeroing each layer's attention and MLP, neuron
    category entropy by layer."""
    import matplotlib.pyplot as plt  # heavy, and only needed to plot

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    names = [r.name for r in rows]
    x = torch.arange(len(rows)).float()
    for j, (key, label) in enumerate((("previous_token", "prev-token (text)"),
                                      ("duplicate_token", "duplicate"), ("induction", "induction"))):
        axes[0].bar(x + (j - 1) * 0.27, [r.best(key)[2] for r in rows], 0.27, label=label)
    axes[0].set_xticks(x, names, rotation=20)
    axes[0].set_title("best head score")
    axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "attn_cost", "zero a layer's attention"),
                           (axes[2], "mlp_cost", "zero a layer's MLP")):
        for r in rows:
            ax.plot(range(r.n_layer), getattr(r, key), marker="o", label=r.name,
                    ls="-" if r.style == "LLaMA" else "--")
        ax.set_xlabel("layer")
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title(title)
    axes[1].legend(fontsize=7)
    for r in rows:
        axes[3].plot(range(r.n_layer), r.neuron_entropy, marker="o", label=r.name,
                     ls="-" if r.style == "LLaMA" else "--")
    axes[3].set_xlabel("layer")
    axes[3].set_title("neurons: top-20 category entropy (bits)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinylib.interp.compare", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/tinystories-4096",
                   help="4096-id token files (python -m tinylib.data)")
    p.add_argument("--models", default="runs/compare", help="where the four models are (trained if missing)")
    p.add_argument("--out", default=None, help="where compare.json/.md/.png go (default: --models)")
    p.add_argument("--tokens", type=int, default=TrainPlan.tokens, help="training tokens per model")
    a = p.parse_args(argv)
    trained = train_models(a.data, a.models, TrainPlan(tokens=a.tokens))
    rows = study(a.models, a.data)
    out = Path(a.out or a.models)
    out.mkdir(parents=True, exist_ok=True)

    claims = differences(rows)
    write_atomic(out / "compare.json", json.dumps({"models": [asdict(r) for r in rows], "training": trained,
                                                   "differences": claims}, indent=1).encode())
    md = table(rows) + "\n\n" + "\n".join(f"- {c['verdict']}: {c['claim']} ({c['a']:.3f} vs {c['b']:.3f}, "
                                          f"margin {c['margin']})" for c in claims) + "\n"
    write_atomic(out / "compare.md", md.encode())
    plot(rows).savefig(out / "compare.png", dpi=110)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
