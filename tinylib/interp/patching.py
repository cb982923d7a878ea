"""Activation patching: which activations carry the information that decides an answer.

Run the model on a clean prompt ("Lily and Tom went to the park. Lily gave the ball to" -> " Tom") and on a
corrupted one that differs only in a few tokens (the names swapped, so the answer becomes " Lily"). Then rerun
the corrupted prompt with one activation replaced by its value from the clean run and measure how much of the
clean answer comes back. The metric is the logit difference (answer minus wrong answer) at the last position,
normalised so that the corrupted run scores 0 and the clean run 1 (Meng et al. 2022; Wang et al. 2022 for the
names task; ARENA 1.4 for the normalisation).

- `NamesTask` holds the two prompts and the two answers; `NAMES_TASK` is the default, whose names are one
  token each in our 4096-id BPE (" Lily" and " Tom"), so the prompts line up position by position.
- `patch_residual(model, task)` patches the residual stream at every layer x position: rows are
  `blocks.{L}.hook_resid_pre` for each layer and `blocks.{last}.hook_resid_post`, the stream the unembedding
  reads. Patching that last row at the last position gives the clean logits, hence exactly 1.
- `patch_heads(model, task)` patches each head's output (`blocks.{L}.attn.hook_z[:, :, h]`, all positions).
- Both return a `PatchingResult` (the grid, the clean and corrupted logit differences, labels);
  `plot_residual_patching` and `plot_head_patching` draw it.

Hooks run on the TransformerLens bridge (`tinylib.interp.bridge.as_bridge`), as in `tinylib.interp.ablation`.
Each grid row is one batched forward pass: copy i of the corrupted prompt has position (or head) i patched.
What it leaves to others: building the bridge (`bridge`), ablations (`ablation`), steering (`steering`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tinylib.interp.bridge import as_bridge, encode, str_tokens
from tinylib.interp.circuits import head_direct_logits


@dataclass(frozen=True)
class NamesTask:
    """A clean/corrupted prompt pair and the answers the metric compares (each answer one token)."""

    clean: str = "Lily and Tom went to the park. Lily gave the ball to"
    corrupted: str = "Tom and Lily went to the park. Tom gave the ball to"
    answer: str = " Tom"  # right on the clean prompt
    wrong: str = " Lily"  # right on the corrupted prompt


NAMES_TASK = NamesTask()
NAMES = ("Lily", "Tom", "Ben", "Sue", "Max", "Anna", "Sam", "Mia", "Tim", "Lucy")


def names_tasks(tokenizer: Any, names: tuple[str, ...] = NAMES, template: NamesTask = NAMES_TASK
                ) -> list[NamesTask]:
    """`template` with every ordered pair of `names` in place of Lily (the subject, named twice) and Tom (the
    indirect object, the answer); pairs where a name is not one token, with or without a leading space, are
    left out (their prompts would not line up position by position)."""
    def one_token(name: str) -> bool:
        return all(len(tokenizer.encode(t, bos=False)) == 1 for t in (name, " " + name))

    def fill(text: str, s: str, io: str) -> str:
        return text.replace("Lily", "{s}").replace("Tom", "{io}").format(s=s, io=io)

    ok = [n for n in names if one_token(n)]
    return [NamesTask(fill(template.clean, s, io), fill(template.corrupted, s, io), " " + io, " " + s)
            for s in ok for io in ok if s != io]


@dataclass
class PatchingResult:
    """Fraction of the clean logit difference recovered by each patch: 0 = corrupted run, 1 = clean run."""

    kind: str  # "residual" (rows: layers, columns: positions) or "heads" (rows: layers, columns: heads)
    grid: torch.Tensor  # [rows, columns]
    clean_diff: float  # logit(answer) - logit(wrong) on the clean prompt, last position
    corrupted_diff: float  # the same on the corrupted prompt
    rows: list[str] = field(default_factory=list)  # hook names of the rows
    columns: list[str] = field(default_factory=list)  # token labels (residual) or "H0".. (heads)

    def top(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The k cells that recover the most, as (row, column, fraction)."""
        vals, idx = self.grid.flatten().topk(min(k, self.grid.numel()))
        n = self.grid.shape[1]
        return [(self.rows[int(i) // n], self.columns[int(i) % n], float(v)) for v, i in zip(vals, idx)]


def _token_id(tokenizer: Any, text: str, what: str) -> int:
    ids = tokenizer.encode(text, bos=False)
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens {ids}; the logit difference needs one token "
                         "each: pick a word that is one token with a leading space (check tokenizer.encode)")
    return ids[0]


def task_tokens(bridge: Any, task: NamesTask) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(clean [1, T], corrupted [1, T], answer id, wrong id); refuses prompts that do not line up."""
    tok = getattr(bridge, "tinylib_tokenizer", None)
    if tok is None:
        raise ValueError("the bridge has no tokenizer: build it with to_lens(model, tokenizer) or pass "
                         "tokenizer= to the patching function")
    clean, corrupted = encode(bridge, task.clean), encode(bridge, task.corrupted)
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"the clean prompt is {clean.shape[1]} tokens and the corrupted one {corrupted.shape[1]}: "
            "patching swaps activations position by position, so both must tokenize to the same length. Use "
            f"names that are one token each. clean: {str_tokens(bridge, clean)}; corrupted: "
            f"{str_tokens(bridge, corrupted)}")
    return clean, corrupted, _token_id(tok, task.answer, "answer"), _token_id(tok, task.wrong, "wrong answer")


def logit_diff(logits: torch.Tensor, answer: int, wrong: int) -> torch.Tensor:
    """logit(answer) - logit(wrong) at the last position, one per batch row [B]."""
    last = logits[:, -1].float()
    return last[:, answer] - last[:, wrong]


def fraction_recovered(patched: torch.Tensor, clean: torch.Tensor | float,
                       corrupted: torch.Tensor | float) -> torch.Tensor:
    """(patched - corrupted) / (clean - corrupted): 0 where a patch leaves the corrupted run's logit
    difference, 1 where it restores the clean run's, linear in between (negative: pushed further away)."""
    return (patched - corrupted) / (clean - corrupted)


def _bridge(model: Any, tokenizer: Any):
    bridge = as_bridge(model, tokenizer)
    if tokenizer is not None and getattr(bridge, "tinylib_tokenizer", None) is None:
        bridge.tinylib_tokenizer = tokenizer
    return bridge


@torch.no_grad()  # an analysis: no graph to keep
def _patch(model: Any, task: NamesTask, tokenizer: Any, names: list[str], n_copies: int,
           patch: Callable[[torch.Tensor, torch.Tensor], None]) -> tuple[torch.Tensor, float, float, Any]:
    """For each hook name, run `n_copies` copies of the corrupted prompt where `patch(act, clean_act)` writes
    copy i's patched values in place. Returns (normalised grid [names, copies], clean, corrupted, bridge)."""
    bridge = _bridge(model, tokenizer)
    clean, corrupted, answer, wrong = task_tokens(bridge, task)
    clean_logits, cache = bridge.run_with_cache(clean, names_filter=names)
    clean_diff = float(logit_diff(clean_logits, answer, wrong)[0])
    corrupted_diff = float(logit_diff(bridge(corrupted), answer, wrong)[0])
    if abs(clean_diff - corrupted_diff) < 1e-6:
        raise ValueError(f"the clean and corrupted logit differences are equal ({clean_diff:.4f}): there is "
                         "nothing to recover; pick a task where the two prompts want different answers")
    batch = corrupted.repeat(n_copies, 1)
    grid = torch.zeros(len(names), n_copies)
    for row, name in enumerate(names):
        def fn(act, hook, _clean=cache[name]):
            patch(act, _clean)
            return act

        logits = bridge.run_with_hooks(batch, fwd_hooks=[(name, fn)])
        grid[row] = fraction_recovered(logit_diff(logits, answer, wrong), clean_diff, corrupted_diff)
    return grid, clean_diff, corrupted_diff, bridge


def patch_residual(model: Any, task: NamesTask = NAMES_TASK, *, tokenizer: Any = None) -> PatchingResult:
    """Patch the clean residual stream into the corrupted run, one (layer, position) at a time."""
    bridge = _bridge(model, tokenizer)
    L = bridge.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    T = encode(bridge, task.clean).shape[1]

    def patch(act, clean_act):  # act [T copies, T, d_model]: copy p takes the clean value at position p
        pos = torch.arange(act.shape[0])
        act[pos, pos] = clean_act[0, pos].to(act.dtype)

    grid, clean_diff, corrupted_diff, bridge = _patch(bridge, task, None, names, T, patch)
    labels = str_tokens(bridge, encode(bridge, task.clean))
    columns = [f"{c}/{r}" if c != r else c
               for c, r in zip(labels, str_tokens(bridge, encode(bridge, task.corrupted)))]
    return PatchingResult("residual", grid, clean_diff, corrupted_diff, names, columns)


def patch_heads(model: Any, task: NamesTask = NAMES_TASK, *, tokenizer: Any = None) -> PatchingResult:
    """Patch each head's clean output (hook_z, every position) into the corrupted run, one head at a time."""
    bridge = _bridge(model, tokenizer)
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    names = [f"blocks.{i}.attn.hook_z" for i in range(L)]

    def patch(act, clean_act):  # act [H copies, T, H, d_head]: copy h takes head h's clean output
        heads = torch.arange(act.shape[0])
        act[heads, :, heads] = clean_act[0, :, heads].transpose(0, 1).to(act.dtype)

    grid, clean_diff, corrupted_diff, _ = _patch(bridge, task, None, names, H, patch)
    return PatchingResult("heads", grid, clean_diff, corrupted_diff, names, [f"H{h}" for h in range(H)])


@dataclass
class NameHeadProfile:
    """What one head does at the last position of names tasks, one value per task."""

    to_answer: torch.Tensor  # attention to the indirect object (the name named once: the clean answer)
    to_repeated: torch.Tensor  # attention to the second mention of the subject (the name named twice)
    direct: torch.Tensor  # the head's direct effect on logit(answer) - logit(wrong), clean prompt


@torch.no_grad()
def name_head_profile(model: Any, tokenizer: Any, tasks: list[NamesTask], layer: int, head: int
                      ) -> NameHeadProfile:
    """Where a head looks from the last position of each clean prompt, and what its own output does to the
    logit difference there (`tinylib.interp.circuits.head_direct_logits`; a tinylib Transformer).

    Wang et al.'s (2022) name movers attend to the indirect object and raise its logit: to_answer high,
    direct > 0. A head that attends to the repeated subject and still raises the answer lowers the name it
    reads instead (their negative or S-inhibition-like heads)."""

    to_answer, to_repeated, direct = [], [], []
    for task in tasks:
        ids = torch.tensor([tokenizer.encode(task.clean, bos=True)])
        answer = _token_id(tokenizer, task.answer, "answer")
        wrong = _token_id(tokenizer, task.wrong, "wrong answer")
        _, patterns = model.forward_with_patterns(ids)
        row = patterns[layer][0, head, -1].float()  # [T]: the last position's attention
        io = int((ids[0] == answer).nonzero()[0])
        s2 = int((ids[0, :-1] == wrong).nonzero()[-1])
        to_answer.append(row[io])
        to_repeated.append(row[s2])
        logits = head_direct_logits(model, ids, layer, head)[0, -1]
        direct.append(logits[answer] - logits[wrong])
    return NameHeadProfile(torch.stack(to_answer), torch.stack(to_repeated), torch.stack(direct))


def _plot_grid(result: PatchingResult, xlabel: str, ylabels: list[str], title: str | None, rotate: int):
    import matplotlib.pyplot as plt  # only when plotting: the analyses run without matplotlib

    g = result.grid.detach().cpu().float()
    lim = max(1.0, float(g.abs().max()))
    fig, ax = plt.subplots(figsize=(0.6 * g.shape[1] + 2.5, 0.45 * g.shape[0] + 1.8))
    im = ax.imshow(g.numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(g.shape[1]), [repr(c)[1:-1] for c in result.columns], rotation=rotate, fontsize=7)
    ax.set_yticks(range(g.shape[0]), ylabels, fontsize=7)
    ax.set_xlabel(xlabel)
    if g.numel() <= 300:
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                ax.text(j, i, f"{float(g[i, j]):.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title or f"{result.kind} patching: logit difference recovered (clean "
                 f"{result.clean_diff:.2f}, corrupted {result.corrupted_diff:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction recovered")
    fig.tight_layout()
    return fig


def plot_residual_patching(result: PatchingResult, title: str | None = None):
    """Layers x positions heatmap of the fraction recovered (blue: towards the clean answer)."""
    ylabels = [n.replace("blocks.", "").replace(".hook_", " ") for n in result.rows]
    return _plot_grid(result, "position (clean/corrupted token)", ylabels, title, 90)


def plot_head_patching(result: PatchingResult, title: str | None = None):
    """Layers x heads heatmap of the fraction recovered by patching each head's output."""
    return _plot_grid(result, "head", [f"L{i}" for i in range(len(result.rows))], title, 0)
